/* vxland offloads: TSO super-frames from the TAP split into wire segments, and
 * wire segments coalesced back into TCP super-frames for the TAP.
 *
 * A TAP opened with IFF_VNET_HDR and TUNSETOFFLOAD(CSUM|TSO4|TSO6) hands us
 * frames of up to 64 KiB behind a struct virtio_net_hdr; the wire carries
 * MSS-sized segments.  Splitting follows what the kernel's tcp_gso_segment
 * does (and wireguard-go's tcpTSO): per segment, IPv4 id + i, total length and
 * header checksum, or the IPv6 payload length; TCP sequence + i * gso_size,
 * FIN and PSH only on the last segment, CWR only on the first, and a full TCP
 * checksum.  Coalescing is the receive side's GRO, restricted to consecutive
 * packets: same flow, in order, same options, full-sized segments but the
 * last, and every checksum verified first, so a corrupt segment is never
 * handed on under a fresh checksum.
 *
 * One exception: a segment whose checksum a kernel VTEP left in the partial form
 * (vx_partial_checksum) has no checksum to verify; the kernel trusts such a packet
 * from the virtual link it came over, and so do we: it is written to the TAP with
 * NEEDS_CSUM, alone or in a super-frame, for the kernel to finish.
 *
 * Held equal to vxland/offload.py by tests/test_offload.py.
 */
#include "fastpath.h"

#include <string.h>

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_URG 0x20
#define TCP_ECE 0x40
#define TCP_CWR 0x80

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }
static void set16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void set32(uint8_t *p, uint32_t v) { set16(p, (uint16_t)(v >> 16)); set16(p + 2, (uint16_t)v); }

/* ---- the Internet checksum (RFC 1071) --------------------------------------------
 * Summed over native 64-bit loads: the one's complement sum is byte-order
 * independent (RFC 1071 §2B), so a sum of little-endian words is the byte swap of
 * the big-endian one.  Sums stay in that native form; numbers added to them go
 * through be16(); fold() turns a sum into the big-endian 16-bit value. */

#include <arpa/inet.h>

static uint64_t be16(uint32_t v)
{
    return htons((uint16_t)v);
}

static uint64_t sum_bytes(const uint8_t *p, uint32_t len, uint64_t sum)
{
    uint64_t a = 0, b = 0, v, w;
    while (len >= 16) {
        memcpy(&v, p, 8);
        memcpy(&w, p + 8, 8);
        a += (v & 0xffffffff) + (v >> 32);
        b += (w & 0xffffffff) + (w >> 32);
        p += 16;
        len -= 16;
    }
    sum += a + b;
    while (len >= 4) {
        uint32_t x;
        memcpy(&x, p, 4);
        sum += x;
        p += 4;
        len -= 4;
    }
    if (len >= 2) {
        uint16_t x;
        memcpy(&x, p, 2);
        sum += x;
        p += 2;
        len -= 2;
    }
    if (len) {
        uint8_t last[2] = { p[0], 0 };
        uint16_t x;
        memcpy(&x, last, 2);
        sum += x;
    }
    return sum;
}

static uint16_t fold(uint64_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return ntohs((uint16_t)sum);
}

uint16_t vx_checksum(const uint8_t *data, uint32_t len, uint32_t initial)
{
    return fold(sum_bytes(data, len, be16(initial & 0xffff) + be16(initial >> 16)));
}

/* ---- where the headers are ---------------------------------------------------------- */

struct l34 {
    uint32_t l3;               /* offset of the IP header */
    uint32_t l4;               /* offset of the TCP or UDP header */
    uint32_t hdr_len;          /* offset of the payload */
    int v6;
    uint8_t proto;             /* 6 TCP, 17 UDP */
};

static uint32_t l3_offset(const uint8_t *f, uint32_t len)
{
    uint32_t off = 12;
    while (off + 2 <= len && (get16(f + off) == 0x8100 || get16(f + off) == 0x88a8))
        off += 4;                                  /* VLAN tags */
    return off + 2;
}

