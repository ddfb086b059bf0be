/* ramdisk: a block device in guest RAM.
 *
 * Not a controller: it exists so that programs and the blkdev library can
 * be tested without any disk hardware, and as the smallest example of the
 * driver side of blkdev.h.  It implements read/write/flush through the
 * queued API only (so the library's sync-over-queued path is used) and
 * discard/write-zeroes/cache toggling synchronously (so the library's
 * queued-over-sync path is used).  Data moves at completion time, not at
 * submission, as with real DMA, and poll() completes the newest request
 * first, so callers that assume in-order completion break here.
 *
 * Arguments: ram_size=<bytes> (default 1M), ram_sector=<512|4096>.
 * Each index is a separate disk, created on first open. */
#include "guest.h"

#define RAM_DISKS   4
#define RAM_QD      8

struct ramdisk {
    struct blkdev dev;              /* first: container_of is a cast */
    uint8_t *data;
    struct blk_req *queue[RAM_QD];  /* in flight, in submission order */
    int queued;
    char name[8];
};

static struct ramdisk disks[RAM_DISKS];

static struct ramdisk *to_ram(struct blkdev *d) { return container_of(d, struct ramdisk, dev); }

static uint8_t *at(struct ramdisk *r, uint64_t lba)
{
    return r->data + lba * r->dev.sector_size;
}

static int ram_submit(struct blkdev *d, struct blk_req *q)
{
    struct ramdisk *r = to_ram(d);
    if (r->queued == RAM_QD)
        return BLK_EBUSY;
    q->tag = r->queued;
    r->queue[r->queued++] = q;
    return 0;
}

static void execute(struct ramdisk *r, struct blk_req *q)
{
    uint8_t *p = at(r, q->lba);
    for (unsigned i = 0; i < q->nsegs; i++) {
        if (q->op == BLK_OP_READ)
            memcpy(q->segs[i].buf, p, q->segs[i].len);
        else
            memcpy(p, q->segs[i].buf, q->segs[i].len);
        p += q->segs[i].len;
    }
    /* FLUSH and FUA: RAM is as durable as it gets; nothing to do. */
}

static int ram_poll(struct blkdev *d)
{
    struct ramdisk *r = to_ram(d);
    int n = 0;
    while (r->queued) {
        struct blk_req *q = r->queue[--r->queued];   /* newest first */
        int status = q->op == BLK_OP_READ || q->op == BLK_OP_WRITE ||
                     q->op == BLK_OP_FLUSH ? 0 : BLK_EUNSUPP;
        if (!status)
            execute(r, q);
        blk_complete(d, q, status);
        n++;
    }
    return n;
}

static int ram_discard(struct blkdev *d, uint64_t lba, uint32_t count)
{
    /* Discarded sectors read back as zeroes (deterministic, like
     * write-zeroes with unmap). */
    memset(at(to_ram(d), lba), 0, (size_t)count * d->sector_size);
    return 0;
}

static int ram_write_zeroes(struct blkdev *d, uint64_t lba, uint32_t count, int unmap)
{
    (void)unmap;
    memset(at(to_ram(d), lba), 0, (size_t)count * d->sector_size);
    return 0;
}

static int ram_set_write_cache(struct blkdev *d, int on)
{
    d->write_cache = on;
    return 0;
}

static int ram_probe(int idx, struct blkdev **out)
{
    if (idx >= RAM_DISKS)
        return BLK_ENODEV;
    struct ramdisk *r = &disks[idx];
    if (!r->data) {
        uint64_t sector = arg_u64("ram_sector", 512);
        uint64_t size = arg_u64("ram_size", 1 << 20);
        if (sector != 512 && sector != 4096) {
            printf("ramdisk: ram_sector must be 512 or 4096\n");
            return BLK_EINVAL;
        }
        if (size < sector || size % sector || size > dma_avail() / 2) {
            printf("ramdisk: ram_size=%lu is not a multiple of %lu in 1 sector..%lu\n",
                   (unsigned long)size, (unsigned long)sector,
                   (unsigned long)(dma_avail() / 2));
            return BLK_EINVAL;
        }
        r->data = dma_alloc(size, 4096);
        snprintf(r->name, sizeof(r->name), "ram%d", idx);
        r->dev = (struct blkdev){
            .name = r->name,
            .sector_size = sector,
            .capacity = size / sector,
            .write_cache = 1,
            .caps = BLK_CAP_FLUSH | BLK_CAP_FUA | BLK_CAP_DISCARD |
                    BLK_CAP_WRITE_ZEROES | BLK_CAP_WCE_TOGGLE | BLK_CAP_QUEUED,
            .queue_depth = RAM_QD,
            .max_sectors = 64,      /* small, so that splitting gets exercised */
            .max_segs = 8,
            .dma_align = 4,
            .discard = ram_discard,
            .write_zeroes = ram_write_zeroes,
            .set_write_cache = ram_set_write_cache,
            .submit = ram_submit,
            .poll = ram_poll,
        };
        strlcpy(r->dev.serial, "RAMDISK0", sizeof(r->dev.serial));
        r->dev.serial[7] = '0' + idx;
        strlcpy(r->dev.model, "blockbed ramdisk", sizeof(r->dev.model));
    }
    *out = &r->dev;
    return 0;
}

BLKDEV_DRIVER("ram", ram_probe);
