/* dmacode: code that a device writes into memory runs as written.
 *
 *   dev=<virtio|ahci|ide|lsi|ram> idx=N rounds=N
 *
 * A CPU fetches instructions from memory as it is now: when a device has
 * written new bytes by DMA over code that already ran, the next call runs
 * the new bytes (x86 needs no cache flush for DMA; SDM vol. 3A §11.6).  An
 * emulator that caches translated code must therefore drop what it
 * translated from memory a device writes, as QEMU does in its DMA path.
 *
 * The guest writes two tiny functions ("return 0x1111", "return 0x2222") to
 * sectors 0 and 1 through the device, then, `rounds` times, reads one of them
 * by DMA into the same buffer and calls it.  The CPU never stores into that
 * buffer, so only the device's writes can change what runs there.
 * Prints "dmacode: ok rounds=N", or the first call that returned the other
 * function's value; exit 0 on success, 1 on a mismatch or an I/O error. */
#include "guest.h"

#define VALUE(i) (0x1111u * (uint32_t)((i) + 1))
/* The functions sit past the start of their sector: a transfer that the CPU
 * performs in part itself (IDE PIO's rep insw stores the first word through
 * the emulator) must not be what drops the old code. */
#define ENTRY 64

typedef uint32_t (*fn_t)(void);

int kmain(uint32_t magic, uint32_t mbinfo)
{
    (void)magic; (void)mbinfo;
    struct blkdev *d = blkdev_open_args();
    if (!d) {
        printf("dmacode: FAIL: cannot open device\n");
        return 1;
    }
    uint32_t ss = d->sector_size;
    int rounds = (int)arg_u64("rounds", 8);
    uint8_t *stage = dma_alloc(2 * ss, 4096);
    uint8_t *code = dma_alloc(ss, 4096);        /* written by the device only */
    memset(stage, 0xCC, 2 * ss);                /* int3 after each function */
    for (int i = 0; i < 2; i++) {
        uint8_t *f = stage + i * ss + ENTRY;
        uint32_t v = VALUE(i);
        f[0] = 0xB8;                            /* mov eax, imm32 */
        memcpy(f + 1, &v, 4);
        f[5] = 0xC3;                            /* ret */
    }
    int r = blk_write(d, 0, 2, stage, 0);
    if (r) {
        printf("dmacode: FAIL: write: %s\n", blk_strerror(r));
        return 1;
    }
    for (int n = 0; n < rounds; n++) {
        int which = n & 1;
        r = blk_read(d, (uint64_t)which, 1, code);
        if (r) {
            printf("dmacode: FAIL: read: %s\n", blk_strerror(r));
            return 1;
        }
        uint32_t got = ((fn_t)(uintptr_t)(code + ENTRY))();
        if (got != VALUE(which)) {
            printf("dmacode: FAIL: round %d ran 0x%x, the device wrote the function "
                   "returning 0x%x\n", n, got, VALUE(which));
            return 1;
        }
    }
    printf("dmacode: ok rounds=%d\n", rounds);
    return 0;
}