/* The pseudo-header sum of an IPv4 or IPv6 TCP/UDP packet of l4_len bytes. */
static uint64_t pseudo_sum(const uint8_t *f, const struct l34 *h, uint32_t l4_len)
{
    const uint8_t *ip = f + h->l3;
    uint64_t sum = h->v6 ? sum_bytes(ip + 8, 32, 0) : sum_bytes(ip + 12, 8, 0);
    return sum + be16(h->proto) + be16(l4_len);
}

/* Parse a plain TCP segment or UDP datagram (IPv4 without options or fragments,
 * IPv6 without extension headers).  0 if it is not one. */
static int parse_l4(const uint8_t *f, uint32_t len, struct l34 *h)
{
    h->l3 = l3_offset(f, len);
    if (h->l3 != 14 || len < 14 + 28)
        return 0;
    uint16_t type = get16(f + 12);
    const uint8_t *ip = f + 14;
    if (type == 0x0800 && ip[0] == 0x45 && (ip[9] == 6 || ip[9] == 17)
        && (get16(ip + 6) & 0x3fff) == 0 && get16(ip + 2) == len - 14) {
        h->v6 = 0;
        h->l4 = 14 + 20;
        h->proto = ip[9];
    } else if (type == 0x86dd && len >= 14 + 48 && (ip[0] >> 4) == 6 && (ip[6] == 6 || ip[6] == 17)
               && get16(ip + 4) == len - 14 - 40) {
        h->v6 = 1;
        h->l4 = 14 + 40;
        h->proto = ip[6];
    } else {
        return 0;
    }
    if (h->proto == 17) {
        h->hdr_len = h->l4 + 8;
        return get16(f + h->l4 + 4) == len - h->l4;
    }
    if (h->l4 + 20 > len)
        return 0;
    uint32_t doff = (uint32_t)(f[h->l4 + 12] >> 4) * 4;
    if (doff < 20 || h->l4 + doff > len)
        return 0;
    h->hdr_len = h->l4 + doff;
    return 1;
}

/* ---- TAP -> wire: complete checksums, split TSO/USO super-frames ----------------------- */

static int complete_checksum(uint8_t *f, uint32_t len, uint32_t start, uint32_t offset)
{
    if (start + offset + 2 > len)
        return -1;
    /* The field holds the pseudo-header sum already; sum over it and invert. */
    uint16_t c = (uint16_t)~vx_checksum(f + start, len - start, 0);
    /* UDP sends 0xffff for a computed zero (0 means "no checksum"). */
    uint32_t l3 = l3_offset(f, len);
    int udp = (l3 + 10 <= len && get16(f + l3 - 2) == 0x0800 && f[l3 + 9] == 17) ||
              (l3 + 7 <= len && get16(f + l3 - 2) == 0x86dd && f[l3 + 6] == 17);
    if (c == 0 && udp)
        c = 0xffff;
    set16(f + start + offset, c);
    return 0;
}

/* One segment's IP header: lengths, IPv4 id + i and header checksum. */
static void fix_ip(uint8_t *seg, const struct l34 *h, uint32_t l4_len, uint16_t ip_id)
{
    uint8_t *ip = seg + h->l3;
    if (h->v6) {
        set16(ip + 4, (uint16_t)(h->l4 - h->l3 - 40 + l4_len));
    } else {
        set16(ip + 2, (uint16_t)(h->l4 - h->l3 + l4_len));
        set16(ip + 4, ip_id);
        set16(ip + 10, 0);
        set16(ip + 10, (uint16_t)~vx_checksum(ip, h->l4 - h->l3, 0));
    }
}

