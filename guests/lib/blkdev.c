/* The generic half of the block device contract (see blkdev.h): driver
 * registry, request validation, splitting, and emulation of the sync API
 * over submit/poll and of submit/poll over the sync API. */
#include "blkdev.h"
#include "cmdline.h"
#include "console.h"
#include "io.h"
#include "string.h"

extern const struct blkdev_driver __blkdrv_start[], __blkdrv_end[];

int blkdev_errno;
uint64_t blk_wait_limit = 100000000;

const char *blk_strerror(int err)
{
    switch (err) {
    case BLK_OK: return "ok";
    case BLK_EIO: return "I/O error";
    case BLK_ENOMEM: return "out of memory";
    case BLK_EBUSY: return "queue full";
    case BLK_ENODEV: return "no such device";
    case BLK_EINVAL: return "invalid request";
    case BLK_ERANGE: return "beyond end of device";
    case BLK_EUNSUPP: return "not supported";
    case BLK_ETIMEDOUT: return "timed out";
    case BLK_PENDING: return "pending";
    default: return "unknown error";
    }
}

int blkdev_driver_count(void) { return (int)(__blkdrv_end - __blkdrv_start); }

const char *blkdev_driver_type(int i)
{
    return i >= 0 && i < blkdev_driver_count() ? __blkdrv_start[i].type : NULL;
}

struct blkdev *blkdev_open(const char *type, int idx)
{
    const struct blkdev_driver *drv = NULL;
    for (const struct blkdev_driver *p = __blkdrv_start; p < __blkdrv_end; p++)
        if (!strcmp(p->type, type))
            drv = p;
    if (!drv) {
        printf("blkdev: no such device type '%s' (linked drivers:", type);
        for (int i = 0; i < blkdev_driver_count(); i++)
            printf(" %s", blkdev_driver_type(i));
        printf("%s)\n", blkdev_driver_count() ? "" : " none");
        blkdev_errno = BLK_ENODEV;
        return NULL;
    }
    struct blkdev *d = NULL;
    int r = idx < 0 ? BLK_ENODEV : drv->probe(idx, &d);
    if (r == 0 && !d)
        r = BLK_ENODEV;
    if (r < 0) {
        printf("blkdev: %s %d: %s\n", type, idx, blk_strerror(r));
        blkdev_errno = r;
        return NULL;
    }
    /* Defaults for what the driver left zero (blkdev.h). */
    d->type = drv->type;
    d->index = idx;
    if (!d->sector_size) d->sector_size = 512;
    if (d->queue_depth < 1) d->queue_depth = 1;
    if (!d->max_sectors) d->max_sectors = 65535;
    if (!d->max_segs) d->max_segs = 1;
    if (!d->dma_align) d->dma_align = 4;
    if (!d->name) d->name = drv->type;
    if (!(d->read && d->write) && !(d->submit && d->poll)) {
        printf("blkdev: %s driver provides neither read/write nor submit/poll\n", type);
        blkdev_errno = BLK_EUNSUPP;
        return NULL;
    }
    blkdev_errno = 0;
    return d;
}

struct blkdev *blkdev_open_args(void)
{
    const char *type = arg_str("dev", NULL);
    if (!type) {
        printf("blkdev: no dev=<virtio|ahci|ide|lsi|ram> argument\n");
        blkdev_errno = BLK_ENODEV;
        return NULL;
    }
    return blkdev_open(type, (int)arg_u64("idx", 0));
}

void blkdev_describe(const struct blkdev *d)
{
    static const char *const names[] = {
        "flush", "fua", "discard", "write_zeroes", "wce_toggle", "queued",
    };
    printf("%s: %lu sectors of %u bytes, cache %s, qd %d, caps", d->name,
           (unsigned long)d->capacity, d->sector_size,
           d->write_cache < 0 ? "unknown" : d->write_cache ? "writeback" : "writethrough",
           d->queue_depth);
    for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (d->caps & (1u << i))
            printf(" %s", names[i]);
    printf("\n");
}

/* ---- validation ----------------------------------------------------------- */

static int check_range(const struct blkdev *d, uint64_t lba, uint64_t count)
{
    if (count == 0)
        return BLK_EINVAL;
    if (lba > d->capacity || count > d->capacity - lba)
        return BLK_ERANGE;
    return 0;
}

static int check_buf(const struct blkdev *d, const void *buf, uint64_t len)
{
    if (!buf || ((uintptr_t)buf | len) & (d->dma_align - 1))
        return BLK_EINVAL;
    if ((uintptr_t)buf + len > 0x100000000ull)  /* beyond the identity map */
        return BLK_EINVAL;
    return 0;
}

