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

/* ---- TAP -> underlay ------------------------------------------------------------ */

/* Frames the data path answered (vx_too_big_reply) back into their TAPs. */
static void write_replies(struct vx_dataplane *dp, int n)
{
    struct vx_vnet_hdr plain;
    memset(&plain, 0, sizeof(plain));
    for (int i = 0; i < n; i++) {
        const struct vx_reply *r = &dp->replies[i];
        const struct vx_network_config *c = &dp->nets[r->net].cfg;
        struct iovec iov[2];
        int k = c->vnet_hdr ? vx_set_iov(&iov[0], &plain, VX_VNET_HLEN) : 0;
        k += vx_set_iov(&iov[k], r->frame, r->len);
        ssize_t w;
        do
            w = writev(c->tap_fd, iov, k);
        while (w < 0 && errno == EINTR);
    }
}

static void encap_and_send(struct vx_dataplane *dp, int raw_fd, double now, int n,
                           struct vx_pump_result *res)
{
    int done = 0;
    while (done < n) {
        int consumed = 0, n_replies = 0;
        int m = vx_encap(dp, now, dp->packets + done, n - done, &consumed, dp->datagrams, VX_MAX_DGRAMS,
                         res->sightings, &res->n_sightings, dp->replies, &n_replies);
        vx_send_datagrams(dp, raw_fd, dp->datagrams, m, now);
        write_replies(dp, n_replies);
        res->writes += m;
        done += consumed;
    }
}

/* Split a frame read from a VNET_HDR TAP into dp->packets from n_pkts on; -1 if its
 * virtio header does not describe it or its segments would not fit. */
static int split_into(struct vx_dataplane *dp, int net, uint8_t *buf, uint32_t len, int n_pkts)
{
    struct vx_vnet_hdr vh;
    if (len < VX_VNET_HLEN)
        return -1;
    memcpy(&vh, buf, sizeof(vh));
    return vx_gso_split(&vh, buf + VX_VNET_HLEN, len - VX_VNET_HLEN, net, dp->packets + n_pkts,
                        VX_MAX_PKTS - n_pkts, dp->heads + (size_t)n_pkts * VX_SEG_HEAD);
}

int vx_pump_tap(struct vx_dataplane *dp, int net, int raw_fd, double now, struct vx_pump_result *res)
{
    VX_GUARD(dp);
    return vx_pump_tap_locked(dp, net, raw_fd, now, res);
}

int vx_pump_tap_locked(struct vx_dataplane *dp, int net, int raw_fd, double now, struct vx_pump_result *res)
{
    memset(res, 0, offsetof(struct vx_pump_result, sightings));
    if (net < 0 || net >= VX_MAX_NETS || !dp->nets[net].in_use)
        return -EINVAL;
    struct vx_network *nw = &dp->nets[net];
    int n_pkts = 0, n = 0;
    size_t bytes = 0;
    while (n < VX_BATCH && bytes < VX_BATCH_BYTES) {
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
        bytes += (size_t)r;
        if (!nw->cfg.vnet_hdr) {               /* at most VX_BATCH < VX_MAX_PKTS of these */
            struct vx_packet *p = &dp->packets[n_pkts++];
            memset(p, 0, sizeof(*p));
            p->data = buf;
            p->len = (uint32_t)r;
            p->net = net;
            continue;
        }
        int m = split_into(dp, net, buf, (uint32_t)r, n_pkts);
        if (m < 0 && n_pkts > 0) {             /* perhaps only out of room: send what waits, retry */
            encap_and_send(dp, raw_fd, now, n_pkts, res);
            n_pkts = 0;
            m = split_into(dp, net, buf, (uint32_t)r, n_pkts);
        }
        if (m < 0)
            nw->counters.drops[VX_DROP_BAD_OFFLOAD]++;
        else
            n_pkts += m;
    }
    res->packets = n;
    res->again = n == VX_BATCH || bytes >= VX_BATCH_BYTES;
    encap_and_send(dp, raw_fd, now, n_pkts, res);
    return n;
}

/* ---- underlay -> TAP ------------------------------------------------------------ */

static void undo_rx(struct vx_network *nw, uint32_t len, int reason)
{
    nw->counters.rx_packets--;
    nw->counters.rx_bytes -= len;
    nw->counters.drops[reason]++;
}

