/* vxland fast path: the pumps, the syscalls around the batch steps.
 *
 * vx_pump_tap reads a batch of frames from a TAP (splitting TSO/USO
 * super-frames), encapsulates and sends them; vx_pump_underlay reads a batch
 * of datagrams (splitting UDP GRO reads), decapsulates them and writes the
 * frames, coalesced where possible, to their TAPs.
 *
 * Locking: a data-path thread holds the data plane's lock only for the steps that read or
 * change the tables and counters (encap, decap, counting), never across a syscall -- a
 * write into a TAP runs the receiving container's network stack inline, tens of µs -- so
 * that the other threads' batches, and the control plane, are not held up behind it.
 * What a batch's syscalls need of a network (its TAP's fd and offloads) is copied under
 * the lock; the control plane waits for the batches in flight (vx_thread_quiesce) before
 * it closes an fd or forgets a network.
 */
#include "dataplane.h"

#include <errno.h>
#include <stddef.h>
#include <unistd.h>

/* ---- TAP -> underlay ------------------------------------------------------------ */

/* Frames the data path answered (vx_too_big_reply) back into the TAP queue they came from. */
static void write_replies(const struct vx_scratch *sc, int fd, int vnet_hdr, int n)
{
    struct vx_vnet_hdr plain;
    memset(&plain, 0, sizeof(plain));
    for (int i = 0; i < n; i++) {
        const struct vx_reply *r = &sc->replies[i];
        struct iovec iov[2];
        int k = vnet_hdr ? vx_set_iov(&iov[0], &plain, VX_VNET_HLEN) : 0;
        k += vx_set_iov(&iov[k], r->frame, r->len);
        ssize_t w;
        do
            w = writev(fd, iov, k);
        while (w < 0 && errno == EINTR);
    }
}

/* Encapsulate sc->packets[0..n) (the tables, under the lock) and send them (without it). */
static void encap_and_send(struct vx_dataplane *dp, struct vx_scratch *sc, int net, int fd, int vnet_hdr,
                           int raw_fd, double now, int n, struct vx_pump_result *res)
{
    int done = 0;
    while (done < n) {
        int consumed = 0, n_replies = 0, m;
        {
            VX_GUARD(dp);
            if (!dp->nets[net].in_use)
                return;                        /* deleted since the read: the batch goes with it */
            m = vx_encap(dp, now, sc->packets + done, n - done, &consumed, sc->datagrams, VX_MAX_DGRAMS,
                         res->sightings, &res->n_sightings, sc->replies, &n_replies);
        }
        vx_send_datagrams(dp, sc, raw_fd, sc->datagrams, m, now);
        write_replies(sc, fd, vnet_hdr, n_replies);
        res->writes += m;
        done += consumed;
    }
}

/* Split a frame read from a VNET_HDR TAP into sc->packets from n_pkts on; -1 if its
 * virtio header does not describe it or its segments would not fit. */
static int split_into(struct vx_scratch *sc, int net, uint8_t *buf, uint32_t len, int n_pkts)
{
    struct vx_vnet_hdr vh;
    if (len < VX_VNET_HLEN)
        return -1;
    memcpy(&vh, buf, sizeof(vh));
    return vx_gso_split(&vh, buf + VX_VNET_HLEN, len - VX_VNET_HLEN, net, sc->packets + n_pkts,
                        VX_MAX_PKTS - n_pkts, sc->heads + (size_t)n_pkts * VX_SEG_HEAD);
}

int vx_pump_tap(struct vx_dataplane *dp, int net, int raw_fd, double now, struct vx_pump_result *res)
{
    VX_GUARD(dp);                              /* the event loop's: one batch, all of it locked */
    if (net < 0 || net >= VX_MAX_NETS || !dp->nets[net].in_use) {
        memset(res, 0, offsetof(struct vx_pump_result, sightings));
        return -EINVAL;
    }
    return vx_pump_tap_in(dp, dp->scratch, net, dp->nets[net].cfg.tap_fd, raw_fd, now, res);
}

