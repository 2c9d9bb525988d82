/* Fuzz vx_decap, and what follows it for the frames it accepts: vx_coalesce, and
 * vx_gso_split of received super-frames.  Input: records of
 *   [u16 length] [u8 peer: low bit IPv4/IPv6, rest the last address byte] [u8 outer TOS]
 *   [u16 UDP_GRO size hint] then length bytes of UDP payload. */
#include "fuzz.h"

static struct vx_dataplane *dp;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dp)
        dp = fuzz_dataplane();
    struct reader r = { data, size };
    struct vx_packet in[VX_BATCH];
    uint8_t *bufs[VX_BATCH];
    uint32_t lens[VX_BATCH];
    int n = 0;
    while (r.left && n < VX_BATCH) {
        uint32_t len = take(&r, 2);
        uint32_t peer = take(&r, 1);
        memset(&in[n], 0, sizeof(in[n]));
        in[n].outer_tos = (uint8_t)take(&r, 1);
        in[n].vh.gso_size = (uint16_t)take(&r, 2);
        fuzz_addr(&in[n].peer, 0, (uint8_t)peer);
        bufs[n] = take_exact(&r, &len);
        lens[n] = len;
        in[n].data = bufs[n];
        in[n].len = len;
        n++;
    }
    struct vx_sighting sightings[VX_BATCH];
    int n_sightings = 0;
    vx_decap(dp, 1000.0, in, n, sightings, &n_sightings);
    if (n_sightings < 0 || n_sightings > VX_BATCH)
        abort();
    struct vx_packet accepted[VX_BATCH];
    int n_acc = 0;
    for (int i = 0; i < n; i++) {
        if (in[i].net < 0)
            continue;
        if (in[i].net > 1 || in[i].data != bufs[i] + VX_VXLAN_HLEN || in[i].data + in[i].len != bufs[i] + lens[i])
            abort();
        accepted[n_acc++] = in[i];
        if (in[i].vh.gso_type != VX_GSO_NONE) {      /* cut for a TAP that cannot take it whole */
            struct vx_packet *segs = malloc(sizeof(*segs) * VX_MAX_PKTS);
            uint8_t *heads = malloc((size_t)VX_MAX_PKTS * VX_SEG_HEAD);
            int m = vx_gso_split(&in[i].vh, in[i].data, in[i].len, in[i].net, segs, VX_MAX_PKTS, heads);
            for (int k = 0; k < m; k++)
                if (segs[k].len > VX_SEG_HEAD || (segs[k].payload_len && !segs[k].payload))
                    abort();
            free(segs);
            free(heads);
        }
    }
    struct vx_tap_frame frames[VX_BATCH];
    int n_frames = vx_coalesce(accepted, n_acc, 1, frames, VX_BATCH);
    for (int i = 0; i < n_frames; i++) {
        const struct vx_tap_frame *t = &frames[i];
        if (t->count < 1 || t->first < 0 || t->first + t->count > n_acc || t->hdr_len > VX_SEG_HEAD)
            abort();
        for (int k = t->first; t->count > 1 && k < t->first + t->count; k++)
            if (accepted[k].len < t->hdr_len)
                abort();
    }
    for (int i = 0; i < n; i++)
        free(bufs[i]);
    /* keep the table from growing without end across runs */
    if (vx_fdb_count(dp) > 4096) {
        vx_dataplane_free(dp);
        dp = NULL;
    }
    return 0;
}
