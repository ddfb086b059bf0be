/* identify: what a block device says about itself, through blkdev.h only.
 *
 * Prints capacity, sector size, serial, model, write-cache state,
 * capabilities and queue limits of the device named by dev=<type> idx=<n>.
 * With wce=0 or wce=1 it then switches the volatile write cache and prints
 * the state the device reports afterwards; wce=toggle switches it off and
 * back on.  Every line is a function of the device and the disk only (no
 * addresses, no timings), so transcripts compare across emulators.
 * Exit code: 0, or 1 if the device could not be opened or a cache switch
 * failed. */
#include "guest.h"

static const char *cache_name(int wc)
{
    return wc < 0 ? "unknown" : wc ? "writeback" : "writethrough";
}

static int set_wce(struct blkdev *d, int on)
{
    int r = blk_set_write_cache(d, on);
    printf("identify: set write cache %s: %s, now %s\n", on ? "on" : "off",
           blk_strerror(r), cache_name(d->write_cache));
    return r;
}

int kmain(uint32_t magic, uint32_t mbinfo)
{
    (void)magic; (void)mbinfo;
    struct blkdev *d = blkdev_open_args();
    if (!d) {
        printf("identify: FAIL: cannot open device\n");
        return 1;
    }
    uint64_t bytes = d->capacity * d->sector_size;
    printf("identify: dev=%s idx=%d name=%s\n", d->type, d->index, d->name);
    printf("capacity: %lu sectors of %u bytes (%lu MiB)\n", (unsigned long)d->capacity,
           d->sector_size, (unsigned long)(bytes >> 20));
    printf("serial: '%s'\n", d->serial);
    printf("model: '%s'\n", d->model);
    printf("write cache: %s\n", cache_name(d->write_cache));
    printf("caps:");
    static const char *const names[] = { "flush", "fua", "discard", "write_zeroes",
                                         "wce_toggle", "queued" };
    for (unsigned i = 0; i < ARRAY_SIZE(names); i++)
        if (d->caps & (1u << i))
            printf(" %s", names[i]);
    printf("\n");
    printf("limits: queue_depth=%d max_sectors=%u max_segs=%u dma_align=%u\n",
           d->queue_depth, d->max_sectors, d->max_segs, d->dma_align);
    int rc = 0;
    const char *wce = arg_str("wce", NULL);
    if (wce) {
        if (!strcmp(wce, "toggle")) {
            rc |= set_wce(d, 0) != 0;
            rc |= set_wce(d, 1) != 0;
        } else if (!strcmp(wce, "0") || !strcmp(wce, "1")) {
            rc |= set_wce(d, wce[0] == '1') != 0;
        } else {
            printf("identify: wce=%s: expected 0, 1 or toggle\n", wce);
            rc = 1;
        }
    }
    printf("identify: %s\n", rc ? "FAIL" : "done");
    return rc;
}