int vx_pump_tap_in(struct vx_dataplane *dp, struct vx_scratch *sc, int net, int fd, int raw_fd,
                   double now, struct vx_pump_result *res)
{
    memset(res, 0, offsetof(struct vx_pump_result, sightings));
    int vnet_hdr;
    {
        VX_GUARD(dp);
        if (net < 0 || net >= VX_MAX_NETS || !dp->nets[net].in_use)
            return -EINVAL;
        vnet_hdr = dp->nets[net].cfg.vnet_hdr;
    }
    int n_pkts = 0, n = 0;
    uint64_t bad = 0;
    size_t bytes = 0;
    while (n < VX_BATCH && bytes < VX_BATCH_BYTES) {
        uint8_t *buf = sc->rx_arena + (size_t)n * VX_SLOT;
        ssize_t r = read(fd, buf, VX_SLOT);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                res->error = errno;
            break;
        }
        n++;
        bytes += (size_t)r;
        if (!vnet_hdr) {                       /* at most VX_BATCH < VX_MAX_PKTS of these */
            struct vx_packet *p = &sc->packets[n_pkts++];
            memset(p, 0, sizeof(*p));
            p->data = buf;
            p->len = (uint32_t)r;
            p->net = net;
            continue;
        }
        int m = split_into(sc, net, buf, (uint32_t)r, n_pkts);
        if (m < 0 && n_pkts > 0) {             /* perhaps only out of room: send what waits, retry */
            encap_and_send(dp, sc, net, fd, vnet_hdr, raw_fd, now, n_pkts, res);
            n_pkts = 0;
            m = split_into(sc, net, buf, (uint32_t)r, n_pkts);
        }
        if (m < 0)
            bad++;
        else
            n_pkts += m;
    }
    res->packets = n;
    res->again = n == VX_BATCH || bytes >= VX_BATCH_BYTES;
    encap_and_send(dp, sc, net, fd, vnet_hdr, raw_fd, now, n_pkts, res);
    if (bad) {
        VX_GUARD(dp);
        if (dp->nets[net].in_use)
            dp->nets[net].counters.drops[VX_DROP_BAD_OFFLOAD] += bad;
    }
    return n;
}

/* ---- underlay -> TAP ------------------------------------------------------------ */

/* A frame decap accepted that its TAP did not take: counted as a drop, not as received,
 * once the batch is written (count_delivered). */
static void undo_rx(struct vx_scratch *sc, int net, uint32_t len, int reason)
{
    if (sc->n_undo < VX_MAX_PKTS)
        sc->undo[sc->n_undo++] = (struct vx_undo){ net, len, reason };
}

/* Under the lock again, after the writes: the frames the TAPs took count as received, the
 * others as drops -- in one step, so a scrape never sees rx_packets count a frame and then
 * take it back.  A network removed meanwhile is not counted: on the threads' path
 * vx_network_del marks it unused before it waits for the batches in flight (quiesce), and no
 * new network takes its index until they are done; the event loop's path holds the lock
 * over the whole batch.  (A second lock per batch, of up to VX_BATCH datagrams.) */
