/* vxland fast path: the forwarding-table copy, the networks, learning sightings.
 *
 * The control plane (vxland/fdb.py) owns the table; this is its lookup copy,
 * written through vx_fdb_set/vx_fdb_del.  Learning goes the other way: a
 * source MAC seen on a frame becomes a *sighting* for the control plane to
 * decide on (vx_see_source), at most once per MAC per refresh interval (the network's,
 * or VX_SIGHTING_INTERVAL).
 */
#include "dataplane.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/random.h>

/* A known MAC is reported again only after this many seconds; one that moved, after a
 * tenth of that: a MAC that bounces between two sources cannot make every frame a
 * sighting, and a real move is still learned within a tenth of a second. */
#define VX_SIGHTING_INTERVAL 1.0
#define VX_MOVE_INTERVAL 0.1

/* ---- the forwarding table copy: open addressing, linear probing ---------- */

static uint64_t fdb_key(int net, const uint8_t *mac)
{
    uint64_t k = (uint64_t)(net + 1) << 48;   /* +1 keeps every real key non-zero */
    for (int i = 0; i < 6; i++)
        k |= (uint64_t)mac[i] << (8 * (5 - i));
    return k;
}

/* The tables' hash: SipHash-1-3 of the key under a secret per data plane (so per
 * process), so that nobody who can choose MACs or IPs can precompute ones that collide
 * and turn lookups into long probes. */
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND do { \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32); \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2; \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0; \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32); \
    } while (0)

uint64_t vx_keyed_hash(const struct vx_dataplane *dp, const uint64_t *words, int n)
{
    uint64_t v0 = dp->hash_key[0] ^ 0x736f6d6570736575ULL, v1 = dp->hash_key[1] ^ 0x646f72616e646f6dULL;
    uint64_t v2 = dp->hash_key[0] ^ 0x6c7967656e657261ULL, v3 = dp->hash_key[1] ^ 0x7465646279746573ULL;
    for (int i = 0; i < n; i++) {
        v3 ^= words[i];
        SIPROUND;
        v0 ^= words[i];
    }
    uint64_t last = (uint64_t)(8 * n) << 56;          /* the length byte: n 8-byte words */
    v3 ^= last;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static uint32_t fdb_hash(const struct vx_dataplane *dp, uint64_t key)
{
    return (uint32_t)vx_keyed_hash(dp, &key, 1);
}

uint32_t vx_fdb_hash(struct vx_dataplane *dp, int net, const uint8_t *mac)
{
    VX_GUARD(dp);
    return fdb_hash(dp, fdb_key(net, mac));
}

static struct vx_fdb_slot *fdb_find(struct vx_dataplane *dp, uint64_t key)
{
    for (uint32_t i = fdb_hash(dp, key) & dp->mask;; i = (i + 1) & dp->mask) {
        if (dp->slots[i].key == key)
            return &dp->slots[i];
        if (dp->slots[i].key == 0)
            return NULL;
    }
}

static int fdb_grow(struct vx_dataplane *dp)
{
    uint32_t old_cap = dp->mask + 1, cap = old_cap * 2;
    struct vx_fdb_slot *old = dp->slots;
    struct vx_fdb_slot *slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return -ENOMEM;
    dp->slots = slots;
    dp->mask = cap - 1;
    for (uint32_t i = 0; i < old_cap; i++) {
        if (!old[i].key)
            continue;
        uint32_t j = fdb_hash(dp, old[i].key) & dp->mask;
        while (slots[j].key)
            j = (j + 1) & dp->mask;
        slots[j] = old[i];
    }
    free(old);
    return 0;
}

int vx_fdb_set(struct vx_dataplane *dp, int net, const uint8_t *mac, int local,
               const struct vx_addr *vtep, int kind)
{
    VX_GUARD(dp);
    if (net < 0 || net >= VX_MAX_NETS || kind < VX_FDB_LEARNED || kind > VX_FDB_EVPN)
        return -EINVAL;
    uint64_t key = fdb_key(net, mac);
    struct vx_fdb_slot *s = fdb_find(dp, key);
    if (!s) {
        if ((dp->used + 1) * 2 > dp->mask + 1 && fdb_grow(dp) < 0)
            return -ENOMEM;
        uint32_t i = fdb_hash(dp, key) & dp->mask;
        while (dp->slots[i].key)
            i = (i + 1) & dp->mask;
        s = &dp->slots[i];
        s->key = key;
        s->reported = -1e300;
        dp->used++;
    }
    s->local = local ? 1 : 0;
    s->kind = (uint8_t)kind;
    if (vtep && !local)
        s->vtep = *vtep;
    else
        memset(&s->vtep, 0, sizeof(s->vtep));
    return 0;
}

int vx_fdb_del(struct vx_dataplane *dp, int net, const uint8_t *mac)
{
    VX_GUARD(dp);
    if (net < 0 || net >= VX_MAX_NETS)
        return -EINVAL;
    struct vx_fdb_slot *s = fdb_find(dp, fdb_key(net, mac));
    if (!s)
        return -ENOENT;
    /* Backward-shift deletion keeps every probe chain unbroken without tombstones. */
    uint32_t hole = (uint32_t)(s - dp->slots);
    for (uint32_t j = (hole + 1) & dp->mask; dp->slots[j].key; j = (j + 1) & dp->mask) {
        uint32_t home = fdb_hash(dp, dp->slots[j].key) & dp->mask;
        /* move j into the hole unless its home lies cyclically in (hole, j] */
        int stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!stays) {
            dp->slots[hole] = dp->slots[j];
            hole = j;
        }
    }
    memset(&dp->slots[hole], 0, sizeof(dp->slots[hole]));
    dp->used--;
    return 0;
}

