#include "dma.h"
#include "console.h"
#include "multiboot.h"
#include "string.h"

extern char __image_end[];

static uintptr_t pool_next, pool_end;

#define ALIGN_UP(x, a) (((x) + (a) - 1) & ~(uintptr_t)((a) - 1))
#define FOUR_GIB 0x100000000ull

void dma_init(void)
{
    uintptr_t start = (uintptr_t)__image_end;
    if (mb_boot_data_end() > start)
        start = mb_boot_data_end();
    start = ALIGN_UP(start, 4096);

    /* End of the usable RAM region holding the image; without a map, the
     * upper-memory size (RAM contiguous from 1 MiB, Multiboot §3.3). */
    uint64_t end = 0;
    for (int i = 0; i < mb_mmap_count(); i++) {
        const struct mb_region *r = mb_mmap(i);
        if (r->type == 1 && r->base <= start && start < r->base + r->length)
            end = r->base + r->length;
    }
    if (!end && mb_mem_upper_kib())
        end = 0x100000 + (uint64_t)mb_mem_upper_kib() * 1024;
    if (!end)
        end = start + 16 * 1024 * 1024;     /* no information: assume 16 MiB */
    if (end > FOUR_GIB)
        end = FOUR_GIB;                     /* the identity map ends at 4 GiB */
    pool_next = start;
    pool_end = end > start ? end : start;
}

void *dma_alloc(size_t size, size_t align)
{
    if (!align)
        align = 16;
    if (align & (align - 1))
        panic("dma_alloc: alignment %lu is not a power of two", (unsigned long)align);
    uintptr_t p = ALIGN_UP(pool_next, align);
    if (p < pool_next || p > pool_end || size > pool_end - p)
        panic("dma_alloc: out of memory: %lu bytes (align %lu) requested, %lu free",
              (unsigned long)size, (unsigned long)align, (unsigned long)dma_avail());
    pool_next = p + size;
    memset((void *)p, 0, size);
    return (void *)p;
}

size_t dma_avail(void) { return pool_end - pool_next; }
uintptr_t dma_mark(void) { return pool_next; }

void dma_release(uintptr_t mark)
{
    if (mark <= pool_next)
        pool_next = mark;
}
