/* vxland fast path: ARP and ND suppression (the kernel's neigh_suppress).
 *
 * With a network's neigh_suppress on, an ARP request or an IPv6 neighbour solicitation
 * from the TAP whose target vxland knows is answered into the TAP -- an ARP reply or a
 * neighbour advertisement from the target's MAC -- instead of being flooded to every
 * remote VTEP.  What vxland knows comes from the control plane (vx_neigh_set), which
 * learns it from the ARP replies and requests and neighbour advertisements and
 * solicitations that remote VTEPs send (vx_neigh_snoop reports them as sightings that
 * carry an IP), and from EVPN MAC+IP routes.  A request that cannot be answered is
 * flooded as any other.  Gratuitous ARP, ARP probes and duplicate address detection
 * are never answered: they must reach the other hosts.
 */
#include "dataplane.h"

#include <errno.h>
#include <stdlib.h>

#define ARP_LEN 28
#define IPV6_HLEN 40
#define ND_LEN 24                               /* ICMPv6 header and target address */
#define VX_NEIGH_INTERVAL 1.0                   /* a known neighbour is reported again after this */
#define VX_NEIGH_MOVE_INTERVAL 0.1              /* one whose MAC changed, after this */

/* ---- the table ------------------------------------------------------------------ */

static uint32_t neigh_hash(const struct vx_dataplane *dp, int net, const struct vx_addr *ip)
{
    uint64_t words[3] = { (uint64_t)net << 8 | ip->family, 0, 0 };
    memcpy(&words[1], ip->ip, 8);
    memcpy(&words[2], ip->ip + 8, 8);
    return (uint32_t)vx_keyed_hash(dp, words, 3);
}

static int neigh_is(const struct vx_neigh_slot *s, int net, const struct vx_addr *ip)
{
    return s->used && s->net == net && s->family == ip->family && !memcmp(s->ip, ip->ip, 16);
}

static struct vx_neigh_slot *neigh_find(struct vx_dataplane *dp, int net, const struct vx_addr *ip)
{
    if (!dp->neigh)
        return NULL;
    for (uint32_t i = neigh_hash(dp, net, ip) & dp->neigh_mask;; i = (i + 1) & dp->neigh_mask) {
        if (!dp->neigh[i].used)
            return NULL;
        if (neigh_is(&dp->neigh[i], net, ip))
            return &dp->neigh[i];
    }
}

/* A new array of cap slots holding every used slot of the old one but network `drop`'s. */
static int neigh_rehash(struct vx_dataplane *dp, uint32_t cap, int drop)
{
    struct vx_neigh_slot *old = dp->neigh, *slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return -ENOMEM;
    uint32_t old_cap = old ? dp->neigh_mask + 1 : 0;
    dp->neigh = slots;
    dp->neigh_mask = cap - 1;
    dp->neigh_used = 0;
    for (uint32_t i = 0; i < old_cap; i++) {
        if (!old[i].used || old[i].net == drop)
            continue;
        struct vx_addr ip = { .family = old[i].family };
        memcpy(ip.ip, old[i].ip, 16);
        uint32_t j = neigh_hash(dp, old[i].net, &ip) & dp->neigh_mask;
        while (slots[j].used)
            j = (j + 1) & dp->neigh_mask;
        slots[j] = old[i];
        dp->neigh_used++;
    }
    free(old);
    return 0;
}

int vx_neigh_set(struct vx_dataplane *dp, int net, const struct vx_addr *ip, const uint8_t *mac)
{
    VX_GUARD(dp);
    if (net < 0 || net >= VX_MAX_NETS || (ip->family != VX_AF_INET && ip->family != VX_AF_INET6))
        return -EINVAL;
    struct vx_neigh_slot *s = neigh_find(dp, net, ip);
    if (!s) {
        if ((!dp->neigh || (dp->neigh_used + 1) * 2 > dp->neigh_mask + 1)
            && neigh_rehash(dp, dp->neigh ? (dp->neigh_mask + 1) * 2 : 256, -1) < 0)
            return -ENOMEM;
        uint32_t i = neigh_hash(dp, net, ip) & dp->neigh_mask;
        while (dp->neigh[i].used)
            i = (i + 1) & dp->neigh_mask;
        s = &dp->neigh[i];
        s->used = 1;
        s->net = (uint16_t)net;
        s->family = ip->family;
        memcpy(s->ip, ip->ip, 16);
        s->reported = -1e300;
        dp->neigh_used++;
    }
    memcpy(s->mac, mac, 6);
    return 0;
}