static int check_req(const struct blkdev *d, const struct blk_req *q)
{
    switch (q->op) {
    case BLK_OP_FLUSH:
        if (!(d->caps & BLK_CAP_FLUSH))
            return BLK_EUNSUPP;
        return q->count ? BLK_EINVAL : 0;
    case BLK_OP_DISCARD:
        if (!(d->caps & BLK_CAP_DISCARD))
            return BLK_EUNSUPP;
        break;
    case BLK_OP_WRITE_ZEROES:
        if (!(d->caps & BLK_CAP_WRITE_ZEROES))
            return BLK_EUNSUPP;
        break;
    case BLK_OP_WRITE:
        if ((q->flags & BLK_REQ_FUA) && !(d->caps & BLK_CAP_FUA))
            return BLK_EUNSUPP;
        break;
    case BLK_OP_READ:
        break;
    default:
        return BLK_EINVAL;
    }
    int r = check_range(d, q->lba, q->count);
    if (r)
        return r;
    if (q->count > d->max_sectors)
        return BLK_EINVAL;
    if (q->op != BLK_OP_READ && q->op != BLK_OP_WRITE)
        return 0;
    if (!q->segs || q->nsegs == 0 || q->nsegs > d->max_segs)
        return BLK_EINVAL;
    uint64_t total = 0;
    for (unsigned i = 0; i < q->nsegs; i++) {
        if (!q->segs[i].len || (r = check_buf(d, q->segs[i].buf, q->segs[i].len)))
            return BLK_EINVAL;
        total += q->segs[i].len;
    }
    return total == (uint64_t)q->count * d->sector_size ? 0 : BLK_EINVAL;
}

/* ---- sync ops over submit/poll -------------------------------------------- */

static int run_queued(struct blkdev *d, enum blk_op op, unsigned flags, uint64_t lba,
                      uint32_t count, void *buf)
{
    struct blk_seg seg = { buf, count * d->sector_size };
    struct blk_req q = {
        .op = op, .flags = flags, .lba = lba, .count = count,
        .segs = buf ? &seg : NULL, .nsegs = buf ? 1 : 0,
    };
    int r;
    /* A sync caller owns the device: wait for a free slot first. */
    while ((r = blk_submit(d, &q)) == BLK_EBUSY)
        if ((r = blk_poll(d)) < 0)
            return r;
    if (r < 0)
        return r;
    return blk_wait(d, &q);
}

static int rw(struct blkdev *d, int write, uint64_t lba, uint32_t count, void *buf,
              unsigned flags)
{
    enum blk_op op = write ? BLK_OP_WRITE : BLK_OP_READ;
    if (write && (flags & BLK_REQ_FUA) && !(d->caps & BLK_CAP_FUA))
        return BLK_EUNSUPP;
    int r = check_range(d, lba, count);
    if (r || (r = check_buf(d, buf, (uint64_t)count * d->sector_size)))
        return r;
    uint8_t *p = buf;
    while (count) {
        uint32_t n = count < d->max_sectors ? count : d->max_sectors;
        if (write && d->write)
            r = d->write(d, lba, n, p, !!(flags & BLK_REQ_FUA));
        else if (!write && d->read)
            r = d->read(d, lba, n, p);
        else
            r = run_queued(d, op, flags, lba, n, p);
        if (r)
            return r;
        lba += n;
        count -= n;
        p += (size_t)n * d->sector_size;
    }
    return 0;
}

int blk_read(struct blkdev *d, uint64_t lba, uint32_t count, void *buf)
{
    return rw(d, 0, lba, count, buf, 0);
}

int blk_write(struct blkdev *d, uint64_t lba, uint32_t count, const void *buf,
              unsigned flags)
{
    return rw(d, 1, lba, count, (void *)buf, flags);
}

int blk_flush(struct blkdev *d)
{
    if (!(d->caps & BLK_CAP_FLUSH))
        return BLK_EUNSUPP;
    if (d->flush)
        return d->flush(d);
    return run_queued(d, BLK_OP_FLUSH, 0, 0, 0, NULL);
}