int vx_gso_split(const struct vx_vnet_hdr *vh, uint8_t *frame, uint32_t len, int net,
                 struct vx_packet *out, int out_max, uint8_t *heads)
{
    uint8_t type = vh->gso_type & (uint8_t)~VX_GSO_ECN;
    if (type == VX_GSO_NONE) {
        if ((vh->flags & VX_VNET_F_NEEDS_CSUM) &&
            complete_checksum(frame, len, vh->csum_start, vh->csum_offset) < 0)
            return -1;
        if (out_max < 1)
            return -1;
        memset(&out[0], 0, sizeof(out[0]));
        out[0].data = frame;
        out[0].len = len;
        out[0].net = net;
        return 1;
    }
    int udp = type == VX_GSO_UDP_L4;
    if (type != VX_GSO_TCPV4 && type != VX_GSO_TCPV6 && !udp)
        return -1;
    struct l34 h;
    h.l3 = l3_offset(frame, len);
    h.l4 = vh->csum_start;
    uint16_t ethertype = h.l3 >= 2 && h.l3 <= len ? get16(frame + h.l3 - 2) : 0;
    h.v6 = udp ? ethertype == 0x86dd : type == VX_GSO_TCPV6;
    h.proto = udp ? 17 : 6;
    /* csum_start is the L4 header: the whole IP header must lie before it (fix_ip and
     * pseudo_sum read and write it in a VX_SEG_HEAD-byte segment head) */
    if ((h.v6 ? ethertype != 0x86dd : ethertype != 0x0800) || h.l4 + (udp ? 8 : 20) > len
        || h.l4 < h.l3 + (h.v6 ? 40 : 20) || vh->csum_offset != (udp ? 6 : 16) || vh->gso_size == 0)
        return -1;
    if (!h.v6 && (frame[h.l3] >> 4 != 4 || h.l4 - h.l3 != (uint32_t)(frame[h.l3] & 15) * 4))
        return -1;                                 /* IPv4: csum_start right after the header */
    if (h.v6 && frame[h.l3] >> 4 != 6)
        return -1;
    h.hdr_len = udp ? h.l4 + 8 : h.l4 + (uint32_t)(frame[h.l4 + 12] >> 4) * 4;
    if (h.hdr_len < h.l4 + (udp ? 8 : 20) || h.hdr_len > len || h.hdr_len > VX_SEG_HEAD)
        return -1;
    uint32_t payload = len - h.hdr_len, mss = vh->gso_size;
    uint32_t n = payload ? (payload + mss - 1) / mss : 1;
    if (n > (uint32_t)out_max)
        return -1;
    uint16_t ip_id = h.v6 ? 0 : get16(frame + h.l3 + 4);
    uint32_t seq = udp ? 0 : get32(frame + h.l4 + 4);
    uint8_t flags = udp ? 0 : frame[h.l4 + 13];
    for (uint32_t i = 0; i < n; i++) {
        uint32_t off = h.hdr_len + i * mss;
        uint32_t plen = payload ? (i == n - 1 ? payload - i * mss : mss) : 0;
        uint8_t *seg = heads + (size_t)i * VX_SEG_HEAD;
        memcpy(seg, frame, h.hdr_len);
        uint8_t *l4 = seg + h.l4;
        uint32_t l4_len = h.hdr_len - h.l4 + plen;
        fix_ip(seg, &h, l4_len, (uint16_t)(ip_id + i));
        uint32_t check_at = udp ? 6 : 16;
        if (udp) {
            set16(l4 + 4, (uint16_t)l4_len);
        } else {
            set32(l4 + 4, seq + i * mss);
            uint8_t f = flags;
            if (i != n - 1)
                f &= (uint8_t)~(TCP_FIN | TCP_PSH);
            if (i != 0)
                f &= (uint8_t)~TCP_CWR;
            l4[13] = f;
        }
        set16(l4 + check_at, 0);
        if (!udp || (vh->flags & VX_VNET_F_NEEDS_CSUM)) {
            uint64_t sum = pseudo_sum(seg, &h, l4_len);
            sum = sum_bytes(l4, h.hdr_len - h.l4, sum);
            sum = sum_bytes(frame + off, plen, sum);
            uint16_t c = (uint16_t)~fold(sum);
            set16(l4 + check_at, udp && c == 0 ? 0xffff : c);
        }
        memset(&out[i], 0, sizeof(out[i]));
        out[i].data = seg;
        out[i].len = h.hdr_len;
        out[i].payload = plen ? frame + off : NULL;
        out[i].payload_len = plen;
        out[i].net = net;
    }
    return (int)n;
}

