/* vxland fast path, inside: the data plane's state and the helpers its stages share.
 *
 * Private to native/: Python sees only fastpath.h.  The stages, in the order a
 * frame travels, each in its own file:
 *   table.c    the forwarding-table copy, networks, learning sightings
 *   encap.c    TAP frame -> outer IPv4/IPv6 + UDP + VXLAN headers
 *   send.c     datagrams -> raw sendmmsg, or UDP_SEGMENT runs
 *   decap.c    UDP payload -> checked inner frame
 *   offload.c  TSO/USO split (TAP side), coalescing (TAP side), checksums
 *   answer.c   what the data path answers into the TAP itself (ICMP "too big")
 *   neigh.c    ARP/ND suppression: the neighbour table, snooping, answering
 *   pump.c     the syscalls around them: read the TAP, recvmmsg the underlay
 *   thread.c   the data-path thread: wake-ups handled in C, sightings handed over
 *
 * One lock (dp->lock, recursive) guards the data plane: the data-path threads hold it
 * for the steps of a batch that read or change the tables and counters, never across a
 * syscall (pump.c), and every call the control plane makes that reads or changes the
 * tables or networks takes it (VX_GUARD).  The sans-IO steps (vx_encap,
 * vx_decap, ...) take no lock: the pumps call them with it held, tests without a thread.
 */
#ifndef VXLAND_DATAPLANE_H
#define VXLAND_DATAPLANE_H

#define _GNU_SOURCE
#include "fastpath.h"

#include <netinet/in.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#define CMSG_ROOM 64

/* The fuzz harnesses (fuzz/) build the pumps against a recvmmsg of their own
 * (-Dvx_recvmmsg=their_recvmmsg). */
#ifdef vx_recvmmsg
int vx_recvmmsg(int fd, struct mmsghdr *msgs, unsigned int vlen, int flags, struct timespec *timeout);
#else
#define vx_recvmmsg recvmmsg
#endif

struct vx_fdb_slot {
    uint64_t key;              /* net << 48 | mac; 0 = empty (net 0 with a zero MAC is never stored) */
    uint8_t local;
    uint8_t kind;              /* VX_FDB_LEARNED, _STATIC or _EVPN */
    struct vx_addr vtep;
    double reported;           /* when this MAC was last reported as a sighting */
};

/* A neighbour (neigh.c): network and IP -> MAC. */
struct vx_neigh_slot {
    uint8_t used;
    uint8_t family;                    /* VX_AF_INET or VX_AF_INET6 */
    uint16_t net;
    uint8_t ip[16];
    uint8_t mac[6];
    double reported;                   /* when this IP and MAC were last reported as a sighting */
};

struct vx_network {
    int in_use;
    int full;                          /* no new MACs are reported */
    int neigh_full;                    /* no new addresses are reported */
    double neigh_tokens;               /* new addresses reported: a token bucket (VX_NEIGH_RATE) */
    double neigh_stamp;
    struct vx_network_config cfg;
    struct vx_counters counters;
    struct vx_addr flood[VX_MAX_FLOOD];
    int n_flood;
    double reply_tokens;               /* answers into the TAP: a token bucket */
    double reply_stamp;
    int trust;                         /* take VXLAN only from trusted VTEPs */
    struct vx_addr *trusted;           /* sorted (memcmp), n_trusted of them; malloc'd, room for cap_trusted */
    int n_trusted;
    int cap_trusted;
    struct vx_prefix prefixes[VX_MAX_PREFIXES];
    int n_prefixes;
};

/* A UDP socket bound to one outer source port, for UDP_SEGMENT sends (send.c). */
#define VX_GSO_SOCKETS 64              /* at most this many in all, whatever the number of flows and threads */
#define VX_GSO_IDLE 1.0                /* seconds unused before a socket may serve another port */
#define VX_GSO_RETRY 10.0              /* seconds before a port that could not be bound is tried again */
struct vx_gso_socket {
    int fd;                            /* -1: free */
    uint16_t port;
    double used;                       /* when it last sent */
};

struct vx_thread;

/* What a batch writes into one network's TAP with, copied under the lock (pump.c). */
struct vx_sink {
    int fd;
    uint8_t vnet_hdr;
    uint8_t tap_uso;
};

