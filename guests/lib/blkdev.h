/* blkdev: the controller-agnostic block device contract.
 *
 * Programs (disktest, identify, bench, flushtest, ...) talk to a disk only
 * through this header; each controller driver in drivers/ (virtio_blk.c,
 * ahci.c, ide.c, lsi.c, ramdisk.c) implements it.  The library (blkdev.c)
 * sits in between: it validates every request once (range, alignment,
 * scatter list), splits large synchronous transfers to the driver's
 * limits, and emulates whichever half of the API a driver leaves out.
 *
 * ---- For programs ---------------------------------------------------------
 *
 *   struct blkdev *d = blkdev_open("virtio", 0);   // NULL + message if absent
 *   uint8_t *buf = dma_alloc(8 * d->sector_size, 4096);
 *   int r = blk_read(d, lba, 8, buf);              // 0 or BLK_E*
 *   r = blk_write(d, lba, 8, buf, BLK_REQ_FUA);
 *   r = blk_flush(d);
 *
 * Buffers must be DMA-able: from dma_alloc (identity mapped, below 4 GiB),
 * aligned to d->dma_align.  Sector counts are in logical sectors of
 * d->sector_size bytes.  blkdev_open_args() opens the device named by the
 * command-line arguments dev=<type> idx=<n>, the convention for programs.
 *
 * Queued I/O (queue depth > 1): fill a struct blk_req, blk_submit() it,
 * then blk_poll() until its status is no longer BLK_PENDING (or use
 * blk_wait()).  A request and its segment array and buffers belong to the
 * driver from blk_submit() until the status changes; they must stay valid
 * and untouched until then.  At most d->queue_depth requests are in flight;
 * blk_submit() returns BLK_EBUSY beyond that.  Requests complete in any
 * order (the device may reorder; that is the point of queueing).
 *
 * ---- For drivers ------------------------------------------------------------
 *
 * A driver file does three things:
 *   1. a probe function `int probe(int idx, struct blkdev **out)`: find the
 *      idx-th device of its type (pci_find...), initialise the controller,
 *      fill a struct blkdev (usually embedded first in the driver's own
 *      struct; container_of() gets it back) and return 0, or BLK_ENODEV if
 *      there is no such device, or another BLK_E* on failure (after
 *      printing why).
 *   2. the operations below: every synchronous one is optional, and so is
 *      the submit/poll pair; provide at least read+write or submit+poll.
 *   3. one line registering it:  BLKDEV_DRIVER("virtio", virtio_blk_probe);
 *      The entry lands in the .blkdrv linker section (lib/link.ld), so a
 *      program links whether or not the driver file exists, and
 *      blkdev_open() reports "no such device type" when it does not.
 *
 * The library calls the operations only with requests that passed
 * validation:  1 <= count <= max_sectors (for flush count is 0),
 * lba + count <= capacity, every buffer/segment address and length a
 * multiple of dma_align, nsegs <= max_segs, sum of segment lengths ==
 * count * sector_size, and only ops the driver advertises in caps
 * (BLK_CAP_FUA for BLK_REQ_FUA writes, _DISCARD, _WRITE_ZEROES, _FLUSH,
 * _WCE_TOGGLE), so drivers need not re-check.  Calls are never reentrant:
 * nothing calls into a driver from an interrupt handler.
 *
 * Routing: blk_read/blk_write use the driver's read/write if present,
 * else submit+poll; blk_submit sends READ/WRITE to submit if present, else
 * runs them through read/write and completes them at once.  FLUSH, DISCARD
 * and WRITE_ZEROES go to their sync function when the driver has one, in
 * either API, else through submit.  So a sync op may be called while queued
 * requests are in flight; a controller that cannot mix the two (AHCI:
 * non-NCQ commands while NCQ commands are outstanding) drains its queue
 * first.
 *
 * Synchronous ops return when the device has completed the command.
 * Async: submit() starts the request (it may also complete it at once
 * with blk_complete) and returns 0, or a negative code if it could not be
 * queued (BLK_EBUSY when the device's queue is full): blk_submit() then
 * returns that code and the request is not in flight.  poll() checks the
 * device and calls blk_complete(dev, req, status) for each finished
 * request, returning the number completed or a negative code on a fatal
 * controller error.  Drivers keep per-request state in req->tag/req->drv.
 *
 * Waiting is bounded everywhere: a device that never answers yields
 * BLK_ETIMEDOUT, never a hung guest.  Drivers bound their own polling
 * loops (a count of register reads; not wall time, so that QEMU and
 * blockbed, whose clocks differ, time out on the same iteration).
 */
#ifndef GUEST_BLKDEV_H
#define GUEST_BLKDEV_H

#include <stdint.h>
#include <stddef.h>

/* Return codes: 0 is success; errors are negative, errno-numbered. */
#define BLK_OK          0
#define BLK_EIO         (-5)    /* the device reported an error */
#define BLK_ENOMEM      (-12)   /* out of driver resources */
#define BLK_EBUSY       (-16)   /* queue full: poll, then submit again */
#define BLK_ENODEV      (-19)   /* no such device type / index */
#define BLK_EINVAL      (-22)   /* malformed request (alignment, sizes) */
#define BLK_ERANGE      (-34)   /* beyond the end of the device */
#define BLK_EUNSUPP     (-95)   /* the device or driver lacks the operation */
#define BLK_ETIMEDOUT   (-110)  /* the device did not answer */
#define BLK_PENDING     1       /* req->status while in flight */

const char *blk_strerror(int err);