/* ---- wire -> TAP: checksums a kernel VTEP left unfinished ---------------------------- */

/* Where the TCP or UDP header of a received inner frame is: after any VLAN tags, in
 * IPv4 (any header length, not a fragment) or IPv6 (no extension headers); its length
 * from the IP header, not the frame (Ethernet may pad).  0 if it is not one. */
static int locate_l4(const uint8_t *f, uint32_t len, struct l34 *h, uint32_t *l4_len)
{
    h->l3 = l3_offset(f, len);
    if (h->l3 > len)
        return 0;
    uint16_t type = get16(f + h->l3 - 2);
    const uint8_t *ip = f + h->l3;
    uint32_t avail = len - h->l3;
    if (type == 0x0800) {
        if (avail < 20 || (ip[0] >> 4) != 4)
            return 0;
        uint32_t ihl = (uint32_t)(ip[0] & 15) * 4, total = get16(ip + 2);
        if (ihl < 20 || total < ihl || total > avail || (get16(ip + 6) & 0x3fff))
            return 0;
        h->v6 = 0;
        h->proto = ip[9];
        h->l4 = h->l3 + ihl;
        *l4_len = total - ihl;
    } else if (type == 0x86dd) {
        if (avail < 40 || (ip[0] >> 4) != 6 || get16(ip + 4) > avail - 40)
            return 0;
        h->v6 = 1;
        h->proto = ip[6];
        h->l4 = h->l3 + 40;
        *l4_len = get16(ip + 4);
    } else {
        return 0;
    }
    return (h->proto == 6 && *l4_len >= 20) || (h->proto == 17 && *l4_len >= 8);
}

int vx_inner_offload(const uint8_t *f, uint32_t len, uint32_t mtu, uint32_t gso_hint,
                     struct vx_vnet_hdr *vh)
{
    memset(vh, 0, sizeof(*vh));
    struct l34 h;
    uint32_t l4_len;
    if (!locate_l4(f, len, &h, &l4_len) || h.l4 > 0xffff)
        return 0;
    uint32_t at = h.proto == 6 ? 16 : 6;
    uint16_t field = get16(f + h.l4 + at);
    if (h.proto == 17 && !h.v6 && field == 0)
        return 0;                                  /* IPv4 UDP sent without a checksum */
    uint64_t pseudo = pseudo_sum(f, &h, l4_len);
    if (field != fold(pseudo))                     /* the cheap test first: most are not partial */
        return 0;
    if (fold(sum_bytes(f + h.l4, l4_len, pseudo)) == 0xffff)
        return 0;                                  /* a valid checksum that happens to look partial */
    vh->flags = VX_VNET_F_NEEDS_CSUM;
    vh->csum_start = (uint16_t)h.l4;
    vh->csum_offset = (uint16_t)at;
    /* A super-frame is exactly its IP packet: GSO frames carry no Ethernet padding. */
    uint32_t l3_len = h.l4 - h.l3 + l4_len;
    if (h.l3 + l3_len != len)
        return 1;
    if (h.proto == 6 && l3_len > mtu) {
        uint32_t doff = (uint32_t)(f[h.l4 + 12] >> 4) * 4;
        uint32_t headers = h.l4 - h.l3 + doff;     /* IP and TCP headers, which every segment repeats */
        if (doff >= 20 && doff <= l4_len && h.l4 + doff <= VX_SEG_HEAD && mtu > headers) {
            vh->gso_type = h.v6 ? VX_GSO_TCPV6 : VX_GSO_TCPV4;
            vh->gso_size = (uint16_t)(mtu - headers);
            vh->hdr_len = (uint16_t)(h.l4 + doff);
        }
    } else if (h.proto == 17 && gso_hint && gso_hint <= 0xffff && l4_len - 8 > gso_hint
               && h.l4 + 8 <= VX_SEG_HEAD) {
        vh->gso_type = VX_GSO_UDP_L4;
        vh->gso_size = (uint16_t)gso_hint;
        vh->hdr_len = (uint16_t)(h.l4 + 8);
    }
    return 1;
}

