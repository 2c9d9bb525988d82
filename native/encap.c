/* vxland fast path: encapsulation, TAP -> underlay.
 *
 * Per frame: the destination MAC picks one remote VTEP (a learned or static
 * entry) or the flood list; the source MAC becomes a sighting; the outer
 * headers (IPv4 or IPv6, UDP, VXLAN: RFC 7348 §5) are written in front, with
 * TOS, ECN (RFC 6040), DF and TTL by the network's policy.  The frame itself
 * is not copied: a vx_datagram points at it.
 */
#include "dataplane.h"

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


uint16_t vx_ip_checksum(const uint8_t *p, int n)
{
    uint32_t sum = 0;
    for (int i = 0; i < n; i += 2)
        sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

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
    vx_put16(u, sport);
    vx_put16(u + 2, c->dst_port);
    vx_put16(u + 4, (uint16_t)udp_len);
    vx_put16(u + 6, 0);
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
    return vx_addr_is_multicast(dst) ? c->group_ttl : c->ttl;
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
    vx_put16(h + 4, (uint16_t)udp_len);
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
    vx_put16(u + 6, check ? check : 0xffff);
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
    vx_put16(h + 2, (uint16_t)(20 + udp_len));
    vx_put16(h + 4, 0);                                /* id: the kernel fills it in */
    vx_put16(h + 6, df ? 0x4000 : 0);
    h[8] = outer_ttl(c, dst);
    h[9] = 17;
    vx_put16(h + 10, 0);
    memcpy(h + 12, c->local.ip, 4);
    memcpy(h + 16, dst->ip, 4);
    vx_put16(h + 10, vx_ip_checksum(h, 20));
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

/* Answers into the TAP, per network: at most VX_REPLY_RATE a second, in bursts of
 * VX_REPLY_BURST (the kernel limits its ICMP errors likewise: icmp_ratelimit). */
#define VX_REPLY_RATE 100.0
#define VX_REPLY_BURST 10.0

static void answer_too_big(struct vx_network *nw, int net, const struct vx_packet *p, double now,
                           struct vx_reply *replies, int *n_replies)
{
    if (!replies || *n_replies >= VX_MAX_REPLIES)
        return;
    double elapsed = now > nw->reply_stamp ? now - nw->reply_stamp : 0.0;
    double tokens = nw->reply_tokens + elapsed * VX_REPLY_RATE;
    nw->reply_tokens = tokens > VX_REPLY_BURST ? VX_REPLY_BURST : tokens;
    nw->reply_stamp = now;
    if (nw->reply_tokens < 1.0)
        return;
    /* the MTU the inner packet must keep to: the underlay's, less the outer and inner headers */
    uint32_t mtu = nw->cfg.underlay_mtu - (nw->cfg.local.family == VX_AF_INET6 ? VX_OUTER_V6 : VX_OUTER_V4)
                   - VX_ETH_HLEN;
    struct vx_reply *r = &replies[*n_replies];
    r->len = vx_too_big_reply(p, mtu, r->frame);
    if (!r->len)
        return;
    r->net = net;
    (*n_replies)++;
    nw->reply_tokens -= 1.0;
    nw->counters.too_big_replies++;
}

int vx_encap(struct vx_dataplane *dp, double now, struct vx_packet *in, int n,
             int *consumed, struct vx_datagram *out, int out_max,
             struct vx_sighting *sightings, int *n_sightings,
             struct vx_reply *replies, int *n_replies)
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
        /* An ARP request or neighbour solicitation for a known neighbour: answered, not flooded. */
        /* Who has which address behind the TAP, for EVPN's MAC+IP routes (ARP and ND are
         * never segmented: the whole frame is in data). */
        if (nw->cfg.snoop_tap && nw->cfg.learning && !p->payload)
            vx_neigh_snoop(dp, net, p->data, p->len, NULL, now, sightings, n_sightings);
        if (nw->cfg.neigh_suppress && vx_mac_is_multicast(dmac) && vx_neigh_answer(dp, net, p, replies, n_replies)) {
            if (!vx_mac_is_multicast(smac) && !vx_mac_is_zero(smac))
                vx_see_source(dp, net, smac, 1, NULL, now, sightings, n_sightings);
            continue;
        }
        /* Decide the destinations first, so a frame never goes out half-flooded. */
        const struct vx_addr *dsts = NULL;
        int n_dsts = 0, drop = 0;
        if (!nw->cfg.carry_vlan && vx_is_vlan_tagged(p->data))
            drop = VX_DROP_INNER_VLAN;
        else if (!vx_mac_is_multicast(dmac)) {
            struct vx_fdb_slot *s = vx_fdb_lookup(dp, net, dmac);
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
        uint32_t outer = (nw->cfg.local.family == VX_AF_INET6 ? VX_OUTER_V6 : VX_OUTER_V4) + p->len + p->payload_len;
        if (!drop && nw->cfg.underlay_mtu && outer > nw->cfg.underlay_mtu) {
            drop = VX_DROP_TOO_BIG;                 /* never fragmented (RFC 7348 §4.3): answered */
            answer_too_big(nw, net, p, now, replies, n_replies);
        }
        if (!drop && n_out + n_dsts > out_max) {
            if (n_out > 0)
                break;                              /* the caller sends, then calls again */
            drop = VX_DROP_UNDERLAY_BUSY;           /* out_max < VX_MAX_FLOOD: caller's bug */
        }
        if (!vx_mac_is_multicast(smac) && !vx_mac_is_zero(smac)) {
            int r = vx_see_source(dp, net, smac, 1, NULL, now, sightings, n_sightings);
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

