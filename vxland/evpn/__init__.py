"""BGP EVPN for vxland: a fleet of VTEPs that finds itself, through gobgpd.

One route, from BGP to the C lookup table:

1. gobgpd (gobgpd.py: run by vxland, or already running) holds the BGP sessions; a peer's
   UPDATE puts a path in its global table.
2. speaker.py watches that table over gRPC (WatchEvent, best paths) and hands the path on.
3. routes.py decodes it: a type-3 route (a VTEP that takes a VNI's flooded frames) or a
   type-2 route (a MAC, maybe with an IP, behind a VTEP, with its mobility sequence number);
   the VNI comes from its route target.
4. rib.py decides: which VTEP wins a MAC, what the flood list is, what we must announce or
   withdraw -- and answers with actions.
5. service.py carries them out through the forwarding table's public API (fdb.py:
   set_evpn_entry, set_evpn_flood, set_evpn_neighbour, ...), the same table the control
   verbs write; the table pushes each change to the data path's copy (vx_fdb_set,
   vx_flood_set in native/table.c), where the next frame to that MAC finds it.

And the other way: the table tells service.py when a MAC appears behind the local TAP (or
gets an address, or goes); rib.py says what to announce; speaker.py adds it to gobgpd
(AddPath), which sends it to every peer.

Only targets.py and gobgpd.py load without the generated gRPC stubs (vxland/evpn/gobgp/,
made by scripts/gobgp-api.sh): the configuration is checked without them.
"""
