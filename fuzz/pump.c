/* Fuzz vx_pump_underlay whole: recvmmsg is this harness's (native/pump.c is built with
 * -Dvx_recvmmsg=fuzz_recvmmsg), and hands over up to VX_BATCH messages, each a read of
 * up to 128 segments glued the way UDP GRO glues them, with its control messages.
 * Input: records of
 *   [u16 UDP_GRO size, 0 for none] [u8 segments, 1..128] [u8 outer TOS] [u8 peer]
 *   [u16 segment length] then one segment, repeated (the last one cut by the GRO size).
 * A read never exceeds VX_SLOT, as the kernel's never exceeds the iovec. */
#include "fuzz.h"

static struct reader input;

int fuzz_recvmmsg(int fd, struct mmsghdr *msgs, unsigned int vlen, int flags, struct timespec *timeout)
{
    unsigned int n = 0;
    while (input.left && n < vlen) {
        struct msghdr *m = &msgs[n].msg_hdr;
        uint32_t gso = take(&input, 2), segments = take(&input, 1) % 128 + 1;
        uint8_t tos = (uint8_t)take(&input, 1), peer = (uint8_t)take(&input, 1);
        uint32_t seg_len = take(&input, 2);
        uint8_t *seg = take_exact(&input, &seg_len);
        uint8_t *buf = m->msg_iov[0].iov_base;
        size_t room = m->msg_iov[0].iov_len, len = 0;
        for (uint32_t k = 0; k < segments && len + seg_len <= room; k++) {
            memcpy(buf + len, seg, seg_len);
            len += seg_len;
        }
        free(seg);
        struct sockaddr_in *sa = m->msg_name;
        memset(sa, 0, sizeof(*sa));
        sa->sin_family = AF_INET;
        sa->sin_addr.s_addr = htonl(0xc0000200u | peer);     /* 192.0.2.peer */
        m->msg_namelen = sizeof(*sa);
        /* control messages, within the buffer the pump gave */
        size_t used = 0;
        uint8_t *control = m->msg_control;
        if (gso && m->msg_controllen >= CMSG_SPACE(sizeof(int)) * 2) {
            struct cmsghdr *cm = (struct cmsghdr *)control;
            cm->cmsg_level = SOL_UDP;
            cm->cmsg_type = UDP_GRO;
            cm->cmsg_len = CMSG_LEN(sizeof(int));
            int size = (int)gso;
            memcpy(CMSG_DATA(cm), &size, sizeof(size));
            used += CMSG_SPACE(sizeof(int));
        }
        if (m->msg_controllen >= used + CMSG_SPACE(1)) {
            struct cmsghdr *cm = (struct cmsghdr *)(control + used);
            cm->cmsg_level = IPPROTO_IP;
            cm->cmsg_type = IP_TOS;
            cm->cmsg_len = CMSG_LEN(1);
            *CMSG_DATA(cm) = tos;
            used += CMSG_SPACE(1);
        }
        m->msg_controllen = used;
        msgs[n].msg_len = (unsigned int)len;
        n++;
    }
    if (!n) {
        errno = EAGAIN;
        return -1;
    }
    return (int)n;
}

static struct vx_dataplane *dp;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!dp)
        dp = fuzz_dataplane();
    input.p = data;
    input.left = size;
    struct vx_pump_result res;
    while (input.left) {
        vx_pump_underlay(dp, -1, 1000.0, &res);
        if (res.n_sightings < 0 || res.n_sightings > VX_BATCH || res.packets > VX_BATCH)
            abort();
    }
    if (vx_fdb_count(dp) > 4096) {
        vx_dataplane_free(dp);
        dp = NULL;
    }
    return 0;
}