int vx_fdb_count(struct vx_dataplane *dp)
{
    VX_GUARD(dp);
    return (int)dp->used;
}

int vx_flood_set(struct vx_dataplane *dp, int net, const struct vx_addr *remotes, int n)
{
    VX_GUARD(dp);
    if (net < 0 || net >= VX_MAX_NETS || n < 0 || n > VX_MAX_FLOOD)
        return -EINVAL;
    memcpy(dp->nets[net].flood, remotes, sizeof(*remotes) * (size_t)n);
    dp->nets[net].n_flood = n;
    return 0;
}


/* ---- trust: which VTEPs a network takes VXLAN from --------------------------- */

static int addr_order(const void *a, const void *b)
{
    return memcmp(a, b, sizeof(struct vx_addr));
}

int vx_trust_set(struct vx_dataplane *dp, int net, int on, const struct vx_addr *vteps, int n_vteps,
                 const struct vx_prefix *prefixes, int n_prefixes)
{
    VX_GUARD(dp);
    if (net < 0 || net >= VX_MAX_NETS || n_vteps < 0 || n_vteps > VX_MAX_TRUSTED
        || n_prefixes < 0 || n_prefixes > VX_MAX_PREFIXES)
        return -EINVAL;
    for (int i = 0; i < n_prefixes; i++)
        if (prefixes[i].len > (prefixes[i].addr.family == VX_AF_INET6 ? 128 : 32))
            return -EINVAL;
    struct vx_addr *sorted = NULL;
    if (n_vteps) {
        sorted = malloc(sizeof(*sorted) * (size_t)n_vteps);
        if (!sorted)
            return -ENOMEM;
        memcpy(sorted, vteps, sizeof(*sorted) * (size_t)n_vteps);
        qsort(sorted, (size_t)n_vteps, sizeof(*sorted), addr_order);
    }
    struct vx_network *nw = &dp->nets[net];
    free(nw->trusted);
    nw->trusted = sorted;
    nw->n_trusted = nw->cap_trusted = n_vteps;
    if (n_prefixes)
        memcpy(nw->prefixes, prefixes, sizeof(*prefixes) * (size_t)n_prefixes);
    nw->n_prefixes = n_prefixes;
    nw->trust = on ? 1 : 0;
    return 0;
}

