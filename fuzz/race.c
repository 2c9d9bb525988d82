/* The data-path threads against the control plane, under ThreadSanitizer (scripts/race.sh).
 *
 * One data plane, two threads watching a two-queue "TAP" (a datagram socketpair per queue)
 * and two loopback underlay sockets (a SO_REUSEPORT group): queue pairs 0 and 1, one per
 * thread.  The flood list is our own address, so every frame fed into the TAP goes out on
 * the raw socket, comes back on the underlay, is decapsulated and written to the TAP
 * again: every pump runs all the time, in both threads at once.  Meanwhile a feeder thread
 * pours frames from random source MACs into both queues (and drains what comes back), and
 * the main thread does what the Python control plane does -- sets and deletes forwarding
 * entries and neighbours, changes the flood list and the network's configuration, reads
 * counters, takes sightings, unwatches and watches the TAP again, deletes the network and
 * adds it back -- for the given seconds, then stops the threads and frees everything.  A
 * data race, a leak or a deadlock fails it.  Needs root (the raw socket).
 *   race [SECONDS] */
#include "fastpath.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static atomic_int stop;
static int tap_theirs[2];

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *feed(void *arg)
{
    (void)arg;
    uint8_t frame[128], back[70000];
    unsigned seed = 1;
    memset(frame, 0, sizeof(frame));
    while (!atomic_load(&stop)) {
        memcpy(frame, "\x02\x00\x00\x00\x00\x00", 6);                /* to one of 16 MACs ... */
        frame[5] = (uint8_t)(rand_r(&seed) % 16);
        frame[6] = 0x02;                                              /* from a random local MAC */
        for (int i = 7; i < 12; i++)
            frame[i] = (uint8_t)rand_r(&seed);
        frame[12] = 0x08;                                             /* IPv4 (not parsed further) */
        for (int q = 0; q < 2; q++) {
            if (send(tap_theirs[q], frame, 60 + rand_r(&seed) % 60, MSG_DONTWAIT) < 0 && errno != EAGAIN)
                perror("send");
            while (recv(tap_theirs[q], back, sizeof(back), MSG_DONTWAIT) > 0)
                ;
        }
    }
    return NULL;
}

