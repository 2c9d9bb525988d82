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
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/uio.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#define GSO_MAX_BYTES 65507            /* one UDP datagram's payload: 65535 - IPv4 20 - UDP 8 */
#define CMSG_ROOM 64

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
    int n_nets;                        /* 1 + the highest network index in use */
    struct vx_counters underlay;       /* drops that belong to no network */
    struct vx_fdb_slot *slots;
    uint32_t mask;                     /* capacity - 1, a power of two */
    uint32_t used;
    int gso;                           /* send runs of equal datagrams with UDP_SEGMENT */
    int *gso_fds;                      /* per outer source port: a UDP socket; -1 none yet, -2 unusable */
    /* pump buffers, allocated once */
    uint8_t *rx_arena;                 /* VX_BATCH slots of VX_SLOT bytes */
    uint8_t *heads;                    /* VX_MAX_PKTS rewritten TSO segment headers */
    uint8_t *cmsgs;                    /* VX_BATCH control buffers (UDP_GRO) */
    struct vx_packet *packets;         /* VX_MAX_PKTS */
    struct vx_packet *accepted;        /* VX_MAX_PKTS: decapsulated, to coalesce */
    struct vx_tap_frame *tap_frames;   /* VX_MAX_PKTS */
    struct vx_datagram *datagrams;     /* VX_MAX_DGRAMS */
    struct mmsghdr *msgs;              /* VX_MAX_DGRAMS */
    struct iovec *iov;                 /* VX_MAX_DGRAMS * 3 */
    struct sockaddr_in6 *names;        /* VX_MAX_DGRAMS; IPv4 ones as sockaddr_in inside */
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
    dp->gso_fds = malloc(65536 * sizeof(int));
    dp->rx_arena = malloc((size_t)VX_BATCH * VX_SLOT);
    dp->heads = malloc((size_t)VX_MAX_PKTS * VX_SEG_HEAD);
    dp->cmsgs = calloc(VX_BATCH, CMSG_ROOM);
    dp->packets = calloc(VX_MAX_PKTS, sizeof(*dp->packets));
    dp->accepted = calloc(VX_MAX_PKTS, sizeof(*dp->accepted));
    dp->tap_frames = calloc(VX_MAX_PKTS, sizeof(*dp->tap_frames));
    dp->datagrams = calloc(VX_MAX_DGRAMS, sizeof(*dp->datagrams));
    dp->msgs = calloc(VX_MAX_DGRAMS, sizeof(*dp->msgs));
    dp->iov = calloc((size_t)VX_MAX_DGRAMS * 3, sizeof(*dp->iov));
    dp->names = calloc(VX_MAX_DGRAMS, sizeof(*dp->names));
    if (!dp->slots || !dp->gso_fds || !dp->rx_arena || !dp->heads || !dp->cmsgs || !dp->packets
        || !dp->accepted || !dp->tap_frames || !dp->datagrams || !dp->msgs || !dp->iov || !dp->names) {
        vx_dataplane_free(dp);
        return NULL;
    }
    for (int i = 0; i < 65536; i++)
        dp->gso_fds[i] = -1;
    return dp;
}

void vx_dataplane_free(struct vx_dataplane *dp)
{
    if (!dp)
        return;
    if (dp->gso_fds)
        for (int i = 0; i < 65536; i++)
            if (dp->gso_fds[i] >= 0)
                close(dp->gso_fds[i]);
    free(dp->gso_fds);
    free(dp->slots);
    free(dp->rx_arena);
    free(dp->heads);
    free(dp->cmsgs);
    free(dp->packets);
    free(dp->accepted);
    free(dp->tap_frames);
    free(dp->datagrams);
    free(dp->msgs);
    free(dp->iov);
    free(dp->names);
    free(dp);
}

void vx_set_gso(struct vx_dataplane *dp, int gso)
{
    dp->gso = gso ? 1 : 0;
}

int vx_gso_enabled(struct vx_dataplane *dp)
{
    return dp->gso;
}

int vx_network_set(struct vx_dataplane *dp, int net, const struct vx_network_config *cfg)
{
    if (net < 0 || net >= VX_MAX_NETS || cfg->src_port_min > cfg->src_port_max)
        return -EINVAL;
    dp->nets[net].cfg = *cfg;
    dp->nets[net].in_use = 1;
    if (net >= dp->n_nets)
        dp->n_nets = net + 1;
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
    while (dp->n_nets > 0 && !dp->nets[dp->n_nets - 1].in_use)
        dp->n_nets--;
}

