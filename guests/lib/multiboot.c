#include "multiboot.h"
#include "console.h"
#include "string.h"
#include "sys.h"

#define CMDLINE_MAX 1024

static int valid;
static uint32_t info_flags, mem_lower, mem_upper;
static char cmdline[CMDLINE_MAX];
static struct mb_region regions[MB_MMAP_MAX];
static int nregions;
static uintptr_t boot_end;

static void note_end(uintptr_t end)
{
    if (end > boot_end)
        boot_end = end;
}

void mb_init(uint32_t magic, uint32_t mbinfo)
{
    if (magic != MB_BOOT_MAGIC || mbinfo == 0) {
        printf("multiboot: bad magic 0x%x, no boot information\n", magic);
        return;
    }
    const struct mb_info *mi = (const struct mb_info *)(uintptr_t)mbinfo;
    valid = 1;
    info_flags = mi->flags;
    note_end(mbinfo + sizeof(*mi));
    if (mi->flags & MB_INFO_MEMORY) {
        mem_lower = mi->mem_lower;
        mem_upper = mi->mem_upper;
    }
    if ((mi->flags & MB_INFO_CMDLINE) && mi->cmdline) {
        const char *s = (const char *)(uintptr_t)mi->cmdline;
        size_t n = strlcpy(cmdline, s, sizeof(cmdline));
        if (n >= sizeof(cmdline))
            printf("multiboot: command line truncated to %d bytes\n", CMDLINE_MAX - 1);
        note_end(mi->cmdline + n + 1);
    }
    if (mi->flags & MB_INFO_MMAP) {
        uintptr_t p = mi->mmap_addr, end = p + mi->mmap_length;
        while (p + sizeof(struct mb_mmap_entry) <= end && nregions < MB_MMAP_MAX) {
            const struct mb_mmap_entry *e = (const struct mb_mmap_entry *)p;
            regions[nregions++] = (struct mb_region){ e->base, e->length, e->type };
            if (e->size < 20)               /* malformed: would not advance */
                break;
            p += e->size + 4;
        }
        note_end(end);
    }
}

int mb_valid(void) { return valid; }
uint32_t mb_mem_lower_kib(void) { return mem_lower; }
uint32_t mb_mem_upper_kib(void) { return mem_upper; }
const char *mb_cmdline(void) { return cmdline; }
int mb_mmap_count(void) { return nregions; }
const struct mb_region *mb_mmap(int i) { return i >= 0 && i < nregions ? &regions[i] : 0; }
uintptr_t mb_boot_data_end(void) { return boot_end; }

uint64_t mb_ram_bytes(void)
{
    uint64_t total = 0;
    for (int i = 0; i < nregions; i++)
        if (regions[i].type == 1)
            total += regions[i].length;
    if (total)
        return total;
    if (info_flags & MB_INFO_MEMORY)
        return (uint64_t)(1024 + mem_upper) * 1024;
    return 0;
}
