"""A fleet on etcd (flannel's model): VTEPs, routes and per-host address blocks in a store.

One route, from the store to the C lookup table:

1. A host (service.py) writes its VTEP and the MACs behind its TAP as keys under
   `PREFIX/vni/VNI/routes/` (layout.py), each on the host's lease: a host that stops
   renewing it -- killed, cut off -- has its keys deleted by etcd within the lease's TTL.
2. Every host watches that prefix (store.py: etcd's v3 gRPC API); each key is decoded
   into the same two EVPN routes BGP carries (layout.parse_route: a type-3 flood route, a
   type-2 MAC route with its mobility sequence number), hostile keys dropped and counted.
3. rib.py (shared with EVPN, vxland/evpn/rib.py) decides which VTEP wins each MAC and what
   the flood list is; planes.RouteTables carries that out through the forwarding table's
   public API (fdb.py set_evpn_entry, set_evpn_flood, set_evpn_neighbour), which writes the
   data path's copy (native/table.c) -- the path a BGP route takes too.

And the addresses: the network's configuration (its subnets, the block length) is a key
that the first host writes; each host claims one block of each subnet with a
compare-and-swap (blocks.py decides which), keeps it on a long lease, and hands it to the
CNI plugin (`networks.show`), so that one identical CNI configuration on every host gives
containers addresses that never collide.

Only layout.py and blocks.py load without gRPC: the configuration is checked without it.
"""