const struct vx_counters *vx_counters_of(struct vx_dataplane *dp, int net)
{
    return (net >= 0 && net < VX_MAX_NETS) ? &dp->nets[net].counters : NULL;
}

const struct vx_counters *vx_underlay_counters(struct vx_dataplane *dp)
{
    return &dp->underlay;
}

/* Every received datagram asks this, those with unknown VNIs too: scan only the
 * slots that can be in use. */
static int find_network(struct vx_dataplane *dp, uint32_t vni)
{
    for (int i = 0; i < dp->n_nets; i++)
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

static int addr_is_multicast(const struct vx_addr *a)
{
    return a->family == VX_AF_INET6 ? a->ip[0] == 0xff : (a->ip[0] & 0xf0) == 0xe0;
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

/* RFC 7348 §6.1: inner 802.1Q tags are not carried unless configured. */
static int is_vlan_tagged(const uint8_t *f)
{
    return (f[12] == 0x81 && f[13] == 0x00) || (f[12] == 0x88 && f[13] == 0xa8);
}

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

/* The inner frame's IP TOS (IPv4) or traffic class (IPv6), and whether it
 * asks not to be fragmented (IPv4 DF; IPv6 never fragments on the path). */
static uint8_t inner_tos(const uint8_t *f, uint32_t len, int *dont_fragment)
{
    uint16_t type = len >= 14 ? (uint16_t)(f[12] << 8 | f[13]) : 0;
    *dont_fragment = 0;
    if (type == 0x0800 && len >= 14 + 20) {
        *dont_fragment = (f[20] & 0x40) != 0;
        return f[15];
    }
    if (type == 0x86dd && len >= 14 + 40) {
        *dont_fragment = 1;
        return (uint8_t)((f[14] & 0x0f) << 4 | f[15] >> 4);
    }
    return 0;
}

/* The outer TOS: DSCP configured or inherited; ECN copied from the inner packet,
 * CE becoming ECT(0) (RFC 6040 normal mode, as the kernel's INET_ECN_encapsulate). */
static uint8_t outer_tos(const struct vx_network_config *c, uint8_t inner)
{
    uint8_t dscp = (uint8_t)((c->tos_inherit ? inner : c->tos) & ~3);
    uint8_t ecn = inner & 3;
    return (uint8_t)(dscp | (ecn == 3 ? 2 : ecn));
}

/* The UDP header (checksum zero, for now) and the VXLAN header after it. */
static void write_udp_vxlan(uint8_t *u, const struct vx_network_config *c, uint16_t sport, uint32_t udp_len)
{
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
}

static uint8_t outer_ttl(const struct vx_network_config *c, const struct vx_addr *dst)
{
    return addr_is_multicast(dst) ? c->group_ttl : c->ttl;
}

/* Outer IPv6 + UDP + VXLAN headers.  IPv6 needs a UDP checksum (RFC 8200; RFC
 * 6935 allows zero only where both ends are configured for it), computed here
 * over the whole datagram; the kernel computes it instead on GSO sends. */
static void write_outer_v6(struct vx_datagram *d, const struct vx_network_config *c,
                           const struct vx_addr *dst, uint16_t sport, const struct vx_packet *p)
{
    uint8_t *h = d->header;
    uint32_t frame_len = p->len + p->payload_len;
    uint32_t udp_len = 8 + VX_VXLAN_HLEN + frame_len;
    int inner_df;
    uint8_t tc = outer_tos(c, inner_tos(p->data, p->len, &inner_df));
    h[0] = (uint8_t)(0x60 | tc >> 4);
    h[1] = (uint8_t)(tc << 4);
    h[2] = h[3] = 0;                                /* flow label */
    put16(h + 4, (uint16_t)udp_len);
    h[6] = 17;
    h[7] = outer_ttl(c, dst);
    memcpy(h + 8, c->local.ip, 16);
    memcpy(h + 24, dst->ip, 16);
    uint8_t *u = h + 40;
    write_udp_vxlan(u, c, sport, udp_len);
    uint32_t sum = vx_checksum(h + 8, 32, 17 + udp_len);      /* pseudo-header: addresses, length, UDP */
    sum = vx_checksum(u, 16, sum);
    sum = vx_checksum(p->data, p->len, sum);
    if (p->payload_len)
        sum = vx_checksum(p->payload, p->payload_len, sum);
    uint16_t check = (uint16_t)~sum;
    put16(u + 6, check ? check : 0xffff);
    d->header_len = VX_OUTER_V6;
}

/* Outer IPv4 + UDP + VXLAN headers for one frame (RFC 7348 §5).  The UDP
 * checksum is zero over IPv4.  Whatever DF says, vxland never fragments: the
 * raw socket refuses an outer packet larger than the MTU (counted too_big). */
static void write_outer_v4(struct vx_datagram *d, const struct vx_network_config *c,
                           const struct vx_addr *dst, uint16_t sport, const struct vx_packet *p)
{
    uint8_t *h = d->header;
    uint32_t frame_len = p->len + p->payload_len;
    uint32_t udp_len = 8 + VX_VXLAN_HLEN + frame_len;
    int inner_df;
    uint8_t tos = inner_tos(p->data, p->len, &inner_df);
    int df = c->df == VX_DF_SET || (c->df == VX_DF_INHERIT && inner_df);
    h[0] = 0x45;
    h[1] = outer_tos(c, tos);
    put16(h + 2, (uint16_t)(20 + udp_len));
    put16(h + 4, 0);                                /* id: the kernel fills it in */
    put16(h + 6, df ? 0x4000 : 0);
    h[8] = outer_ttl(c, dst);
    h[9] = 17;
    put16(h + 10, 0);
    memcpy(h + 12, c->local.ip, 4);
    memcpy(h + 16, dst->ip, 4);
    put16(h + 10, ip_checksum(h, 20));
    write_udp_vxlan(h + 20, c, sport, udp_len);
    d->header_len = VX_OUTER_V4;
}

static void add_datagram(struct vx_datagram *d, int net, const struct vx_network_config *c,
                         const struct vx_addr *dst, uint16_t sport, const struct vx_packet *p)
{
    if (c->local.family == VX_AF_INET6)
        write_outer_v6(d, c, dst, sport, p);
    else
        write_outer_v4(d, c, dst, sport, p);
    d->frame = p->data;
    d->frame_len = p->len;
    d->payload = p->payload;
    d->payload_len = p->payload_len;
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
        if (!nw->cfg.carry_vlan && is_vlan_tagged(p->data))
            drop = VX_DROP_INNER_VLAN;
        else if (!mac_is_multicast(dmac)) {
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

/* RFC 6040 §4.2, as the kernel's INET_ECN_decapsulate: an outer CE marks an
 * ECN-capable inner packet CE, and drops one that is not ECN-capable (-1). */
static int ecn_decapsulate(uint8_t outer, uint8_t *f, uint32_t len)
{
    if ((outer & 3) != 3)
        return 0;
    uint16_t type = (uint16_t)(f[12] << 8 | f[13]);
    if (type == 0x0800 && len >= 14 + 20) {
        uint8_t *ip = f + 14;
        if ((ip[1] & 3) == 0)
            return -1;
        ip[1] |= 3;
        uint32_t ihl = (uint32_t)(ip[0] & 15) * 4;
        if (ihl < 20 || 14 + ihl > len)
            return 0;
        ip[10] = ip[11] = 0;
        put16(ip + 10, ip_checksum(ip, (int)ihl));
        return 0;
    }
    if (type == 0x86dd && len >= 14 + 40) {
        uint8_t *ip = f + 14;
        if (((ip[1] >> 4) & 3) == 0)
            return -1;
        ip[1] |= 0x30;
        return 0;
    }
    return 0;                                   /* not IP: passed on, as the kernel does */
}

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
        uint8_t *f = p->data + VX_VXLAN_HLEN;
        uint32_t flen = p->len - VX_VXLAN_HLEN;
        int drop = 0;
        if (nw->cfg.drop_reserved && ((v[0] & ~0x08) || v[1] || v[2] || v[3] || v[7]))
            drop = VX_DROP_RESERVED_BITS;
        else if (flen < VX_ETH_HLEN)
            drop = VX_DROP_TRUNCATED_INNER;
        else if (!nw->cfg.carry_vlan && is_vlan_tagged(f))
            drop = VX_DROP_INNER_VLAN;
        else if (mac_is_multicast(f + 6) || mac_is_zero(f + 6))
            drop = VX_DROP_BAD_SOURCE_MAC;
        else if (!memcmp(f + 6, nw->cfg.own_mac, 6))
            drop = VX_DROP_OWN_SOURCE_MAC;
        else
            drop = see_source(dp, net, f + 6, 0, &p->peer, now, sightings, n_sightings);
        /* after learning, as in the kernel's vxlan_rcv */
        if (!drop && ecn_decapsulate(p->outer_tos, f, flen) < 0)
            drop = VX_DROP_ECN_NOT_ECT;
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

/* ---- sending: raw sendmmsg, or UDP_SEGMENT runs --------------------------------- */

/* A socket address for `a` and `port`; its length. */
static socklen_t to_sockaddr(struct sockaddr_in6 *sa, const struct vx_addr *a, uint16_t port)
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

static void from_sockaddr(struct vx_addr *a, const struct sockaddr_in6 *sa)
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
    for (int k = 0; k < n; k++) {
        struct vx_counters *c = &dp->nets[d[k].net].counters;
        c->tx_packets++;
        c->tx_bytes += datagram_len(&d[k]);
    }
}

static int send_reason(int err)
{
    return err == EMSGSIZE ? VX_DROP_TOO_BIG
         : (err == EAGAIN || err == ENOBUFS) ? VX_DROP_UNDERLAY_BUSY
         : VX_DROP_UNDERLAY_ERROR;
}

static int set_iov(struct iovec *iov, const void *base, size_t len)
{
    iov->iov_base = (void *)base;
    iov->iov_len = len;
    return len ? 1 : 0;
}

/* Whole outer packets (IPv4 header and all) on the raw socket, a sendmmsg per batch. */
static void send_raw(struct vx_dataplane *dp, int raw_fd, struct vx_datagram *d, int n)
{
    for (int i = 0; i < n; i++) {
        struct sockaddr_in6 *sa = &dp->names[i];
        socklen_t len = to_sockaddr(sa, &d[i].dst, 0);   /* raw: no port */
        struct iovec *iov = &dp->iov[3 * i];
        int k = set_iov(iov, d[i].header, d[i].header_len);
        k += set_iov(iov + k, d[i].frame, d[i].frame_len);
        k += set_iov(iov + k, d[i].payload, d[i].payload_len);
        memset(&dp->msgs[i], 0, sizeof(dp->msgs[i]));
        dp->msgs[i].msg_hdr.msg_name = sa;
        dp->msgs[i].msg_hdr.msg_namelen = len;
        dp->msgs[i].msg_hdr.msg_iov = iov;
        dp->msgs[i].msg_hdr.msg_iovlen = (size_t)k;
    }
    int i = 0;
    while (i < n) {
        int r = sendmmsg(raw_fd, &dp->msgs[i], (unsigned)(n - i), 0);
        if (r > 0) {
            count_sent(dp, d + i, r);
            i += r;
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else {
            /* the first datagram failed: count it and go on with the rest */
            dp->nets[d[i].net].counters.drops[send_reason(errno)]++;
            i++;
        }
    }
}

/* A UDP socket bound to this outer source port, for UDP_SEGMENT sends (raw
 * sockets cannot do GSO).  It never reads: a filter drops all that arrives.
 * -2 when the port cannot be had (someone else holds it): use the raw path. */
static int gso_socket(struct vx_dataplane *dp, const struct vx_network_config *c, uint16_t sport)
{
    int fd = dp->gso_fds[sport];
    if (fd >= 0 || fd == -2)
        return fd;
    int v6 = c->local.family == VX_AF_INET6;
    fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
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
    socklen_t len = to_sockaddr(&sa, &c->local, sport);
    if (bind(fd, (struct sockaddr *)&sa, len) < 0) {
        close(fd);
        dp->gso_fds[sport] = -2;
        return -2;
    }
    dp->gso_fds[sport] = fd;
    return fd;
}

/* n datagrams of one network, destination and source port, all of d[0]'s size
 * but the last, in one sendmsg with UDP_SEGMENT.  0, or -errno. */
static int send_gso(struct vx_dataplane *dp, struct vx_datagram *d, int n)
{
    const struct vx_network_config *c = &dp->nets[d[0].net].cfg;
    int fd = gso_socket(dp, c, datagram_sport(&d[0]));
    if (fd < 0)
        return -ENOTSOCK;
    struct iovec *iov = dp->iov;
    int k = 0;
    for (int i = 0; i < n; i++) {
        k += set_iov(iov + k, d[i].header + udp_offset(&d[i]) + 8, VX_VXLAN_HLEN);  /* the kernel writes IP and UDP */
        k += set_iov(iov + k, d[i].frame, d[i].frame_len);
        k += set_iov(iov + k, d[i].payload, d[i].payload_len);
    }
    struct sockaddr_in6 sa;
    socklen_t sa_len = to_sockaddr(&sa, &d[0].dst, c->dst_port);
    int v6 = c->local.family == VX_AF_INET6;
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
    if (!datagram_dont_fragment(&d[0]) || addr_is_multicast(&d[0].dst))
        return 1;                      /* GSO sockets always set DF, and know no multicast interface */
    while (j < n && j < VX_GSO_MAX_SEGS && d[j].net == d[0].net && addr_equal(&d[j].dst, &d[0].dst)
           && datagram_sport(&d[j]) == datagram_sport(&d[0]) && datagram_tos(&d[j]) == datagram_tos(&d[0])
           && datagram_dont_fragment(&d[j]) && datagram_len(&d[j - 1]) == size
           && datagram_len(&d[j]) <= size && total + VX_VXLAN_HLEN + datagram_len(&d[j]) <= GSO_MAX_BYTES) {
        total += VX_VXLAN_HLEN + datagram_len(&d[j]);
        j++;
    }
    return j;
}

static void send_datagrams(struct vx_dataplane *dp, int raw_fd, struct vx_datagram *d, int n)
{
    int i = 0, pending = 0;            /* d[pending..i) wait for the raw path */
    while (i < n) {
        int run = dp->gso ? gso_run(d + i, n - i) : 1;
        if (run < 2) {
            i++;
            continue;
        }
        send_raw(dp, raw_fd, d + pending, i - pending);
        int r = send_gso(dp, d + i, run);
        if (r == 0) {
            count_sent(dp, d + i, run);
        } else if (r == -ENOTSOCK || r == -EIO || r == -EINVAL || r == -EOPNOTSUPP || r == -ENOPROTOOPT) {
            /* EIO and the like: the kernel or the device will not segment, so stop trying.
             * EINVAL refuses this send's shape only, and ENOTSOCK means no socket for this
             * port: send this run raw.  (Segments too big for the path get EMSGSIZE, measured
             * here, and count as too_big below.) */
            if (r == -EIO || r == -EOPNOTSUPP || r == -ENOPROTOOPT)
                dp->gso = 0;
            send_raw(dp, raw_fd, d + i, run);
        } else {
            dp->nets[d[i].net].counters.drops[send_reason(-r)] += (uint64_t)run;
        }
        i += run;
        pending = i;
    }
    send_raw(dp, raw_fd, d + pending, n - pending);
}

/* ---- the pumps: syscalls around the batch steps ----------------------------- */

static void encap_and_send(struct vx_dataplane *dp, int raw_fd, double now, int n,
                           struct vx_pump_result *res)
{
    int done = 0;
    while (done < n) {
        int consumed = 0;
        int m = vx_encap(dp, now, dp->packets + done, n - done, &consumed,
                         dp->datagrams, VX_MAX_DGRAMS, res->sightings, &res->n_sightings);
        send_datagrams(dp, raw_fd, dp->datagrams, m);
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
    int k = set_iov(&iov[0], &t->vh, VX_VNET_HLEN);
    if (t->count == 1) {
        k += set_iov(&iov[k], in[t->first].data, in[t->first].len);
    } else {
        k += set_iov(&iov[k], t->head, t->hdr_len);
        for (int i = t->first; i < t->first + t->count; i++)
            k += set_iov(&iov[k], in[i].data + t->hdr_len, in[i].len - t->hdr_len);
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
            from_sockaddr(&p->peer, &dp->names[i]);
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
