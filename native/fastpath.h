/* vxland fast path: the whole interface of the C module.
 *
 * This header is also the cffi cdef (native/build_fastpath.py feeds it to
 * ffi.cdef after dropping the include guard and #include lines), so it keeps
 * to what cdef understands: integer #defines, structs, prototypes.
 *
 * Frames travel in two directions, each handled a batch per call:
 *   TAP -> vx_encap -> outer IPv4/UDP/VXLAN datagrams -> raw socket
 *   UDP socket -> vx_decap -> inner frames -> TAP
 * vx_pump_tap and vx_pump_underlay do the syscalls around those two, with
 * the GIL released (cffi API mode) -- called by Python on each wake-up, or
 * by the data-path thread (vx_thread_start), which waits in epoll itself so
 * that no Python runs per packet.  The forwarding table lives here as a
 * lookup copy that the Python control plane writes (vx_fdb_set/del); learning
 * goes back to Python as sightings, at most one per MAC per second.
 */
#ifndef VXLAND_FASTPATH_H
#define VXLAND_FASTPATH_H

#include <stdint.h>

#define VX_BATCH 64            /* frames or datagrams per pump call, at most */
#define VX_BATCH_BYTES 65536   /* ... and about this many bytes: a packet on another fd waits for one */
#define VX_SLOT 66048          /* bytes per receive slot: a 64 KiB super-frame and its headers */
#define VX_MAX_PKTS 4096       /* packets one pump step holds; a pump sends what waits before it would overflow */
#define VX_MAX_DGRAMS 1024     /* datagrams sent per flush */
#define VX_SEG_HEAD 192        /* bytes of rewritten headers per TSO segment */
#define VX_GSO_MAX_SEGS 64     /* datagrams in one UDP_SEGMENT send */
#define VX_MAX_NETS 256        /* VNIs one dataplane serves */
#define VX_MAX_QUEUES 16       /* queues of one multi-queue TAP, and underlay sockets, that the threads serve */
#define VX_MAX_THREADS 16      /* data-path threads */
#define VX_MAX_FLOOD 256       /* remotes in one flood list */
#define VX_MAX_TRUSTED 65536   /* VTEPs one network's trust set names */
#define VX_MAX_PREFIXES 16     /* prefixes one network's trust set names */
#define VX_OUTER_MAX 64        /* bytes of outer headers for one datagram */
#define VX_OUTER_V4 36         /* IPv4 20 + UDP 8 + VXLAN 8 */
#define VX_OUTER_V6 56         /* IPv6 40 + UDP 8 + VXLAN 8 */
#define VX_VXLAN_HLEN 8
#define VX_ETH_HLEN 14
#define VX_REPLY_MAX 1300      /* bytes of a frame the data path answers into the TAP */
#define VX_MAX_REPLIES 64      /* answers one encap call makes at most */
#define VX_NEIGH_RATE 200      /* new addresses reported per second and network, at most ... */
#define VX_NEIGH_BURST 400     /* ... and in a burst: a host ARPing at random costs the control plane little */

/* Reasons a frame or datagram is dropped; index into vx_counters.drops.
 * The names live in vxland/datapath.py (DropReason) in the same order. */