static int write_reason(int err)
{
    return err == EAGAIN ? VX_DROP_TAP_BUSY : VX_DROP_TAP_ERROR;
}

static ssize_t writev_all(int fd, const struct iovec *iov, int k)
{
    ssize_t r;
    do
        r = writev(fd, iov, k);
    while (r < 0 && errno == EINTR);
    return r;
}

/* Write one coalesced TAP frame; on failure move its packets from rx to the drops. */
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
    if (writev_all(nw->cfg.tap_fd, iov, k) >= 0)
        return;
    int reason = write_reason(errno);
    for (int i = t->first; i < t->first + t->count; i++)
        undo_rx(nw, in[i].len, reason);
}

/* Can the network's TAP take this frame as decap described it, in one write? */
static int tap_takes(const struct vx_network_config *c, const struct vx_vnet_hdr *vh)
{
    if (vh->gso_type == VX_GSO_NONE)
        return 1;
    return c->vnet_hdr && ((vh->gso_type & ~VX_GSO_ECN) != VX_GSO_UDP_L4 || c->tap_uso);
}

/* A super-frame that its TAP cannot take as a GSO write (no virtio header, or UDP GSO
 * without USO): cut it into its segments, checksums computed, and write each.  It
 * counts as one frame received; a failed write drops it whole.  Returns the writes. */
static int write_segments(struct vx_dataplane *dp, const struct vx_packet *p)
{
    struct vx_network *nw = &dp->nets[p->net];
    struct vx_vnet_hdr plain;
    memset(&plain, 0, sizeof(plain));
    int m = vx_gso_split(&p->vh, p->data, p->len, p->net, dp->rx_segments, VX_MAX_PKTS, dp->rx_heads);
    if (m < 0) {
        undo_rx(nw, p->len, VX_DROP_BAD_OFFLOAD);
        return 0;
    }
    for (int i = 0; i < m; i++) {
        const struct vx_packet *s = &dp->rx_segments[i];
        struct iovec iov[3];
        int k = nw->cfg.vnet_hdr ? vx_set_iov(&iov[0], &plain, VX_VNET_HLEN) : 0;
        k += vx_set_iov(&iov[k], s->data, s->len);
        k += vx_set_iov(&iov[k], s->payload, s->payload_len);
        if (writev_all(nw->cfg.tap_fd, iov, k) < 0) {
            undo_rx(nw, p->len, write_reason(errno));
            return i + 1;
        }
    }
    return m;
}

/* Does every TAP with a virtio header take UDP GSO writes (coalesced UDP)? */
static int taps_take_uso(const struct vx_dataplane *dp)
{
    for (int i = 0; i < dp->n_nets; i++)
        if (dp->nets[i].in_use && dp->nets[i].cfg.vnet_hdr && !dp->nets[i].cfg.tap_uso)
            return 0;
    return 1;
}

/* Decapsulate dp->packets[0..n_pkts) and write their frames to the TAPs. */
static void deliver(struct vx_dataplane *dp, double now, int n_pkts, struct vx_pump_result *res)
{
    vx_decap(dp, now, dp->packets, n_pkts, res->sightings, &res->n_sightings);
    int n_acc = 0;
    for (int i = 0; i < n_pkts; i++) {
        struct vx_packet *p = &dp->packets[i];
        if (p->net < 0)
            continue;
        struct vx_network *nw = &dp->nets[p->net];
        if (!tap_takes(&nw->cfg, &p->vh)) {
            res->writes += write_segments(dp, p);
        } else if (nw->cfg.vnet_hdr) {
            dp->accepted[n_acc++] = *p;        /* n_acc <= n_pkts <= VX_MAX_PKTS */
        } else {
            struct iovec iov;
            vx_set_iov(&iov, p->data, p->len);
            res->writes++;
            if (writev_all(nw->cfg.tap_fd, &iov, 1) < 0)
                undo_rx(nw, p->len, write_reason(errno));
        }
    }
    int n_frames = vx_coalesce(dp->accepted, n_acc, taps_take_uso(dp), dp->tap_frames, VX_MAX_PKTS);
    for (int i = 0; i < n_frames; i++)
        write_tap(dp, dp->accepted, &dp->tap_frames[i]);
    res->writes += n_frames;
}