int vx_neigh_del(struct vx_dataplane *dp, int net, const struct vx_addr *ip)
{
    VX_GUARD(dp);
    struct vx_neigh_slot *s = neigh_find(dp, net, ip);
    if (!s)
        return -ENOENT;
    /* backward-shift deletion, as in the FDB table */
    uint32_t hole = (uint32_t)(s - dp->neigh);
    for (uint32_t j = (hole + 1) & dp->neigh_mask; dp->neigh[j].used; j = (j + 1) & dp->neigh_mask) {
        struct vx_addr key = { .family = dp->neigh[j].family };
        memcpy(key.ip, dp->neigh[j].ip, 16);
        uint32_t home = neigh_hash(dp, dp->neigh[j].net, &key) & dp->neigh_mask;
        int stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            dp->neigh[hole] = dp->neigh[j];
            hole = j;
        }
    }
    memset(&dp->neigh[hole], 0, sizeof(dp->neigh[hole]));
    dp->neigh_used--;
    return 0;
}

int vx_neigh_count(struct vx_dataplane *dp)
{
    VX_GUARD(dp);
    return (int)dp->neigh_used;
}

void vx_neigh_purge(struct vx_dataplane *dp, int net)
{
    if (dp->neigh)
        neigh_rehash(dp, dp->neigh_mask + 1, net);     /* out of memory: the entries stay, unused */
}

/* ---- what a frame says: requests from the TAP, and who has which address ------------ */

struct neigh_frame {
    int kind;                   /* 1: ARP request, 2: ARP reply, 3: neighbour solicitation,
                                 * 4: neighbour advertisement */
    struct vx_addr target;      /* requests: the address asked for */
    struct vx_addr sender;      /* the sender's address, if it has one */
    const uint8_t *sender_mac;  /* the MAC the frame says the sender address has */
};

static int arp_parse(const uint8_t *f, uint32_t len, struct neigh_frame *nf)
{
    const uint8_t *a = f + VX_ETH_HLEN;
    if (len < VX_ETH_HLEN + ARP_LEN || vx_get16(a) != 1 || vx_get16(a + 2) != 0x0800 || a[4] != 6 || a[5] != 4)
        return 0;
    uint16_t op = vx_get16(a + 6);
    if (op != 1 && op != 2)
        return 0;
    memset(nf, 0, sizeof(*nf));
    nf->kind = op == 1 ? 1 : 2;
    nf->sender.family = nf->target.family = VX_AF_INET;
    memcpy(nf->sender.ip, a + 14, 4);
    memcpy(nf->target.ip, a + 24, 4);
    nf->sender_mac = a + 8;
    return 1;
}

/* The target link-layer address option (type 2) of an advertisement, or the source one
 * (type 1) of a solicitation: NULL if absent or malformed. */
static const uint8_t *nd_option(const uint8_t *opt, uint32_t len, uint8_t type)
{
    while (len >= 8) {
        uint32_t olen = (uint32_t)opt[1] * 8;
        if (!olen || olen > len)
            return NULL;
        if (opt[0] == type && olen == 8)
            return opt + 2;
        opt += olen;
        len -= olen;
    }
    return NULL;
}