#define VX_DROP_SHORT_DATAGRAM 0   /* UDP payload shorter than the VXLAN header */
#define VX_DROP_NO_I_FLAG 1        /* VXLAN I flag clear */
#define VX_DROP_UNKNOWN_VNI 2      /* no network configured for the VNI */
#define VX_DROP_TRUNCATED_INNER 3  /* inner frame shorter than an Ethernet header */
#define VX_DROP_BAD_SOURCE_MAC 4   /* inner source MAC multicast or zero */
#define VX_DROP_OWN_SOURCE_MAC 5   /* inner source MAC is the TAP's own */
#define VX_DROP_STATIC_CONFLICT 6  /* source MAC is static elsewhere */
#define VX_DROP_RUNT_FRAME 7       /* frame from the TAP shorter than 14 bytes */
#define VX_DROP_LOCAL_DESTINATION 8 /* destination MAC is behind our own TAP */
#define VX_DROP_NO_REMOTE 9        /* flood needed but the flood list is empty */
#define VX_DROP_TOO_BIG 10         /* outer packet larger than the underlay MTU */
#define VX_DROP_UNDERLAY_BUSY 11   /* raw socket buffer full */
#define VX_DROP_UNDERLAY_ERROR 12  /* other send error (no route, ...) */
#define VX_DROP_TAP_BUSY 13        /* TAP queue full */
#define VX_DROP_TAP_ERROR 14       /* other TAP write error (down, ...) */
#define VX_DROP_BAD_OFFLOAD 15     /* TAP super-frame whose virtio header does not fit it */
#define VX_DROP_RESERVED_BITS 16   /* reserved VXLAN bits set, and policy says drop (as the kernel) */
#define VX_DROP_INNER_VLAN 17      /* 802.1Q-tagged inner frame, and policy says discard (RFC 7348 §6.1) */
#define VX_DROP_ECN_NOT_ECT 18     /* outer CE over a non-ECT inner packet (RFC 6040 §4.2) */
#define VX_DROP_GRO_OVERSIZE 19    /* datagrams of one UDP GRO read past what one pump call holds */
#define VX_DROP_UNTRUSTED_VTEP 20  /* from a VTEP the network does not trust (vx_trust_set) */
#define VX_DROP_MAX 21

/* What made a forwarding entry (vx_fdb_set's kind).  Learned entries move when their MAC
 * is seen elsewhere; static ones never move, and frames claiming their MAC from elsewhere
 * are dropped (static_conflict); EVPN ones (routes from BGP) are moved only by the control
 * plane: seen behind the local TAP they are reported (the MAC moved here: MAC mobility),
 * seen behind another remote VTEP they are neither learned nor dropped. */
#define VX_FDB_LEARNED 0
#define VX_FDB_STATIC 1
#define VX_FDB_EVPN 2

/* Outer DF bit policy (ip-link's df). */
#define VX_DF_UNSET 0
#define VX_DF_SET 1
#define VX_DF_INHERIT 2

/* struct virtio_net_hdr (include/uapi/linux/virtio_net.h), host byte order. */
#define VX_VNET_HLEN 10
#define VX_VNET_F_NEEDS_CSUM 1
#define VX_GSO_NONE 0
#define VX_GSO_TCPV4 1
#define VX_GSO_TCPV6 4
#define VX_GSO_UDP_L4 5
#define VX_GSO_ECN 128

#define VX_AF_INET 4
#define VX_AF_INET6 6

struct vx_addr {
    uint8_t family;            /* VX_AF_INET or VX_AF_INET6; 0 = none */
    uint8_t ip[16];            /* network byte order; IPv4 in ip[0..3] */
};

/* The first len bits of addr. */
struct vx_prefix {
    struct vx_addr addr;
    uint8_t len;
};

struct vx_counters {
    uint64_t rx_packets;       /* frames decapsulated and handed to the TAP */
    uint64_t rx_bytes;         /* their inner frame bytes */
    uint64_t tx_packets;       /* datagrams handed to the underlay */
    uint64_t tx_bytes;         /* their inner frame bytes */
    uint64_t csum_completed;   /* inner TCP/UDP checksums received in the kernel's partial form
                                * (pseudo-header sum only) and completed: not a drop */
    uint64_t too_big_replies;  /* ICMP "fragmentation needed" / "packet too big" written to the TAP */
    uint64_t suppressed;       /* ARP requests / neighbour solicitations answered, not flooded */
    uint64_t learn_refused;    /* frames whose source MAC was not reported: the VNI was full */
    uint64_t neigh_refused;    /* ARP/ND frames naming a new address that was not reported: the VNI's
                                * neighbours were full, or more than VX_NEIGH_RATE came a second */
    uint64_t drops[21];        /* VX_DROP_MAX, by reason */
};

/* A MAC seen as a source: the control plane decides whether to learn it.  With neighbour
 * suppression, an ARP or neighbour advertisement from a remote VTEP also tells which IP
 * the MAC has (ip.family != 0). */
struct vx_sighting {
    int32_t net;
    uint8_t mac[6];
    uint8_t local;             /* 1: behind the TAP; 0: behind remote VTEP vtep */
    struct vx_addr vtep;
    struct vx_addr ip;         /* family 0: no IP */
};

struct vx_vnet_hdr {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
};

/* One frame in (encap), or one UDP payload in (decap).  A TSO segment's frame is
 * its rewritten headers (data) followed by a payload slice of the super-frame. */
