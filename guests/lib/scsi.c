#include "scsi.h"
#include "endian.h"
#include "string.h"

static int clear(uint8_t cdb[SCSI_CDB_MAX], uint8_t op, int len)
{
    memset(cdb, 0, SCSI_CDB_MAX);
    cdb[0] = op;
    return len;
}

int scsi_cdb_rw(uint8_t cdb[SCSI_CDB_MAX], int write, uint64_t lba, uint32_t count, int fua)
{
    if (lba + count <= 0x100000000ull && count <= 0xFFFF) {
        clear(cdb, write ? SCSI_WRITE_10 : SCSI_READ_10, 10);
        put_be32(cdb + 2, (uint32_t)lba);
        put_be16(cdb + 7, (uint16_t)count);
    } else {
        clear(cdb, write ? SCSI_WRITE_16 : SCSI_READ_16, 16);
        put_be64(cdb + 2, lba);
        put_be32(cdb + 10, count);
    }
    if (fua)
        cdb[1] |= 0x08;
    return cdb[0] == SCSI_READ_10 || cdb[0] == SCSI_WRITE_10 ? 10 : 16;
}

int scsi_cdb_sync_cache(uint8_t cdb[SCSI_CDB_MAX])
{
    return clear(cdb, SCSI_SYNC_CACHE_10, 10);
}

int scsi_cdb_inquiry(uint8_t cdb[SCSI_CDB_MAX], int evpd, uint8_t page, uint16_t alloc)
{
    clear(cdb, SCSI_INQUIRY, 6);
    cdb[1] = evpd ? 1 : 0;
    cdb[2] = evpd ? page : 0;
    put_be16(cdb + 3, alloc);
    return 6;
}

int scsi_cdb_read_capacity16(uint8_t cdb[SCSI_CDB_MAX], uint32_t alloc)
{
    clear(cdb, SCSI_SERVICE_ACTION_IN_16, 16);
    cdb[1] = SCSI_SAI_READ_CAPACITY_16;
    put_be32(cdb + 10, alloc);
    return 16;
}

int scsi_cdb_request_sense(uint8_t cdb[SCSI_CDB_MAX], uint8_t alloc)
{
    clear(cdb, SCSI_REQUEST_SENSE, 6);
    cdb[4] = alloc;
    return 6;
}

int scsi_cdb_test_unit_ready(uint8_t cdb[SCSI_CDB_MAX])
{
    return clear(cdb, SCSI_TEST_UNIT_READY, 6);
}

int scsi_cdb_mode_sense10(uint8_t cdb[SCSI_CDB_MAX], uint8_t page, uint16_t alloc)
{
    clear(cdb, SCSI_MODE_SENSE_10, 10);
    cdb[1] = 0x08;                  /* DBD: no block descriptors */
    cdb[2] = page & 0x3F;           /* PC = 00: current values */
    put_be16(cdb + 7, alloc);
    return 10;
}

int scsi_cdb_mode_select10(uint8_t cdb[SCSI_CDB_MAX], uint16_t len)
{
    clear(cdb, SCSI_MODE_SELECT_10, 10);
    cdb[1] = 0x10;                  /* PF: pages are in the standard format */
    put_be16(cdb + 7, len);
    return 10;
}

int scsi_cdb_unmap(uint8_t cdb[SCSI_CDB_MAX], uint16_t len)
{
    clear(cdb, SCSI_UNMAP, 10);
    put_be16(cdb + 7, len);
    return 10;
}

int scsi_cdb_write_same16(uint8_t cdb[SCSI_CDB_MAX], uint64_t lba, uint32_t count, int unmap)
{
    clear(cdb, SCSI_WRITE_SAME_16, 16);
    if (unmap)
        cdb[1] = 0x08;
    put_be64(cdb + 2, lba);
    put_be32(cdb + 10, count);
    return 16;
}

size_t scsi_unmap_param(uint8_t out[24], uint64_t lba, uint32_t count)
{
    memset(out, 0, 24);
    put_be16(out + 0, 22);          /* UNMAP data length: bytes after this field */
    put_be16(out + 2, 16);          /* block descriptor data length */
    put_be64(out + 8, lba);
    put_be32(out + 16, count);
    return 24;
}

int scsi_parse_capacity16(const uint8_t *d, size_t len, struct scsi_capacity *o)
{
    if (len < 32)
        return -1;
    o->blocks = get_be64(d) + 1;
    o->block_size = get_be32(d + 8);
    o->lbpme = !!(d[14] & 0x80);
    o->lbprz = !!(d[14] & 0x40);
    return 0;
}

int scsi_parse_sense(const uint8_t *d, size_t len, struct scsi_sense *o)
{
    memset(o, 0, sizeof(*o));
    if (len < 1)
        return -1;
    uint8_t code = d[0] & 0x7F;
    if ((code == 0x70 || code == 0x71) && len >= 14) {
        o->key = d[2] & 0x0F;
        o->asc = d[12];
        o->ascq = d[13];
        return 0;
    }
    if ((code == 0x72 || code == 0x73) && len >= 4) {
        o->key = d[1] & 0x0F;
        o->asc = d[2];
        o->ascq = d[3];
        return 0;
    }
    return -1;
}

const char *scsi_sense_key_name(uint8_t key)
{
    static const char *const names[16] = {
        "NO SENSE", "RECOVERED ERROR", "NOT READY", "MEDIUM ERROR",
        "HARDWARE ERROR", "ILLEGAL REQUEST", "UNIT ATTENTION", "DATA PROTECT",
        "BLANK CHECK", "VENDOR SPECIFIC", "COPY ABORTED", "ABORTED COMMAND",
        "reserved", "VOLUME OVERFLOW", "MISCOMPARE", "COMPLETED",
    };
    return names[key & 0x0F];
}

static void field(char *dst, const uint8_t *src, int n)
{
    memcpy(dst, src, n);
    while (n > 0 && (dst[n - 1] == ' ' || dst[n - 1] == 0))
        n--;
    dst[n] = 0;
}

int scsi_parse_inquiry(const uint8_t *d, size_t len, struct scsi_inquiry *o)
{
    memset(o, 0, sizeof(*o));
    if (len < 36)
        return -1;
    o->type = d[0] & 0x1F;
    field(o->vendor, d + 8, 8);
    field(o->product, d + 16, 16);
    field(o->revision, d + 32, 4);
    return 0;
}

int scsi_find_caching_page(const uint8_t *d, size_t len, int *wce)
{
    if (len < 8)
        return -1;
    /* Mode parameter header(10) (SPC-4 §7.5.5): mode data length in bytes
     * 0-1 (not counting itself), block descriptor length in bytes 6-7. */
    size_t end = (size_t)get_be16(d) + 2;
    if (end > len)
        end = len;
    size_t off = 8 + get_be16(d + 6);
    /* Pages: byte 0 bits 5:0 page code (bit 6 SPF: sub-page format with a
     * 2-byte length at 2-3), byte 1 page length. */
    while (off + 2 <= end) {
        uint8_t code = d[off] & 0x3F;
        size_t plen = d[off] & 0x40 ? (off + 4 <= end ? get_be16(d + off + 2) + 4u : end)
                                    : d[off + 1] + 2u;
        if (code == SCSI_MODE_PAGE_CACHING && !(d[off] & 0x40) && off + 3 <= end) {
            *wce = !!(d[off + 2] & 0x04);
            return (int)off;
        }
        off += plen;
    }
    return -1;
}