/* A frame decapsulated but not taken by its TAP: counted as a drop once the batch is
 * written, when the frames it took are counted as received (pump.c). */
struct vx_undo {
    int32_t net;
    uint32_t len;
    int32_t reason;
};

/* What one pumping thread works in: the batch buffers and its GSO sockets.  The data plane
 * has one for the pumps the event loop calls (vx_pump_tap, vx_pump_underlay); each data-path
 * thread has its own (thread.c), so that threads share only the tables. */
struct vx_scratch {
    uint8_t *rx_arena;                 /* VX_BATCH slots of VX_SLOT bytes */
    uint32_t rx_vlen;                  /* datagrams the next recvmmsg asks for (VX_BATCH_BYTES) */
    uint8_t *heads;                    /* VX_MAX_PKTS rewritten TSO segment headers */
    uint8_t *cmsgs;                    /* VX_BATCH control buffers (UDP_GRO) */
    struct vx_packet *packets;         /* VX_MAX_PKTS */
    struct vx_packet *accepted;        /* VX_MAX_PKTS: decapsulated, to coalesce */
    struct vx_packet *rx_segments;     /* VX_MAX_PKTS: a received super-frame cut for its TAP */
    uint8_t *rx_heads;                 /* VX_MAX_PKTS of their headers, VX_SEG_HEAD bytes each */
    struct vx_tap_frame *tap_frames;   /* VX_MAX_PKTS */
    struct vx_datagram *datagrams;     /* VX_MAX_DGRAMS */
    struct vx_reply *replies;          /* VX_MAX_REPLIES: answers of one encap call, for the TAP */
    struct mmsghdr *msgs;              /* VX_MAX_DGRAMS */
    struct iovec *iov;                 /* VX_MAX_DGRAMS * 3 */
    struct sockaddr_in6 *names;        /* VX_MAX_DGRAMS; IPv4 ones as sockaddr_in inside */
    struct vx_gso_socket gso_pool[VX_GSO_SOCKETS];
    int gso_cap;                       /* of gso_pool: the threads share VX_GSO_SOCKETS out */
    int gso_open;                      /* atomic: sockets in gso_pool now (read by stats) */
    int16_t *gso_slot;                 /* per outer source port: its gso_pool slot, or -1 */
    double *gso_retry;                 /* per outer source port: when a failed bind may be tried again */
    struct vx_sink sinks[VX_MAX_NETS];  /* this batch's TAPs, by network */
    struct vx_undo *undo;              /* VX_MAX_PKTS */
    int n_undo;
};

/* vx_decap, with the frames' rx counting left to the caller when count_rx is 0: a pump counts
 * them after its writes, so that a scrape never sees rx_packets go down (decap.c). */
int vx_decap_batch(struct vx_dataplane *dp, double now, struct vx_packet *in, int n,
                   struct vx_sighting *sightings, int *n_sightings, int count_rx);

struct vx_scratch *vx_scratch_new(void);
void vx_scratch_free(struct vx_scratch *sc);
int vx_scratch_gso_sockets(const struct vx_scratch *sc);      /* send.c */

struct vx_dataplane {
    pthread_mutex_t lock;              /* recursive: see the top of this file */
    struct vx_thread *thread;          /* the data-path threads, or NULL */
    struct vx_network nets[VX_MAX_NETS];
    int n_nets;                        /* 1 + the highest network index in use */
    struct vx_counters underlay;       /* drops that belong to no network */
    uint64_t sightings_missed;         /* sightings past VX_BATCH in one batch (under the lock) */
    struct vx_neigh_slot *neigh;       /* neighbours, open addressing like slots */
    uint32_t neigh_mask;
    uint32_t neigh_used;
    struct vx_fdb_slot *slots;
    uint64_t hash_key[2];              /* the table hash's secret (SipHash key), random per data plane */
    uint32_t mask;                     /* capacity - 1, a power of two */
    uint32_t used;
    int gso;                           /* send runs of equal datagrams with UDP_SEGMENT */
    struct vx_scratch *scratch;        /* the event loop's pumps' */
};

/* Hold dp->lock until the end of the enclosing block. */
static inline struct vx_dataplane *vx_lock(struct vx_dataplane *dp)
{
    pthread_mutex_lock(&dp->lock);
    return dp;
}
static inline void vx_unlock_at_exit(struct vx_dataplane **dp) { pthread_mutex_unlock(&(*dp)->lock); }
#define VX_GUARD(dp) struct vx_dataplane *vx_guard_ __attribute__((cleanup(vx_unlock_at_exit), unused)) = vx_lock(dp)

