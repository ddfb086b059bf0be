/* bench: block I/O throughput through blkdev.h.
 *
 *   dev=<type> idx=N mode=seqread|seqwrite|randread|randwrite bs=64K qd=1 total=16M
 *   [span=<bytes>] [seed=N]
 *
 * Keeps up to `qd` requests of `bs` bytes in flight until `total` bytes
 * have moved.  Sequential modes walk the first `span` bytes (default the
 * whole disk, at most 1 GiB) and wrap; random modes pick bs-aligned
 * offsets from a seeded generator.  Prints "bench: begin" just before the
 * first request and "bench: end" after the last completion, so a host can
 * time the run from the serial output; the guest's own rdtsc delta is
 * printed too (its frequency differs per emulator: not for comparing).
 * Exit code 0, or 1 on any I/O error. */
#include "guest.h"

#define MAX_QD 64

static uint64_t state;
static uint64_t next_rand(void)
{
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

int kmain(uint32_t magic, uint32_t mbinfo)
{
    (void)magic; (void)mbinfo;
    struct blkdev *d = blkdev_open_args();
    if (!d) {
        printf("bench: FAIL: cannot open device\n");
        return 1;
    }
    const char *mode = arg_str("mode", "seqread");
    int write = !strcmp(mode, "seqwrite") || !strcmp(mode, "randwrite");
    int rnd = !strcmp(mode, "randread") || !strcmp(mode, "randwrite");
    if (!write && !rnd && strcmp(mode, "seqread")) {
        printf("bench: mode=%s: expected seqread, seqwrite, randread or randwrite\n", mode);
        return 1;
    }
    uint32_t ss = d->sector_size;
    uint64_t bs = arg_u64("bs", 64 * 1024);
    uint64_t total = arg_u64("total", 16 << 20);
    int qd = (int)arg_u64("qd", 1);
    uint64_t disk = d->capacity * ss;
    uint64_t span = arg_u64("span", disk < (1ull << 30) ? disk : (1ull << 30));
    state = arg_u64("seed", 1);
    if (span > disk) span = disk;
    if (!bs || bs % ss || bs > span || bs / ss > d->max_sectors) {
        printf("bench: bs=%lu must be a multiple of %u, at most the span and %u sectors\n",
               (unsigned long)bs, ss, d->max_sectors);
        return 1;
    }
    if (qd < 1) qd = 1;
    if (qd > MAX_QD) qd = MAX_QD;
    if (qd > d->queue_depth) qd = d->queue_depth;
    uint64_t nreq = (total + bs - 1) / bs;
    uint64_t slots = span / bs;
    printf("bench: dev=%s idx=%d mode=%s bs=%lu qd=%d total=%lu requests=%lu\n", d->type,
           d->index, mode, (unsigned long)bs, qd, (unsigned long)(nreq * bs),
           (unsigned long)nreq);

    static struct blk_req reqs[MAX_QD];
    static struct blk_seg segs[MAX_QD];
    for (int i = 0; i < qd; i++) {
        segs[i].buf = dma_alloc(bs, 4096);
        segs[i].len = (uint32_t)bs;
        if (write)
            memset(segs[i].buf, 0x5A ^ i, bs);
    }
    uint64_t issued = 0, done = 0, next_seq = 0, errors = 0;
    static uint8_t busy[MAX_QD];
    printf("bench: begin\n");
    uint64_t t0 = rdtsc();
    while (done < nreq) {
        /* Refill every free slot, then reap. */
        for (int i = 0; i < qd && issued < nreq; i++) {
            if (busy[i])
                continue;
            uint64_t slot = rnd ? next_rand() % slots : next_seq++ % slots;
            reqs[i] = (struct blk_req){
                .op = write ? BLK_OP_WRITE : BLK_OP_READ,
                .lba = slot * bs / ss, .count = (uint32_t)(bs / ss),
                .segs = &segs[i], .nsegs = 1,
            };
            int r = blk_submit(d, &reqs[i]);
            if (r == BLK_EBUSY)
                break;
            if (r) {
                printf("bench: submit failed: %s\n", blk_strerror(r));
                return 1;
            }
            busy[i] = 1;
            issued++;
        }
        int n = blk_poll(d);
        if (n < 0) {
            printf("bench: poll failed: %s\n", blk_strerror(n));
            return 1;
        }
        for (int i = 0; i < qd; i++) {
            if (busy[i] && reqs[i].status != BLK_PENDING) {
                if (reqs[i].status)
                    errors++;
                done++;
                busy[i] = 0;
            }
        }
    }
    uint64_t t1 = rdtsc();
    printf("bench: end\n");
    printf("bench: completed=%lu errors=%lu tsc=%lu\n", (unsigned long)done,
           (unsigned long)errors, (unsigned long)(t1 - t0));
    return errors ? 1 : 0;
}
