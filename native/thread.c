/* vxland fast path: the data-path threads.
 *
 * Without them, the event loop in Python wakes on each readable TAP or socket and calls
 * a pump: some 60 µs of interpreter and event-loop work per wake-up, which is all of a
 * packet's cost when traffic is light.  A thread waits in epoll_wait itself and calls
 * the same pumps, so a ping crosses vxland in a few syscalls and no Python at all.  What
 * the control plane must hear -- sightings (new or moved MACs, at most one per MAC per
 * second), a TAP that failed for good -- waits in one ring for all threads, and an
 * eventfd wakes the event loop, which takes it all at once.  The lock (dataplane.h) keeps
 * the control plane's writes to the tables out of a batch, and the threads' batches out
 * of each other's tables and counters; each thread has its own batch buffers (scratch).
 *
 * Flow isolation.  A multi-queue TAP hands each flow to one queue by its hash, and a
 * SO_REUSEPORT group of underlay sockets each outer 4-tuple to one socket (vxland's outer
 * source port follows the inner flow): a ping and a bulk transfer arrive, most of the
 * time, on different fds.  Queue q of every TAP and underlay socket q make queue pair q,
 * served by thread q mod n.  A thread serves its readable fds in turn, one batch each,
 * a batch ending at VX_BATCH_BYTES: round robin with a byte quantum, so a sparse flow's
 * frame waits for at most one batch of each busy fd of its thread, never for a busy fd's
 * whole backlog.  (Deficit accounting would add fairness between two bulk fds -- a batch
 * overshoots its quantum by less than one frame -- and nothing for the sparse one.)
 *
 * Stale wake-ups: an fd unwatched (and perhaps closed, its number reused) after
 * epoll_wait returned may still be in the returned events.  Each watch slot has a
 * generation, carried in the event's data; a mismatch is skipped.
 */
#define _GNU_SOURCE                    /* pthread_setname_np */
#include "dataplane.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

enum { WATCH_FREE, WATCH_TAP, WATCH_UNDERLAY };
#define WAKE_DATA UINT64_MAX           /* the event of the stop eventfd */

struct watch {
    int kind;
    int fd;
    int net;                           /* a TAP's network */
    int queue;                         /* which queue pair: a TAP queue, or an underlay socket */
    uint32_t gen;
    uint64_t packets;                  /* frames or datagrams read from it */
};

/* One data-path thread. */
struct vx_worker {
    struct vx_dataplane *dp;
    pthread_t id;
    int running;                       /* created, not yet joined */
    uint64_t state;                    /* atomic: odd while it serves a wake-up's batches, +1 at each
                                        * start and end (vx_thread_quiesce waits for it to move) */
    int epoll_fd;
    struct vx_scratch *sc;
    struct vx_pump_result result;
};

/* The threads, and what they hand over to the control plane; all of it under dp->lock but
 * for what each worker alone touches (its epoll_wait, its scratch, its state). */
struct vx_thread {
    int n_workers;
    struct vx_worker workers[VX_MAX_THREADS];
    int wake_fd;                       /* eventfd in every worker's epoll: written once, to stop them */
    int event_fd;                      /* eventfd: the threads -> the control plane (events wait) */
    int raw_fd;
    int stop;
    int failed;                        /* errno a thread ended with, else 0 */
    int notified;                      /* event_fd written, not yet taken */
    struct watch watch[VX_MAX_WATCH];
    struct vx_sighting *ring;          /* VX_MAX_EVENTS */
    uint32_t head, count;
    uint64_t dropped;
    int tap_error[VX_MAX_NETS];        /* errno of a TAP that failed for good, until taken */
};

static double monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);           /* Python's time.monotonic() */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int tap_gone(int err)
{
    return err == EBADFD || err == ENODEV || err == ENXIO || err == EIO || err == EBADF;
}

static void queue_sightings(struct vx_thread *t, const struct vx_sighting *s, int n)
{
    for (int i = 0; i < n; i++) {
        if (t->count == VX_MAX_EVENTS) {
            t->dropped += (uint64_t)(n - i);
            return;
        }
        t->ring[(t->head + t->count++) % VX_MAX_EVENTS] = s[i];
    }
}

static void notify(struct vx_thread *t)
{
    if (t->notified)
        return;
    uint64_t one = 1;
    if (write(t->event_fd, &one, sizeof(one)) == sizeof(one))
        t->notified = 1;
}

static struct vx_worker *worker_of(struct vx_thread *t, int queue)
{
    return &t->workers[(unsigned)queue % (unsigned)t->n_workers];
}