struct vx_packet {
    uint8_t *data;
    uint32_t len;
    const uint8_t *payload;    /* the rest of the frame, or NULL */
    uint32_t payload_len;
    int32_t net;               /* encap: network it came from; decap: set by vx_decap */
    struct vx_addr peer;       /* decap: outer source address */
    uint8_t outer_tos;         /* decap: the outer IP TOS byte (its ECN bits matter) */
    struct vx_vnet_hdr vh;     /* decap, in: vh.gso_size is the UDP_GRO size of a read that is one
                                * tunnel super-packet (vx_gro_is_one_packet), else 0; out: how the
                                * TAP write describes the frame (vx_inner_offload) */
};

/* One datagram out of vx_encap: outer headers, then the frame (and its payload slice). */
struct vx_datagram {
    uint8_t header[64];        /* VX_OUTER_MAX */
    uint32_t header_len;
    const uint8_t *frame;
    uint32_t frame_len;
    const uint8_t *payload;
    uint32_t payload_len;
    int32_t net;
    struct vx_addr dst;
};

struct vx_network_config {
    uint32_t vni;
    int tap_fd;                /* -1 when driven in memory; a multi-queue TAP's first queue */
    int32_t queue_fds[16];     /* VX_MAX_QUEUES: every queue of a multi-queue TAP, queue_fds[0] = tap_fd;
                                * what is read from queue q and written for underlay socket q */
    uint8_t n_queues;          /* 0 or 1: tap_fd is the only queue */
    uint8_t own_mac[6];        /* the TAP's MAC: never learned from remotes */
    uint8_t learning;          /* 0: report no sightings (static entries only) */
    uint8_t learn_remote;      /* 0: report no sightings from remote VTEPs (EVPN names them) */
    uint8_t snoop_tap;         /* report who has which address from the TAP's ARP and ND frames
                                * (sightings with an IP: EVPN announces them as MAC+IP routes) */
    struct vx_addr local;      /* outer source address */
    uint16_t dst_port;         /* outer UDP destination port */
    uint16_t src_port_min;     /* outer UDP source port range, inclusive */
    uint16_t src_port_max;
    uint8_t ttl;               /* IPv6: the hop limit */
    uint8_t vnet_hdr;          /* the TAP carries a virtio_net_hdr before each frame */
    uint8_t tos;               /* outer DSCP, when not inherited (ECN bits always follow the inner) */
    uint8_t tos_inherit;       /* 1: the outer DSCP is the inner IPv4/IPv6 one */
    uint8_t df;                /* VX_DF_* */
    uint8_t drop_reserved;     /* 1: drop datagrams with reserved bits set; 0: ignore them (RFC) */
    uint8_t carry_vlan;        /* 1: carry 802.1Q-tagged inner frames; 0: discard (RFC §6.1) */
    uint8_t group_ttl;         /* outer TTL / hop limit to a multicast group (the kernel: 1) */
    uint16_t mtu;              /* the TAP's MTU: a received TCP super-frame is cut to fit it */
    uint16_t underlay_mtu;     /* a frame whose outer packet would be larger is answered (ICMP) and
                                * dropped as too_big; 0: not checked (in-memory use) */
    uint8_t neigh_suppress;    /* answer ARP requests and neighbour solicitations from the TAP
                                * for known neighbours, instead of flooding them */
    uint8_t tap_uso;           /* the TAP takes UDP GSO writes (TUN_F_USO4/6, Linux 6.2 and later) */
    float refresh;             /* a known MAC where it was is reported again after this many seconds
                                * (<= 0: 1 s); only to refresh its age: the daemon makes it a 30th
                                * of the ageing time, so 100k busy MACs are not 100k sightings a second */
};

/* One write to a VNET_HDR TAP out of vx_coalesce: `count` consecutive input packets
 * from `first`.  count == 1: the packet as it is, behind its own virtio header (vh).
 * count > 1: head (hdr_len bytes, lengths and flags fixed), then each packet's
 * payload (its bytes after hdr_len), behind a TCP or UDP GSO virtio header. */
struct vx_tap_frame {
    struct vx_vnet_hdr vh;
    int32_t net;
    int32_t first;
    int32_t count;
    uint32_t hdr_len;
    uint8_t head[192];         /* VX_SEG_HEAD */
};