void vx_finish_checksum(uint8_t *f, uint32_t len, const struct vx_vnet_hdr *vh)
{
    struct l34 h;
    uint32_t l4_len;
    if (!(vh->flags & VX_VNET_F_NEEDS_CSUM) || !locate_l4(f, len, &h, &l4_len) || h.l4 != vh->csum_start)
        return;
    /* the field holds the pseudo-header sum: summing over it gives the whole sum */
    uint16_t c = (uint16_t)~fold(sum_bytes(f + h.l4, l4_len, 0));
    set16(f + h.l4 + vh->csum_offset, h.proto == 17 && c == 0 ? 0xffff : c);
}

int vx_gro_is_one_packet(const uint8_t *d, uint32_t len, uint32_t gso)
{
    struct l34 h;
    uint32_t l4_len;
    if (gso >= len || len < VX_VXLAN_HLEN + VX_ETH_HLEN)
        return 0;
    if (!locate_l4(d + VX_VXLAN_HLEN, len - VX_VXLAN_HLEN, &h, &l4_len) || h.proto != 17)
        return 0;
    return VX_VXLAN_HLEN + h.l4 + l4_len == len;
}

/* ---- wire -> TAP: coalesce TCP segments and UDP datagrams ---------------------------- */

/* The packet's IPv4 header checksum verifies, and its TCP/UDP checksum does too or is
 * one that decap found in the kernel's partial form (which the TAP write finishes). */
static int checksum_ok(const struct vx_packet *p, const struct l34 *h)
{
    if (!h->v6 && fold(sum_bytes(p->data + h->l3, 20, 0)) != 0xffff)
        return 0;
    if (p->vh.flags & VX_VNET_F_NEEDS_CSUM)
        return 1;
    uint64_t sum = pseudo_sum(p->data, h, p->len - h->l4);
    return fold(sum_bytes(p->data + h->l4, p->len - h->l4, sum)) == 0xffff;
}

/* Could b follow a in one super-frame?  Same L2 header, same flow, same IP fields
 * but the lengths, id and checksum; for TCP the same ack, flags but PSH, options. */
static int same_flow(const uint8_t *a, const uint8_t *b, const struct l34 *h)
{
    if (memcmp(a, b, 14))
        return 0;
    const uint8_t *ia = a + 14, *ib = b + 14;
    if (h->v6) {
        if (memcmp(ia, ib, 4) || ia[7] != ib[7] || memcmp(ia + 8, ib + 8, 32))
            return 0;
    } else {
        if (ia[1] != ib[1] || ia[6] != ib[6] || ia[8] != ib[8] || memcmp(ia + 12, ib + 12, 8))
            return 0;
    }
    const uint8_t *ta = a + h->l4, *tb = b + h->l4;
    if (h->proto == 17)
        return !memcmp(ta, tb, 4);                                    /* ports */
    return !memcmp(ta, tb, 4) && !memcmp(ta + 8, tb + 8, 5) &&      /* ports, ack, data offset */
           (ta[13] | TCP_PSH) == (tb[13] | TCP_PSH) &&               /* flags but PSH */
           !memcmp(ta + 20, tb + 20, h->hdr_len - h->l4 - 20);      /* options */
}

/* A packet a group may start with: a single segment (not a super-frame already) of TCP
 * without SYN/FIN/RST/URG/CWR, or (with udp: the TAP takes UDP GSO) UDP with a checksum
 * (a zero one would come out of the kernel's segmentation filled in). */
static int coalescible(const struct vx_packet *p, int udp, struct l34 *h)
{
    const uint8_t *f = p->data;
    if (p->vh.gso_type != VX_GSO_NONE || !parse_l4(f, p->len, h) || p->len <= h->hdr_len)
        return 0;
    if (h->proto == 17)
        return udp && (h->v6 || get16(f + h->l4 + 6) != 0);
    return !(f[h->l4 + 13] & (TCP_FIN | TCP_SYN | TCP_RST | TCP_URG | TCP_CWR));
}