/* ---- bytes and addresses ---- */

static inline uint16_t vx_get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline void vx_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

static inline int vx_mac_is_multicast(const uint8_t *mac) { return mac[0] & 1; }

static inline int vx_mac_is_zero(const uint8_t *mac)
{
    return !(mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]);
}

static inline int vx_addr_is_multicast(const struct vx_addr *a)
{
    return a->family == VX_AF_INET6 ? a->ip[0] == 0xff : (a->ip[0] & 0xf0) == 0xe0;
}

static inline int vx_addr_equal(const struct vx_addr *a, const struct vx_addr *b)
{
    return a->family == b->family && memcmp(a->ip, b->ip, 16) == 0;
}

/* RFC 7348 §6.1: inner 802.1Q tags are not carried unless configured. */
static inline int vx_is_vlan_tagged(const uint8_t *f)
{
    return (f[12] == 0x81 && f[13] == 0x00) || (f[12] == 0x88 && f[13] == 0xa8);
}

/* The IPv4 header checksum of n bytes (n even), ready to store. */
uint16_t vx_ip_checksum(const uint8_t *p, int n);

/* ---- table.c ---- */
uint64_t vx_keyed_hash(const struct vx_dataplane *dp, const uint64_t *words, int n);
struct vx_fdb_slot *vx_fdb_lookup(struct vx_dataplane *dp, int net, const uint8_t *mac);
int vx_find_network(struct vx_dataplane *dp, uint32_t vni);
int vx_trusts(const struct vx_network *nw, const struct vx_addr *vtep);
int vx_see_source(struct vx_dataplane *dp, int net, const uint8_t *mac, int local,
                  const struct vx_addr *vtep, double now,
                  struct vx_sighting *sightings, int *n_sightings);

/* ---- pump.c: the pumps, for the threads, which call them without the lock (the pumps
 * take it for the table steps).  A TAP pump reads queue `queue` of its network's TAP; an
 * underlay pump writes into queue `queue` of the TAPs (the kernel then sends that flow's
 * replies to the same queue). ---- */
int vx_pump_tap_in(struct vx_dataplane *dp, struct vx_scratch *sc, int net, int fd, int raw_fd,
                   double now, struct vx_pump_result *res);
int vx_pump_underlay_in(struct vx_dataplane *dp, struct vx_scratch *sc, int udp_fd, int queue,
                        double now, struct vx_pump_result *res);

/* The fd of a network's TAP queue q (any q: it wraps). */
static inline int vx_tap_queue_fd(const struct vx_network_config *c, int q)
{
    return c->n_queues > 1 ? c->queue_fds[(unsigned)q % c->n_queues] : c->tap_fd;
}

/* ---- thread.c ---- */
void vx_thread_free(struct vx_dataplane *dp);
int vx_thread_gso_sockets(struct vx_dataplane *dp);          /* held by the threads' scratch */
/* Wait until no batch that began before the call is in flight: after it, an fd no longer
 * watched or a network deleted is used by no thread.  Never with the lock held. */
void vx_thread_quiesce(struct vx_dataplane *dp);

/* ---- neigh.c ---- */
int vx_neigh_answer(struct vx_dataplane *dp, int net, const struct vx_packet *p,
                    struct vx_reply *replies, int *n_replies);
void vx_neigh_snoop(struct vx_dataplane *dp, int net, const uint8_t *frame, uint32_t len,
                    const struct vx_addr *vtep, double now, struct vx_sighting *sightings, int *n_sightings);
void vx_neigh_purge(struct vx_dataplane *dp, int net);

/* ---- send.c ---- */
socklen_t vx_to_sockaddr(struct sockaddr_in6 *sa, const struct vx_addr *a, uint16_t port);
void vx_from_sockaddr(struct vx_addr *a, const struct sockaddr_in6 *sa);
int vx_set_iov(struct iovec *iov, const void *base, size_t len);
void vx_send_datagrams(struct vx_dataplane *dp, struct vx_scratch *sc, int raw_fd, struct vx_datagram *d, int n,
                       double now);

#endif
