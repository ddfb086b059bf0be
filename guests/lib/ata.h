/* The ATA command set pieces shared by the AHCI and IDE drivers: command
 * opcodes, status/error bits and IDENTIFY DEVICE parsing.  Numbers from
 * ATA/ATAPI Command Set - 3 (ACS-3), §7 (commands) and Table 45 (IDENTIFY
 * DEVICE data); SATA 3.x §13.6 for the FPDMA (NCQ) commands. */
#ifndef GUEST_ATA_H
#define GUEST_ATA_H

#include <stdint.h>
#include "blkdev.h"

/* Commands (ACS-3 §7). */
#define ATA_CMD_DSM                 0x06    /* DATA SET MANAGEMENT (feature 1 = TRIM) */
#define ATA_CMD_READ_SECTORS        0x20    /* PIO, 28-bit */
#define ATA_CMD_READ_SECTORS_EXT    0x24    /* PIO, 48-bit */
#define ATA_CMD_READ_DMA_EXT        0x25
#define ATA_CMD_WRITE_SECTORS       0x30
#define ATA_CMD_WRITE_SECTORS_EXT   0x34
#define ATA_CMD_WRITE_DMA_EXT       0x35
#define ATA_CMD_WRITE_DMA_FUA_EXT   0x3D
#define ATA_CMD_READ_FPDMA_QUEUED   0x60    /* NCQ (SATA §13.6.4) */
#define ATA_CMD_WRITE_FPDMA_QUEUED  0x61
#define ATA_CMD_READ_DMA            0xC8    /* 28-bit */
#define ATA_CMD_WRITE_DMA           0xCA
#define ATA_CMD_FLUSH_CACHE         0xE7
#define ATA_CMD_FLUSH_CACHE_EXT     0xEA
#define ATA_CMD_IDENTIFY            0xEC
#define ATA_CMD_SET_FEATURES        0xEF

#define ATA_DSM_TRIM                0x01    /* DSM feature: TRIM */
#define ATA_SF_ENABLE_WCACHE        0x02    /* SET FEATURES subcommands */
#define ATA_SF_DISABLE_WCACHE       0x82

/* Status register (ACS-3 §6.2) and error register (§6.3) bits. */
#define ATA_SR_BSY                  0x80
#define ATA_SR_DRDY                 0x40
#define ATA_SR_DF                   0x20
#define ATA_SR_DRQ                  0x08
#define ATA_SR_ERR                  0x01
#define ATA_ER_UNC                  0x40
#define ATA_ER_IDNF                 0x10
#define ATA_ER_ABRT                 0x04

/* Device register: bit 6 = LBA addressing; bit 4 selects device 1 on a
 * parallel ATA channel.  FPDMA commands also want bit 6. */
#define ATA_DEV_LBA                 0x40

/* The largest 28-bit transfer; 48-bit commands take up to 65536. */
#define ATA_LBA28_LIMIT             (1u << 28)

/* What IDENTIFY DEVICE says, decoded. */
struct ata_identify {
    uint64_t sectors;           /* user addressable logical sectors */
    uint32_t sector_size;       /* logical sector size in bytes */
    int lba48;                  /* 48-bit commands supported (word 83 bit 10) */
    int dma;                    /* DMA supported (word 49 bit 8) */
    int wcache_supported;       /* word 82 bit 5 */
    int wcache_enabled;         /* word 85 bit 5 */
    int flush;                  /* FLUSH CACHE (word 83 bit 12) */
    int flush_ext;              /* FLUSH CACHE EXT (word 83 bit 13) */
    int fua;                    /* WRITE DMA FUA EXT (word 84 bit 6) */
    int trim;                   /* DSM TRIM (word 169 bit 0) */
    unsigned dsm_max_blocks;    /* 512-byte blocks of ranges per DSM (word 105; 0: not reported, use 1) */
    int ncq;                    /* NCQ (word 76 bit 8) */
    int ncq_depth;              /* word 75 bits 4:0, plus one */
    char serial[21], model[41], firmware[9];
};

/* Decode the 256 words of IDENTIFY DEVICE data.  Returns 0, or BLK_EIO if
 * the data is not from an ATA device (word 0 bit 15 set) or the
 * capacity is 0. */
int ata_parse_identify(const uint16_t id[256], struct ata_identify *out);

/* Fill the blkdev description fields (sector_size, capacity, serial,
 * model, write_cache, caps without BLK_CAP_QUEUED) from it. */
void ata_identify_to_blkdev(const struct ata_identify *id, struct blkdev *d);

/* ATA strings store two characters per word, first character in the high
 * byte (ACS-3 §3.4.9).  Copies `nwords` words into dst (2*nwords+1 bytes),
 * trailing spaces removed. */
void ata_string(char *dst, const uint16_t *words, unsigned nwords);

/* One 8-byte DSM TRIM range entry (ACS-3 §7.5.3.2): LBA in bits 47:0,
 * count (<= 65535 sectors, 0 = unused entry) in bits 63:48. */
static inline uint64_t ata_trim_entry(uint64_t lba, uint16_t count)
{
    return (lba & 0xFFFFFFFFFFFFull) | (uint64_t)count << 48;
}

#endif
