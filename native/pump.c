/* vxland fast path: the pumps, the syscalls around the batch steps.
 *
 * vx_pump_tap reads a batch of frames from a TAP (splitting TSO/USO
 * super-frames), encapsulates and sends them; vx_pump_underlay reads a batch
 * of datagrams (splitting UDP GRO reads), decapsulates them and writes the
 * frames, coalesced where possible, to their TAPs.
 */
#include "dataplane.h"

#include <errno.h>
#include <stddef.h>
#include <unistd.h>

/* ---- the pumps: syscalls around the batch steps ----------------------------- */

static void encap_and_send(struct vx_dataplane *dp, int raw_fd, double now, int n,
                           struct vx_pump_result *res)
{
    int done = 0;
    while (done < n) {
        int consumed = 0;
        int m = vx_encap(dp, now, dp->packets + done, n - done, &consumed,
                         dp->datagrams, VX_MAX_DGRAMS, res->sightings, &res->n_sightings);
        vx_send_datagrams(dp, raw_fd, dp->datagrams, m);
        res->writes += m;
        done += consumed;
    }
}

int vx_pump_tap(struct vx_dataplane *dp, int net, int raw_fd, double now,
                struct vx_pump_result *res)
{
    memset(res, 0, offsetof(struct vx_pump_result, sightings));
    if (net < 0 || net >= VX_MAX_NETS || !dp->nets[net].in_use)
        return -EINVAL;
    struct vx_network *nw = &dp->nets[net];
    int n_pkts = 0, n = 0;
    while (n < VX_BATCH) {
        uint8_t *buf = dp->rx_arena + (size_t)n * VX_SLOT;
        ssize_t r = read(nw->cfg.tap_fd, buf, VX_SLOT);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                res->error = errno;
            break;
        }
        n++;
        if (!nw->cfg.vnet_hdr) {
            struct vx_packet *p = &dp->packets[n_pkts++];
            memset(p, 0, sizeof(*p));
            p->data = buf;
            p->len = (uint32_t)r;
            p->net = net;
            continue;
        }
        if (VX_MAX_PKTS - n_pkts < 1024) {     /* room for one more super-frame's segments */
            encap_and_send(dp, raw_fd, now, n_pkts, res);
            n_pkts = 0;
        }
        struct vx_vnet_hdr vh;
        int m = -1;
        if (r >= VX_VNET_HLEN) {
            memcpy(&vh, buf, sizeof(vh));
            m = vx_gso_split(&vh, buf + VX_VNET_HLEN, (uint32_t)r - VX_VNET_HLEN, net,
                             dp->packets + n_pkts, VX_MAX_PKTS - n_pkts,
                             dp->heads + (size_t)n_pkts * VX_SEG_HEAD);
        }
        if (m < 0)
            nw->counters.drops[VX_DROP_BAD_OFFLOAD]++;
        else
            n_pkts += m;
    }
    res->packets = n;
    res->again = n == VX_BATCH;
    encap_and_send(dp, raw_fd, now, n_pkts, res);
    return n;
}

/* Write one TAP frame; on failure move its packets from rx to the drops. */
static void write_tap(struct vx_dataplane *dp, const struct vx_packet *in, const struct vx_tap_frame *t)
{
    struct vx_network *nw = &dp->nets[t->net];
    struct iovec iov[VX_GSO_MAX_SEGS + 2];
    int k = vx_set_iov(&iov[0], &t->vh, VX_VNET_HLEN);
    if (t->count == 1) {
        k += vx_set_iov(&iov[k], in[t->first].data, in[t->first].len);
    } else {
        k += vx_set_iov(&iov[k], t->head, t->hdr_len);
        for (int i = t->first; i < t->first + t->count; i++)
            k += vx_set_iov(&iov[k], in[i].data + t->hdr_len, in[i].len - t->hdr_len);
    }
    ssize_t r;
    do
        r = writev(nw->cfg.tap_fd, iov, k);
    while (r < 0 && errno == EINTR);
    if (r >= 0)
        return;
    int reason = errno == EAGAIN ? VX_DROP_TAP_BUSY : VX_DROP_TAP_ERROR;
    for (int i = t->first; i < t->first + t->count; i++) {
        nw->counters.rx_packets--;
        nw->counters.rx_bytes -= in[i].len;
        nw->counters.drops[reason]++;
    }
}

