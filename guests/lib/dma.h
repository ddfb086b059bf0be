/* DMA memory: a bump allocator over RAM above the guest image.
 *
 * Memory is identity mapped (virtual == physical), so a pointer from
 * dma_alloc is the bus address to program into a device.  The pool lies
 * between the end of the image/boot data and the end of the RAM region that
 * contains 1 MiB (below 4 GiB), so 32-bit DMA engines (IDE bus-master PRDs)
 * can reach all of it. */
#ifndef GUEST_DMA_H
#define GUEST_DMA_H

#include <stddef.h>
#include <stdint.h>

void dma_init(void);
/* Zeroed memory of `size` bytes aligned to `align` (a power of two; 0 means
 * 16).  Running out is fatal (panic with the sizes): guests size their
 * buffers from the command line and must be told clearly. */
void *dma_alloc(size_t size, size_t align);
/* Bytes still available. */
size_t dma_avail(void);
/* Release everything allocated after a mark (for loops that reallocate). */
uintptr_t dma_mark(void);
void dma_release(uintptr_t mark);

static inline uint64_t virt_to_phys(const void *p) { return (uintptr_t)p; }

#endif