int vx_trust_vtep(struct vx_dataplane *dp, int net, const struct vx_addr *vtep, int trusted)
{
    VX_GUARD(dp);
    if (net < 0 || net >= VX_MAX_NETS || (vtep->family != VX_AF_INET && vtep->family != VX_AF_INET6))
        return -EINVAL;
    struct vx_network *nw = &dp->nets[net];
    int lo = 0, hi = nw->n_trusted;                 /* the first slot not below vtep */
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (addr_order(&nw->trusted[mid], vtep) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    int found = lo < nw->n_trusted && !addr_order(&nw->trusted[lo], vtep);
    if (!trusted) {
        if (found) {
            memmove(&nw->trusted[lo], &nw->trusted[lo + 1], sizeof(*vtep) * (size_t)(nw->n_trusted - lo - 1));
            nw->n_trusted--;
        }
        return 0;
    }
    if (found)
        return 0;
    if (nw->n_trusted >= VX_MAX_TRUSTED)
        return -ENOSPC;
    if (nw->n_trusted == nw->cap_trusted) {
        int cap = nw->cap_trusted ? nw->cap_trusted * 2 : 16;
        if (cap > VX_MAX_TRUSTED)
            cap = VX_MAX_TRUSTED;
        struct vx_addr *grown = realloc(nw->trusted, sizeof(*grown) * (size_t)cap);
        if (!grown)
            return -ENOMEM;
        nw->trusted = grown;
        nw->cap_trusted = cap;
    }
    memmove(&nw->trusted[lo + 1], &nw->trusted[lo], sizeof(*vtep) * (size_t)(nw->n_trusted - lo));
    nw->trusted[lo] = *vtep;
    nw->n_trusted++;
    return 0;
}

static int in_prefix(const struct vx_prefix *p, const struct vx_addr *a)
{
    if (p->addr.family != a->family)
        return 0;
    int whole = p->len / 8, rest = p->len % 8;
    if (memcmp(p->addr.ip, a->ip, (size_t)whole))
        return 0;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return !rest || ((p->addr.ip[whole] ^ a->ip[whole]) & mask) == 0;
}

int vx_trusts(const struct vx_network *nw, const struct vx_addr *vtep)
{
    if (!nw->trust)
        return 1;
    if (nw->n_trusted && bsearch(vtep, nw->trusted, (size_t)nw->n_trusted, sizeof(*vtep), addr_order))
        return 1;
    for (int i = 0; i < nw->n_prefixes; i++)
        if (in_prefix(&nw->prefixes[i], vtep))
            return 1;
    return 0;
}

/* ---- networks ------------------------------------------------------------- */

struct vx_fdb_slot *vx_fdb_lookup(struct vx_dataplane *dp, int net, const uint8_t *mac)
{
    return fdb_find(dp, fdb_key(net, mac));
}

struct vx_dataplane *vx_dataplane_new(void)
{
    struct vx_dataplane *dp = calloc(1, sizeof(*dp));
    if (!dp)
        return NULL;
    pthread_mutexattr_t recursive;
    pthread_mutexattr_init(&recursive);
    pthread_mutexattr_settype(&recursive, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&dp->lock, &recursive);
    pthread_mutexattr_destroy(&recursive);
    dp->mask = 1023;
    if (getrandom(dp->hash_key, sizeof(dp->hash_key), 0) != sizeof(dp->hash_key)) {
        /* no entropy source at all (a very old kernel): the address of a heap block and the time */
        dp->hash_key[0] = (uint64_t)(uintptr_t)dp ^ (uint64_t)time(NULL);
        dp->hash_key[1] = dp->hash_key[0] * 0x9e3779b97f4a7c15ULL;
    }
    dp->slots = calloc(dp->mask + 1, sizeof(*dp->slots));
    dp->scratch = vx_scratch_new();
    if (!dp->slots || !dp->scratch) {
        vx_dataplane_free(dp);
        return NULL;
    }
    return dp;
}

void vx_dataplane_free(struct vx_dataplane *dp)
{
    if (!dp)
        return;
    vx_thread_free(dp);                           /* stopped first: it uses everything below */
    vx_scratch_free(dp->scratch);
    free(dp->neigh);
    for (int i = 0; i < VX_MAX_NETS; i++)
        free(dp->nets[i].trusted);
    free(dp->slots);
    pthread_mutex_destroy(&dp->lock);
    free(dp);
}

struct vx_scratch *vx_scratch_new(void)
{
    struct vx_scratch *sc = calloc(1, sizeof(*sc));
    if (!sc)
        return NULL;
    for (int i = 0; i < VX_GSO_SOCKETS; i++)
        sc->gso_pool[i].fd = -1;                  /* before anything can fail: free() closes them */
    sc->gso_cap = VX_GSO_SOCKETS;
    sc->gso_slot = malloc(65536 * sizeof(*sc->gso_slot));
    sc->gso_retry = calloc(65536, sizeof(*sc->gso_retry));
    sc->rx_arena = malloc((size_t)VX_BATCH * VX_SLOT);
    sc->heads = malloc((size_t)VX_MAX_PKTS * VX_SEG_HEAD);
    sc->cmsgs = calloc(VX_BATCH, CMSG_ROOM);
    sc->packets = calloc(VX_MAX_PKTS, sizeof(*sc->packets));
    sc->accepted = calloc(VX_MAX_PKTS, sizeof(*sc->accepted));
    sc->rx_segments = calloc(VX_MAX_PKTS, sizeof(*sc->rx_segments));
    sc->rx_heads = malloc((size_t)VX_MAX_PKTS * VX_SEG_HEAD);
    sc->tap_frames = calloc(VX_MAX_PKTS, sizeof(*sc->tap_frames));
    sc->datagrams = calloc(VX_MAX_DGRAMS, sizeof(*sc->datagrams));
    sc->replies = calloc(VX_MAX_REPLIES, sizeof(*sc->replies));
    sc->msgs = calloc(VX_MAX_DGRAMS, sizeof(*sc->msgs));
    sc->iov = calloc((size_t)VX_MAX_DGRAMS * 3, sizeof(*sc->iov));
    sc->names = calloc(VX_MAX_DGRAMS, sizeof(*sc->names));
    sc->undo = calloc(VX_MAX_PKTS, sizeof(*sc->undo));
    if (!sc->undo || !sc->gso_slot || !sc->gso_retry || !sc->rx_arena || !sc->heads || !sc->cmsgs || !sc->packets
        || !sc->accepted || !sc->rx_segments || !sc->rx_heads || !sc->tap_frames || !sc->datagrams || !sc->replies
        || !sc->msgs || !sc->iov || !sc->names) {
        vx_scratch_free(sc);
        return NULL;
    }
    for (int i = 0; i < 65536; i++)
        sc->gso_slot[i] = -1;
    return sc;
}

void vx_scratch_free(struct vx_scratch *sc)
{
    if (!sc)
        return;
    for (int i = 0; i < VX_GSO_SOCKETS; i++)
        if (sc->gso_pool[i].fd >= 0)
            close(sc->gso_pool[i].fd);
    free(sc->gso_slot);
    free(sc->gso_retry);
    free(sc->rx_arena);
    free(sc->heads);
    free(sc->cmsgs);
    free(sc->packets);
    free(sc->accepted);
    free(sc->rx_segments);
    free(sc->rx_heads);
    free(sc->tap_frames);
    free(sc->datagrams);
    free(sc->replies);
    free(sc->msgs);
    free(sc->iov);
    free(sc->names);
    free(sc->undo);
    free(sc);
}

int vx_gso_sockets(struct vx_dataplane *dp)
{
    VX_GUARD(dp);
    return vx_scratch_gso_sockets(dp->scratch) + vx_thread_gso_sockets(dp);
}

void vx_set_gso(struct vx_dataplane *dp, int gso)
{
    __atomic_store_n(&dp->gso, gso ? 1 : 0, __ATOMIC_RELAXED);      /* read by batches without the lock */
}

int vx_gso_enabled(struct vx_dataplane *dp)
{
    return __atomic_load_n(&dp->gso, __ATOMIC_RELAXED);
}

int vx_network_set(struct vx_dataplane *dp, int net, const struct vx_network_config *cfg)
{
    {
        VX_GUARD(dp);
        if (net < 0 || net >= VX_MAX_NETS || cfg->src_port_min > cfg->src_port_max || cfg->n_queues > VX_MAX_QUEUES)
            return -EINVAL;
        dp->nets[net].cfg = *cfg;
        dp->nets[net].in_use = 1;
        if (net >= dp->n_nets)
            dp->n_nets = net + 1;
    }
    vx_thread_quiesce(dp);                      /* no batch writes to the fds it had before */
    return 0;
}

int vx_network_set_full(struct vx_dataplane *dp, int net, int full)
{
    VX_GUARD(dp);
    if (net < 0 || net >= VX_MAX_NETS || !dp->nets[net].in_use)
        return -EINVAL;
    dp->nets[net].full = full ? 1 : 0;
    return 0;
}

int vx_network_set_neigh_full(struct vx_dataplane *dp, int net, int full)
{
    VX_GUARD(dp);
    if (net < 0 || net >= VX_MAX_NETS || !dp->nets[net].in_use)
        return -EINVAL;
    dp->nets[net].neigh_full = full ? 1 : 0;
    return 0;
}

/* Drop every entry of one network: rehash the rest into a fresh array of the same size. */
static int fdb_purge(struct vx_dataplane *dp, int net)
{
    uint32_t cap = dp->mask + 1;
    struct vx_fdb_slot *old = dp->slots, *slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return -ENOMEM;
    uint64_t key_net = (uint64_t)(net + 1) << 48;
    dp->slots = slots;
    dp->used = 0;
    for (uint32_t i = 0; i < cap; i++) {
        if (!old[i].key || (old[i].key & 0xffff000000000000ULL) == key_net)
            continue;
        uint32_t j = fdb_hash(dp, old[i].key) & dp->mask;
        while (slots[j].key)
            j = (j + 1) & dp->mask;
        slots[j] = old[i];
        dp->used++;
    }
    free(old);
    return 0;
}

static void network_del_locked(struct vx_dataplane *dp, int net)
{
    if (net < 0 || net >= VX_MAX_NETS)
        return;
    if (fdb_purge(dp, net) < 0) {               /* out of memory: delete them one by one instead */
        for (uint32_t i = 0; i <= dp->mask; i++) {
            while (dp->slots[i].key && (dp->slots[i].key >> 48) == (uint64_t)(net + 1)) {
                uint8_t mac[6];
                for (int k = 0; k < 6; k++)
                    mac[k] = (uint8_t)(dp->slots[i].key >> (8 * (5 - k)));
                vx_fdb_del(dp, net, mac);       /* may shift another entry into slot i */
            }
        }
    }
    vx_neigh_purge(dp, net);
    free(dp->nets[net].trusted);
    memset(&dp->nets[net], 0, sizeof(dp->nets[net]));
    while (dp->n_nets > 0 && !dp->nets[dp->n_nets - 1].in_use)
        dp->n_nets--;
}

void vx_network_del(struct vx_dataplane *dp, int net)
{
    {
        VX_GUARD(dp);
        network_del_locked(dp, net);
    }
    vx_thread_quiesce(dp);                      /* no batch in flight names it: its TAP may close */
}

int vx_counters_read(struct vx_dataplane *dp, int net, struct vx_counters *out)
{
    if (net < -1 || net >= VX_MAX_NETS)
        return -EINVAL;
    VX_GUARD(dp);
    *out = net < 0 ? dp->underlay : dp->nets[net].counters;
    return 0;
}

/* Every received datagram asks this, those with unknown VNIs too: scan only the
 * slots that can be in use. */
int vx_find_network(struct vx_dataplane *dp, uint32_t vni)
{
    for (int i = 0; i < dp->n_nets; i++)
        if (dp->nets[i].in_use && dp->nets[i].cfg.vni == vni)
            return i;
    return -1;
}


/* ---- addresses and learning ------------------------------------------------ */

/* A frame's source MAC seen behind `local` or `vtep`.  Returns 0 to pass the
 * frame on, or a drop reason.  Emits a sighting when the control plane should
 * hear of the MAC: new, moved, or not reported for the network's refresh interval. */
int vx_see_source(struct vx_dataplane *dp, int net, const uint8_t *mac, int local,
                  const struct vx_addr *vtep, double now,
                  struct vx_sighting *sightings, int *n_sightings)
{
    struct vx_fdb_slot *s = fdb_find(dp, fdb_key(net, mac));
    const struct vx_network_config *c = &dp->nets[net].cfg;
    if (s) {
        int same = s->local == local && (local || vx_addr_equal(&s->vtep, vtep));
        if (s->kind == VX_FDB_STATIC)
            return same ? 0 : VX_DROP_STATIC_CONFLICT;
        if (s->kind == VX_FDB_EVPN && (same || !local))
            return 0;                               /* where it lives is BGP's to say */
        double interval = !same ? VX_MOVE_INTERVAL : c->refresh > 0 ? c->refresh : VX_SIGHTING_INTERVAL;
        if (now - s->reported < interval)
            return 0;
    }
    if (!c->learning || (!local && !c->learn_remote))
        return 0;
    if (!s && dp->nets[net].full) {
        dp->nets[net].counters.learn_refused++;     /* per frame: an operator can alert on it */
        return 0;
    }
    /* one sighting per MAC per batch is enough */
    for (int i = *n_sightings - 1; i >= 0 && i >= *n_sightings - 8; i--)
        if (sightings[i].net == net && !memcmp(sightings[i].mac, mac, 6) &&
            sightings[i].local == local && (local || vx_addr_equal(&sightings[i].vtep, vtep)))
            return 0;
    if (*n_sightings >= VX_BATCH) {
        dp->sightings_missed++;
        return 0;
    }
    struct vx_sighting *e = &sightings[(*n_sightings)++];
    e->net = net;
    memcpy(e->mac, mac, 6);
    e->local = (uint8_t)local;
    if (local)
        memset(&e->vtep, 0, sizeof(e->vtep));
    else
        e->vtep = *vtep;
    memset(&e->ip, 0, sizeof(e->ip));
    if (s)
        s->reported = now;
    return 0;
}

