/* vxland fast path: the per-packet work, a batch per call.
 *
 * Read in the order a frame travels: the forwarding-table copy, the flow hash
 * that picks the outer source port, encapsulation (TAP -> underlay), then
 * decapsulation (underlay -> TAP), then the two pumps that do the syscalls.
 * The semantics are held equal to vxland/datapath.py (the pure-Python
 * reference) by tests/test_differential.py.
 */
#define _GNU_SOURCE
#include "fastpath.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

/* A learned MAC is reported again only after this many seconds. */
#define VX_SIGHTING_INTERVAL 1.0

struct vx_fdb_slot {
    uint64_t key;              /* net << 48 | mac; 0 = empty (net 0 with a zero MAC is never stored) */
    uint8_t local;
    uint8_t is_static;
    struct vx_addr vtep;
    double reported;           /* when this MAC was last reported as a sighting */
};

struct vx_network {
    int in_use;
    int full;                          /* no new MACs are reported */
    struct vx_network_config cfg;
    struct vx_counters counters;
    struct vx_addr flood[VX_MAX_FLOOD];
    int n_flood;
};

struct vx_dataplane {
    struct vx_network nets[VX_MAX_NETS];
    struct vx_counters underlay;       /* drops that belong to no network */
    struct vx_fdb_slot *slots;
    uint32_t mask;                     /* capacity - 1, a power of two */
    uint32_t used;
    /* pump buffers, allocated once */
    uint8_t *rx_arena;                 /* VX_BATCH slots of VX_SLOT bytes */
    struct vx_packet packets[VX_BATCH];
    struct vx_datagram datagrams[VX_MAX_FLOOD];   /* one frame may flood to every remote */
    struct mmsghdr msgs[VX_MAX_FLOOD];
    struct iovec iov[VX_MAX_FLOOD * 2];
    struct sockaddr_in names[VX_MAX_FLOOD];
};

/* ---- the forwarding table copy: open addressing, linear probing ---------- */

static uint64_t fdb_key(int net, const uint8_t *mac)
{
    uint64_t k = (uint64_t)(net + 1) << 48;   /* +1 keeps every real key non-zero */
    for (int i = 0; i < 6; i++)
        k |= (uint64_t)mac[i] << (8 * (5 - i));
    return k;
}

static uint32_t fdb_hash(uint64_t key)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    return (uint32_t)key;
}

static struct vx_fdb_slot *fdb_find(struct vx_dataplane *dp, uint64_t key)
{
    for (uint32_t i = fdb_hash(key) & dp->mask;; i = (i + 1) & dp->mask) {
        if (dp->slots[i].key == key)
            return &dp->slots[i];
        if (dp->slots[i].key == 0)
            return NULL;
    }
}

static int fdb_grow(struct vx_dataplane *dp)
{
    uint32_t old_cap = dp->mask + 1, cap = old_cap * 2;
    struct vx_fdb_slot *old = dp->slots;
    struct vx_fdb_slot *slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return -ENOMEM;
    dp->slots = slots;
    dp->mask = cap - 1;
    for (uint32_t i = 0; i < old_cap; i++) {
        if (!old[i].key)
            continue;
        uint32_t j = fdb_hash(old[i].key) & dp->mask;
        while (slots[j].key)
            j = (j + 1) & dp->mask;
        slots[j] = old[i];
    }
    free(old);
    return 0;
}

int vx_fdb_set(struct vx_dataplane *dp, int net, const uint8_t *mac, int local,
               const struct vx_addr *vtep, int is_static)
{
    if (net < 0 || net >= VX_MAX_NETS)
        return -EINVAL;
    uint64_t key = fdb_key(net, mac);
    struct vx_fdb_slot *s = fdb_find(dp, key);
    if (!s) {
        if ((dp->used + 1) * 2 > dp->mask + 1 && fdb_grow(dp) < 0)
            return -ENOMEM;
        uint32_t i = fdb_hash(key) & dp->mask;
        while (dp->slots[i].key)
            i = (i + 1) & dp->mask;
        s = &dp->slots[i];
        s->key = key;
        s->reported = -1e300;
        dp->used++;
    }
    s->local = local ? 1 : 0;
    s->is_static = is_static ? 1 : 0;
    if (vtep && !local)
        s->vtep = *vtep;
    else
        memset(&s->vtep, 0, sizeof(s->vtep));
    return 0;
}