static void count_delivered(struct vx_dataplane *dp, struct vx_scratch *sc, const struct vx_packet *in, int n)
{
    VX_GUARD(dp);
    for (int i = 0; i < n; i++) {
        struct vx_network *nw = in[i].net >= 0 ? &dp->nets[in[i].net] : NULL;
        if (nw && nw->in_use) {
            nw->counters.rx_packets++;
            nw->counters.rx_bytes += in[i].len;
        }
    }
    for (int i = 0; i < sc->n_undo; i++) {
        const struct vx_undo *u = &sc->undo[i];
        struct vx_network *nw = &dp->nets[u->net];
        if (!nw->in_use)
            continue;
        nw->counters.rx_packets--;
        nw->counters.rx_bytes -= u->len;
        nw->counters.drops[u->reason]++;
    }
    sc->n_undo = 0;
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

/* Write one coalesced TAP frame; on failure its packets become drops. */
static void write_tap(struct vx_scratch *sc, const struct vx_packet *in, const struct vx_tap_frame *t)
{
    struct iovec iov[VX_GSO_MAX_SEGS + 2];
    int k = vx_set_iov(&iov[0], &t->vh, VX_VNET_HLEN);
    if (t->count == 1) {
        k += vx_set_iov(&iov[k], in[t->first].data, in[t->first].len);
    } else {
        k += vx_set_iov(&iov[k], t->head, t->hdr_len);
        for (int i = t->first; i < t->first + t->count; i++)
            k += vx_set_iov(&iov[k], in[i].data + t->hdr_len, in[i].len - t->hdr_len);
    }
    if (writev_all(sc->sinks[t->net].fd, iov, k) >= 0)
        return;
    int reason = write_reason(errno);
    for (int i = t->first; i < t->first + t->count; i++)
        undo_rx(sc, t->net, in[i].len, reason);
}

/* Can the network's TAP take this frame as decap described it, in one write? */
static int tap_takes(const struct vx_sink *c, const struct vx_vnet_hdr *vh)
{
    if (vh->gso_type == VX_GSO_NONE)
        return 1;
    return c->vnet_hdr && ((vh->gso_type & ~VX_GSO_ECN) != VX_GSO_UDP_L4 || c->tap_uso);
}

/* A super-frame that its TAP cannot take as a GSO write (no virtio header, or UDP GSO
 * without USO): cut it into its segments, checksums computed, and write each.  It
 * counts as one frame received; a failed write drops it whole.  Returns the writes. */
static int write_segments(struct vx_scratch *sc, const struct vx_packet *p)
{
    const struct vx_sink *c = &sc->sinks[p->net];
    struct vx_vnet_hdr plain;
    memset(&plain, 0, sizeof(plain));
    int m = vx_gso_split(&p->vh, p->data, p->len, p->net, sc->rx_segments, VX_MAX_PKTS, sc->rx_heads);
    if (m < 0) {
        undo_rx(sc, p->net, p->len, VX_DROP_BAD_OFFLOAD);
        return 0;
    }
    for (int i = 0; i < m; i++) {
        const struct vx_packet *s = &sc->rx_segments[i];
        struct iovec iov[3];
        int k = c->vnet_hdr ? vx_set_iov(&iov[0], &plain, VX_VNET_HLEN) : 0;
        k += vx_set_iov(&iov[k], s->data, s->len);
        k += vx_set_iov(&iov[k], s->payload, s->payload_len);
        if (writev_all(c->fd, iov, k) < 0) {
            undo_rx(sc, p->net, p->len, write_reason(errno));
            return i + 1;
        }
    }
    return m;
}

/* Decapsulate sc->packets[0..n_pkts) and write their frames into the TAPs' queue `queue`:
 * decap and what the writes need to know of each TAP under the lock, the writes without. */
static void deliver(struct vx_dataplane *dp, struct vx_scratch *sc, int queue, double now, int n_pkts,
                    struct vx_pump_result *res)
{
    int udp = 1;                               /* every TAP with a virtio header takes UDP GSO writes */
    {
        VX_GUARD(dp);
        vx_decap_batch(dp, now, sc->packets, n_pkts, res->sightings, &res->n_sightings, 0);
        for (int i = 0; i < dp->n_nets; i++) {
            const struct vx_network *nw = &dp->nets[i];
            sc->sinks[i] = (struct vx_sink){ vx_tap_queue_fd(&nw->cfg, queue), nw->cfg.vnet_hdr, nw->cfg.tap_uso };
            if (nw->in_use && nw->cfg.vnet_hdr && !nw->cfg.tap_uso)
                udp = 0;
        }
    }
    int n_acc = 0;
    for (int i = 0; i < n_pkts; i++) {
        struct vx_packet *p = &sc->packets[i];
        if (p->net < 0)
            continue;
        const struct vx_sink *c = &sc->sinks[p->net];
        if (!tap_takes(c, &p->vh)) {
            res->writes += write_segments(sc, p);
        } else if (c->vnet_hdr) {
            sc->accepted[n_acc++] = *p;        /* n_acc <= n_pkts <= VX_MAX_PKTS */
        } else {
            struct iovec iov;
            vx_set_iov(&iov, p->data, p->len);
            res->writes++;
            if (writev_all(c->fd, &iov, 1) < 0)
                undo_rx(sc, p->net, p->len, write_reason(errno));
        }
    }
    int n_frames = vx_coalesce(sc->accepted, n_acc, udp, sc->tap_frames, VX_MAX_PKTS);
    for (int i = 0; i < n_frames; i++)
        write_tap(sc, sc->accepted, &sc->tap_frames[i]);
    res->writes += n_frames;
    count_delivered(dp, sc, sc->packets, n_pkts);
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
    VX_GUARD(dp);                              /* the event loop's: one batch, all of it locked */
    return vx_pump_underlay_in(dp, dp->scratch, udp_fd, 0, now, res);
}

int vx_pump_underlay_in(struct vx_dataplane *dp, struct vx_scratch *sc, int udp_fd, int queue,
                        double now, struct vx_pump_result *res)
{
    memset(res, 0, offsetof(struct vx_pump_result, sightings));
    for (int i = 0; i < VX_BATCH; i++) {
        sc->iov[i].iov_base = sc->rx_arena + (size_t)i * VX_SLOT;
        sc->iov[i].iov_len = VX_SLOT;
        memset(&sc->msgs[i], 0, sizeof(sc->msgs[i]));
        sc->msgs[i].msg_hdr.msg_name = &sc->names[i];
        sc->msgs[i].msg_hdr.msg_namelen = sizeof(sc->names[i]);
        sc->msgs[i].msg_hdr.msg_iov = &sc->iov[i];
        sc->msgs[i].msg_hdr.msg_iovlen = 1;
        sc->msgs[i].msg_hdr.msg_control = sc->cmsgs + (size_t)i * CMSG_ROOM;
        sc->msgs[i].msg_hdr.msg_controllen = CMSG_ROOM;
    }
    /* Ask for as many datagrams as, at the last read's sizes, make VX_BATCH_BYTES: 64 small
     * ones, or 4 GRO reads of 64 KiB. */
    unsigned vlen = sc->rx_vlen >= 1 && sc->rx_vlen <= VX_BATCH ? sc->rx_vlen : VX_BATCH;
    int n;
    do
        n = vx_recvmmsg(udp_fd, sc->msgs, vlen, MSG_DONTWAIT, NULL);
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
     * what is left of sc->packets, deliver what waits first; what would not fit in the
     * whole array is counted as gro_oversize. */
    int n_pkts = 0;
    uint64_t oversize = 0;
    for (int i = 0; i < n; i++) {
        uint8_t *base = sc->iov[i].iov_base;
        uint32_t len = sc->msgs[i].msg_len, gso = len, hint = 0;
        uint8_t tos = 0;
        if (len > VX_SLOT)                     /* truncated (MSG_TRUNC): cannot happen with VX_SLOT */
            len = VX_SLOT;
        read_cmsgs(&sc->msgs[i].msg_hdr, &gso, &tos);
        if (gso < len && vx_gro_is_one_packet(base, len, gso)) {
            hint = gso;
            gso = len;
        }
        uint32_t count = len ? (len + gso - 1) / gso : 1;    /* an empty datagram is one (short) packet */
        if (count > (uint32_t)(VX_MAX_PKTS - n_pkts) && n_pkts > 0) {
            deliver(dp, sc, queue, now, n_pkts, res);
            n_pkts = 0;
        }
        if (count > VX_MAX_PKTS) {
            oversize += count - VX_MAX_PKTS;
            count = VX_MAX_PKTS;
        }
        for (uint32_t k = 0, off = 0; k < count; k++, off += gso) {
            struct vx_packet *p = &sc->packets[n_pkts++];
            memset(p, 0, sizeof(*p));
            p->data = base + off;
            p->len = len - off < gso ? len - off : gso;
            vx_from_sockaddr(&p->peer, &sc->names[i]);
            p->outer_tos = tos;
            p->vh.gso_size = hint <= 0xffff ? (uint16_t)hint : 0;
        }
    }
    size_t bytes = 0;
    for (int i = 0; i < n; i++)
        bytes += sc->msgs[i].msg_len;
    size_t fit = n ? VX_BATCH_BYTES / (bytes / (size_t)n + 1) : VX_BATCH;
    sc->rx_vlen = fit < 1 ? 1 : fit > VX_BATCH ? VX_BATCH : (uint32_t)fit;
    res->packets = n;
    res->again = (unsigned)n == vlen;
    deliver(dp, sc, queue, now, n_pkts, res);
    if (oversize) {
        VX_GUARD(dp);
        dp->underlay.drops[VX_DROP_GRO_OVERSIZE] += oversize;
    }
    return n;
}
