/* Multiboot v1 information (Multiboot 0.6.96 §3.3 "Boot information
 * format").  mb_init() copies what guests use out of the loader's
 * structure at boot, so the memory it occupied may be reused (the DMA pool
 * starts above it anyway). */
#ifndef GUEST_MULTIBOOT_H
#define GUEST_MULTIBOOT_H

#include <stdint.h>

/* The loader's structure, as laid out in §3.3 (only the fields used). */
struct mb_info {
    uint32_t flags;
    uint32_t mem_lower, mem_upper;      /* flags bit 0: KiB below 640K / above 1M */
    uint32_t boot_device;               /* bit 1 */
    uint32_t cmdline;                   /* bit 2: physical address, C string */
    uint32_t mods_count, mods_addr;     /* bit 3 */
    uint32_t syms[4];                   /* bits 4/5 */
    uint32_t mmap_length, mmap_addr;    /* bit 6 */
} __attribute__((packed));

#define MB_INFO_MEMORY  (1u << 0)
#define MB_INFO_CMDLINE (1u << 2)
#define MB_INFO_MMAP    (1u << 6)

/* A memory map entry (§3.3): `size` does not count itself, so the next
 * entry is at (char *)e + e->size + 4. */
struct mb_mmap_entry {
    uint32_t size;
    uint64_t base, length;
    uint32_t type;                      /* 1 = available RAM */
} __attribute__((packed));

#define MB_MMAP_MAX 32

struct mb_region { uint64_t base, length; uint32_t type; };

void mb_init(uint32_t magic, uint32_t mbinfo);
int mb_valid(void);                     /* booted by a multiboot loader */
uint32_t mb_mem_lower_kib(void);        /* 0 if not provided */
uint32_t mb_mem_upper_kib(void);
/* Total RAM in bytes: from the map if there is one, else 1 MiB + mem_upper. */
uint64_t mb_ram_bytes(void);
const char *mb_cmdline(void);           /* "" if none */
int mb_mmap_count(void);
const struct mb_region *mb_mmap(int i);
/* First byte above everything the loader handed over (info structure,
 * command line, memory map): the DMA pool starts above this. */
uintptr_t mb_boot_data_end(void);

#endif
