"""EVPN routes as a VXLAN VTEP uses them (RFC 7432, RFC 8365), and their form in gobgpd's API.

Two route types build a VXLAN fabric:

* type 3, *inclusive multicast Ethernet tag* (`FloodRoute`): "send VNI v's broadcast, unknown
  unicast and multicast to me" -- every VTEP's flood list for v is the set of these;
* type 2, *MAC/IP advertisement* (`MacRoute`): "MAC m, with IP i if given, is behind me in VNI
  v" -- the remote entries of the forwarding table (and, with an IP, of the neighbour table
  that ARP/ND suppression answers from).  A MAC-mobility sequence number orders the claims
  of a MAC that moved (RFC 7432 §15).

`decode` turns a `Path` that gobgpd's WatchEvent or ListPath gives into a `Decoded`: the route,
or why it is ignored; `encode` builds the `Path` that AddPath takes for one of ours.  The VNI
of a received route comes from its route targets (then its label), never from its RD: an RD
names the originating router's table, and FRR numbers those its own way.  This module is
sans-IO: messages in, values out.  Wire facts: ../shared/reference/evpn.md.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import NamedTuple

from google.protobuf.any_pb2 import Any as AnyMessage

from ..fdb import parse_vtep
from ..wire import mac_is_learnable, mac_to_bytes, mac_to_str
from .gobgp import attribute_pb2 as attr
from .gobgp import gobgp_pb2 as api
from .route_types import FloodRoute, MacRoute, Route
from .targets import ImportIndex, RouteTarget

EVPN_FAMILY = api.Family(afi=api.Family.AFI_L2VPN, safi=api.Family.SAFI_EVPN)
_EVPN_AFI, _EVPN_SAFI = EVPN_FAMILY.afi, EVPN_FAMILY.safi
TUNNEL_VXLAN = 8                     # BGP tunnel encapsulation type (RFC 9012): VXLAN
PMSI_INGRESS_REPLICATION = 6         # PMSI tunnel type (RFC 6514): head-end replication
RT_SUB_TYPE = 2                      # extended community sub-type: route target
ORIGIN_IGP = 0




class Decoded(NamedTuple):
    """One path from gobgpd: `key` names its NLRI (the same for its withdrawal); `route` is what
    it says, None when withdrawn or ignored (`ignored` says why: counted, logged at debug)."""
    key: tuple
    route: Route | None
    withdrawn: bool
    peer: str = ""
    ignored: str | None = None


_BY_NAME = {kind.DESCRIPTOR.full_name: kind for kind in (
    attr.RouteDistinguisherIPAddress, attr.RouteDistinguisherTwoOctetASN, attr.RouteDistinguisherFourOctetASN,
    attr.EVPNMACIPAdvertisementRoute, attr.EVPNInclusiveMulticastEthernetTagRoute, attr.MpReachNLRIAttribute,
    attr.NextHopAttribute, attr.PmsiTunnelAttribute, attr.ExtendedCommunitiesAttribute,
    attr.TwoOctetAsSpecificExtended, attr.FourOctetAsSpecificExtended, attr.EncapExtended,
    attr.MacMobilityExtended)}


_PATH_ATTRIBUTES = (attr.MpReachNLRIAttribute, attr.NextHopAttribute, attr.PmsiTunnelAttribute,
                    attr.ExtendedCommunitiesAttribute)
_COMMUNITIES = (attr.TwoOctetAsSpecificExtended, attr.FourOctetAsSpecificExtended, attr.EncapExtended,
                attr.MacMobilityExtended)


def _unpack(message: AnyMessage, *types):
    """The message as the one of `types` it holds, or None: by its type URL's last part, a
    dict lookup (Any.Is, tried type by type, was a fifth of a route's decoding)."""
    _, slash, name = message.type_url.rpartition("/")
    kind = _BY_NAME.get(name) if slash else None            # (as Any.Is: a URL, with its "/")
    if kind is None or kind not in types:
        return None
    value = kind()
    value.ParseFromString(message.value)
    return value


def _rd(message: AnyMessage) -> str:
    rd = _unpack(message, attr.RouteDistinguisherIPAddress, attr.RouteDistinguisherTwoOctetASN,
                 attr.RouteDistinguisherFourOctetASN)
    return f"{rd.admin}:{rd.assigned}" if rd is not None else "?"


def _ip(text: str) -> str | None:
    """gobgp writes an absent address as "" or "<nil>"."""
    if not text or text == "<nil>":
        return None
    return _canonical(text)


@functools.lru_cache(maxsize=4096)
def _canonical(text: str) -> str:
    return str(ipaddress.ip_address(text))


@functools.lru_cache(maxsize=16)
def _family(address: str) -> int:
    return ipaddress.ip_address(address).version


class _Attributes(NamedTuple):
    next_hop: str | None
    targets: tuple[tuple[int, int], ...]
    encaps: tuple[int, ...]
    seq: int
    sticky: bool
    pmsi: attr.PmsiTunnelAttribute | None       # (read, never changed: cached routes share it)


_ATTRIBUTES_CACHED = 2048                       # sets of path attributes remembered, at most


_MP_REACH = attr.MpReachNLRIAttribute.DESCRIPTOR.full_name
_ATTRIBUTES_CACHED_BYTES = 1024                 # a set bigger than this is decoded, never remembered


def _attributes(pattrs) -> _Attributes:
    """What a path's attributes say, each parsed once as what it holds.  The routes of one
    VTEP carry the same attributes byte for byte (route targets, encapsulation, PMSI) but for
    MP_REACH_NLRI, which gobgpd gives with the route's own NLRI in it: that one is parsed for
    each path, and the answer for the rest remembered (a bounded number of small sets)."""
    next_hop, key = None, []
    for p in pattrs:
        if p.type_url.rpartition("/")[2] == _MP_REACH:      # (as _unpack names types)
            reach = _unpack(p, attr.MpReachNLRIAttribute)
            if reach is not None and reach.next_hops:
                next_hop = reach.next_hops[0]
        else:
            key.append((p.type_url, p.value))
    cacheable = sum(len(v) for _, v in key) <= _ATTRIBUTES_CACHED_BYTES
    rest = _attributes_seen.get(tuple(key)) if cacheable else None
    if rest is None:
        rest = _other_attributes(p for p in pattrs if p.type_url.rpartition("/")[2] != _MP_REACH)
        if cacheable:
            if len(_attributes_seen) >= _ATTRIBUTES_CACHED:
                _attributes_seen.clear()        # (a peer sending ever new sets: start again)
            _attributes_seen[tuple(key)] = rest
    return rest if not next_hop or next_hop == rest.next_hop else rest._replace(next_hop=next_hop)


def _other_attributes(pattrs) -> _Attributes:
    next_hop, targets, encaps, seq, sticky, pmsi = None, [], [], 0, False, None
    for pattr in pattrs:
        value = _unpack(pattr, *_PATH_ATTRIBUTES)
        if isinstance(value, attr.NextHopAttribute):
            next_hop = next_hop or value.next_hop
        elif isinstance(value, attr.PmsiTunnelAttribute):
            pmsi = value
        elif isinstance(value, attr.ExtendedCommunitiesAttribute):
            for c in value.communities:
                community = _unpack(c, *_COMMUNITIES)
                if isinstance(community, (attr.TwoOctetAsSpecificExtended, attr.FourOctetAsSpecificExtended)):
                    if community.sub_type == RT_SUB_TYPE:
                        targets.append((community.asn, community.local_admin))
                elif isinstance(community, attr.EncapExtended):
                    encaps.append(community.tunnel_type)
                elif isinstance(community, attr.MacMobilityExtended):
                    seq, sticky = community.sequence_num, community.is_sticky
    return _Attributes(next_hop, tuple(targets), tuple(encaps), seq, sticky, pmsi)


_attributes_seen: dict[tuple, _Attributes] = {}


def decode(path: api.Path, vnis: dict[int, list[RouteTarget]] | ImportIndex, local: str) -> Decoded:
    """What `path` says, for a VTEP at `local` serving `vnis` (VNI -> its import route
    targets; an empty list: the default, any AS with the VNI as the value -- or their
    ImportIndex, which the service keeps)."""
    peer = path.neighbor_ip
    if peer == "<nil>":
        peer = ""
    family = path.family
    if family.afi != _EVPN_AFI or family.safi != _EVPN_SAFI:
        return Decoded(("other", family.afi, family.safi), None, path.is_withdraw, peer, "not EVPN")
    mac_ip = _unpack(path.nlri, attr.EVPNMACIPAdvertisementRoute)
    imet = _unpack(path.nlri, attr.EVPNInclusiveMulticastEthernetTagRoute) if mac_ip is None else None
    if mac_ip is not None:
        mac_text = mac_ip.mac_address
        key: tuple = (_rd(mac_ip.rd), 2, mac_ip.ethernet_tag, mac_text.lower(), mac_ip.ip_address)
    elif imet is not None:
        key = (_rd(imet.rd), 3, imet.ethernet_tag, imet.ip_address)
    else:
        return Decoded(("other", path.nlri.type_url), None, path.is_withdraw, peer, "a route type vxland does not use")
    if path.is_withdraw:
        return Decoded(key, None, True, peer)

    def ignored(why: str) -> Decoded:
        return Decoded(key, None, False, peer, why)

    next_hop, targets, encaps, seq, sticky, pmsi = _attributes(path.pattrs)
    try:
        vtep = _ip(next_hop or "")
    except ValueError:
        return ignored(f"next hop {next_hop!r} is not an address")
    if vtep is None:
        return ignored("no next hop")
    if TUNNEL_VXLAN not in encaps:
        return ignored("not VXLAN (no encapsulation community of tunnel type 8)")
    label = (mac_ip.labels[0] if mac_ip.labels else None) if mac_ip is not None else (pmsi.label if pmsi else None)
    index = vnis if isinstance(vnis, ImportIndex) else ImportIndex(vnis)
    candidates = index.vnis(targets)
    if len(candidates) > 1:
        candidates = [vni for vni in candidates if vni == label]
    if len(candidates) != 1:
        return ignored("no route target of a VNI served here" if not candidates
                       else "route targets of several VNIs served here")
    vni = candidates[0]
    if imet is not None:
        if pmsi is None or pmsi.type != PMSI_INGRESS_REPLICATION:
            return ignored("type 3 without an ingress-replication PMSI tunnel")
        if len(pmsi.id) in (4, 16):
            vtep = str(ipaddress.ip_address(pmsi.id))
        route: Route = FloodRoute(vni, vtep)
    else:
        esi = mac_ip.esi
        if esi.type or any(esi.value):
            return ignored("a non-zero ESI (multihoming is not supported)")
        try:
            mac = mac_to_bytes(mac_text)
            ip = _ip(key[4])
        except ValueError:
            return ignored(f"a bad MAC or IP ({mac_text!r}, {key[4]!r})")
        if not mac_is_learnable(mac):
            return ignored(f"{mac_text} is not a station MAC")
        route = MacRoute(vni, mac, ip, vtep, seq, sticky)
    if vtep == local:
        return ignored("our own")
    try:
        parse_vtep(vtep, _family(local))
    except ValueError:
        # the other address family (a dual-stack fabric), multicast, 0.0.0.0: not a tunnel
        # endpoint this VTEP can send to -- this route alone is left out, never its VNI's others
        return ignored("a VTEP address this underlay cannot reach (other family, multicast, unspecified)")
    return Decoded(key, route, False, peer)


def _pack(message) -> AnyMessage:
    packed = AnyMessage()
    packed.Pack(message)
    return packed


def encode(route: Route, *, asn: int, router_id: str, rd_index: int,
           export: RouteTarget | None = None) -> api.Path:
    """The Path that AddPath takes to announce `route` (ours: its VTEP is our address)."""
    rd = _pack(attr.RouteDistinguisherIPAddress(admin=router_id, assigned=rd_index))
    target = export if export is not None and export.asn is not None else RouteTarget(asn & 0xFFFF, route.vni)
    kind = attr.FourOctetAsSpecificExtended if target.asn > 0xFFFF else attr.TwoOctetAsSpecificExtended
    communities = [_pack(kind(is_transitive=True, sub_type=RT_SUB_TYPE, asn=target.asn, local_admin=target.value)),
                   _pack(attr.EncapExtended(tunnel_type=TUNNEL_VXLAN))]
    pattrs = [_pack(attr.OriginAttribute(origin=ORIGIN_IGP)), _pack(attr.NextHopAttribute(next_hop=route.vtep))]
    if isinstance(route, FloodRoute):
        nlri = _pack(attr.EVPNInclusiveMulticastEthernetTagRoute(rd=rd, ethernet_tag=0, ip_address=route.vtep))
        pattrs.append(_pack(attr.PmsiTunnelAttribute(type=PMSI_INGRESS_REPLICATION, label=route.vni,
                                                     id=ipaddress.ip_address(route.vtep).packed)))
    else:
        nlri = _pack(attr.EVPNMACIPAdvertisementRoute(
            rd=rd, esi=attr.EthernetSegmentIdentifier(type=0, value=bytes(9)), ethernet_tag=0,
            mac_address=mac_to_str(route.mac), ip_address=route.ip or "", labels=[route.vni]))
        if route.seq or route.sticky:
            communities.append(_pack(attr.MacMobilityExtended(sequence_num=route.seq, is_sticky=route.sticky)))
    pattrs.append(_pack(attr.ExtendedCommunitiesAttribute(communities=communities)))
    return api.Path(family=EVPN_FAMILY, nlri=nlri, pattrs=pattrs)