/* Discard and write-zeroes are split like reads and writes (max_sectors). */
static int ranged(struct blkdev *d, enum blk_op op, uint64_t lba, uint32_t count,
                  unsigned flags)
{
    unsigned cap = op == BLK_OP_DISCARD ? BLK_CAP_DISCARD : BLK_CAP_WRITE_ZEROES;
    if (!(d->caps & cap))
        return BLK_EUNSUPP;
    int r = check_range(d, lba, count);
    while (!r && count) {
        uint32_t n = count < d->max_sectors ? count : d->max_sectors;
        if (op == BLK_OP_DISCARD && d->discard)
            r = d->discard(d, lba, n);
        else if (op == BLK_OP_WRITE_ZEROES && d->write_zeroes)
            r = d->write_zeroes(d, lba, n, !!(flags & BLK_REQ_UNMAP));
        else if (d->submit)
            r = run_queued(d, op, flags, lba, n, NULL);
        else
            r = BLK_EUNSUPP;
        lba += n;
        count -= n;
    }
    return r;
}

int blk_discard(struct blkdev *d, uint64_t lba, uint32_t count)
{
    return ranged(d, BLK_OP_DISCARD, lba, count, 0);
}

int blk_write_zeroes(struct blkdev *d, uint64_t lba, uint32_t count, unsigned flags)
{
    return ranged(d, BLK_OP_WRITE_ZEROES, lba, count, flags);
}

int blk_set_write_cache(struct blkdev *d, int on)
{
    if (!(d->caps & BLK_CAP_WCE_TOGGLE) || !d->set_write_cache)
        return BLK_EUNSUPP;
    return d->set_write_cache(d, !!on);
}

/* ---- queued I/O ------------------------------------------------------------ */

void blk_complete(struct blkdev *d, struct blk_req *req, int status)
{
    if (req->status != BLK_PENDING)
        panic("blkdev: %s completed a request twice", d->name);
    d->inflight--;
    req->status = status;
    if (req->done)
        req->done(d, req);
}

/* A driver without submit/poll: run the request now through the sync ops,
 * segment by segment (each segment is whole sectors: dma_align for such a
 * driver is a multiple of the sector size, or the request has one
 * segment). */
static int run_sync(struct blkdev *d, struct blk_req *q)
{
    switch (q->op) {
    case BLK_OP_FLUSH:
        return d->flush ? d->flush(d) : BLK_EUNSUPP;
    case BLK_OP_DISCARD:
        return d->discard ? d->discard(d, q->lba, q->count) : BLK_EUNSUPP;
    case BLK_OP_WRITE_ZEROES:
        return d->write_zeroes
            ? d->write_zeroes(d, q->lba, q->count, !!(q->flags & BLK_REQ_UNMAP))
            : BLK_EUNSUPP;
    default:
        break;
    }
    uint64_t lba = q->lba;
    for (unsigned i = 0; i < q->nsegs; i++) {
        uint32_t n = q->segs[i].len / d->sector_size;
        if (q->segs[i].len % d->sector_size)
            return BLK_EINVAL;
        int r = q->op == BLK_OP_READ
            ? d->read(d, lba, n, q->segs[i].buf)
            : d->write(d, lba, n, q->segs[i].buf, !!(q->flags & BLK_REQ_FUA));
        if (r)
            return r;
        lba += n;
    }
    return 0;
}

int blk_submit(struct blkdev *d, struct blk_req *q)
{
    int r = check_req(d, q);
    if (r)
        return r;
    if (d->inflight >= d->queue_depth)
        return BLK_EBUSY;
    q->status = BLK_PENDING;
    d->inflight++;
    /* Reads and writes go to submit when there is one; the other ops to
     * their sync function when there is one (blkdev.h). */
    int data = q->op == BLK_OP_READ || q->op == BLK_OP_WRITE;
    int has_sync = q->op == BLK_OP_FLUSH ? !!d->flush
                 : q->op == BLK_OP_DISCARD ? !!d->discard
                 : q->op == BLK_OP_WRITE_ZEROES ? !!d->write_zeroes : 0;
    if (!d->submit || (!data && has_sync)) {
        blk_complete(d, q, run_sync(d, q));
        return 0;
    }
    r = d->submit(d, q);
    if (r < 0 && q->status == BLK_PENDING) {
        d->inflight--;
        q->status = r;
        return r;
    }
    return 0;
}

int blk_poll(struct blkdev *d)
{
    if (!d->poll || !d->inflight)
        return 0;
    return d->poll(d);
}

int blk_wait(struct blkdev *d, struct blk_req *q)
{
    for (uint64_t n = 0; q->status == BLK_PENDING; n++) {
        if (n >= blk_wait_limit) {
            printf("blkdev: %s: request (op %d lba %lu) timed out\n", d->name, q->op,
                   (unsigned long)q->lba);
            return BLK_ETIMEDOUT;
        }
        int r = blk_poll(d);
        if (r < 0)
            return r;
        if (r == 0)
            cpu_relax();
    }
    return q->status;
}
