/* disktest: seeded data-integrity test for any block device (blkdev.h only).
 *
 *   dev=<virtio|ahci|ide|lsi|ram> idx=N seed=N ops=N maxsec=N qd=N span=N fill=0|1
 *
 * 1. fill: write the whole test span (the first `span` sectors, default the
 *    whole disk up to 64 MiB) with version-0 data, so that the end result
 *    never depends on what the image held before;
 * 2. `ops` seeded operations: writes of varied sizes and offsets with varied
 *    scatter lists, read-backs verified against the model, flushes,
 *    discards and write-zeroes (with and without the unmap flag), submitted
 *    in batches of up to `qd` requests that do not overlap (so completion
 *    order cannot change the outcome);
 * 3. settle: sectors whose content a discard left undefined are rewritten;
 *    flush; read the whole span back and verify every sector.
 *
 * Sector content is a function of (seed, lba, version) only, where version is
 * the number of the operation that last wrote the sector; write-zeroes makes
 * zeros.  The random stream that picks operations is consumed identically
 * whatever the device offers: a discard the device lacks is replaced by a
 * write of the data settle would have written, a write-zeroes by a write of
 * zeros.  So the final disk is a deterministic function of seed, ops,
 * maxsec and span, the same under every controller and every emulator.
 *
 * Printed lines hold no addresses or timings, so transcripts compare.
 * Exit code 0 on PASS, 1 on FAIL. */
#include "guest.h"

#define V_ZERO      0xFFFFFFFFu     /* reads as zeros */
#define V_DISCARD   0x80000000u     /* | version: undefined until settle */
#define MAX_QD      32
#define MAX_SEGS    16

static struct blkdev *d;
static uint32_t ss;                 /* sector size */
static uint64_t span;
static uint32_t *ver;               /* per-sector version */
static uint64_t seed;

/* ---- deterministic generators ------------------------------------------- */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t rng_state;
static uint64_t rnd(void) { return splitmix(&rng_state); }
static uint64_t rnd_below(uint64_t n) { return n ? rnd() % n : 0; }

/* The content of sector `lba` at `version`: 8-byte words of a stream keyed
 * by (seed, lba, version); the first word is readable for debugging. */
static void fill_sector(uint8_t *p, uint64_t lba, uint32_t version)
{
    uint64_t *w = (uint64_t *)p;
    if (version == V_ZERO) {
        memset(p, 0, ss);
        return;
    }
    uint64_t k = seed * 0x100000001B3ull ^ lba * 0x9E3779B97F4A7C15ull ^ (uint64_t)version << 40;
    w[0] = 0x4242445400000000ull | (lba & 0xFFFFFFFF);   /* "BBDT" + lba */
    w[1] = (uint64_t)version << 32 | (seed & 0xFFFFFFFF);
    for (uint32_t i = 2; i < ss / 8; i++)
        w[i] = splitmix(&k);
}

/* ---- counters ---------------------------------------------------------------- */
static struct {
    uint64_t writes, reads, flushes, discards, wzeroes, wz_unmap, segs;
    uint64_t sectors_written, sectors_read, checked, mismatches, errors, emulated;
} st;

static void mismatch(uint64_t lba, uint32_t want, const uint8_t *got)
{
    if (st.mismatches++ < 8) {
        uint64_t w0, w1;
        memcpy(&w0, got, 8);
        memcpy(&w1, got + 8, 8);
        printf("MISMATCH lba %lu: expected version 0x%x, found words %016lx %016lx\n",
               (unsigned long)lba, want, (unsigned long)w0, (unsigned long)w1);
    }
}

static uint8_t *expect_buf;

static void verify(uint64_t lba, uint32_t count, const uint8_t *buf)
{
    for (uint32_t i = 0; i < count; i++) {
        uint32_t v = ver[lba + i];
        if (v != V_ZERO && (v & V_DISCARD))
            continue;                           /* undefined after a discard */
        fill_sector(expect_buf, lba + i, v);
        st.checked++;
        if (memcmp(expect_buf, buf + (size_t)i * ss, ss))
            mismatch(lba + i, v, buf + (size_t)i * ss);
    }
}

/* ---- batches of non-overlapping requests ----------------------------------- */
struct op {
    struct blk_req req;
    struct blk_seg segs[MAX_SEGS];
    uint8_t *buf;
    uint32_t version;       /* what the sectors become (writes) */
    int verify;             /* reads: check on completion */
};

static struct op ops[MAX_QD];
static int nops;
static int qd;
static uint8_t *bufs[MAX_QD];
static uint32_t maxsec;

static void report_error(const struct op *o, int r)
{
    if (st.errors++ < 8)
        printf("ERROR op %d lba %lu count %u: %s\n", o->req.op, (unsigned long)o->req.lba,
               o->req.count, blk_strerror(r));
}