static void finish_group(const struct vx_packet *in, struct vx_tap_frame *t,
                         const struct l34 *h, uint32_t payload_total, int psh)
{
    memset(&t->vh, 0, sizeof(t->vh));
    if (t->count == 1) {
        t->vh = in[t->first].vh;                   /* what decap found: the kernel finishes the rest */
        return;
    }
    const uint8_t *f = in[t->first].data;
    memcpy(t->head, f, h->hdr_len);
    uint32_t l4_len = h->hdr_len - h->l4 + payload_total;
    fix_ip(t->head, h, l4_len, get16(f + h->l3 + 4));
    uint8_t *l4 = t->head + h->l4;
    int udp = h->proto == 17;
    if (udp)
        set16(l4 + 4, (uint16_t)l4_len);
    else if (psh)
        l4[13] |= TCP_PSH;
    /* CHECKSUM_PARTIAL: the field holds the pseudo-header sum, folded, not inverted */
    set16(l4 + (udp ? 6 : 16), fold(pseudo_sum(t->head, h, l4_len)));
    t->hdr_len = h->hdr_len;
    t->vh.flags = VX_VNET_F_NEEDS_CSUM;
    t->vh.gso_type = udp ? VX_GSO_UDP_L4 : h->v6 ? VX_GSO_TCPV6 : VX_GSO_TCPV4;
    t->vh.hdr_len = (uint16_t)h->hdr_len;
    t->vh.gso_size = (uint16_t)(in[t->first].len - h->hdr_len);
    t->vh.csum_start = (uint16_t)h->l4;
    t->vh.csum_offset = udp ? 6 : 16;
}

int vx_coalesce(const struct vx_packet *in, int n, int udp, struct vx_tap_frame *out, int out_max)
{
    int n_out = 0;
    struct vx_tap_frame *g = NULL;         /* the open group, if it can still grow */
    struct l34 gh;
    uint32_t g_mss = 0, g_payload = 0, g_next_seq = 0;
    int g_psh = 0, g_verified = 0;
    for (int i = 0; i < n; i++) {
        const uint8_t *f = in[i].data;
        uint32_t len = in[i].len;
        struct l34 h;
        int candidate = coalescible(&in[i], udp, &h);
        if (g && candidate && in[i].net == g->net && h.proto == gh.proto && h.v6 == gh.v6
            && h.hdr_len == gh.hdr_len && !g_psh && g_payload % g_mss == 0 && len - h.hdr_len <= g_mss
            && (h.proto == 17 || get32(f + h.l4 + 4) == g_next_seq) && g->count < VX_GSO_MAX_SEGS
            && h.hdr_len - h.l3 + g_payload + (len - h.hdr_len) <= 65535
            && same_flow(in[g->first].data, f, &h)) {
            if (!g_verified)
                g_verified = checksum_ok(&in[g->first], &gh);
            if (g_verified && checksum_ok(&in[i], &h)) {
                g->count++;
                g_payload += len - h.hdr_len;
                g_next_seq += len - h.hdr_len;
                g_psh = h.proto == 6 && (f[h.l4 + 13] & TCP_PSH);
                continue;
            }
        }
        if (g)
            finish_group(in, g, &gh, g_payload, g_psh);
        if (n_out >= out_max)
            return n_out;
        g = &out[n_out++];
        g->net = in[i].net;
        g->first = i;
        g->count = 1;
        g->hdr_len = 0;
        if (candidate) {
            gh = h;
            g_mss = g_payload = len - h.hdr_len;
            g_next_seq = h.proto == 6 ? get32(f + h.l4 + 4) + g_payload : 0;
            g_psh = h.proto == 6 && (f[h.l4 + 13] & TCP_PSH);
            g_verified = 0;
        } else {
            finish_group(in, g, &gh, 0, 0);
            g = NULL;
        }
    }
    if (g)
        finish_group(in, g, &gh, g_payload, g_psh);
    return n_out;
}
