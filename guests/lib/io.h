/* Port I/O, MMIO and a few privileged instructions.
 *
 * MMIO accessors go through volatile pointers so the compiler emits exactly
 * one access of the given width, in program order (device registers have
 * side effects on read and write).  The identity map makes any physical
 * address below 4 GiB a valid pointer. */
#ifndef GUEST_IO_H
#define GUEST_IO_H

#include <stdint.h>
#include <stddef.h>

static inline void outb(uint16_t port, uint8_t v)  { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(uint16_t port, uint16_t v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }

static inline uint8_t inb(uint16_t port)
{ uint8_t v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint16_t inw(uint16_t port)
{ uint16_t v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline uint32_t inl(uint16_t port)
{ uint32_t v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

/* String I/O, e.g. ATA PIO data transfers: `count` 16-bit words. */
static inline void insw(uint16_t port, void *buf, size_t count)
{ __asm__ volatile("rep insw" : "+D"(buf), "+c"(count) : "d"(port) : "memory"); }
static inline void outsw(uint16_t port, const void *buf, size_t count)
{ __asm__ volatile("rep outsw" : "+S"(buf), "+c"(count) : "d"(port) : "memory"); }
static inline void insl(uint16_t port, void *buf, size_t count)
{ __asm__ volatile("rep insl" : "+D"(buf), "+c"(count) : "d"(port) : "memory"); }
static inline void outsl(uint16_t port, const void *buf, size_t count)
{ __asm__ volatile("rep outsl" : "+S"(buf), "+c"(count) : "d"(port) : "memory"); }

static inline uint8_t  mmio_read8(uintptr_t a)  { return *(volatile uint8_t *)a; }
static inline uint16_t mmio_read16(uintptr_t a) { return *(volatile uint16_t *)a; }
static inline uint32_t mmio_read32(uintptr_t a) { return *(volatile uint32_t *)a; }
static inline uint64_t mmio_read64(uintptr_t a) { return *(volatile uint64_t *)a; }
static inline void mmio_write8(uintptr_t a, uint8_t v)   { *(volatile uint8_t *)a = v; }
static inline void mmio_write16(uintptr_t a, uint16_t v) { *(volatile uint16_t *)a = v; }
static inline void mmio_write32(uintptr_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline void mmio_write64(uintptr_t a, uint64_t v) { *(volatile uint64_t *)a = v; }

/* Compiler barrier; x86 keeps stores to WB memory ordered with respect to
 * later MMIO writes (SDM Vol. 3A §8.2.2), so publishing a descriptor and
 * then ringing a doorbell only needs the compiler not to reorder.  mb() is
 * the full fence for the rare case that needs one. */
#define barrier()   __asm__ volatile("" ::: "memory")
static inline void mb(void) { __asm__ volatile("mfence" ::: "memory"); }

static inline void cpu_relax(void) { __asm__ volatile("pause"); }

/* Poll `cond` at most `limit` times (a count, not time: QEMU and blockbed
 * then give up on the same iteration); evaluates to the final truth of
 * `cond`.  For device status registers:
 *     if (!SPIN_UNTIL(!(inb(st) & BSY), 1000000)) return BLK_ETIMEDOUT; */
#define SPIN_UNTIL(cond, limit) ({                                      \
        uint64_t spin_n_ = 0;                                           \
        while (!(cond) && ++spin_n_ < (uint64_t)(limit))                \
            cpu_relax();                                                \
        !!(cond);                                                       \
    })

static inline uint64_t rdtsc(void)
{
    uint32_t lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return (uint64_t)hi << 32 | lo;
}

/* A short delay: an I/O write to the unused POST port 0x80 takes about a
 * microsecond on real hardware (the ATA "400 ns" waits use reads of the
 * alternate status register instead). */
static inline void io_delay(void) { outb(0x80, 0); }

#endif