static void check(int rc, const char *what)
{
    if (rc < 0) {
        fprintf(stderr, "race: %s: %s\n", what, strerror(-rc));
        exit(1);
    }
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 5;
    int pair[2], pair1[2], one = 1;
    if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0, pair) < 0
        || socketpair(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK, 0, pair1) < 0)
        return perror("socketpair"), 1;
    tap_theirs[0] = pair[1];
    tap_theirs[1] = pair1[1];
    int udp = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0), udp1 = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    int raw = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof(sa);
    if (udp < 0 || udp1 < 0 || raw < 0 || setsockopt(udp, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0
        || setsockopt(udp1, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0
        || bind(udp, (struct sockaddr *)&sa, sizeof(sa)) < 0 || getsockname(udp, (struct sockaddr *)&sa, &len) < 0
        || bind(udp1, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        return perror("sockets (root needed)"), 1;

    struct vx_dataplane *dp = vx_dataplane_new();
    struct vx_network_config cfg = { .vni = 42, .tap_fd = pair[0], .learning = 1, .learn_remote = 1,
                                      .dst_port = ntohs(sa.sin_port), .src_port_min = 49152,
                                      .src_port_max = 65535, .ttl = 64, .group_ttl = 1, .mtu = 1500,
                                      .n_queues = 2, .queue_fds = { pair[0], pair1[0] } };
    cfg.local.family = VX_AF_INET;
    memcpy(cfg.local.ip, "\x7f\x00\x00\x01", 4);
    check(vx_network_set(dp, 0, &cfg), "vx_network_set");
    check(vx_flood_set(dp, 0, &cfg.local, 1), "vx_flood_set");
    check(vx_trust_set(dp, 0, 1, &cfg.local, 1, NULL, 0), "vx_trust_set");    /* on: bsearch races the changes */
    check(vx_thread_start(dp, raw, 2), "vx_thread_start");
    check(vx_thread_watch_tap(dp, 0), "vx_thread_watch_tap");
    check(vx_thread_watch_underlay(dp, udp, 0), "vx_thread_watch_underlay");
    check(vx_thread_watch_underlay(dp, udp1, 1), "vx_thread_watch_underlay");
    pthread_t feeder;
    pthread_create(&feeder, NULL, feed, NULL);

    struct vx_sighting sightings[256];
    struct vx_counters counters;
    uint64_t taken = 0, rounds = 0, sent = 0, received = 0;     /* of the networks deleted */
    unsigned seed = 2;
    double end = now() + seconds;
    while (now() < end) {
        uint8_t mac[6] = { 0x02, 0, 0, 0, 0, (uint8_t)(rand_r(&seed) % 16) };   /* ... that these change */
        struct vx_addr vtep = cfg.local, ip = { .family = VX_AF_INET, .ip = { 10, 42, 0, mac[5] } };
        switch (rand_r(&seed) % 10) {
        case 0: vx_fdb_set(dp, 0, mac, 0, &vtep, 0); break;
        case 1: vx_fdb_del(dp, 0, mac); break;
        case 2: vx_neigh_set(dp, 0, &ip, mac); vx_neigh_del(dp, 0, &ip); break;
        case 3: vx_flood_set(dp, 0, &cfg.local, rand_r(&seed) % 2); break;
        case 4: cfg.ttl = (uint8_t)(32 + rand_r(&seed) % 32); check(vx_network_set(dp, 0, &cfg), "set"); break;
        case 5: check(vx_counters_read(dp, 0, &counters), "counters"); vx_counters_read(dp, -1, &counters); break;
        case 6:
            vx_thread_unwatch(dp, pair[0]);
            vx_thread_unwatch(dp, pair1[0]);
            check(vx_thread_watch_tap(dp, 0), "rewatch");
            break;
        case 8:                                /* the network goes (its queues with it) and comes back */
            if (rand_r(&seed) % 8)
                break;
            vx_thread_unwatch(dp, pair[0]);
            vx_thread_unwatch(dp, pair1[0]);
            check(vx_counters_read(dp, 0, &counters), "counters");
            sent += counters.tx_packets, received += counters.rx_packets;
            vx_network_del(dp, 0);
            check(vx_network_set(dp, 0, &cfg), "set again");
            check(vx_flood_set(dp, 0, &cfg.local, 1), "flood again");
            check(vx_trust_set(dp, 0, 1, &cfg.local, 1, NULL, 0), "trust again");
            check(vx_thread_watch_tap(dp, 0), "watch again");
            break;
        case 7: {                              /* the trust set grows and shrinks one VTEP at a time */
            struct vx_addr other = { .family = VX_AF_INET, .ip = { 198, 51, 100, mac[5] } };
            check(vx_trust_vtep(dp, 0, &other, rand_r(&seed) % 2), "trust");
            check(vx_network_set_full(dp, 0, rand_r(&seed) % 2), "full");
            check(vx_network_set_neigh_full(dp, 0, rand_r(&seed) % 2), "neigh_full");
            break;
        }
        default: break;
        }
        if (vx_thread_failed(dp))
            return fprintf(stderr, "race: the thread ended\n"), 1;
        int n;
        while ((n = vx_thread_take(dp, sightings, 256)) > 0)
            taken += (uint64_t)n;
        int net;
        if (vx_thread_tap_error(dp, &net))
            return fprintf(stderr, "race: the TAP failed\n"), 1;
        rounds++;
    }
    atomic_store(&stop, 1);
    pthread_join(feeder, NULL);
    check(vx_counters_read(dp, 0, &counters), "counters");
    sent += counters.tx_packets, received += counters.rx_packets;
    vx_thread_stop(dp);
    vx_dataplane_free(dp);
    close(pair[0]), close(pair[1]), close(pair1[0]), close(pair1[1]), close(udp), close(udp1), close(raw);
    printf("race: %llu control rounds, %llu sightings taken, %llu frames sent, %llu received\n",
           (unsigned long long)rounds, (unsigned long long)taken,
           (unsigned long long)sent, (unsigned long long)received);
    if (!sent || !received || !taken)
        return fprintf(stderr, "race: the data path did not run both ways\n"), 1;
    return 0;
}
