/* SCSI command building and response decoding for SCSI block devices (the
 * LSI driver, or any other SCSI transport).  Numbers from SPC-4 (primary
 * commands, sense data, VPD, mode pages) and SBC-3 (block commands); CDB
 * fields are big-endian. */
#ifndef GUEST_SCSI_H
#define GUEST_SCSI_H

#include <stdint.h>
#include <stddef.h>

/* Operation codes (SPC-4 Annex D, SBC-3 §5). */
#define SCSI_TEST_UNIT_READY    0x00
#define SCSI_REQUEST_SENSE      0x03
#define SCSI_INQUIRY            0x12
#define SCSI_MODE_SELECT_6      0x15
#define SCSI_MODE_SENSE_6       0x1A
#define SCSI_READ_CAPACITY_10   0x25
#define SCSI_READ_10            0x28
#define SCSI_WRITE_10           0x2A
#define SCSI_SYNC_CACHE_10      0x35
#define SCSI_WRITE_SAME_10      0x41
#define SCSI_UNMAP              0x42
#define SCSI_MODE_SELECT_10     0x55
#define SCSI_MODE_SENSE_10      0x5A
#define SCSI_READ_16            0x88
#define SCSI_WRITE_16           0x8A
#define SCSI_SYNC_CACHE_16      0x91
#define SCSI_WRITE_SAME_16      0x93
#define SCSI_SERVICE_ACTION_IN_16 0x9E      /* + SA 0x10: READ CAPACITY(16) */
#define SCSI_SAI_READ_CAPACITY_16 0x10
#define SCSI_REPORT_LUNS        0xA0

/* Status byte (SAM-5 §5.3). */
#define SCSI_STATUS_GOOD            0x00
#define SCSI_STATUS_CHECK_CONDITION 0x02
#define SCSI_STATUS_BUSY            0x08
#define SCSI_STATUS_RESERVATION_CONFLICT 0x18
#define SCSI_STATUS_TASK_SET_FULL   0x28

/* Sense keys (SPC-4 Table 28). */
#define SCSI_SK_NO_SENSE        0x0
#define SCSI_SK_RECOVERED_ERROR 0x1
#define SCSI_SK_NOT_READY       0x2
#define SCSI_SK_MEDIUM_ERROR    0x3
#define SCSI_SK_HARDWARE_ERROR  0x4
#define SCSI_SK_ILLEGAL_REQUEST 0x5
#define SCSI_SK_UNIT_ATTENTION  0x6
#define SCSI_SK_DATA_PROTECT    0x7
#define SCSI_SK_ABORTED_COMMAND 0xB

#define SCSI_CDB_MAX            16
#define SCSI_MODE_PAGE_CACHING  0x08
#define SCSI_VPD_BLOCK_LIMITS   0xB0
#define SCSI_VPD_LBP            0xB2        /* logical block provisioning */

/* READ/WRITE: the 10-byte CDB when LBA and count fit (LBA < 2^32, count
 * <= 65535), else the 16-byte one.  FUA is bit 3 of byte 1 (SBC-3
 * §5.11/§5.35).  Returns the CDB length. */
int scsi_cdb_rw(uint8_t cdb[SCSI_CDB_MAX], int write, uint64_t lba, uint32_t count,
                int fua);
/* SYNCHRONIZE CACHE(10) of the whole device (LBA 0, count 0). */
int scsi_cdb_sync_cache(uint8_t cdb[SCSI_CDB_MAX]);
/* INQUIRY; evpd selects a VPD page. */
int scsi_cdb_inquiry(uint8_t cdb[SCSI_CDB_MAX], int evpd, uint8_t page, uint16_t alloc);
int scsi_cdb_read_capacity16(uint8_t cdb[SCSI_CDB_MAX], uint32_t alloc);
int scsi_cdb_request_sense(uint8_t cdb[SCSI_CDB_MAX], uint8_t alloc);
int scsi_cdb_test_unit_ready(uint8_t cdb[SCSI_CDB_MAX]);
/* MODE SENSE(10), current values, block descriptors disabled (DBD). */
int scsi_cdb_mode_sense10(uint8_t cdb[SCSI_CDB_MAX], uint8_t page, uint16_t alloc);
/* MODE SELECT(10) with PF=1 of a parameter list of `len` bytes. */
int scsi_cdb_mode_select10(uint8_t cdb[SCSI_CDB_MAX], uint16_t len);
/* UNMAP with a parameter list of `len` bytes (see scsi_unmap_param). */
int scsi_cdb_unmap(uint8_t cdb[SCSI_CDB_MAX], uint16_t len);
/* WRITE SAME(16) of one logical block of zeroes to `count` blocks; unmap
 * sets the UNMAP bit (SBC-3 §5.42). */
int scsi_cdb_write_same16(uint8_t cdb[SCSI_CDB_MAX], uint64_t lba, uint32_t count,
                          int unmap);

/* The UNMAP parameter list for one range (SBC-3 §5.28.2): 8-byte header
 * plus one 16-byte block descriptor.  Returns its length (24). */
size_t scsi_unmap_param(uint8_t out[24], uint64_t lba, uint32_t count);

/* READ CAPACITY(16) data (SBC-3 §5.16.2): returns 0, or -1 if short. */
struct scsi_capacity {
    uint64_t blocks;            /* last LBA + 1 */
    uint32_t block_size;
    int lbpme;                  /* logical block provisioning enabled */
    int lbprz;                  /* unmapped blocks read as zero */
};
int scsi_parse_capacity16(const uint8_t *data, size_t len, struct scsi_capacity *out);

/* Sense data, fixed (0x70/0x71) or descriptor (0x72/0x73) format
 * (SPC-4 §4.5).  Returns 0, or -1 if it is neither. */
struct scsi_sense { uint8_t key, asc, ascq; };
int scsi_parse_sense(const uint8_t *data, size_t len, struct scsi_sense *out);
const char *scsi_sense_key_name(uint8_t key);

/* Standard INQUIRY data (SPC-4 §6.4.2): peripheral device type (0 = disk),
 * vendor (8), product (16), revision (4), trailing spaces removed. */
struct scsi_inquiry { uint8_t type; char vendor[9], product[17], revision[5]; };
int scsi_parse_inquiry(const uint8_t *data, size_t len, struct scsi_inquiry *out);

/* The caching mode page in MODE SENSE(10) data: WCE (write cache enable,
 * bit 2 of page byte 2, SBC-3 §6.4.5).  Returns the offset of the page in
 * `data` and sets *wce, or -1 if the page is not there. */
int scsi_find_caching_page(const uint8_t *data, size_t len, int *wce);

#endif