int vx_pump_underlay(struct vx_dataplane *dp, int udp_fd, double now,
                     struct vx_pump_result *res)
{
    memset(res, 0, offsetof(struct vx_pump_result, sightings));
    for (int i = 0; i < VX_BATCH; i++) {
        dp->iov[i].iov_base = dp->rx_arena + (size_t)i * VX_SLOT;
        dp->iov[i].iov_len = VX_SLOT;
        memset(&dp->msgs[i], 0, sizeof(dp->msgs[i]));
        dp->msgs[i].msg_hdr.msg_name = &dp->names[i];
        dp->msgs[i].msg_hdr.msg_namelen = sizeof(dp->names[i]);
        dp->msgs[i].msg_hdr.msg_iov = &dp->iov[i];
        dp->msgs[i].msg_hdr.msg_iovlen = 1;
        dp->msgs[i].msg_hdr.msg_control = dp->cmsgs + (size_t)i * CMSG_ROOM;
        dp->msgs[i].msg_hdr.msg_controllen = CMSG_ROOM;
    }
    int n;
    do
        n = recvmmsg(udp_fd, dp->msgs, VX_BATCH, MSG_DONTWAIT, NULL);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno != EAGAIN)
            res->error = errno;
        return 0;
    }
    /* A UDP_GRO read holds several datagrams of gso_size (the last may be shorter):
     * split them here, never hand them on as one. */
    int n_pkts = 0;
    for (int i = 0; i < n; i++) {
        struct msghdr *m = &dp->msgs[i].msg_hdr;
        uint8_t *base = dp->iov[i].iov_base;
        uint32_t len = dp->msgs[i].msg_len, gso = len;
        uint8_t tos = 0;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(m); cm; cm = CMSG_NXTHDR(m, cm)) {
            if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
                int size;
                memcpy(&size, CMSG_DATA(cm), sizeof(size));
                if (size > 0)
                    gso = (uint32_t)size;
            } else if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_TOS) {
                tos = *CMSG_DATA(cm);          /* IP_RECVTOS; GRO merges only equal TOS */
            } else if (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_TCLASS) {
                int tclass;                    /* IPV6_RECVTCLASS */
                memcpy(&tclass, CMSG_DATA(cm), sizeof(tclass));
                tos = (uint8_t)tclass;
            }
        }
        uint32_t off = 0;
        do {                                   /* an empty datagram is one (short) packet */
            struct vx_packet *p = &dp->packets[n_pkts++];
            memset(p, 0, sizeof(*p));
            p->data = base + off;
            p->len = len - off < gso ? len - off : gso;
            vx_from_sockaddr(&p->peer, &dp->names[i]);
            p->outer_tos = tos;
            off += gso;
        } while (off < len && n_pkts < VX_MAX_PKTS);
    }
    res->packets = n;
    res->again = n == VX_BATCH;
    vx_decap(dp, now, dp->packets, n_pkts, res->sightings, &res->n_sightings);
    int n_acc = 0;
    for (int i = 0; i < n_pkts; i++) {
        struct vx_packet *p = &dp->packets[i];
        if (p->net < 0)
            continue;
        if (dp->nets[p->net].cfg.vnet_hdr) {
            dp->accepted[n_acc++] = *p;
            continue;
        }
        ssize_t r;
        do
            r = write(dp->nets[p->net].cfg.tap_fd, p->data, p->len);
        while (r < 0 && errno == EINTR);
        res->writes++;
        if (r < 0) {
            struct vx_counters *c = &dp->nets[p->net].counters;
            c->rx_packets--;
            c->rx_bytes -= p->len;
            c->drops[errno == EAGAIN ? VX_DROP_TAP_BUSY : VX_DROP_TAP_ERROR]++;
        }
    }
    int n_frames = vx_coalesce(dp->accepted, n_acc, dp->tap_frames, VX_MAX_PKTS);
    for (int i = 0; i < n_frames; i++)
        write_tap(dp, dp->accepted, &dp->tap_frames[i]);
    res->writes += n_frames;
    return n;
}