/* A frame the data path answers into a network's TAP (vx_too_big_reply). */
struct vx_reply {
    int32_t net;
    uint32_t len;
    uint8_t frame[1300];       /* VX_REPLY_MAX */
};

struct vx_pump_result {
    int32_t packets;           /* frames or datagrams taken in */
    int32_t n_sightings;
    int32_t again;             /* 1: the batch was full; more may be waiting */
    int32_t error;             /* errno of a failed read, else 0 */
    int32_t writes;            /* TAP writes (underlay pump) or underlay sends (TAP pump) */
    struct vx_sighting sightings[64];   /* VX_BATCH */
};

struct vx_dataplane;

struct vx_dataplane *vx_dataplane_new(void);
void vx_dataplane_free(struct vx_dataplane *dp);

/* Networks (one per VNI), indexed 0..VX_MAX_NETS-1.  vx_network_set on a network in use
 * changes its configuration and keeps its counters, flood list and trust set;
 * vx_network_del forgets it, its forwarding entries included. */
int vx_network_set(struct vx_dataplane *dp, int net, const struct vx_network_config *cfg);
/* full: the VNI holds as many learned entries as allowed; new MACs are not
 * reported (known ones still are, so they keep fresh and can move), but counted
 * (learn_refused).  neigh_full: the same for addresses (neigh_refused). */
int vx_network_set_full(struct vx_dataplane *dp, int net, int full);
int vx_network_set_neigh_full(struct vx_dataplane *dp, int net, int full);
void vx_network_del(struct vx_dataplane *dp, int net);
/* A copy of a network's counters (net -1: the underlay's own drops), taken under the data
 * plane's lock, so that a reader never sees a batch half counted. */
int vx_counters_read(struct vx_dataplane *dp, int net, struct vx_counters *out);

/* The forwarding table copy. */
int vx_fdb_set(struct vx_dataplane *dp, int net, const uint8_t *mac, int local,
               const struct vx_addr *vtep, int kind);
int vx_fdb_del(struct vx_dataplane *dp, int net, const uint8_t *mac);
int vx_fdb_count(struct vx_dataplane *dp);
int vx_flood_set(struct vx_dataplane *dp, int net, const struct vx_addr *remotes, int n);
/* Neighbours, for ARP/ND suppression (native/neigh.c): which MAC an IP has, per network.
 * The control plane writes them, as it writes FDB entries. */
int vx_neigh_set(struct vx_dataplane *dp, int net, const struct vx_addr *ip, const uint8_t *mac);
int vx_neigh_del(struct vx_dataplane *dp, int net, const struct vx_addr *ip);
int vx_neigh_count(struct vx_dataplane *dp);

/* Trust.  Off (the default), a network takes VXLAN from any source, as the kernel does.
 * On, only from these VTEPs -- the control plane keeps them: the flood list, static
 * entries' VTEPs -- and these prefixes; the rest is dropped as untrusted_vtep before
 * anything is learned from it. */
int vx_trust_set(struct vx_dataplane *dp, int net, int on, const struct vx_addr *vteps, int n_vteps,
                 const struct vx_prefix *prefixes, int n_prefixes);
/* One VTEP into (trusted 1) or out of (0) the trust set, whatever its size: O(log n) to find
 * its place.  -ENOSPC past VX_MAX_TRUSTED. */
int vx_trust_vtep(struct vx_dataplane *dp, int net, const struct vx_addr *vtep, int trusted);

/* Sans-IO batch steps.  vx_encap stops early when out is full; *consumed says
 * how many packets it took.  Returns the number of datagrams (or frames) out.  A
 * frame too big for the underlay is dropped, and answered (rate-limited, at most
 * VX_MAX_REPLIES per call) in replies[*n_replies...] for the TAP. */
int vx_encap(struct vx_dataplane *dp, double now, struct vx_packet *in, int n,
             int *consumed, struct vx_datagram *out, int out_max,
             struct vx_sighting *sightings, int *n_sightings,
             struct vx_reply *replies, int *n_replies);
int vx_decap(struct vx_dataplane *dp, double now, struct vx_packet *in, int n,
             struct vx_sighting *sightings, int *n_sightings);

