/* flushtest: a crash-consistency workload that records the promises it was given.
 *
 *   dev=<virtio|ahci|ide|lsi|ram> idx=N seed=N ops=N qd=N region=N maxsec=N
 *   fua=0|1 wce=0|1 discard=0|1
 *
 * Every sector it writes describes itself (write id, LBA, epoch, index,
 * flags, CRC-32; the layout is blockbed/block/crash/sector.py's), so a crash
 * state can be read back and explained.  The mix: plain writes, FUA writes
 * (where the device has FUA and fua=1), flushes, write-cache toggles (where
 * the device can and wce=1), overwrites of the same sectors (a small
 * `region`), discards and write-zeroes (discard=1), with up to `qd`
 * requests in flight (never two overlapping ones, so completion order
 * cannot change the result).
 *
 * The guest's own record of promises (docs/crash-consistency.md): by the
 * rules of its protocol (shared/semantics.md) a write is durable when
 *   - a flush submitted after the write completed has completed ("flush"),
 *   - it was a FUA write and completed ("fua"),
 *   - the write cache was off from its submission to its completion
 *     ("wce-off"; for virtio without FLUSH/CONFIG_WCE the driver reports
 *     the cache as off, virtio 1.2 5.2 rule 1).
 * Each promise is printed the moment the guest learns of it:
 *
 *   FT promise id=<write id> after=<last write id submitted> why=<rule>
 *
 * The crash engine ties `after` to the backend's request log.  At the end
 * the whole region is read back and checked against the model
 * ("FT verify ok" or mismatches), then "FT summary …".  Exit 0 on success.
 * Printed lines hold no addresses or timings, so transcripts compare. */
#include "guest.h"

#define MAX_QD      32
#define MAX_SEC     64
#define SECTOR      512
#define MAGIC       0x31535446u         /* "FTS1" */
#define FLAG_FUA    1u
#define FLAG_WT     2u
#define V_NONE      0u                  /* never written: anything goes */
#define V_ZERO      0xFFFFFFFEu         /* write-zeroes: reads zeros */
#define V_UNDEF     0xFFFFFFFFu         /* discarded: zeros or old data */
#define MAX_REGION  65536

static struct blkdev *d;
static uint64_t rng_state;
static uint32_t crc_table[256];
static uint32_t *model;                 /* per-sector last write id (or V_*) */
static uint64_t region;
static uint32_t next_id;                /* last write id submitted */
static uint32_t epoch;                  /* flushes completed */
static int use_fua, use_wce, use_discard;

/* writes completed but not yet promised */
static uint32_t *unpromised;
static uint32_t nunpromised;

static struct {
    uint64_t writes, fua_writes, flushes, toggles, discards, wzeroes, promises, errors;
} st;

struct op {
    struct blk_req req;
    struct blk_seg seg;
    uint8_t *buf;
    uint32_t id;
    int fua;
    int wt_at_submit;
    int busy;
};
static struct op ops[MAX_QD];
static int qd;