static void drop_watch(struct vx_thread *t, struct watch *w)
{
    epoll_ctl(worker_of(t, w->queue)->epoll_fd, EPOLL_CTL_DEL, w->fd, NULL);
    w->kind = WATCH_FREE;
    w->fd = -1;
    w->gen++;
}

/* One readable fd: pump one batch of it, queue what it saw.  Returns 1 to stop.  The lock
 * is taken to look at the watch and to hand over what the batch saw; the pumps take it for
 * their table steps, and do their syscalls without it. */
static int serve(struct vx_dataplane *dp, struct vx_worker *me, uint64_t data, double now)
{
    struct vx_thread *t = dp->thread;          /* set before the threads start, cleared after they end */
    struct watch w;
    {
        VX_GUARD(dp);
        if (data == WAKE_DATA)
            return t->stop;
        uint32_t slot = (uint32_t)data, gen = (uint32_t)(data >> 32);
        if (slot >= VX_MAX_WATCH || t->watch[slot].gen != gen || t->watch[slot].kind == WATCH_FREE)
            return 0;                              /* unwatched since epoll_wait returned */
        w = t->watch[slot];
    }
    struct vx_pump_result *res = &me->result;
    if (w.kind == WATCH_TAP)
        vx_pump_tap_in(dp, me->sc, w.net, w.fd, t->raw_fd, now, res);
    else
        vx_pump_underlay_in(dp, me->sc, w.fd, w.queue, now, res);
    VX_GUARD(dp);
    struct watch *now_w = &t->watch[(uint32_t)data];
    int still = now_w->gen == w.gen && now_w->kind == w.kind;  /* not unwatched meanwhile */
    if (still)
        now_w->packets += (uint64_t)res->packets;
    if (still && w.kind == WATCH_TAP && res->error && tap_gone(res->error)) {
        t->tap_error[w.net] = res->error;
        drop_watch(t, now_w);
        notify(t);
    }
    if (res->n_sightings) {
        queue_sightings(t, res->sightings, res->n_sightings);
        notify(t);
    }
    return 0;
}

static void *run(void *arg)
{
    struct vx_worker *me = arg;
    struct vx_dataplane *dp = me->dp;
    struct epoll_event events[64];
    pthread_setname_np(pthread_self(), "vxland-dp");  /* as top -H and ps -L show it */
    for (;;) {
        int n = epoll_wait(me->epoll_fd, events, 64, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int err = errno;                       /* EBADF, EINVAL: nothing left to wait on -- */
            VX_GUARD(dp);                          /* said, never a deaf thread that looks alive */
            dp->thread->failed = err;
            notify(dp->thread);
            return NULL;
        }
        double now = monotonic();
        int stop = 0;
        __atomic_add_fetch(&me->state, 1, __ATOMIC_SEQ_CST);       /* odd: serving */
        for (int i = 0; i < n && !stop; i++)
            stop = serve(dp, me, events[i].data.u64, now);
        __atomic_add_fetch(&me->state, 1, __ATOMIC_SEQ_CST);       /* even: done */
        if (stop || __atomic_load_n(&dp->thread->stop, __ATOMIC_RELAXED))
            return NULL;
    }
}

void vx_thread_quiesce(struct vx_dataplane *dp)
{
    struct vx_thread *t;
    {
        VX_GUARD(dp);
        t = dp->thread;
    }
    /* The threads live until vx_thread_stop, which the control plane -- the only caller of
     * this -- does not run at the same time.  A worker that serves now (odd state) may use
     * what the caller just changed under the lock; one that is idle, or starts after, looks
     * at the watches under the lock and sees the change.  Waiting for its state to move, not
     * for a mutex it takes back at once, never starves the control plane under load. */
    for (int i = 0; t && i < t->n_workers; i++) {
        uint64_t s = __atomic_load_n(&t->workers[i].state, __ATOMIC_SEQ_CST);
        while ((s & 1) && __atomic_load_n(&t->workers[i].state, __ATOMIC_SEQ_CST) == s) {
            struct timespec pause = { 0, 20000 };
            nanosleep(&pause, NULL);
        }
    }
}