/* Offloads (native/offload.c).  vx_gso_split turns one frame read from a VNET_HDR
 * TAP into wire-ready packets: GSO_NONE gives the frame itself (checksum completed
 * if NEEDS_CSUM); TCP or UDP GSO gives one packet per gso_size of payload, headers
 * rewritten into heads (VX_SEG_HEAD bytes each), payload pointing into frame.
 * Returns the packet count, or -1 for a frame its header does not describe. */
int vx_gso_split(const struct vx_vnet_hdr *vh, uint8_t *frame, uint32_t len, int net,
                 struct vx_packet *out, int out_max, uint8_t *heads);
/* Group consecutive in-order TCP segments, or (with udp) equal-sized UDP datagrams,
 * of one flow (checksums verified) into TAP writes; returns the number of writes.  A
 * packet whose vh describes a super-frame is never grouped: it is written as it is. */
int vx_coalesce(const struct vx_packet *in, int n, int udp, struct vx_tap_frame *out, int out_max);
/* How the TAP write must describe a received inner frame (a virtio_net_hdr in vh):
 * - NEEDS_CSUM at csum_start/csum_offset: a TCP or UDP packet (IPv4 or IPv6, after any
 *   VLAN tags) whose checksum holds exactly the folded pseudo-header sum and does not
 *   verify: what a kernel VTEP sends when it leaves the checksum to the NIC
 *   (CHECKSUM_PARTIAL) and a veth or virtio-net hands that state on unfinished;
 * - and a GSO type and size when such a packet is a super-frame that the same link
 *   passed on unsegmented (the kernel VTEP's TSO or USO): TCP longer than mtu, cut to
 *   fit it; UDP of gso_hint-byte datagrams (the size the UDP_GRO read reported).
 * Returns 1 for those; 0, vh zero, for anything else: a valid checksum, a wrong one
 * (left as it is: corruption is never "fixed"), none at all, not TCP or UDP. */
int vx_inner_offload(const uint8_t *frame, uint32_t len, uint32_t mtu, uint32_t gso_hint,
                     struct vx_vnet_hdr *vh);
/* Compute, in place, a checksum that vx_inner_offload found partial (vh from it). */
void vx_finish_checksum(uint8_t *frame, uint32_t len, const struct vx_vnet_hdr *vh);
/* A UDP_GRO read of len bytes that the kernel says holds gso-byte datagrams: 1 if it is
 * instead one VXLAN datagram carrying a UDP super-packet of gso-byte datagrams (the
 * kernel reports the inner size for a tunnel's USO that a virtual link passed on). */
int vx_gro_is_one_packet(const uint8_t *data, uint32_t len, uint32_t gso);
/* The Internet checksum of len bytes, folded, not inverted, host order. */
uint16_t vx_checksum(const uint8_t *data, uint32_t len, uint32_t initial);

/* Send-side offload switch: gso 1 sends runs of equal datagrams with UDP_SEGMENT.
 * Turned off by the data path itself when the kernel refuses a GSO send. */
void vx_set_gso(struct vx_dataplane *dp, int gso);
int vx_gso_enabled(struct vx_dataplane *dp);
/* How many UDP sockets GSO sends hold now (a bounded pool, one per outer source port). */
int vx_gso_sockets(struct vx_dataplane *dp);

/* I/O, from the event loop (the data plane's own scratch; the TAP's first queue): read a
 * batch from the network's TAP, encapsulate, send on raw_fd. */
int vx_pump_tap(struct vx_dataplane *dp, int net, int raw_fd, double now,
                struct vx_pump_result *res);
/* I/O: recvmmsg a batch from udp_fd (split UDP GRO batches), decapsulate, write
 * each frame (or coalesced super-frame) to its TAP. */
int vx_pump_underlay(struct vx_dataplane *dp, int udp_fd, double now,
                     struct vx_pump_result *res);

