/* vxland fast path: frames the data path answers into the TAP itself.
 *
 * A frame from the TAP too big for the underlay once encapsulated cannot be sent
 * (a VTEP must not fragment, RFC 7348 §4.3).  As the kernel's bridged UDP tunnels
 * do since Linux 5.9 (skb_tunnel_check_pmtu, iptunnel_pmtud_build_icmp(v6) in
 * net/ipv4/ip_tunnel_core.c), it is answered with an ICMP "fragmentation needed"
 * or ICMPv6 "packet too big" from the frame's destination, written back into the
 * TAP, so that the sender lowers its path MTU instead of black-holing.  The same
 * rules as the kernel's decide when not to answer -- but one: IPv4 without DF (whole, or
 * a first fragment) is answered too.  The kernel lets such a packet through and fragments
 * the outer one; a VTEP must not, so without an answer it would vanish.  Hosts take the
 * answer whatever DF said (Linux: icmp_unreach updates the path MTU with no DF check) and
 * fragment at the size it gives.
 */
#include "dataplane.h"

#define ICMP_HLEN 8
#define IPV4_HLEN 20
#define IPV6_HLEN 40

static int ipv4_unanswerable(const uint8_t *src, const uint8_t *dst)
{
    static const uint8_t all[4] = { 255, 255, 255, 255 };
    return !memcmp(dst, all, 4) || (dst[0] & 0xf0) == 0xe0             /* broadcast, multicast */
        || src[0] == 0 || src[0] == 127 || !memcmp(src, all, 4) || (src[0] & 0xf0) == 0xe0;
}

static int ipv6_unanswerable(const uint8_t *src)
{
    static const uint8_t any[16], loopback[16] = { [15] = 1 };
    return !memcmp(src, any, 16) || !memcmp(src, loopback, 16) || src[0] == 0xff;
}

/* ICMP error types, not to be answered: IPv4 3, 4, 5, 11, 12; ICMPv6 below 128, and redirect. */
static int icmp_is_error(uint8_t type) { return type == 3 || type == 4 || type == 5 || type == 11 || type == 12; }
static int icmp6_is_error(uint8_t type) { return type < 128 || type == 137; }

/* The bytes [from, from + n) of a packet held as data (len bytes) then payload. */
static void copy_out(const struct vx_packet *p, uint32_t from, uint32_t n, uint8_t *to)
{
    for (uint32_t i = 0; i < n; i++) {
        uint32_t at = from + i;
        to[i] = at < p->len ? p->data[at] : p->payload[at - p->len];
    }
}

uint32_t vx_too_big_reply(const struct vx_packet *p, uint32_t mtu, uint8_t *out)
{
    uint32_t total = p->len + p->payload_len;
    if (p->len < VX_ETH_HLEN + IPV4_HLEN)                /* the headers are in data, always */
        return 0;
    const uint8_t *f = p->data, *ip = f + VX_ETH_HLEN;
    uint16_t type = vx_get16(f + 12);
    uint32_t quote;                                      /* bytes of the packet quoted back */
    uint8_t *l3 = out + VX_ETH_HLEN;
    if (type == 0x0800 && (ip[0] >> 4) == 4) {
        uint32_t ihl = (uint32_t)(ip[0] & 15) * 4;
        uint16_t frag = vx_get16(ip + 6);                /* DF, or none, or a first fragment without DF */
        if (mtu < 576 || (frag != 0x4000 && frag != 0 && frag != 0x2000) || ihl < IPV4_HLEN
            || ipv4_unanswerable(ip + 12, ip + 16))
            return 0;
        if (ip[9] == 1 && (VX_ETH_HLEN + ihl >= p->len || icmp_is_error(f[VX_ETH_HLEN + ihl])))
            return 0;
        quote = total - VX_ETH_HLEN;
        if (quote > 576 - IPV4_HLEN - ICMP_HLEN)
            quote = 576 - IPV4_HLEN - ICMP_HLEN;
        uint8_t *icmp = l3 + IPV4_HLEN;
        memset(icmp, 0, ICMP_HLEN);
        icmp[0] = 3;                                     /* destination unreachable */
        icmp[1] = 4;                                     /* fragmentation needed */
        vx_put16(icmp + 6, (uint16_t)mtu);
        copy_out(p, VX_ETH_HLEN, quote, icmp + ICMP_HLEN);
        vx_put16(icmp + 2, (uint16_t)~vx_checksum(icmp, ICMP_HLEN + quote, 0));
        memset(l3, 0, IPV4_HLEN);
        l3[0] = 0x45;
        vx_put16(l3 + 2, (uint16_t)(IPV4_HLEN + ICMP_HLEN + quote));
        vx_put16(l3 + 6, 0x4000);                        /* DF */
        l3[8] = ip[8];                                   /* the packet's own TTL */
        l3[9] = 1;
        memcpy(l3 + 12, ip + 16, 4);                     /* from its destination */
        memcpy(l3 + 16, ip + 12, 4);                     /* to its source */
        vx_put16(l3 + 10, vx_ip_checksum(l3, IPV4_HLEN));
        quote += IPV4_HLEN + ICMP_HLEN;
    } else if (type == 0x86dd && p->len >= VX_ETH_HLEN + IPV6_HLEN && (ip[0] >> 4) == 6) {
        if (mtu < 1280 || ipv6_unanswerable(ip + 8))
            return 0;
        /* the kernel skips extension headers and answers only a first fragment; vxland answers
         * packets without extension headers, and ICMPv6 that is not an error */
        uint8_t next = ip[6];
        if (next == 58 && (VX_ETH_HLEN + IPV6_HLEN >= p->len || icmp6_is_error(f[VX_ETH_HLEN + IPV6_HLEN])))
            return 0;
        if (next == 0 || next == 43 || next == 44 || next == 60 || next == 51 || next == 135)
            return 0;
        quote = total - VX_ETH_HLEN;
        if (quote > 1280 - IPV6_HLEN - ICMP_HLEN)
            quote = 1280 - IPV6_HLEN - ICMP_HLEN;
        uint8_t *icmp = l3 + IPV6_HLEN;
        memset(icmp, 0, ICMP_HLEN);
        icmp[0] = 2;                                     /* packet too big */
        icmp[4] = (uint8_t)(mtu >> 24);
        icmp[5] = (uint8_t)(mtu >> 16);
        icmp[6] = (uint8_t)(mtu >> 8);
        icmp[7] = (uint8_t)mtu;
        copy_out(p, VX_ETH_HLEN, quote, icmp + ICMP_HLEN);
        memset(l3, 0, IPV6_HLEN);
        l3[0] = 0x60;
        vx_put16(l3 + 4, (uint16_t)(ICMP_HLEN + quote));
        l3[6] = 58;
        l3[7] = ip[7];                                   /* the packet's own hop limit */
        memcpy(l3 + 8, ip + 24, 16);
        memcpy(l3 + 24, ip + 8, 16);
        uint32_t len = ICMP_HLEN + quote;
        uint16_t sum = vx_checksum(l3 + 8, 32, 58 + len);           /* pseudo-header */
        vx_put16(icmp + 2, (uint16_t)~vx_checksum(icmp, len, sum));
        quote += IPV6_HLEN + ICMP_HLEN;
    } else {
        return 0;
    }
    memcpy(out, f + 6, 6);                               /* to the frame's source */
    memcpy(out + 6, f, 6);                               /* from its destination */
    vx_put16(out + 12, type);
    return VX_ETH_HLEN + quote;
}