static int add_watch(struct vx_dataplane *dp, int kind, int fd, int net, int queue)
{
    struct vx_thread *t = dp->thread;
    if (!t || fd < 0 || queue < 0)
        return -EINVAL;
    for (int i = 0; i < VX_MAX_WATCH; i++)
        if (t->watch[i].kind != WATCH_FREE && t->watch[i].fd == fd)
            return -EEXIST;
    for (int i = 0; i < VX_MAX_WATCH; i++) {
        struct watch *w = &t->watch[i];
        if (w->kind != WATCH_FREE)
            continue;
        struct epoll_event ev = { .events = EPOLLIN, .data.u64 = (uint64_t)w->gen << 32 | (uint32_t)i };
        if (epoll_ctl(worker_of(t, queue)->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0)
            return -errno;
        w->kind = kind;
        w->fd = fd;
        w->net = net;
        w->queue = queue;
        w->packets = 0;
        return 0;
    }
    return -ENOSPC;
}

/* Stop the threads that run, then free everything; t is no longer dp->thread. */
static void stop_and_free(struct vx_dataplane *dp, struct vx_thread *t)
{
    {
        VX_GUARD(dp);
        __atomic_store_n(&t->stop, 1, __ATOMIC_RELAXED);
        uint64_t one = 1;
        if (t->wake_fd >= 0 && write(t->wake_fd, &one, sizeof(one)) < 0) {
            /* an eventfd write fails only at its counter's limit: it is readable anyway */
        }
    }                                              /* unlocked: a thread may need the lock to finish */
    for (int i = 0; i < t->n_workers; i++)
        if (t->workers[i].running)
            pthread_join(t->workers[i].id, NULL);
    VX_GUARD(dp);
    if (dp->thread == t)
        dp->thread = NULL;
    for (int i = 0; i < t->n_workers; i++) {
        if (t->workers[i].epoll_fd >= 0)
            close(t->workers[i].epoll_fd);
        vx_scratch_free(t->workers[i].sc);
    }
    for (int fd = 0, *fds[] = { &t->wake_fd, &t->event_fd }; fd < 2; fd++)
        if (*fds[fd] >= 0)
            close(*fds[fd]);
    free(t->ring);
    free(t);
}

int vx_thread_start(struct vx_dataplane *dp, int raw_fd, int n_threads)
{
    if (n_threads < 1 || n_threads > VX_MAX_THREADS)
        return -EINVAL;
    struct vx_thread *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->n_workers = n_threads;
    t->raw_fd = raw_fd;
    for (int i = 0; i < VX_MAX_WATCH; i++)
        t->watch[i].fd = -1;
    t->ring = calloc(VX_MAX_EVENTS, sizeof(*t->ring));
    t->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    t->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    int err = !t->ring ? -ENOMEM : t->wake_fd < 0 || t->event_fd < 0 ? -errno : 0;
    for (int i = 0; i < n_threads; i++) {
        struct vx_worker *w = &t->workers[i];
        w->dp = dp;
        w->epoll_fd = -1;
        if (err)
            continue;
        w->sc = vx_scratch_new();
        if (w->sc)
            w->sc->gso_cap = VX_GSO_SOCKETS / n_threads;      /* VX_GSO_SOCKETS in all */
        w->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event ev = { .events = EPOLLIN, .data.u64 = WAKE_DATA };
        if (!w->sc)
            err = -ENOMEM;
        else if (w->epoll_fd < 0 || epoll_ctl(w->epoll_fd, EPOLL_CTL_ADD, t->wake_fd, &ev) < 0)
            err = -errno;
    }
    {
        VX_GUARD(dp);
        if (dp->thread) {
            err = -EALREADY;
        } else if (!err) {
            dp->thread = t;
            /* Signals (SIGTERM, SIGHUP, ...) are the control plane's: the threads block them all,
             * so they reach the event loop's thread and never interrupt a batch. */
            sigset_t all, old;
            sigfillset(&all);
            pthread_sigmask(SIG_SETMASK, &all, &old);
            for (int i = 0; i < n_threads && !err; i++) {
                err = -pthread_create(&t->workers[i].id, NULL, run, &t->workers[i]);
                t->workers[i].running = !err;
            }
            pthread_sigmask(SIG_SETMASK, &old, NULL);
        }
    }
    if (err)
        stop_and_free(dp, t);
    return err;
}

static int unwatch_locked(struct vx_thread *t, int fd)
{
    for (int i = 0; t && i < VX_MAX_WATCH; i++)
        if (t->watch[i].kind != WATCH_FREE && t->watch[i].fd == fd) {
            drop_watch(t, &t->watch[i]);
            return 0;
        }
    return -ENOENT;
}

int vx_thread_watch_tap(struct vx_dataplane *dp, int net)
{
    int err = 0;
    {
        VX_GUARD(dp);
        if (net < 0 || net >= VX_MAX_NETS || !dp->nets[net].in_use)
            return -EINVAL;
        const struct vx_network_config *c = &dp->nets[net].cfg;
        int n = c->n_queues > 1 ? c->n_queues : 1;
        for (int q = 0; q < n && !err; q++) {
            err = add_watch(dp, WATCH_TAP, vx_tap_queue_fd(c, q), net, q);
            while (err && q-- > 0)                 /* all of its queues, or none */
                unwatch_locked(dp->thread, vx_tap_queue_fd(c, q));
        }
    }
    if (err)
        vx_thread_quiesce(dp);
    return err;
}

int vx_thread_watch_underlay(struct vx_dataplane *dp, int udp_fd, int queue)
{
    VX_GUARD(dp);
    return add_watch(dp, WATCH_UNDERLAY, udp_fd, -1, queue);
}

int vx_thread_unwatch(struct vx_dataplane *dp, int fd)
{
    int err;
    {
        VX_GUARD(dp);
        if (!dp->thread)
            return -EINVAL;
        err = unwatch_locked(dp->thread, fd);
    }
    vx_thread_quiesce(dp);                     /* then it may be closed */
    return err;
}

int vx_thread_queue_packets(struct vx_dataplane *dp, int underlay, uint64_t *out, int max)
{
    VX_GUARD(dp);
    struct vx_thread *t = dp->thread;
    int n = 0;
    for (int i = 0; i < max; i++)
        out[i] = 0;
    for (int i = 0; t && i < VX_MAX_WATCH; i++) {
        const struct watch *w = &t->watch[i];
        if (w->kind != (underlay ? WATCH_UNDERLAY : WATCH_TAP) || w->queue >= max)
            continue;
        out[w->queue] += w->packets;
        n = w->queue + 1 > n ? w->queue + 1 : n;
    }
    return n;
}

int vx_thread_count(struct vx_dataplane *dp)
{
    VX_GUARD(dp);
    return dp->thread ? dp->thread->n_workers : 0;
}

int vx_thread_gso_sockets(struct vx_dataplane *dp)
{
    VX_GUARD(dp);
    int n = 0;
    for (int i = 0; dp->thread && i < dp->thread->n_workers; i++)
        n += vx_scratch_gso_sockets(dp->thread->workers[i].sc);
    return n;
}

int vx_thread_event_fd(struct vx_dataplane *dp)
{
    VX_GUARD(dp);
    return dp->thread ? dp->thread->event_fd : -1;
}

int vx_thread_take(struct vx_dataplane *dp, struct vx_sighting *out, int max)
{
    VX_GUARD(dp);
    struct vx_thread *t = dp->thread;
    if (!t)
        return 0;
    int n = 0;
    while (n < max && t->count) {
        out[n++] = t->ring[t->head];
        t->head = (t->head + 1) % VX_MAX_EVENTS;
        t->count--;
    }
    if (!t->count) {
        uint64_t ignored;
        if (read(t->event_fd, &ignored, sizeof(ignored)) >= 0 || errno == EAGAIN)
            t->notified = 0;
        for (int i = 0; i < VX_MAX_NETS && !t->notified; i++)
            if (t->tap_error[i])
                notify(t);                         /* still to be taken: keep the fd readable */
        if (t->failed && !t->notified)
            notify(t);
    }
    return n;
}

int vx_thread_tap_error(struct vx_dataplane *dp, int *net)
{
    VX_GUARD(dp);
    struct vx_thread *t = dp->thread;
    for (int i = 0; t && i < VX_MAX_NETS; i++)
        if (t->tap_error[i]) {
            int err = t->tap_error[i];
            t->tap_error[i] = 0;
            *net = i;
            return err;
        }
    return 0;
}

int vx_thread_failed(struct vx_dataplane *dp)
{
    VX_GUARD(dp);
    return dp->thread ? dp->thread->failed : 0;
}

uint64_t vx_thread_dropped_events(struct vx_dataplane *dp)
{
    VX_GUARD(dp);
    return (dp->thread ? dp->thread->dropped : 0) + dp->sightings_missed;
}

void vx_thread_stop(struct vx_dataplane *dp)
{
    struct vx_thread *t;
    {
        VX_GUARD(dp);
        t = dp->thread;
    }
    if (t)
        stop_and_free(dp, t);
}

void vx_thread_free(struct vx_dataplane *dp)
{
    vx_thread_stop(dp);
}