/* The data-path threads (native/thread.c).  vx_thread_start starts n_threads of them
 * (1..VX_MAX_THREADS), sending on raw_fd, each with batch buffers of its own.  They wait
 * in epoll on the fds they are told to watch -- every queue of a network's TAP, underlay
 * UDP sockets -- in queue pairs: TAP queue q and underlay socket q are thread q mod
 * n_threads's, and what socket q receives is written into TAP queue q, so the kernel sends
 * a flow's replies to the queue its requests left by.  A thread serves its readable fds in
 * turn, one batch of at most VX_BATCH_BYTES each (round robin with a byte quantum): a
 * frame on an fd of its own waits for at most one batch of each busy fd of that thread.
 * A batch holds the data plane's lock only for its table steps, never across a syscall;
 * vx_thread_unwatch, vx_network_set and vx_network_del wait for the batches in flight.
 * Sightings queue for the control plane (at most VX_MAX_EVENTS; more are dropped and
 * counted: a new MAC is reported again by its next frame, a known one after its network's
 * refresh interval), and vx_thread_event_fd becomes
 * readable; vx_thread_take hands them over.  A TAP queue whose read fails for good (its
 * device deleted) is no longer watched and its network is named by vx_thread_tap_error.
 * While the threads run, call the sans-IO steps (vx_encap, vx_decap, ...) only through
 * them; every other call is safe from another thread.  vx_thread_stop (or
 * vx_dataplane_free) stops them; unwatch an fd before closing it. */
#define VX_MAX_EVENTS 65536             /* 3.4 MB of ring: a burst of new MACs waits here */
#define VX_MAX_WATCH 4352       /* every queue of VX_MAX_NETS TAPs, and the underlay's sockets */
int vx_thread_start(struct vx_dataplane *dp, int raw_fd, int n_threads);
/* Every queue of the network's TAP (cfg.queue_fds, or tap_fd). */
int vx_thread_watch_tap(struct vx_dataplane *dp, int net);
/* An underlay socket, as queue `queue`'s (multicast groups' sockets: 0). */
int vx_thread_watch_underlay(struct vx_dataplane *dp, int udp_fd, int queue);
int vx_thread_unwatch(struct vx_dataplane *dp, int fd);
int vx_thread_event_fd(struct vx_dataplane *dp);
int vx_thread_take(struct vx_dataplane *dp, struct vx_sighting *out, int max);
int vx_thread_tap_error(struct vx_dataplane *dp, int *net);
/* 0 while the threads serve; else the errno one ended with (its epoll failed): the event
 * fd is readable from then on. */
int vx_thread_failed(struct vx_dataplane *dp);
/* Frames read from TAP queues (underlay 0) or datagrams from underlay sockets (1) that
 * are watched now, by queue, into out[0..max); returns 1 + the highest queue watched. */
int vx_thread_queue_packets(struct vx_dataplane *dp, int underlay, uint64_t *out, int max);
/* How many threads run (0: none). */
int vx_thread_count(struct vx_dataplane *dp);
/* Sightings lost: the queue full, or more than VX_BATCH in one batch (from any pump; the
 * MAC's next frame reports it again, as its entry is not made until the control plane
 * takes a sighting). */
uint64_t vx_thread_dropped_events(struct vx_dataplane *dp);
void vx_thread_stop(struct vx_dataplane *dp);

/* The ICMP "fragmentation needed" (IPv4) or ICMPv6 "packet too big" that answers a
 * frame too big for the tunnel, as the kernel's bridged tunnels build it
 * (iptunnel_pmtud_build_icmp): into out (VX_REPLY_MAX bytes), from the frame's
 * destination to its source, quoting it; its length, or 0 where the kernel would not
 * answer (not IP, a fragment but the first, mtu below 576 / 1280, broadcast or
 * multicast, an ICMP error).  Unlike the kernel, IPv4 without DF is answered too: a
 * VTEP cannot fragment it (native/answer.c). */
uint32_t vx_too_big_reply(const struct vx_packet *p, uint32_t mtu, uint8_t *out);

/* The ARP reply or neighbour advertisement from mac that answers an ARP request or a
 * neighbour solicitation, into out (VX_REPLY_MAX bytes); its length, or 0 if frame is
 * neither (or one not to be answered: gratuitous ARP, duplicate address detection). */
uint32_t vx_neigh_reply(const uint8_t *frame, uint32_t len, const uint8_t *mac, uint8_t *out);

/* Exposed for the differential tests. */
uint16_t vx_source_port(const uint8_t *frame, uint32_t len, uint16_t lo, uint16_t hi);
/* Exposed for the tests: the forwarding table's hash of a key, keyed per data plane. */
uint32_t vx_fdb_hash(struct vx_dataplane *dp, int net, const uint8_t *mac);

#endif