/* ---- helpers --------------------------------------------------------------- */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static uint64_t rnd_below(uint64_t n) { return n ? splitmix(&rng_state) % n : 0; }

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc32(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    while (n--)
        c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static void make_sector(uint8_t *p, uint32_t id, uint64_t lba, uint32_t index, uint32_t flags)
{
    put32(p, MAGIC);
    put32(p + 4, id);
    put64(p + 8, lba);
    put32(p + 16, epoch);
    put32(p + 20, index);
    put32(p + 24, flags);
    put32(p + 28, 0);
    for (uint32_t k = 32; k < SECTOR; k++)
        p[k] = (uint8_t)(id * 131u + (uint32_t)lba * 7u + k);
    put32(p + 28, crc32(p, SECTOR));
}

static void promise(uint32_t id, const char *why)
{
    printf("FT promise id=%u after=%u why=%s\n", id, next_id, why);
    st.promises++;
}

static int write_cache_off(void) { return d->write_cache == 0; }

/* ---- queue ---------------------------------------------------------------------- */
static void on_done(struct op *o)
{
    int status = o->req.status;
    o->busy = 0;
    if (o->req.op != BLK_OP_WRITE)
        goto out;
    if (status) {
        /* A failed write promises nothing; its sectors are now unknown. */
        printf("FT error id=%u lba=%lu status=%d\n", o->id, (unsigned long)o->req.lba, status);
        st.errors++;
        for (uint32_t i = 0; i < o->req.count; i++)
            model[o->req.lba + i] = V_UNDEF;
        goto out;
    }
    if (o->fua)
        promise(o->id, "fua");
    else if (o->wt_at_submit && write_cache_off())
        promise(o->id, "wce-off");
    else if (nunpromised < MAX_REGION)
        unpromised[nunpromised++] = o->id;
out:
    if (status && o->req.op != BLK_OP_WRITE) {
        printf("FT error op=%d status=%d\n", (int)o->req.op, status);
        st.errors++;
    }
}

static void reap(void)
{
    int r = blk_poll(d);
    if (r < 0) {
        printf("FT fatal poll error %d (%s)\n", r, blk_strerror(r));
        exit(2);
    }
    for (int i = 0; i < qd; i++)
        if (ops[i].busy && ops[i].req.status != BLK_PENDING)
            on_done(&ops[i]);
}

static void drain(void)
{
    for (;;) {
        int busy = 0;
        for (int i = 0; i < qd; i++)
            busy |= ops[i].busy;
        if (!busy)
            return;
        reap();
    }
}

static int overlaps_inflight(uint64_t lba, uint32_t count)
{
    for (int i = 0; i < qd; i++) {
        struct op *o = &ops[i];
        if (o->busy && o->req.count && lba < o->req.lba + o->req.count && o->req.lba < lba + count)
            return 1;
    }
    return 0;
}

static struct op *free_op(uint64_t lba, uint32_t count)
{
    if (overlaps_inflight(lba, count))
        drain();
    for (;;) {
        for (int i = 0; i < qd; i++)
            if (!ops[i].busy)
                return &ops[i];
        reap();
    }
}

static void submit(struct op *o)
{
    o->busy = 1;
    int r;
    while ((r = blk_submit(d, &o->req)) == BLK_EBUSY)
        reap();
    if (r) {
        o->busy = 0;
        o->req.status = r;
        on_done(o);
    }
}

/* ---- operations ------------------------------------------------------------------- */
static void do_write(uint64_t lba, uint32_t count, int fua)
{
    struct op *o = free_op(lba, count);
    uint32_t id = ++next_id;
    int wt = write_cache_off();
    uint32_t flags = (fua ? FLAG_FUA : 0) | (wt ? FLAG_WT : 0);
    for (uint32_t i = 0; i < count; i++) {
        make_sector(o->buf + i * SECTOR, id, lba + i, i, flags);
        model[lba + i] = id;
    }
    memset(&o->req, 0, sizeof(o->req));
    o->seg.buf = o->buf;
    o->seg.len = count * SECTOR;
    o->req.op = BLK_OP_WRITE;
    o->req.flags = fua ? BLK_REQ_FUA : 0;
    o->req.lba = lba;
    o->req.count = count;
    o->req.segs = &o->seg;
    o->req.nsegs = 1;
    o->id = id;
    o->fua = fua;
    o->wt_at_submit = wt;
    st.writes++;
    st.fua_writes += fua;
    submit(o);
}

static void do_flush(void)
{
    /* The flush covers what completed before it is submitted: snapshot that. */
    uint32_t n = nunpromised;
    int r = blk_flush(d);
    st.flushes++;
    if (r) {
        printf("FT error flush status=%d\n", r);
        st.errors++;
        return;
    }
    epoch++;
    for (uint32_t i = 0; i < n; i++)
        promise(unpromised[i], "flush");
    /* keep what completed while the flush was in flight */
    memmove(unpromised, unpromised + n, (nunpromised - n) * sizeof(uint32_t));
    nunpromised -= n;
}

static void do_toggle(void)
{
    drain();
    int on = d->write_cache == 0;
    int r = blk_set_write_cache(d, on);
    st.toggles++;
    printf("FT wce %d status=%d\n", on, r);
}

static void do_discard(uint64_t lba, uint32_t count, int zeroes)
{
    struct op *o = free_op(lba, count);
    memset(&o->req, 0, sizeof(o->req));
    o->req.op = zeroes ? BLK_OP_WRITE_ZEROES : BLK_OP_DISCARD;
    o->req.lba = lba;
    o->req.count = count;
    o->id = 0;
    for (uint32_t i = 0; i < count; i++)
        model[lba + i] = zeroes ? V_ZERO : V_UNDEF;
    if (zeroes)
        st.wzeroes++;
    else
        st.discards++;
    submit(o);
}

/* ---- final read-back ----------------------------------------------------------------- */
static int verify(void)
{
    uint8_t *buf = ops[0].buf;
    uint64_t bad = 0;
    for (uint64_t lba = 0; lba < region; lba += MAX_SEC) {
        uint32_t n = (uint32_t)MIN((uint64_t)MAX_SEC, region - lba);
        int r = blk_read(d, lba, n, buf);
        if (r) {
            printf("FT verify read error lba=%lu status=%d\n", (unsigned long)lba, r);
            return 0;
        }
        for (uint32_t i = 0; i < n; i++) {
            uint8_t *p = buf + i * SECTOR;
            uint32_t want = model[lba + i];
            int ok;
            if (want == V_NONE || want == V_UNDEF) {
                ok = 1;
            } else if (want == V_ZERO) {
                ok = 1;
                for (int k = 0; k < SECTOR; k++)
                    ok &= p[k] == 0;
            } else {
                uint32_t crc = get32(p + 28);
                put32(p + 28, 0);
                ok = get32(p) == MAGIC && get32(p + 4) == want && get64(p + 8) == lba + i
                     && crc32(p, SECTOR) == crc;
            }
            if (!ok && bad++ < 8)
                printf("FT verify mismatch lba=%lu want=%u got=%u\n", (unsigned long)(lba + i),
                       want, get32(p + 4));
        }
    }
    if (!bad)
        printf("FT verify ok sectors=%lu\n", (unsigned long)region);
    return bad == 0;
}

int kmain(uint32_t magic, uint32_t mbinfo)
{
    (void)magic;
    (void)mbinfo;
    d = blkdev_open_args();
    if (!d) {
        printf("FT no device\n");
        return 2;
    }
    if (d->sector_size && d->sector_size != SECTOR) {
        printf("FT needs 512-byte sectors (device has %u)\n", d->sector_size);
        return 2;
    }
    crc_init();
    rng_state = arg_u64("seed", 1);
    uint64_t nops = arg_u64("ops", 200);
    qd = (int)arg_u64("qd", 1);
    region = arg_u64("region", 2048);
    uint32_t maxsec = (uint32_t)arg_u64("maxsec", 16);
    use_fua = arg_u64("fua", 1) && (d->caps & BLK_CAP_FUA);
    use_wce = arg_u64("wce", 1) && (d->caps & BLK_CAP_WCE_TOGGLE);
    use_discard = arg_u64("discard", 1) && (d->caps & BLK_CAP_DISCARD);
    int use_zeroes = arg_u64("discard", 1) && (d->caps & BLK_CAP_WRITE_ZEROES);
    int dqd = d->queue_depth > 0 ? d->queue_depth : 1;
    if (qd < 1)
        qd = 1;
    if (qd > MAX_QD)
        qd = MAX_QD;
    if (qd > dqd)
        qd = dqd;
    if (maxsec < 1)
        maxsec = 1;
    if (maxsec > MAX_SEC)
        maxsec = MAX_SEC;
    if (d->max_sectors && maxsec > d->max_sectors)
        maxsec = d->max_sectors;
    if (region > d->capacity)
        region = d->capacity;
    if (region > MAX_REGION)
        region = MAX_REGION;
    if (region < maxsec)
        maxsec = (uint32_t)region;
    model = dma_alloc(region * sizeof(uint32_t), 64);
    unpromised = dma_alloc(MAX_REGION * sizeof(uint32_t), 64);
    memset(model, 0, region * sizeof(uint32_t));
    for (int i = 0; i < qd; i++)
        ops[i].buf = dma_alloc(MAX_SEC * SECTOR, 4096);
    if (!ops[0].buf && qd)
        panic("flushtest: out of DMA memory");

    printf("FT config dev=%s qd=%d fua=%d flush=%d wce=%d wce_toggle=%d discard=%d region=%lu\n",
           d->type, qd, use_fua, !!(d->caps & BLK_CAP_FLUSH), d->write_cache, use_wce,
           use_discard, (unsigned long)region);

    for (uint64_t n = 0; n < nops; n++) {
        uint64_t r = rnd_below(100);
        uint32_t count = 1 + (uint32_t)rnd_below(maxsec);
        uint64_t lba = rnd_below(region - count + 1);
        if (r < 14) {
            if (d->caps & BLK_CAP_FLUSH)
                do_flush();
        } else if (r < 17) {
            if (use_wce)
                do_toggle();
        } else if (r < 22) {
            if (use_discard)
                do_discard(lba, count, 0);
        } else if (r < 25) {
            if (use_zeroes)
                do_discard(lba, count, 1);
        } else {
            do_write(lba, count, use_fua && r >= 88);
        }
    }
    drain();
    if (d->caps & BLK_CAP_FLUSH)
        do_flush();
    int ok = verify();
    printf("FT summary writes=%lu promises=%lu flushes=%lu fua=%lu toggles=%lu discards=%lu "
           "zeroes=%lu errors=%lu\n",
           (unsigned long)st.writes, (unsigned long)st.promises, (unsigned long)st.flushes,
           (unsigned long)st.fua_writes, (unsigned long)st.toggles, (unsigned long)st.discards,
           (unsigned long)st.wzeroes, (unsigned long)st.errors);
    return ok && !st.errors ? 0 : 1;
}
