/* vxland fast path: decapsulation, underlay -> TAP.
 *
 * Per UDP payload, in the kernel's order (vxlan_rcv): the VXLAN header, the
 * VNI, the inner source MAC, learning, then ECN decapsulation (RFC 6040).  Last,
 * an inner TCP/UDP checksum that a kernel VTEP left unfinished (CHECKSUM_PARTIAL,
 * carried by a veth or virtio-net) is finished, or marked for the TAP to finish.
 */
#include "dataplane.h"

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
        uint32_t ihl = (uint32_t)(ip[0] & 15) * 4;
        if (ihl < 20 || 14 + ihl > len)
            return 0;                           /* no header to mark: passed on untouched */
        ip[1] |= 3;
        ip[10] = ip[11] = 0;
        vx_put16(ip + 10, vx_ip_checksum(ip, (int)ihl));
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

int vx_decap_batch(struct vx_dataplane *dp, double now, struct vx_packet *in, int n,
                   struct vx_sighting *sightings, int *n_sightings, int count_rx)
{
    int accepted = 0;
    int last_net = -1, last_trusted = 0;       /* a GRO read's datagrams share one source */
    struct vx_addr last_peer;
    memset(&last_peer, 0, sizeof(last_peer));
    for (int i = 0; i < n; i++) {
        struct vx_packet *p = &in[i];
        uint32_t gso_hint = p->vh.gso_size;         /* a tunnel super-packet's datagram size */
        memset(&p->vh, 0, sizeof(p->vh));
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
        int net = vx_find_network(dp, vni);
        if (net < 0) {
            dp->underlay.drops[VX_DROP_UNKNOWN_VNI]++;
            continue;
        }
        struct vx_network *nw = &dp->nets[net];
        uint8_t *f = p->data + VX_VXLAN_HLEN;
        uint32_t flen = p->len - VX_VXLAN_HLEN;
        if (net != last_net || !vx_addr_equal(&p->peer, &last_peer)) {
            last_net = net;
            last_peer = p->peer;
            last_trusted = vx_trusts(nw, &p->peer);
        }
        int drop = 0;
        if (!last_trusted)
            drop = VX_DROP_UNTRUSTED_VTEP;          /* before anything is learned from it */
        else if (nw->cfg.drop_reserved && ((v[0] & ~0x08) || v[1] || v[2] || v[3] || v[7]))
            drop = VX_DROP_RESERVED_BITS;
        else if (flen < VX_ETH_HLEN)
            drop = VX_DROP_TRUNCATED_INNER;
        else if (!nw->cfg.carry_vlan && vx_is_vlan_tagged(f))
            drop = VX_DROP_INNER_VLAN;
        else if (vx_mac_is_multicast(f + 6) || vx_mac_is_zero(f + 6))
            drop = VX_DROP_BAD_SOURCE_MAC;
        else if (!memcmp(f + 6, nw->cfg.own_mac, 6))
            drop = VX_DROP_OWN_SOURCE_MAC;
        else
            drop = vx_see_source(dp, net, f + 6, 0, &p->peer, now, sightings, n_sightings);
        /* after learning, as in the kernel's vxlan_rcv */
        if (!drop && ecn_decapsulate(p->outer_tos, f, flen) < 0)
            drop = VX_DROP_ECN_NOT_ECT;
        if (drop) {
            nw->counters.drops[drop]++;
            continue;
        }
        if (nw->cfg.neigh_suppress && nw->cfg.learning && nw->cfg.learn_remote)   /* who has which address */
            vx_neigh_snoop(dp, net, f, flen, &p->peer, now, sightings, n_sightings);
        /* A kernel VTEP leaves inner checksums, and the segmentation of TSO/USO super-frames,
         * to the NIC; a virtual link (veth, virtio-net) passes them on unfinished.  The TAP
         * write asks its kernel to finish them; without a virtio header, finish the checksum
         * here (a super-frame is cut into segments at the write, with their checksums). */
        if (vx_inner_offload(f, flen, nw->cfg.mtu, gso_hint, &p->vh)) {
            nw->counters.csum_completed++;
            if (!nw->cfg.vnet_hdr && p->vh.gso_type == VX_GSO_NONE) {
                vx_finish_checksum(f, flen, &p->vh);
                memset(&p->vh, 0, sizeof(p->vh));
            }
        }
        p->net = net;
        p->data += VX_VXLAN_HLEN;
        p->len = flen;
        if (count_rx) {
            nw->counters.rx_packets++;
            nw->counters.rx_bytes += flen;
        }
        accepted++;
    }
    return accepted;
}

int vx_decap(struct vx_dataplane *dp, double now, struct vx_packet *in, int n,
             struct vx_sighting *sightings, int *n_sightings)
{
    return vx_decap_batch(dp, now, in, n, sightings, n_sightings, 1);
}