static void drain(void)
{
    for (int i = 0; i < nops; i++) {
        int r = blk_wait(d, &ops[i].req);
        if (r) {
            report_error(&ops[i], r);
            continue;
        }
        if (ops[i].verify)
            verify(ops[i].req.lba, ops[i].req.count, ops[i].buf);
    }
    nops = 0;
}

static int overlaps(uint64_t lba, uint32_t count)
{
    for (int i = 0; i < nops; i++) {
        const struct blk_req *q = &ops[i].req;
        if (q->op == BLK_OP_FLUSH)
            return 1;
        if (lba < q->lba + q->count && q->lba < lba + count)
            return 1;
    }
    return 0;
}

static void submit(struct op *o)
{
    int r;
    while ((r = blk_submit(d, &o->req)) == BLK_EBUSY)
        if ((r = blk_poll(d)) < 0)
            break;
    if (r)
        o->req.status = r;      /* drain() reports it */
}

/* Split `len` bytes into up to `max` segments at dma_align multiples. */
static unsigned scatter(struct op *o, uint8_t *buf, uint32_t len, uint64_t r)
{
    unsigned max = d->max_segs < MAX_SEGS ? d->max_segs : MAX_SEGS;
    unsigned n = 1 + (unsigned)(r % max);
    uint32_t align = d->dma_align ? d->dma_align : 1;
    if (align > ss || len % align) {        /* cannot split: one segment */
        o->segs[0].buf = buf;
        o->segs[0].len = len;
        return 1;
    }
    uint32_t units = len / align;
    if (n > units)
        n = units;
    uint32_t left = units;
    uint64_t k = r;
    for (unsigned i = 0; i < n; i++) {
        uint32_t u = i + 1 == n ? left : 1 + (uint32_t)(splitmix(&k) % (left - (n - 1 - i)));
        if (u > left - (n - 1 - i))
            u = left - (n - 1 - i);
        o->segs[i].buf = buf;
        o->segs[i].len = u * align;
        buf += u * align;
        left -= u;
    }
    return n;
}

static struct op *new_op(uint64_t lba, uint32_t count)
{
    if (nops == qd || overlaps(lba, count))
        drain();
    struct op *o = &ops[nops];
    memset(&o->req, 0, sizeof(o->req));
    o->buf = bufs[nops];
    o->verify = 0;
    o->req.lba = lba;
    o->req.count = count;
    nops++;
    return o;
}

static void do_write(uint64_t lba, uint32_t count, uint32_t version, uint64_t r)
{
    struct op *o = new_op(lba, count);
    for (uint32_t i = 0; i < count; i++)
        fill_sector(o->buf + (size_t)i * ss, lba + i, version);
    o->req.op = BLK_OP_WRITE;
    o->req.segs = o->segs;
    o->req.nsegs = scatter(o, o->buf, count * ss, r);
    st.writes++;
    st.segs += o->req.nsegs;
    st.sectors_written += count;
    for (uint32_t i = 0; i < count; i++)
        ver[lba + i] = version;
    submit(o);
}

static void do_read(uint64_t lba, uint32_t count, uint64_t r)
{
    struct op *o = new_op(lba, count);
    memset(o->buf, 0xA5, (size_t)count * ss);
    o->req.op = BLK_OP_READ;
    o->req.segs = o->segs;
    o->req.nsegs = scatter(o, o->buf, count * ss, r);
    o->verify = 1;
    st.reads++;
    st.segs += o->req.nsegs;
    st.sectors_read += count;
    submit(o);
}

static void do_flush(void)
{
    drain();
    int r = blk_flush(d);
    st.flushes++;
    if (r && r != BLK_EUNSUPP) {
        struct op o = { .req = { .op = BLK_OP_FLUSH } };
        report_error(&o, r);
    }
}

static void do_discard(uint64_t lba, uint32_t count, uint32_t version, uint64_t r)
{
    st.discards++;
    if (!(d->caps & BLK_CAP_DISCARD)) {
        st.emulated++;
        do_write(lba, count, version, r);       /* what settle would write */
        st.writes--;
        return;
    }
    struct op *o = new_op(lba, count);
    o->req.op = BLK_OP_DISCARD;
    for (uint32_t i = 0; i < count; i++)
        ver[lba + i] = V_DISCARD | version;
    submit(o);
}

static void do_write_zeroes(uint64_t lba, uint32_t count, int unmap, uint64_t r)
{
    st.wzeroes++;
    st.wz_unmap += unmap;
    if (!(d->caps & BLK_CAP_WRITE_ZEROES)) {
        st.emulated++;
        do_write(lba, count, V_ZERO, r);
        st.writes--;
        return;
    }
    struct op *o = new_op(lba, count);
    o->req.op = BLK_OP_WRITE_ZEROES;
    o->req.flags = unmap ? BLK_REQ_UNMAP : 0;
    for (uint32_t i = 0; i < count; i++)
        ver[lba + i] = V_ZERO;
    submit(o);
}