int vx_fdb_del(struct vx_dataplane *dp, int net, const uint8_t *mac)
{
    if (net < 0 || net >= VX_MAX_NETS)
        return -EINVAL;
    struct vx_fdb_slot *s = fdb_find(dp, fdb_key(net, mac));
    if (!s)
        return -ENOENT;
    /* Backward-shift deletion keeps every probe chain unbroken without tombstones. */
    uint32_t hole = (uint32_t)(s - dp->slots);
    for (uint32_t j = (hole + 1) & dp->mask; dp->slots[j].key; j = (j + 1) & dp->mask) {
        uint32_t home = fdb_hash(dp->slots[j].key) & dp->mask;
        /* move j into the hole unless its home lies cyclically in (hole, j] */
        int stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            dp->slots[hole] = dp->slots[j];
            hole = j;
        }
    }
    memset(&dp->slots[hole], 0, sizeof(dp->slots[hole]));
    dp->used--;
    return 0;
}

int vx_fdb_count(struct vx_dataplane *dp)
{
    return (int)dp->used;
}

int vx_flood_set(struct vx_dataplane *dp, int net, const struct vx_addr *remotes, int n)
{
    if (net < 0 || net >= VX_MAX_NETS || n < 0 || n > VX_MAX_FLOOD)
        return -EINVAL;
    memcpy(dp->nets[net].flood, remotes, sizeof(*remotes) * (size_t)n);
    dp->nets[net].n_flood = n;
    return 0;
}

/* ---- networks ------------------------------------------------------------- */

struct vx_dataplane *vx_dataplane_new(void)
{
    struct vx_dataplane *dp = calloc(1, sizeof(*dp));
    if (!dp)
        return NULL;
    dp->mask = 1023;
    dp->slots = calloc(dp->mask + 1, sizeof(*dp->slots));
    dp->rx_arena = malloc((size_t)VX_BATCH * VX_SLOT);
    if (!dp->slots || !dp->rx_arena) {
        vx_dataplane_free(dp);
        return NULL;
    }
    return dp;
}

void vx_dataplane_free(struct vx_dataplane *dp)
{
    if (!dp)
        return;
    free(dp->slots);
    free(dp->rx_arena);
    free(dp);
}

int vx_network_set(struct vx_dataplane *dp, int net, const struct vx_network_config *cfg)
{
    if (net < 0 || net >= VX_MAX_NETS || cfg->src_port_min > cfg->src_port_max)
        return -EINVAL;
    dp->nets[net].cfg = *cfg;
    dp->nets[net].in_use = 1;
    return 0;
}

int vx_network_set_full(struct vx_dataplane *dp, int net, int full)
{
    if (net < 0 || net >= VX_MAX_NETS || !dp->nets[net].in_use)
        return -EINVAL;
    dp->nets[net].full = full ? 1 : 0;
    return 0;
}

void vx_network_del(struct vx_dataplane *dp, int net)
{
    if (net < 0 || net >= VX_MAX_NETS)
        return;
    memset(&dp->nets[net], 0, sizeof(dp->nets[net]));
}

const struct vx_counters *vx_counters_of(struct vx_dataplane *dp, int net)
{
    return (net >= 0 && net < VX_MAX_NETS) ? &dp->nets[net].counters : NULL;
}

const struct vx_counters *vx_underlay_counters(struct vx_dataplane *dp)
{
    return &dp->underlay;
}

static int find_network(struct vx_dataplane *dp, uint32_t vni)
{
    for (int i = 0; i < VX_MAX_NETS; i++)
        if (dp->nets[i].in_use && dp->nets[i].cfg.vni == vni)
            return i;
    return -1;
}

