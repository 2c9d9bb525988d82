/* Fuzz the TAP side: vx_gso_split of what a container hands the TAP (a virtio_net_hdr
 * and a frame), then vx_encap of the packets it gives.  Input: records of
 *   [u8 network] [10 bytes struct vx_vnet_hdr, host order] [u16 length] then the frame. */
#include "fuzz.h"

static struct vx_dataplane *dp;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dp)
        dp = fuzz_dataplane();
    struct reader r = { data, size };
    struct vx_packet *pk = malloc(sizeof(*pk) * VX_MAX_PKTS);
    uint8_t *heads = malloc((size_t)VX_MAX_PKTS * VX_SEG_HEAD);
    struct vx_datagram *out = malloc(sizeof(*out) * VX_MAX_DGRAMS);
    uint8_t *bufs[8];
    int n_bufs = 0, n_pkts = 0;
    while (r.left && n_bufs < 8) {
        int net = (int)(take(&r, 1) & 1);
        struct vx_vnet_hdr vh;
        uint8_t raw[VX_VNET_HLEN];
        for (int i = 0; i < VX_VNET_HLEN; i++)
            raw[i] = (uint8_t)take(&r, 1);
        memcpy(&vh, raw, sizeof(vh));
        uint32_t len = take(&r, 2);
        uint8_t *frame = take_exact(&r, &len);
        bufs[n_bufs++] = frame;
        /* once to learn how many segments, then again into heads of exactly that size: a
         * write past the last segment's VX_SEG_HEAD bytes must be a finding */
        uint8_t *copy = malloc(len ? len : 1);
        memcpy(copy, frame, len);
        int m = vx_gso_split(&vh, frame, len, net, pk + n_pkts, VX_MAX_PKTS - n_pkts,
                             heads + (size_t)n_pkts * VX_SEG_HEAD);
        if (m > 0) {
            struct vx_packet *exact = malloc(sizeof(*exact) * (size_t)m);
            uint8_t *exact_heads = malloc((size_t)m * VX_SEG_HEAD);
            if (vx_gso_split(&vh, copy, len, net, exact, m, exact_heads) != m)
                abort();
            for (int k = 0; k < m; k++)             /* the same segments as those encap will use */
                if (exact[k].len != pk[n_pkts + k].len || memcmp(exact[k].data, pk[n_pkts + k].data, exact[k].len))
                    abort();
            free(exact);
            free(exact_heads);
        }
        free(copy);
        if (m > VX_MAX_PKTS - n_pkts)
            abort();
        for (int k = 0; k < m; k++) {
            const struct vx_packet *p = &pk[n_pkts + k];
            if (p->net != net || (p->payload_len && (p->payload < frame || p->payload + p->payload_len > frame + len)))
                abort();
        }
        if (m > 0)
            n_pkts += m;
    }
    struct vx_sighting sightings[VX_BATCH];
    struct vx_reply *replies = malloc(sizeof(*replies) * VX_MAX_REPLIES);
    int n_sightings = 0, done = 0;
    static double now = 1000.0;
    while (done < n_pkts) {
        int consumed = 0, n_replies = 0;
        now += 0.5;                                   /* room in the answers' token bucket */
        int m = vx_encap(dp, now, pk + done, n_pkts - done, &consumed, out, VX_MAX_DGRAMS,
                         sightings, &n_sightings, replies, &n_replies);
        if (m < 0 || m > VX_MAX_DGRAMS || consumed < 1 || n_replies < 0 || n_replies > VX_MAX_REPLIES)
            abort();
        for (int i = 0; i < n_replies; i++)
            if (replies[i].len < VX_ETH_HLEN + 28 || replies[i].len > VX_REPLY_MAX || replies[i].net < 0 || replies[i].net > 1)
                abort();
        for (int i = 0; i < m; i++)
            if (out[i].header_len > VX_OUTER_MAX)
                abort();
        done += consumed;
    }
    for (int i = 0; i < n_bufs; i++)
        free(bufs[i]);
    free(pk);
    free(heads);
    free(out);
    free(replies);
    if (vx_fdb_count(dp) > 4096) {
        vx_dataplane_free(dp);
        dp = NULL;
    }
    return 0;
}
