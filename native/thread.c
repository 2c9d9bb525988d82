/* vxland fast path: the data-path thread.
 *
 * Without it, the event loop in Python wakes on each readable TAP or socket and calls
 * a pump: some 60 µs of interpreter and event-loop work per wake-up, which is all of a
 * packet's cost when traffic is light.  The thread waits in epoll_wait itself and calls
 * the same pumps, so a ping crosses vxland in a few syscalls and no Python at all.  What
 * the control plane must hear -- sightings (new or moved MACs, at most one per MAC per
 * second), a TAP that failed for good -- waits in a ring, and an eventfd wakes the event
 * loop, which takes it all at once.  The lock (dataplane.h) keeps the control plane's
 * writes to the tables out of a batch.
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

enum { WATCH_FREE, WATCH_TAP, WATCH_UNDERLAY, WATCH_WAKE };

struct watch {
    int kind;
    int fd;
    int net;                           /* a TAP's network */
    uint32_t gen;
};

struct vx_thread {
    pthread_t id;
    int epoll_fd;
    int wake_fd;                       /* eventfd: the control plane -> the thread (stop) */
    int event_fd;                      /* eventfd: the thread -> the control plane (events wait) */
    int raw_fd;
    int stop;
    int failed;                        /* errno the thread ended with, else 0 */
    int notified;                      /* event_fd written, not yet taken */
    struct watch watch[VX_MAX_WATCH];  /* slot VX_MAX_WATCH - 1: wake_fd */
    struct vx_sighting *ring;          /* VX_MAX_EVENTS */
    uint32_t head, count;
    uint64_t dropped;
    int tap_error[VX_MAX_NETS];        /* errno of a TAP that failed for good, until taken */
    struct vx_pump_result result;
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

static void queue(struct vx_thread *t, const struct vx_sighting *s, int n)
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

static void drop_watch(struct vx_thread *t, struct watch *w)
{
    epoll_ctl(t->epoll_fd, EPOLL_CTL_DEL, w->fd, NULL);
    w->kind = WATCH_FREE;
    w->fd = -1;
    w->gen++;
}

/* One readable fd, the lock held: pump it, queue what it saw.  Returns 1 to stop. */
static int serve(struct vx_dataplane *dp, struct vx_thread *t, uint64_t data, double now)
{
    uint32_t slot = (uint32_t)data, gen = (uint32_t)(data >> 32);
    if (slot >= VX_MAX_WATCH)
        return 0;
    struct watch *w = &t->watch[slot];
    if (w->gen != gen || w->kind == WATCH_FREE)
        return 0;                                  /* unwatched since epoll_wait returned */
    struct vx_pump_result *res = &t->result;
    if (w->kind == WATCH_WAKE) {
        uint64_t n;
        if (read(w->fd, &n, sizeof(n)) < 0 && errno != EAGAIN) {
            t->failed = errno;
            notify(t);
            return 1;
        }
        return t->stop;
    }
    if (w->kind == WATCH_TAP) {
        vx_pump_tap_locked(dp, w->net, t->raw_fd, now, res);
        if (res->error && tap_gone(res->error)) {
            t->tap_error[w->net] = res->error;
            drop_watch(t, w);
            notify(t);
        }
    } else {
        vx_pump_underlay_locked(dp, w->fd, now, res);
    }
    if (res->n_sightings) {
        queue(t, res->sightings, res->n_sightings);
        notify(t);
    }
    return 0;
}

static void *run(void *arg)
{
    struct vx_dataplane *dp = arg;
    struct vx_thread *t = dp->thread;
    struct epoll_event events[64];
    pthread_setname_np(pthread_self(), "vxland-dp");  /* as top -H and ps -L show it */
    for (;;) {
        int n = epoll_wait(t->epoll_fd, events, 64, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int err = errno;                       /* EBADF, EINVAL: nothing left to wait on -- */
            VX_GUARD(dp);                          /* said, never a deaf thread that looks alive */
            t->failed = err;
            notify(t);
            return NULL;
        }
        VX_GUARD(dp);
        double now = monotonic();
        for (int i = 0; i < n; i++)
            if (serve(dp, t, events[i].data.u64, now))
                return NULL;
        if (t->stop)
            return NULL;
    }
}

static int add_watch(struct vx_dataplane *dp, int kind, int fd, int net)
{
    struct vx_thread *t = dp->thread;
    if (!t || fd < 0)
        return -EINVAL;
    for (int i = 0; i < VX_MAX_WATCH - 1; i++)
        if (t->watch[i].kind != WATCH_FREE && t->watch[i].fd == fd)
            return -EEXIST;
    for (int i = 0; i < VX_MAX_WATCH - 1; i++) {
        struct watch *w = &t->watch[i];
        if (w->kind != WATCH_FREE)
            continue;
        struct epoll_event ev = { .events = EPOLLIN, .data.u64 = (uint64_t)w->gen << 32 | (uint32_t)i };
        if (epoll_ctl(t->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0)
            return -errno;
        w->kind = kind;
        w->fd = fd;
        w->net = net;
        return 0;
    }
    return -ENOSPC;
}

int vx_thread_start(struct vx_dataplane *dp, int raw_fd)
{
    VX_GUARD(dp);
    if (dp->thread)
        return -EALREADY;
    struct vx_thread *t = calloc(1, sizeof(*t));
    if (!t)
        return -ENOMEM;
    t->ring = calloc(VX_MAX_EVENTS, sizeof(*t->ring));
    t->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    t->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    t->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    t->raw_fd = raw_fd;
    for (int i = 0; i < VX_MAX_WATCH; i++)
        t->watch[i].fd = -1;
    struct watch *wake = &t->watch[VX_MAX_WATCH - 1];
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = VX_MAX_WATCH - 1 };
    int err = 0;
    if (!t->ring || t->epoll_fd < 0 || t->wake_fd < 0 || t->event_fd < 0
        || epoll_ctl(t->epoll_fd, EPOLL_CTL_ADD, t->wake_fd, &ev) < 0)
        err = errno ? -errno : -ENOMEM;
    wake->kind = WATCH_WAKE;
    wake->fd = t->wake_fd;
    dp->thread = t;
    if (!err) {
        /* Signals (SIGTERM, SIGHUP, ...) are the control plane's: the thread blocks them all,
         * so they reach the event loop's thread and never interrupt a batch. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        err = -pthread_create(&t->id, NULL, run, dp);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (err) {
        dp->thread = NULL;
        for (int fd = 0, *fds[] = { &t->epoll_fd, &t->wake_fd, &t->event_fd }; fd < 3; fd++)
            if (*fds[fd] >= 0)
                close(*fds[fd]);
        free(t->ring);
        free(t);
    }
    return err;
}

int vx_thread_watch_tap(struct vx_dataplane *dp, int net)
{
    VX_GUARD(dp);
    if (net < 0 || net >= VX_MAX_NETS || !dp->nets[net].in_use)
        return -EINVAL;
    return add_watch(dp, WATCH_TAP, dp->nets[net].cfg.tap_fd, net);
}

int vx_thread_watch_underlay(struct vx_dataplane *dp, int udp_fd)
{
    VX_GUARD(dp);
    return add_watch(dp, WATCH_UNDERLAY, udp_fd, -1);
}

int vx_thread_unwatch(struct vx_dataplane *dp, int fd)
{
    VX_GUARD(dp);
    struct vx_thread *t = dp->thread;
    if (!t)
        return -EINVAL;
    for (int i = 0; i < VX_MAX_WATCH - 1; i++)
        if (t->watch[i].kind != WATCH_FREE && t->watch[i].fd == fd) {
            drop_watch(t, &t->watch[i]);
            return 0;
        }
    return -ENOENT;
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
    return dp->thread ? dp->thread->dropped : 0;
}

void vx_thread_stop(struct vx_dataplane *dp)
{
    struct vx_thread *t;
    {
        VX_GUARD(dp);
        t = dp->thread;
        if (!t)
            return;
        t->stop = 1;
        uint64_t one = 1;
        if (write(t->wake_fd, &one, sizeof(one)) < 0) {
            /* an eventfd write fails only at its counter's limit: it is readable anyway */
        }
    }                                              /* unlocked: the thread may need the lock to finish */
    pthread_join(t->id, NULL);
    VX_GUARD(dp);
    dp->thread = NULL;
    close(t->epoll_fd);
    close(t->wake_fd);
    close(t->event_fd);
    free(t->ring);
    free(t);
}

void vx_thread_free(struct vx_dataplane *dp)
{
    vx_thread_stop(dp);
}