/* ---- addresses and learning ------------------------------------------------ */

static int mac_is_multicast(const uint8_t *mac) { return mac[0] & 1; }

static int mac_is_zero(const uint8_t *mac)
{
    return !(mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]);
}

static int addr_equal(const struct vx_addr *a, const struct vx_addr *b)
{
    return a->family == b->family && memcmp(a->ip, b->ip, 16) == 0;
}

/* A frame's source MAC seen behind `local` or `vtep`.  Returns 0 to pass the
 * frame on, or a drop reason.  Emits a sighting when the control plane should
 * hear of the MAC: new, moved, or not reported for VX_SIGHTING_INTERVAL. */
static int see_source(struct vx_dataplane *dp, int net, const uint8_t *mac, int local,
                      const struct vx_addr *vtep, double now,
                      struct vx_sighting *sightings, int *n_sightings)
{
    struct vx_fdb_slot *s = fdb_find(dp, fdb_key(net, mac));
    if (s) {
        int same = s->local == local && (local || addr_equal(&s->vtep, vtep));
        if (s->is_static)
            return same ? 0 : VX_DROP_STATIC_CONFLICT;
        if (same && now - s->reported < VX_SIGHTING_INTERVAL)
            return 0;
    }
    if (!dp->nets[net].cfg.learning || (!s && dp->nets[net].full))
        return 0;
    /* one sighting per MAC per batch is enough */
    for (int i = *n_sightings - 1; i >= 0 && i >= *n_sightings - 8; i--)
        if (sightings[i].net == net && !memcmp(sightings[i].mac, mac, 6) &&
            sightings[i].local == local && (local || addr_equal(&sightings[i].vtep, vtep)))
            return 0;
    if (*n_sightings >= VX_BATCH)
        return 0;
    struct vx_sighting *e = &sightings[(*n_sightings)++];
    e->net = net;
    memcpy(e->mac, mac, 6);
    e->local = (uint8_t)local;
    if (local)
        memset(&e->vtep, 0, sizeof(e->vtep));
    else
        e->vtep = *vtep;
    if (s)
        s->reported = now;
    return 0;
}

/* ---- the flow hash: FNV-1a over L2 addresses, then the L3/L4 flow ---------- */

static uint32_t fnv(uint32_t h, const uint8_t *p, uint32_t n)
{
    while (n--) {
        h ^= *p++;
        h *= 16777619u;
    }
    return h;
}

uint16_t vx_source_port(const uint8_t *f, uint32_t len, uint16_t lo, uint16_t hi)
{
    uint32_t h = 2166136261u;
    if (len < VX_ETH_HLEN)
        return lo;
    h = fnv(h, f, 14);                              /* dst, src, ethertype */
    uint16_t type = (uint16_t)(f[12] << 8 | f[13]);
    const uint8_t *l3 = f + 14;
    uint32_t l3len = len - 14;
    if (type == 0x0800 && l3len >= 20 && (l3[0] >> 4) == 4) {
        uint32_t ihl = (uint32_t)(l3[0] & 15) * 4;
        if (ihl >= 20 && l3len >= ihl) {
            h = fnv(h, l3 + 12, 8);                 /* source, destination */
            h = fnv(h, l3 + 9, 1);                  /* protocol */
            int frag = ((l3[6] << 8 | l3[7]) & 0x3fff) != 0;
            uint8_t proto = l3[9];
            if (!frag && (proto == 6 || proto == 17 || proto == 132) && l3len >= ihl + 4)
                h = fnv(h, l3 + ihl, 4);            /* ports */
        }
    } else if (type == 0x86dd && l3len >= 40) {
        h = fnv(h, l3 + 8, 32);
        h = fnv(h, l3 + 6, 1);                      /* next header */
        uint8_t nh = l3[6];
        if ((nh == 6 || nh == 17 || nh == 132) && l3len >= 44)
            h = fnv(h, l3 + 40, 4);
    }
    return (uint16_t)(lo + (((uint64_t)h * (uint32_t)(hi - lo + 1)) >> 32));
}

