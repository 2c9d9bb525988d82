/* Fuzz vx_coalesce on its own, with any virtio header decap might have attached.
 * Input: [u8 flags: bit 0 udp allowed] then records of
 *   [u8 vh.flags] [u8 vh.gso_type] [u16 vh.csum_start] [u16 vh.csum_offset] [u16 length] then the frame. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct reader r = { data, size };
    int udp = (int)(take(&r, 1) & 1);
    struct vx_packet in[VX_BATCH];
    uint8_t *bufs[VX_BATCH];
    int n = 0;
    while (r.left && n < VX_BATCH) {
        memset(&in[n], 0, sizeof(in[n]));
        in[n].vh.flags = (uint8_t)take(&r, 1);
        in[n].vh.gso_type = (uint8_t)take(&r, 1);
        in[n].vh.csum_start = (uint16_t)take(&r, 2);
        in[n].vh.csum_offset = (uint16_t)take(&r, 2);
        uint32_t len = take(&r, 2);
        bufs[n] = take_exact(&r, &len);
        in[n].data = bufs[n];
        in[n].len = len;
        in[n].net = (int32_t)(n % 3 == 2);
        n++;
    }
    struct vx_tap_frame out[VX_BATCH];
    int m = vx_coalesce(in, n, udp, out, VX_BATCH);
    int covered = 0;
    for (int i = 0; i < m; i++) {
        const struct vx_tap_frame *t = &out[i];
        if (t->first != covered || t->count < 1 || t->count > VX_GSO_MAX_SEGS || t->hdr_len > VX_SEG_HEAD)
            abort();
        for (int k = t->first; t->count > 1 && k < t->first + t->count; k++)
            if (in[k].len <= t->hdr_len || in[k].net != t->net)
                abort();
        covered += t->count;
    }
    if (covered != n)
        abort();
    for (int i = 0; i < n; i++)
        free(bufs[i]);
    return 0;
}