static int nd_parse(const uint8_t *f, uint32_t len, struct neigh_frame *nf)
{
    const uint8_t *ip = f + VX_ETH_HLEN, *icmp = ip + IPV6_HLEN;
    if (len < VX_ETH_HLEN + IPV6_HLEN + ND_LEN || (ip[0] >> 4) != 6 || ip[6] != 58 || ip[7] != 255)
        return 0;
    uint32_t icmp_len = vx_get16(ip + 4);
    if (icmp_len < ND_LEN || icmp_len > len - VX_ETH_HLEN - IPV6_HLEN || icmp[1] != 0
        || (icmp[0] != 135 && icmp[0] != 136) || icmp[8] == 0xff)       /* a multicast target: never */
        return 0;
    memset(nf, 0, sizeof(*nf));
    nf->kind = icmp[0] == 135 ? 3 : 4;
    nf->target.family = nf->sender.family = VX_AF_INET6;
    memcpy(nf->target.ip, icmp + 8, 16);
    if (nf->kind == 3) {
        memcpy(nf->sender.ip, ip + 8, 16);                             /* the solicitor's source */
        nf->sender_mac = nd_option(icmp + ND_LEN, icmp_len - ND_LEN, 1);
    } else {
        nf->sender = nf->target;                                       /* the advertised address */
        nf->sender_mac = nd_option(icmp + ND_LEN, icmp_len - ND_LEN, 2);
    }
    return 1;
}

static int neigh_parse(const uint8_t *f, uint32_t len, struct neigh_frame *nf)
{
    if (len < VX_ETH_HLEN)
        return 0;
    uint16_t type = vx_get16(f + 12);
    return type == 0x0806 ? arp_parse(f, len, nf) : type == 0x86dd ? nd_parse(f, len, nf) : 0;
}

static int addr_is_zero(const struct vx_addr *a)
{
    static const uint8_t zero[16];
    return !memcmp(a->ip, zero, a->family == VX_AF_INET6 ? 16 : 4);
}

/* A sender address worth knowing: unicast, not unspecified. */
static int addr_is_host(const struct vx_addr *a)
{
    if (addr_is_zero(a))
        return 0;
    if (a->family == VX_AF_INET6)
        return a->ip[0] != 0xff;
    return (a->ip[0] & 0xf0) != 0xe0 && !(a->ip[0] == 255 && a->ip[1] == 255 && a->ip[2] == 255 && a->ip[3] == 255);
}

/* ---- answering ------------------------------------------------------------------------ */

uint32_t vx_neigh_reply(const uint8_t *f, uint32_t len, const uint8_t *mac, uint8_t *out)
{
    struct neigh_frame nf;
    if (!neigh_parse(f, len, &nf) || (nf.kind != 1 && nf.kind != 3) || !addr_is_host(&nf.sender)
        || !memcmp(nf.sender.ip, nf.target.ip, 16))                    /* probes, gratuitous ARP, DAD */
        return 0;
    memcpy(out, f + 6, 6);                                             /* to the asker */
    memcpy(out + 6, mac, 6);                                           /* from the target */
    uint8_t *l3 = out + VX_ETH_HLEN;
    if (nf.kind == 1) {
        vx_put16(out + 12, 0x0806);
        memcpy(l3, f + VX_ETH_HLEN, 6);                                /* hardware and protocol types, lengths */
        vx_put16(l3 + 6, 2);                                           /* reply */
        memcpy(l3 + 8, mac, 6);
        memcpy(l3 + 14, nf.target.ip, 4);
        memcpy(l3 + 18, f + VX_ETH_HLEN + 8, 6);                       /* the asker's MAC and address */
        memcpy(l3 + 24, nf.sender.ip, 4);
        return VX_ETH_HLEN + ARP_LEN;
    }
    vx_put16(out + 12, 0x86dd);
    uint32_t icmp_len = ND_LEN + 8;                                    /* with a target link-layer option */
    memset(l3, 0, IPV6_HLEN + icmp_len);
    l3[0] = 0x60;
    vx_put16(l3 + 4, (uint16_t)icmp_len);
    l3[6] = 58;
    l3[7] = 255;
    memcpy(l3 + 8, nf.target.ip, 16);                                  /* from the target */
    memcpy(l3 + 24, nf.sender.ip, 16);                                 /* to the solicitor */
    uint8_t *icmp = l3 + IPV6_HLEN;
    icmp[0] = 136;                                                     /* neighbour advertisement */
    icmp[4] = 0x60;                                                    /* solicited, override */
    memcpy(icmp + 8, nf.target.ip, 16);
    icmp[24] = 2;                                                      /* target link-layer address */
    icmp[25] = 1;
    memcpy(icmp + 26, mac, 6);
    uint16_t sum = vx_checksum(l3 + 8, 32, 58 + icmp_len);
    vx_put16(icmp + 2, (uint16_t)~vx_checksum(icmp, icmp_len, sum));
    return VX_ETH_HLEN + IPV6_HLEN + icmp_len;
}