/* ---- encapsulation: TAP -> underlay ---------------------------------------- */

static uint16_t ip_checksum(const uint8_t *p, int n)
{
    uint32_t sum = 0;
    for (int i = 0; i < n; i += 2)
        sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

/* Outer IPv4 + UDP + VXLAN headers for one frame (RFC 7348 §5).  DF is set:
 * a VTEP must not fragment (§4.3).  The UDP checksum is zero over IPv4. */
static void write_outer_v4(struct vx_datagram *d, const struct vx_network_config *c,
                           const struct vx_addr *dst, uint16_t sport, uint32_t frame_len)
{
    uint8_t *h = d->header;
    uint32_t udp_len = 8 + VX_VXLAN_HLEN + frame_len;
    h[0] = 0x45;
    h[1] = 0;                                       /* TOS */
    put16(h + 2, (uint16_t)(20 + udp_len));
    put16(h + 4, 0);                                /* id: the kernel fills it in */
    put16(h + 6, 0x4000);                           /* DF */
    h[8] = c->ttl;
    h[9] = 17;
    put16(h + 10, 0);
    memcpy(h + 12, c->local.ip, 4);
    memcpy(h + 16, dst->ip, 4);
    put16(h + 10, ip_checksum(h, 20));
    uint8_t *u = h + 20;
    put16(u, sport);
    put16(u + 2, c->dst_port);
    put16(u + 4, (uint16_t)udp_len);
    put16(u + 6, 0);
    uint8_t *v = u + 8;
    v[0] = 0x08;                                    /* I flag */
    v[1] = v[2] = v[3] = 0;
    v[4] = (uint8_t)(c->vni >> 16);
    v[5] = (uint8_t)(c->vni >> 8);
    v[6] = (uint8_t)c->vni;
    v[7] = 0;
    d->header_len = VX_OUTER_V4;
}

static void add_datagram(struct vx_datagram *d, int net, const struct vx_network_config *c,
                         const struct vx_addr *dst, uint16_t sport, const struct vx_packet *p)
{
    write_outer_v4(d, c, dst, sport, p->len);
    d->frame = p->data;
    d->frame_len = p->len;
    d->net = net;
    d->dst = *dst;
}

int vx_encap(struct vx_dataplane *dp, double now, struct vx_packet *in, int n,
             int *consumed, struct vx_datagram *out, int out_max,
             struct vx_sighting *sightings, int *n_sightings)
{
    int n_out = 0, i;
    for (i = 0; i < n; i++) {
        struct vx_packet *p = &in[i];
        int net = p->net;
        struct vx_network *nw = &dp->nets[net];
        if (p->len < VX_ETH_HLEN) {
            nw->counters.drops[VX_DROP_RUNT_FRAME]++;
            continue;
        }
        const uint8_t *dmac = p->data, *smac = p->data + 6;
        /* Decide the destinations first, so a frame never goes out half-flooded. */
        const struct vx_addr *dsts = NULL;
        int n_dsts = 0, drop = 0;
        if (!mac_is_multicast(dmac)) {
            struct vx_fdb_slot *s = fdb_find(dp, fdb_key(net, dmac));
            if (s && s->local)
                drop = VX_DROP_LOCAL_DESTINATION;
            else if (s) {
                dsts = &s->vtep;
                n_dsts = 1;
            }
        }
        if (!drop && !dsts) {
            dsts = nw->flood;
            n_dsts = nw->n_flood;
            if (!n_dsts)
                drop = VX_DROP_NO_REMOTE;
        }
        if (!drop && n_out + n_dsts > out_max) {
            if (n_out > 0)
                break;                              /* the caller sends, then calls again */
            drop = VX_DROP_UNDERLAY_BUSY;           /* out_max < VX_MAX_FLOOD: caller's bug */
        }
        if (!mac_is_multicast(smac) && !mac_is_zero(smac)) {
            int r = see_source(dp, net, smac, 1, NULL, now, sightings, n_sightings);
            if (r && !drop)
                drop = r;
        }
        if (drop) {
            nw->counters.drops[drop]++;
            continue;
        }
        uint16_t sport = vx_source_port(p->data, p->len, nw->cfg.src_port_min, nw->cfg.src_port_max);
        for (int k = 0; k < n_dsts; k++)
            add_datagram(&out[n_out++], net, &nw->cfg, &dsts[k], sport, p);
    }
    *consumed = i;
    return n_out;
}

/* ---- decapsulation: underlay -> TAP ---------------------------------------- */

int vx_decap(struct vx_dataplane *dp, double now, struct vx_packet *in, int n,
             struct vx_sighting *sightings, int *n_sightings)
{
    int accepted = 0;
    for (int i = 0; i < n; i++) {
        struct vx_packet *p = &in[i];
        p->net = -1;
        if (p->len < VX_VXLAN_HLEN) {
            dp->underlay.drops[VX_DROP_SHORT_DATAGRAM]++;
            continue;
        }
        const uint8_t *v = p->data;
        /* Reserved bits are ignored on receipt, as RFC 7348 §5 says (the
         * kernel drops them instead). */
        if (!(v[0] & 0x08)) {
            dp->underlay.drops[VX_DROP_NO_I_FLAG]++;
            continue;
        }
        uint32_t vni = (uint32_t)v[4] << 16 | (uint32_t)v[5] << 8 | v[6];
        int net = find_network(dp, vni);
        if (net < 0) {
            dp->underlay.drops[VX_DROP_UNKNOWN_VNI]++;
            continue;
        }
        struct vx_network *nw = &dp->nets[net];
        const uint8_t *f = v + VX_VXLAN_HLEN;
        uint32_t flen = p->len - VX_VXLAN_HLEN;
        int drop = 0;
        if (flen < VX_ETH_HLEN)
            drop = VX_DROP_TRUNCATED_INNER;
        else if (mac_is_multicast(f + 6) || mac_is_zero(f + 6))
            drop = VX_DROP_BAD_SOURCE_MAC;
        else if (!memcmp(f + 6, nw->cfg.own_mac, 6))
            drop = VX_DROP_OWN_SOURCE_MAC;
        else
            drop = see_source(dp, net, f + 6, 0, &p->peer, now, sightings, n_sightings);
        if (drop) {
            nw->counters.drops[drop]++;
            continue;
        }
        p->net = net;
        p->data += VX_VXLAN_HLEN;
        p->len = flen;
        nw->counters.rx_packets++;
        nw->counters.rx_bytes += flen;
        accepted++;
    }
    return accepted;
}

/* ---- the pumps: syscalls around the batch steps ----------------------------- */

static int send_datagrams(struct vx_dataplane *dp, int raw_fd, struct vx_datagram *d, int n)
{
    for (int i = 0; i < n; i++) {
        struct sockaddr_in *sa = &dp->names[i];
        memset(sa, 0, sizeof(*sa));
        sa->sin_family = AF_INET;
        memcpy(&sa->sin_addr, d[i].dst.ip, 4);
        dp->iov[2 * i].iov_base = d[i].header;
        dp->iov[2 * i].iov_len = d[i].header_len;
        dp->iov[2 * i + 1].iov_base = (void *)d[i].frame;
        dp->iov[2 * i + 1].iov_len = d[i].frame_len;
        memset(&dp->msgs[i], 0, sizeof(dp->msgs[i]));
        dp->msgs[i].msg_hdr.msg_name = sa;
        dp->msgs[i].msg_hdr.msg_namelen = sizeof(*sa);
        dp->msgs[i].msg_hdr.msg_iov = &dp->iov[2 * i];
        dp->msgs[i].msg_hdr.msg_iovlen = 2;
    }
    int i = 0;
    while (i < n) {
        int r = sendmmsg(raw_fd, &dp->msgs[i], (unsigned)(n - i), 0);
        if (r > 0) {
            for (int k = i; k < i + r; k++) {
                struct vx_counters *c = &dp->nets[d[k].net].counters;
                c->tx_packets++;
                c->tx_bytes += d[k].frame_len;
            }
            i += r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        /* The first datagram failed: count it and go on with the rest. */
        int reason = errno == EMSGSIZE ? VX_DROP_TOO_BIG
                   : (errno == EAGAIN || errno == ENOBUFS) ? VX_DROP_UNDERLAY_BUSY
                   : VX_DROP_UNDERLAY_ERROR;
        dp->nets[d[i].net].counters.drops[reason]++;
        i++;
    }
    return n;
}

int vx_pump_tap(struct vx_dataplane *dp, int net, int raw_fd, double now,
                struct vx_pump_result *res)
{
    res->packets = res->n_sightings = res->again = res->error = 0;
    if (net < 0 || net >= VX_MAX_NETS || !dp->nets[net].in_use)
        return -EINVAL;
    int fd = dp->nets[net].cfg.tap_fd, n = 0;
    while (n < VX_BATCH) {
        ssize_t r = read(fd, dp->rx_arena + (size_t)n * VX_SLOT, VX_SLOT);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN)
                res->error = errno;
            break;
        }
        dp->packets[n].data = dp->rx_arena + (size_t)n * VX_SLOT;
        dp->packets[n].len = (uint32_t)r;
        dp->packets[n].net = net;
        n++;
    }
    res->packets = n;
    res->again = n == VX_BATCH;
    int done = 0;
    while (done < n) {
        int consumed = 0;
        int m = vx_encap(dp, now, dp->packets + done, n - done, &consumed,
                         dp->datagrams, VX_MAX_FLOOD, res->sightings, &res->n_sightings);
        send_datagrams(dp, raw_fd, dp->datagrams, m);
        done += consumed;
    }
    return n;
}

