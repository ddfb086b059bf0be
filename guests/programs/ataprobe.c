/* ataprobe: IDENTIFY DEVICE on the legacy primary IDE channel by PIO, and
 * the library's decoding of it (lib/ata.c).  Not a driver: just enough of
 * the task-file protocol (ACS-3 §7.12, PIO data-in; ATA/ATAPI-6 §9.5
 * device selection) to check ata_parse_identify against the real thing.
 *
 * Arguments: drive=0|1 (master/slave, default 0).
 * Output: "ataprobe: model '...' serial '...' firmware '...'", then the
 * decoded numbers; exit 0, or 2 if no ATA device answers. */
#include "guest.h"
#include "ata.h"

#define CMD_BASE    0x1F0       /* data, error, count, lba 0-2, device, status */
#define CTL_BASE    0x3F6       /* alternate status / device control */
#define SPINS       1000000

static uint16_t id[256];

int kmain(uint32_t magic, uint32_t mbinfo)
{
    (void)magic, (void)mbinfo;
    unsigned drive = (unsigned)arg_u64("drive", 0);
    outb(CTL_BASE, 0x02);                       /* nIEN: no interrupts */
    outb(CMD_BASE + 6, 0xA0 | (drive & 1) << 4);
    for (int i = 0; i < 4; i++)                 /* 400 ns after selecting */
        inb(CTL_BASE);
    uint8_t st = inb(CMD_BASE + 7);
    if (st == 0xFF || st == 0x00) {             /* floating bus: no device */
        printf("ataprobe: no device\n");
        return 2;
    }
    outb(CMD_BASE + 7, ATA_CMD_IDENTIFY);
    inb(CTL_BASE);
    if (!SPIN_UNTIL(!((st = inb(CMD_BASE + 7)) & ATA_SR_BSY), SPINS) ||
        !SPIN_UNTIL((st = inb(CMD_BASE + 7)) & (ATA_SR_DRQ | ATA_SR_ERR), SPINS) ||
        (st & ATA_SR_ERR)) {
        printf("ataprobe: no ATA device (status 0x%02x)\n", st);
        return 2;
    }
    insw(CMD_BASE, id, 256);

    struct ata_identify a;
    if (ata_parse_identify(id, &a) < 0) {
        printf("ataprobe: IDENTIFY data not from an ATA device\n");
        return 2;
    }
    printf("ataprobe: model '%s' serial '%s' firmware '%s'\n", a.model, a.serial,
           a.firmware);
    printf("ataprobe: sectors %lu sector_size %u lba48 %d dma %d\n",
           (unsigned long)a.sectors, a.sector_size, a.lba48, a.dma);
    printf("ataprobe: wcache supported %d enabled %d flush %d flush_ext %d fua %d\n",
           a.wcache_supported, a.wcache_enabled, a.flush, a.flush_ext, a.fua);
    printf("ataprobe: trim %d dsm_max_blocks %u ncq %d depth %d\n", a.trim,
           a.dsm_max_blocks, a.ncq, a.ncq_depth);
    struct blkdev d = { .name = "ata" };
    ata_identify_to_blkdev(&a, &d);
    blkdev_describe(&d);
    return 0;
}