/* A request length: mostly small, sometimes up to maxsec. */
static uint32_t pick_count(void)
{
    uint64_t r = rnd();
    uint32_t c;
    switch (r % 4) {
    case 0: c = 1; break;
    case 1: c = 1 + (uint32_t)((r >> 8) % 8); break;
    case 2: c = 1 + (uint32_t)((r >> 8) % 32); break;
    default: c = 1 + (uint32_t)((r >> 8) % maxsec); break;
    }
    if (c > maxsec) c = maxsec;
    if (c > span) c = (uint32_t)span;
    return c;
}

/* Rewrite runs of sectors a discard left undefined. */
static void settle(void)
{
    uint64_t lba = 0;
    while (lba < span) {
        uint32_t v = ver[lba];
        if (v == V_ZERO || !(v & V_DISCARD)) {
            lba++;
            continue;
        }
        uint32_t n = 0;
        while (lba + n < span && ver[lba + n] == v && n < maxsec)
            n++;
        do_write(lba, n, v & ~V_DISCARD, lba);
        lba += n;
    }
    drain();
}

int kmain(uint32_t magic, uint32_t mbinfo)
{
    (void)magic; (void)mbinfo;
    d = blkdev_open_args();
    if (!d) {
        printf("disktest: FAIL: cannot open device\n");
        return 1;
    }
    ss = d->sector_size;
    seed = arg_u64("seed", 1);
    uint64_t nops_total = arg_u64("ops", 200);
    maxsec = (uint32_t)arg_u64("maxsec", 128);
    qd = (int)arg_u64("qd", 8);
    span = arg_u64("span", 0);
    if (!span)
        span = d->capacity < (64ull << 20) / ss ? d->capacity : (64ull << 20) / ss;
    if (span > d->capacity) span = d->capacity;
    if (maxsec < 1) maxsec = 1;
    if (maxsec > d->max_sectors) maxsec = d->max_sectors;
    if (maxsec > 1024) maxsec = 1024;
    if (qd < 1) qd = 1;
    if (qd > MAX_QD) qd = MAX_QD;
    if (qd > d->queue_depth) qd = d->queue_depth;
    if (!span) {
        printf("disktest: FAIL: empty device\n");
        return 1;
    }
    printf("disktest: dev=%s idx=%d seed=%lu ops=%lu maxsec=%u span=%lu sectors of %u\n",
           d->type, d->index, (unsigned long)seed, (unsigned long)nops_total, maxsec,
           (unsigned long)span, ss);
    ver = dma_alloc(span * sizeof(uint32_t), 64);
    expect_buf = dma_alloc(ss, 64);
    for (int i = 0; i < qd; i++)
        bufs[i] = dma_alloc((size_t)maxsec * ss, 4096);

    /* 1. fill */
    uint32_t chunk = maxsec;
    for (uint64_t lba = 0; lba < span; lba += chunk) {
        uint32_t n = span - lba < chunk ? (uint32_t)(span - lba) : chunk;
        do_write(lba, n, 0, lba);
    }
    drain();
    do_flush();
    printf("disktest: filled %lu sectors\n", (unsigned long)span);

    /* 2. random operations */
    rng_state = seed ^ 0xD15C7E57ull;
    for (uint64_t i = 1; i <= nops_total; i++) {
        uint32_t count = pick_count();
        uint64_t lba = rnd_below(span - count + 1);
        uint64_t kind = rnd() % 100;
        uint64_t r = rnd();
        uint32_t version = (uint32_t)i;
        if (kind < 50)
            do_write(lba, count, version, r);
        else if (kind < 80)
            do_read(lba, count, r);
        else if (kind < 85)
            do_flush();
        else if (kind < 92)
            do_discard(lba, count, version, r);
        else
            do_write_zeroes(lba, count, (int)(r & 1), r);
    }
    drain();

    /* 3. settle, flush, verify everything */
    settle();
    do_flush();
    uint64_t before = st.checked;
    for (uint64_t lba = 0; lba < span; lba += chunk) {
        uint32_t n = span - lba < chunk ? (uint32_t)(span - lba) : chunk;
        do_read(lba, n, lba);
    }
    drain();
    printf("disktest: ops writes=%lu reads=%lu flushes=%lu discards=%lu write_zeroes=%lu"
           " (unmap %lu) emulated=%lu\n",
           (unsigned long)st.writes, (unsigned long)st.reads, (unsigned long)st.flushes,
           (unsigned long)st.discards, (unsigned long)st.wzeroes, (unsigned long)st.wz_unmap,
           (unsigned long)st.emulated);
    printf("disktest: sectors written=%lu read=%lu checked=%lu (final pass %lu)\n",
           (unsigned long)st.sectors_written, (unsigned long)st.sectors_read,
           (unsigned long)st.checked, (unsigned long)(st.checked - before));
    int ok = !st.mismatches && !st.errors && st.checked - before == span;
    printf("disktest: errors=%lu mismatches=%lu\n", (unsigned long)st.errors,
           (unsigned long)st.mismatches);
    printf("disktest: %s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