/* Capabilities (dev->caps). */
#define BLK_CAP_FLUSH        (1u << 0)  /* has a flush command */
#define BLK_CAP_FUA          (1u << 1)  /* writes may carry FUA */
#define BLK_CAP_DISCARD      (1u << 2)
#define BLK_CAP_WRITE_ZEROES (1u << 3)
#define BLK_CAP_WCE_TOGGLE   (1u << 4)  /* set_write_cache works */
#define BLK_CAP_QUEUED       (1u << 5)  /* more than one request in flight */

enum blk_op {
    BLK_OP_READ,
    BLK_OP_WRITE,
    BLK_OP_FLUSH,
    BLK_OP_DISCARD,
    BLK_OP_WRITE_ZEROES,
};

#define BLK_REQ_FUA     (1u << 0)   /* WRITE: durable on completion */
#define BLK_REQ_UNMAP   (1u << 1)   /* WRITE_ZEROES: may deallocate */

/* One piece of a scatter list: `len` bytes at `buf` (virtual == physical). */
struct blk_seg {
    void *buf;
    uint32_t len;
};

struct blkdev;
struct blk_req;
typedef void (*blk_done_t)(struct blkdev *dev, struct blk_req *req);

struct blk_req {
    /* Filled by the submitter. */
    enum blk_op op;
    unsigned flags;                 /* BLK_REQ_* */
    uint64_t lba;
    uint32_t count;                 /* sectors; 0 for FLUSH */
    const struct blk_seg *segs;     /* READ/WRITE only */
    unsigned nsegs;
    blk_done_t done;                /* optional: called by blk_complete */
    void *cookie;                   /* the submitter's */
    /* Set by the library: BLK_PENDING from blk_submit until completion,
     * then 0 or a BLK_E* code. */
    volatile int status;
    /* The driver's, while the request is in flight. */
    uint32_t tag;
    void *drv;
};

struct blkdev {
    /* Filled by the driver's probe. */
    const char *name;               /* e.g. "virtio0" */
    uint32_t sector_size;           /* logical sector, bytes (0 -> 512) */
    uint64_t capacity;              /* in sectors */
    char serial[21], model[41];     /* NUL-terminated, trailing spaces trimmed */
    int write_cache;                /* -1 unknown, 0 write-through, 1 write-back */
    unsigned caps;                  /* BLK_CAP_* */
    int queue_depth;                /* max requests in flight (0 -> 1) */
    uint32_t max_sectors;           /* per request (0 -> 65535) */
    uint32_t max_segs;              /* per request (0 -> 1) */
    uint32_t dma_align;             /* bytes, power of two (0 -> 4) */

    int (*read)(struct blkdev *, uint64_t lba, uint32_t count, void *buf);
    int (*write)(struct blkdev *, uint64_t lba, uint32_t count, const void *buf,
                 int fua);
    int (*flush)(struct blkdev *);
    int (*discard)(struct blkdev *, uint64_t lba, uint32_t count);
    int (*write_zeroes)(struct blkdev *, uint64_t lba, uint32_t count, int unmap);
    /* Turn the volatile write cache on/off; updates write_cache. */
    int (*set_write_cache)(struct blkdev *, int on);
    int (*submit)(struct blkdev *, struct blk_req *);
    int (*poll)(struct blkdev *);

    /* Set by the library. */
    const char *type;               /* the name it was opened by */
    int index;
    int inflight;                   /* requests between submit and complete */
};

/* A driver registration (see BLKDEV_DRIVER). */
struct blkdev_driver {
    const char *type;
    int (*probe)(int idx, struct blkdev **out);
};

#define BLKDEV_DRIVER(type_, probe_)                                        \
    static const struct blkdev_driver blkdrv_entry_##probe_                 \
        __attribute__((used, section(".blkdrv"), aligned(8))) = { (type_), (probe_) }

/* Open the idx-th device of a type ("virtio", "ahci", "ide", "lsi",
 * "ram").  On failure print the reason, set blkdev_errno, return NULL. */
struct blkdev *blkdev_open(const char *type, int idx);
/* blkdev_open(arg "dev" (required), arg "idx" (default 0)). */
struct blkdev *blkdev_open_args(void);
extern int blkdev_errno;
int blkdev_driver_count(void);
const char *blkdev_driver_type(int i);
/* One line: name, size, sector size, cache, capabilities, queue depth. */
void blkdev_describe(const struct blkdev *d);

/* Synchronous I/O: split to max_sectors as needed. */
int blk_read(struct blkdev *d, uint64_t lba, uint32_t count, void *buf);
int blk_write(struct blkdev *d, uint64_t lba, uint32_t count, const void *buf,
              unsigned flags);
int blk_flush(struct blkdev *d);
int blk_discard(struct blkdev *d, uint64_t lba, uint32_t count);
int blk_write_zeroes(struct blkdev *d, uint64_t lba, uint32_t count, unsigned flags);
int blk_set_write_cache(struct blkdev *d, int on);

/* Queued I/O. */
int blk_submit(struct blkdev *d, struct blk_req *req);
/* Reap completions; returns how many requests completed (>= 0) or a
 * fatal error from the driver. */
int blk_poll(struct blkdev *d);
/* Poll until req completes; returns its status.  Gives up after
 * blk_wait_limit polls with BLK_ETIMEDOUT (the request stays in flight:
 * the device is then unusable). */
int blk_wait(struct blkdev *d, struct blk_req *req);
extern uint64_t blk_wait_limit;
/* For drivers: mark a request finished. */
void blk_complete(struct blkdev *d, struct blk_req *req, int status);

#endif
