/* vxland fast path: sending datagrams on the underlay.
 *
 * Whole outer packets go on the IPPROTO_RAW socket, a sendmmsg per batch; runs
 * of equal-sized datagrams to one VTEP from one source port go as one
 * sendmsg with UDP_SEGMENT on a UDP socket bound to that port (raw sockets
 * cannot do GSO).
 */
#include "dataplane.h"

#include <errno.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/filter.h>

#define GSO_MAX_BYTES 65507            /* one UDP datagram's payload: 65535 - IPv4 20 - UDP 8 */

/* ---- sending: raw sendmmsg, or UDP_SEGMENT runs --------------------------------- */

/* A socket address for `a` and `port`; its length. */
socklen_t vx_to_sockaddr(struct sockaddr_in6 *sa, const struct vx_addr *a, uint16_t port)
{
    memset(sa, 0, sizeof(*sa));
    if (a->family == VX_AF_INET6) {
        sa->sin6_family = AF_INET6;
        sa->sin6_port = htons(port);
        memcpy(&sa->sin6_addr, a->ip, 16);
        return sizeof(struct sockaddr_in6);
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)sa;
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    memcpy(&s4->sin_addr, a->ip, 4);
    return sizeof(struct sockaddr_in);
}

void vx_from_sockaddr(struct vx_addr *a, const struct sockaddr_in6 *sa)
{
    memset(a, 0, sizeof(*a));
    if (sa->sin6_family == AF_INET6) {
        a->family = VX_AF_INET6;
        memcpy(a->ip, &sa->sin6_addr, 16);
    } else {
        a->family = VX_AF_INET;
        memcpy(a->ip, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    }
}

static uint32_t datagram_len(const struct vx_datagram *d)
{
    return d->frame_len + d->payload_len;
}

/* Offsets into the outer headers: the UDP header, and the byte that holds DF (IPv4). */
static int udp_offset(const struct vx_datagram *d)
{
    return (int)d->header_len - 16;
}

/* The outer source address and UDP destination port, as encap wrote them: a batch sends
 * without the lock, so it reads the headers, not the network's configuration. */
static void datagram_source(const struct vx_datagram *d, struct vx_addr *a)
{
    memset(a, 0, sizeof(*a));
    if ((d->header[0] >> 4) == 6) {
        a->family = VX_AF_INET6;
        memcpy(a->ip, d->header + 8, 16);
    } else {
        a->family = VX_AF_INET;
        memcpy(a->ip, d->header + 12, 4);
    }
}

static uint16_t datagram_dport(const struct vx_datagram *d)
{
    return vx_get16(d->header + udp_offset(d) + 2);
}

static uint16_t datagram_sport(const struct vx_datagram *d)
{
    const uint8_t *u = d->header + udp_offset(d);
    return (uint16_t)(u[0] << 8 | u[1]);
}

/* The outer TOS or traffic class, and whether the kernel may send it from a GSO
 * socket (those set DF, or IPv6's equivalent, always). */
static uint8_t datagram_tos(const struct vx_datagram *d)
{
    const uint8_t *h = d->header;
    return (h[0] >> 4) == 6 ? (uint8_t)((h[0] & 0x0f) << 4 | h[1] >> 4) : h[1];
}

static int datagram_dont_fragment(const struct vx_datagram *d)
{
    return (d->header[0] >> 4) == 6 || (d->header[6] & 0x40);
}

static void count_sent(struct vx_dataplane *dp, const struct vx_datagram *d, int n)
{
    VX_GUARD(dp);
    for (int k = 0; k < n; k++) {
        if (!dp->nets[d[k].net].in_use)
            continue;                      /* deleted since encap: its counters are gone */
        struct vx_counters *c = &dp->nets[d[k].net].counters;
        c->tx_packets++;
        c->tx_bytes += datagram_len(&d[k]);
    }
}

/* n datagrams from d, of one network, dropped for reason. */
static void count_dropped(struct vx_dataplane *dp, const struct vx_datagram *d, int n, int reason)
{
    VX_GUARD(dp);
    if (dp->nets[d->net].in_use)
        dp->nets[d->net].counters.drops[reason] += (uint64_t)n;
}

static int send_reason(int err)
{
    return err == EMSGSIZE ? VX_DROP_TOO_BIG
         : (err == EAGAIN || err == ENOBUFS) ? VX_DROP_UNDERLAY_BUSY
         : VX_DROP_UNDERLAY_ERROR;
}

int vx_set_iov(struct iovec *iov, const void *base, size_t len)
{
    iov->iov_base = (void *)base;
    iov->iov_len = len;
    return len ? 1 : 0;
}

/* Whole outer packets (IPv4 header and all) on the raw socket, a sendmmsg per batch. */
static void send_raw(struct vx_dataplane *dp, struct vx_scratch *sc, int raw_fd, struct vx_datagram *d, int n)
{
    for (int i = 0; i < n; i++) {
        struct sockaddr_in6 *sa = &sc->names[i];
        socklen_t len = vx_to_sockaddr(sa, &d[i].dst, 0);   /* raw: no port */
        struct iovec *iov = &sc->iov[3 * i];
        int k = vx_set_iov(iov, d[i].header, d[i].header_len);
        k += vx_set_iov(iov + k, d[i].frame, d[i].frame_len);
        k += vx_set_iov(iov + k, d[i].payload, d[i].payload_len);
        memset(&sc->msgs[i], 0, sizeof(sc->msgs[i]));
        sc->msgs[i].msg_hdr.msg_name = sa;
        sc->msgs[i].msg_hdr.msg_namelen = len;
        sc->msgs[i].msg_hdr.msg_iov = iov;
        sc->msgs[i].msg_hdr.msg_iovlen = (size_t)k;
    }
    int i = 0;
    while (i < n) {
        int r = sendmmsg(raw_fd, &sc->msgs[i], (unsigned)(n - i), 0);
        if (r > 0) {
            count_sent(dp, d + i, r);
            i += r;
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else {
            /* the first datagram failed: count it and go on with the rest */
            count_dropped(dp, &d[i], 1, send_reason(errno));
            i++;
        }
    }
}

/* A UDP socket bound to this outer source port, for UDP_SEGMENT sends (raw sockets
 * cannot do GSO).  It never reads: a filter drops all that arrives.  -1 when there is
 * none to be had: the run goes on the raw socket. */
static int open_gso_socket(const struct vx_addr *local, uint16_t sport)
{
    int v6 = local->family == VX_AF_INET6;
    int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int size = 8 << 20, pmtu = IP_PMTUDISC_PROBE, one = 1, zero = 0;  /* DF set; never fragment */
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    if (v6) {
        setsockopt(fd, IPPROTO_IPV6, IPV6_DONTFRAG, &one, sizeof(one));
        setsockopt(fd, IPPROTO_IPV6, IPV6_MULTICAST_LOOP, &zero, sizeof(zero));
    } else {
        setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &pmtu, sizeof(pmtu));
        setsockopt(fd, IPPROTO_IP, IP_MULTICAST_LOOP, &zero, sizeof(zero));
    }
    struct sock_filter drop_all = BPF_STMT(BPF_RET | BPF_K, 0);
    struct sock_fprog prog = { .len = 1, .filter = &drop_all };
    setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog));
    struct sockaddr_in6 sa;
    socklen_t len = vx_to_sockaddr(&sa, local, sport);
    if (bind(fd, (struct sockaddr *)&sa, len) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* The pool of GSO sockets: at most gso_cap, whatever the number of flows.  A port
 * in the pool is used; otherwise a free slot, or one unused for VX_GSO_IDLE seconds, is
 * given to it; otherwise (every socket busy) the run goes raw.  A port that could not be
 * had (someone else holds it, no fd left) is tried again after VX_GSO_RETRY seconds. */
static int gso_socket(struct vx_scratch *sc, const struct vx_addr *local, uint16_t sport, double now)
{
    int slot = sc->gso_slot[sport];
    if (slot >= 0) {
        sc->gso_pool[slot].used = now;
        return sc->gso_pool[slot].fd;
    }
    if (now < sc->gso_retry[sport])
        return -1;
    int victim = -1;
    double oldest = now - VX_GSO_IDLE;
    for (int i = 0; i < sc->gso_cap; i++) {
        if (sc->gso_pool[i].fd < 0) {
            victim = i;
            break;
        }
        if (sc->gso_pool[i].used <= oldest) {
            oldest = sc->gso_pool[i].used;
            victim = i;
        }
    }
    if (victim < 0)
        return -1;
    struct vx_gso_socket *g = &sc->gso_pool[victim];
    if (g->fd >= 0) {
        close(g->fd);
        sc->gso_slot[g->port] = -1;
        g->fd = -1;
        __atomic_sub_fetch(&sc->gso_open, 1, __ATOMIC_RELAXED);
    }
    int fd = open_gso_socket(local, sport);
    if (fd < 0) {
        sc->gso_retry[sport] = now + VX_GSO_RETRY;
        return -1;
    }
    g->fd = fd;
    __atomic_add_fetch(&sc->gso_open, 1, __ATOMIC_RELAXED);
    g->port = sport;
    g->used = now;
    sc->gso_slot[sport] = (int16_t)victim;
    return fd;
}

int vx_scratch_gso_sockets(const struct vx_scratch *sc)
{
    return __atomic_load_n(&sc->gso_open, __ATOMIC_RELAXED);
}

/* n datagrams of one network, destination and source port, all of d[0]'s size
 * but the last, in one sendmsg with UDP_SEGMENT.  0, or -errno. */
static int send_gso(struct vx_dataplane *dp, struct vx_scratch *sc, struct vx_datagram *d, int n, double now)
{
    struct vx_addr local;
    datagram_source(&d[0], &local);
    int fd = gso_socket(sc, &local, datagram_sport(&d[0]), now);
    if (fd < 0)
        return -ENOTSOCK;
    struct iovec *iov = sc->iov;
    int k = 0;
    for (int i = 0; i < n; i++) {
        k += vx_set_iov(iov + k, d[i].header + udp_offset(&d[i]) + 8, VX_VXLAN_HLEN);  /* the kernel writes IP and UDP */
        k += vx_set_iov(iov + k, d[i].frame, d[i].frame_len);
        k += vx_set_iov(iov + k, d[i].payload, d[i].payload_len);
    }
    struct sockaddr_in6 sa;
    socklen_t sa_len = vx_to_sockaddr(&sa, &d[0].dst, datagram_dport(&d[0]));
    int v6 = local.family == VX_AF_INET6;
    union { char buf[CMSG_SPACE(sizeof(uint16_t)) + 2 * CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
    memset(&u, 0, sizeof(u));
    struct msghdr msg = { .msg_name = &sa, .msg_namelen = sa_len, .msg_iov = iov,
                          .msg_iovlen = (size_t)k, .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    uint16_t segment = (uint16_t)(VX_VXLAN_HLEN + datagram_len(&d[0]));
    memcpy(CMSG_DATA(cm), &segment, sizeof(segment));
    cm = CMSG_NXTHDR(&msg, cm);
    cm->cmsg_level = v6 ? IPPROTO_IPV6 : IPPROTO_IP;
    cm->cmsg_type = v6 ? IPV6_HOPLIMIT : IP_TTL;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    int ttl = d[0].header[v6 ? 7 : 8];
    memcpy(CMSG_DATA(cm), &ttl, sizeof(ttl));
    cm = CMSG_NXTHDR(&msg, cm);
    cm->cmsg_level = v6 ? IPPROTO_IPV6 : IPPROTO_IP;
    cm->cmsg_type = v6 ? IPV6_TCLASS : IP_TOS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    int tos = datagram_tos(&d[0]);
    memcpy(CMSG_DATA(cm), &tos, sizeof(tos));
    ssize_t r;
    do
        r = sendmsg(fd, &msg, 0);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : 0;
}

/* How many datagrams from d[0] can go as one UDP_SEGMENT send. */
static int gso_run(const struct vx_datagram *d, int n)
{
    uint32_t size = datagram_len(&d[0]), total = VX_VXLAN_HLEN + size;
    int j = 1;
    if (!datagram_dont_fragment(&d[0]) || vx_addr_is_multicast(&d[0].dst))
        return 1;                      /* GSO sockets always set DF, and know no multicast interface */
    while (j < n && j < VX_GSO_MAX_SEGS && d[j].net == d[0].net && vx_addr_equal(&d[j].dst, &d[0].dst)
           && datagram_sport(&d[j]) == datagram_sport(&d[0]) && datagram_tos(&d[j]) == datagram_tos(&d[0])
           && datagram_dont_fragment(&d[j]) && datagram_len(&d[j - 1]) == size
           && datagram_len(&d[j]) <= size && total + VX_VXLAN_HLEN + datagram_len(&d[j]) <= GSO_MAX_BYTES) {
        total += VX_VXLAN_HLEN + datagram_len(&d[j]);
        j++;
    }
    return j;
}

void vx_send_datagrams(struct vx_dataplane *dp, struct vx_scratch *sc, int raw_fd, struct vx_datagram *d, int n,
                       double now)
{
    int i = 0, pending = 0;            /* d[pending..i) wait for the raw path */
    while (i < n) {
        int run = __atomic_load_n(&dp->gso, __ATOMIC_RELAXED) ? gso_run(d + i, n - i) : 1;
        if (run < 2) {
            i++;
            continue;
        }
        send_raw(dp, sc, raw_fd, d + pending, i - pending);
        int r = send_gso(dp, sc, d + i, run, now);
        if (r == 0) {
            count_sent(dp, d + i, run);
        } else if (r == -ENOTSOCK || r == -EIO || r == -EINVAL || r == -EOPNOTSUPP || r == -ENOPROTOOPT) {
            /* EIO and the like: the kernel or the device will not segment, so stop trying.
             * EINVAL refuses this send's shape only, and ENOTSOCK means no socket for this
             * port: send this run raw.  (Segments too big for the path get EMSGSIZE, measured
             * here, and count as too_big below.) */
            if (r == -EIO || r == -EOPNOTSUPP || r == -ENOPROTOOPT)
                __atomic_store_n(&dp->gso, 0, __ATOMIC_RELAXED);
            send_raw(dp, sc, raw_fd, d + i, run);
        } else {
            count_dropped(dp, &d[i], run, send_reason(-r));
        }
        i += run;
        pending = i;
    }
    send_raw(dp, sc, raw_fd, d + pending, n - pending);
}

