/* vxland fuzz harnesses: what they share.
 *
 * Each harness (fuzz/<name>.c) drives one entry of native/fastpath.h that parses
 * bytes from outside, under libFuzzer with ASan and UBSan (scripts/fuzz.sh builds
 * and runs them).  Inputs are cut into records by a tiny reader; every packet is
 * copied into a buffer of exactly its size, so that reading one byte past it is
 * a finding, not a quiet read of the next packet.
 */
#ifndef VXLAND_FUZZ_H
#define VXLAND_FUZZ_H

#include "dataplane.h"

#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct reader {
    const uint8_t *p;
    size_t left;
};

static inline uint32_t take(struct reader *r, size_t n)   /* up to 4 bytes, big-endian; 0 when out */
{
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++) {
        v <<= 8;
        if (r->left) {
            v |= *r->p++;
            r->left--;
        }
    }
    return v;
}

/* The next len bytes (fewer if the input ends) in a fresh buffer of exactly that size. */
static inline uint8_t *take_exact(struct reader *r, uint32_t *len)
{
    if (*len > r->left)
        *len = (uint32_t)r->left;
    uint8_t *b = malloc(*len ? *len : 1);
    if (*len)
        memcpy(b, r->p, *len);
    r->p += *len;
    r->left -= *len;
    return b;
}

static inline void fuzz_addr(struct vx_addr *a, int v6, uint8_t last)
{
    memset(a, 0, sizeof(*a));
    a->family = v6 ? VX_AF_INET6 : VX_AF_INET;
    if (v6) {
        a->ip[0] = 0x20; a->ip[1] = 0x01; a->ip[2] = 0x0d; a->ip[3] = 0xb8; a->ip[15] = last;
    } else {
        a->ip[0] = 192; a->ip[2] = 2; a->ip[3] = last;
    }
}

/* Two networks, as unlike as the options allow: VNI 42 (plain TAP, ignores reserved bits,
 * discards inner VLANs, trusts anyone, learns from remotes, answers and snoops ARP/ND) and
 * VNI 43 (VNET_HDR TAP with USO, drops reserved bits, carries VLANs, trusts 192.0.2.2 and
 * 192.0.2.128/25, learns only from its TAP, as with EVPN); a static entry, a learned one,
 * an EVPN one, a flood list.  TAP writes go to /dev/null. */
static inline struct vx_dataplane *fuzz_dataplane(void)
{
    struct vx_dataplane *dp = vx_dataplane_new();
    int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
    for (int net = 0; net < 2; net++) {
        struct vx_network_config c;
        memset(&c, 0, sizeof(c));
        c.vni = 42 + (uint32_t)net;
        c.tap_fd = devnull;
        c.own_mac[0] = 0x02; c.own_mac[5] = 0xee;
        c.learning = 1;
        c.learn_remote = (uint8_t)!net;
        c.snoop_tap = (uint8_t)!net;
        c.neigh_suppress = (uint8_t)!net;
        fuzz_addr(&c.local, 0, 1);
        c.dst_port = 4789;
        c.src_port_min = 49152;
        c.src_port_max = 65535;
        c.ttl = 64;
        c.group_ttl = 1;
        c.vnet_hdr = (uint8_t)net;
        c.tap_uso = (uint8_t)net;
        c.drop_reserved = (uint8_t)net;
        c.carry_vlan = (uint8_t)net;
        c.tos_inherit = (uint8_t)net;
        c.df = (uint8_t)(net ? VX_DF_INHERIT : VX_DF_SET);
        c.mtu = net ? 1450 : 576;
        c.underlay_mtu = net ? 1500 : 620;              /* small enough that frames are answered */
        vx_network_set(dp, net, &c);
        struct vx_addr flood[3];
        for (int i = 0; i < 3; i++)
            fuzz_addr(&flood[i], 0, (uint8_t)(2 + i));
        vx_flood_set(dp, net, flood, 3);
        uint8_t mac[6] = { 0x02, 0, 0, 0, 0, 0x0a };
        vx_fdb_set(dp, net, mac, 0, &flood[0], VX_FDB_STATIC);
        mac[5] = 0x0b;
        vx_fdb_set(dp, net, mac, 1, NULL, VX_FDB_LEARNED);
        mac[5] = 0x0c;
        vx_fdb_set(dp, net, mac, 0, &flood[1], VX_FDB_EVPN);
    }
    struct vx_addr trusted;
    fuzz_addr(&trusted, 0, 2);
    struct vx_prefix prefix = { .len = 25 };
    fuzz_addr(&prefix.addr, 0, 128);
    vx_trust_set(dp, 1, 1, &trusted, 1, &prefix, 1);
    return dp;
}

#endif