/* The UDP_GRO size and the outer TOS of one received message. */
static void read_cmsgs(struct msghdr *m, uint32_t *gso, uint8_t *tos)
{
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(m); cm; cm = CMSG_NXTHDR(m, cm)) {
        if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
            int size;
            memcpy(&size, CMSG_DATA(cm), sizeof(size));
            if (size > 0)
                *gso = (uint32_t)size;
        } else if (cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_TOS) {
            *tos = *CMSG_DATA(cm);             /* IP_RECVTOS; GRO merges only equal TOS */
        } else if (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_TCLASS) {
            int tclass;                        /* IPV6_RECVTCLASS */
            memcpy(&tclass, CMSG_DATA(cm), sizeof(tclass));
            *tos = (uint8_t)tclass;
        }
    }
}

int vx_pump_underlay(struct vx_dataplane *dp, int udp_fd, double now, struct vx_pump_result *res)
{
    VX_GUARD(dp);
    return vx_pump_underlay_locked(dp, udp_fd, now, res);
}

int vx_pump_underlay_locked(struct vx_dataplane *dp, int udp_fd, double now, struct vx_pump_result *res)
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
    /* Ask for as many datagrams as, at the last read's sizes, make VX_BATCH_BYTES: 64 small
     * ones, or 4 GRO reads of 64 KiB. */
    unsigned vlen = dp->rx_vlen >= 1 && dp->rx_vlen <= VX_BATCH ? dp->rx_vlen : VX_BATCH;
    int n;
    do
        n = vx_recvmmsg(udp_fd, dp->msgs, vlen, MSG_DONTWAIT, NULL);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno != EAGAIN)
            res->error = errno;
        return 0;
    }
    /* A UDP_GRO read holds several datagrams of gso_size (the last may be shorter): split
     * them here, never hand them on as one -- unless it is one datagram whose inner frame is
     * a super-packet of gso_size datagrams (see vx_gro_is_one_packet).  The kernel bounds a
     * read's datagrams (UDP_MAX_SEGMENTS, 64 or 128), not us: if a read's do not fit in
     * what is left of dp->packets, deliver what waits first; what would not fit in the
     * whole array is counted as gro_oversize. */
    int n_pkts = 0;
    for (int i = 0; i < n; i++) {
        uint8_t *base = dp->iov[i].iov_base;
        uint32_t len = dp->msgs[i].msg_len, gso = len, hint = 0;
        uint8_t tos = 0;
        if (len > VX_SLOT)                     /* truncated (MSG_TRUNC): cannot happen with VX_SLOT */
            len = VX_SLOT;
        read_cmsgs(&dp->msgs[i].msg_hdr, &gso, &tos);
        if (gso < len && vx_gro_is_one_packet(base, len, gso)) {
            hint = gso;
            gso = len;
        }
        uint32_t count = len ? (len + gso - 1) / gso : 1;    /* an empty datagram is one (short) packet */
        if (count > (uint32_t)(VX_MAX_PKTS - n_pkts) && n_pkts > 0) {
            deliver(dp, now, n_pkts, res);
            n_pkts = 0;
        }
        if (count > VX_MAX_PKTS) {
            dp->underlay.drops[VX_DROP_GRO_OVERSIZE] += count - VX_MAX_PKTS;
            count = VX_MAX_PKTS;
        }
        for (uint32_t k = 0, off = 0; k < count; k++, off += gso) {
            struct vx_packet *p = &dp->packets[n_pkts++];
            memset(p, 0, sizeof(*p));
            p->data = base + off;
            p->len = len - off < gso ? len - off : gso;
            vx_from_sockaddr(&p->peer, &dp->names[i]);
            p->outer_tos = tos;
            p->vh.gso_size = hint <= 0xffff ? (uint16_t)hint : 0;
        }
    }
    size_t bytes = 0;
    for (int i = 0; i < n; i++)
        bytes += dp->msgs[i].msg_len;
    size_t fit = n ? VX_BATCH_BYTES / (bytes / (size_t)n + 1) : VX_BATCH;
    dp->rx_vlen = fit < 1 ? 1 : fit > VX_BATCH ? VX_BATCH : (uint32_t)fit;
    res->packets = n;
    res->again = (unsigned)n == vlen;
    deliver(dp, now, n_pkts, res);
    return n;
}