int vx_neigh_answer(struct vx_dataplane *dp, int net, const struct vx_packet *p,
                    struct vx_reply *replies, int *n_replies)
{
    struct neigh_frame nf;
    if (p->payload_len || !replies || *n_replies >= VX_MAX_REPLIES || !neigh_parse(p->data, p->len, &nf)
        || (nf.kind != 1 && nf.kind != 3))
        return 0;
    const struct vx_neigh_slot *s = neigh_find(dp, net, &nf.target);
    if (!s)
        return 0;
    struct vx_reply *r = &replies[*n_replies];
    r->len = vx_neigh_reply(p->data, p->len, s->mac, r->frame);
    if (!r->len)
        return 0;
    r->net = net;
    (*n_replies)++;
    dp->nets[net].counters.suppressed++;
    return 1;
}

/* ---- learning who has which address from what remote VTEPs (or, vtep NULL, the TAP) send */

/* May an address the table does not hold be reported?  Not when the control plane says its
 * table is full; else at most VX_NEIGH_RATE a second (VX_NEIGH_BURST at once), so that a host
 * that names random addresses cannot keep the control plane busy or crowd out sightings. */
static int new_address_allowed(struct vx_network *nw, double now)
{
    if (nw->neigh_full)
        return 0;
    double elapsed = now > nw->neigh_stamp ? now - nw->neigh_stamp : 0.0;
    nw->neigh_tokens += elapsed * VX_NEIGH_RATE;
    if (nw->neigh_tokens > VX_NEIGH_BURST)
        nw->neigh_tokens = VX_NEIGH_BURST;
    nw->neigh_stamp = now;
    if (nw->neigh_tokens < 1.0)
        return 0;
    nw->neigh_tokens -= 1.0;
    return 1;
}

void vx_neigh_snoop(struct vx_dataplane *dp, int net, const uint8_t *f, uint32_t len,
                    const struct vx_addr *vtep, double now, struct vx_sighting *sightings, int *n_sightings)
{
    struct neigh_frame nf;
    if (!neigh_parse(f, len, &nf) || !nf.sender_mac || !addr_is_host(&nf.sender)
        || memcmp(nf.sender_mac, f + 6, 6))              /* the frame's own source, or it proves nothing */
        return;
    struct vx_neigh_slot *s = neigh_find(dp, net, &nf.sender);
    if (s) {
        int same = !memcmp(s->mac, nf.sender_mac, 6);
        if (now - s->reported < (same ? VX_NEIGH_INTERVAL : VX_NEIGH_MOVE_INTERVAL))
            return;
    }
    if (*n_sightings >= VX_BATCH) {
        dp->sightings_missed++;
        return;
    }
    if (!s && !new_address_allowed(&dp->nets[net], now)) {
        dp->nets[net].counters.neigh_refused++;
        return;
    }
    struct vx_sighting *e = &sightings[(*n_sightings)++];
    e->net = net;
    memcpy(e->mac, nf.sender_mac, 6);
    e->local = vtep == NULL;
    if (vtep)
        e->vtep = *vtep;
    else
        memset(&e->vtep, 0, sizeof(e->vtep));
    e->ip = nf.sender;
    if (s)
        s->reported = now;
}