int vx_pump_underlay(struct vx_dataplane *dp, int udp_fd, double now,
                     struct vx_pump_result *res)
{
    res->packets = res->n_sightings = res->again = res->error = 0;
    for (int i = 0; i < VX_BATCH; i++) {
        dp->iov[i].iov_base = dp->rx_arena + (size_t)i * VX_SLOT;
        dp->iov[i].iov_len = VX_SLOT;
        memset(&dp->msgs[i], 0, sizeof(dp->msgs[i]));
        dp->msgs[i].msg_hdr.msg_name = &dp->names[i];
        dp->msgs[i].msg_hdr.msg_namelen = sizeof(dp->names[i]);
        dp->msgs[i].msg_hdr.msg_iov = &dp->iov[i];
        dp->msgs[i].msg_hdr.msg_iovlen = 1;
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
    for (int i = 0; i < n; i++) {
        struct vx_packet *p = &dp->packets[i];
        p->data = dp->iov[i].iov_base;
        p->len = dp->msgs[i].msg_len;
        memset(&p->peer, 0, sizeof(p->peer));
        p->peer.family = VX_AF_INET;
        memcpy(p->peer.ip, &dp->names[i].sin_addr, 4);
    }
    res->packets = n;
    res->again = n == VX_BATCH;
    vx_decap(dp, now, dp->packets, n, res->sightings, &res->n_sightings);
    for (int i = 0; i < n; i++) {
        struct vx_packet *p = &dp->packets[i];
        if (p->net < 0)
            continue;
        struct vx_network *nw = &dp->nets[p->net];
        ssize_t r;
        do
            r = write(nw->cfg.tap_fd, p->data, p->len);
        while (r < 0 && errno == EINTR);
        if (r < 0) {
            /* vx_decap counted it as received; move it to the drops */
            nw->counters.rx_packets--;
            nw->counters.rx_bytes -= p->len;
            nw->counters.drops[errno == EAGAIN ? VX_DROP_TAP_BUSY : VX_DROP_TAP_ERROR]++;
        }
    }
    return n;
}
