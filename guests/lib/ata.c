#include "ata.h"
#include "string.h"

void ata_string(char *dst, const uint16_t *words, unsigned nwords)
{
    for (unsigned i = 0; i < nwords; i++) {
        dst[2 * i] = (char)(words[i] >> 8);
        dst[2 * i + 1] = (char)(words[i] & 0xFF);
    }
    int n = 2 * (int)nwords;
    while (n > 0 && (dst[n - 1] == ' ' || dst[n - 1] == 0))
        n--;
    dst[n] = 0;
}

/* A word whose bit 14 is one and bit 15 zero carries valid data
 * (ACS-3 Table 45, words 83, 84, 87, 106 and others). */
static int valid_word(uint16_t w) { return (w & 0xC000) == 0x4000; }

int ata_parse_identify(const uint16_t id[256], struct ata_identify *o)
{
    memset(o, 0, sizeof(*o));
    if (id[0] & 0x8000)                         /* word 0 bit 15: not ATA */
        return BLK_EIO;
    ata_string(o->serial, &id[10], 10);         /* words 10-19 */
    ata_string(o->firmware, &id[23], 4);        /* words 23-26 */
    ata_string(o->model, &id[27], 20);          /* words 27-46 */
    o->dma = !!(id[49] & (1 << 8));
    o->ncq = !!(id[76] & (1 << 8)) && id[76] != 0xFFFF;
    o->ncq_depth = o->ncq ? (id[75] & 0x1F) + 1 : 0;
    if (valid_word(id[83])) {
        o->lba48 = !!(id[83] & (1 << 10));
        o->flush = !!(id[83] & (1 << 12));
        o->flush_ext = !!(id[83] & (1 << 13));
    }
    o->wcache_supported = !!(id[82] & (1 << 5));
    o->wcache_enabled = !!(id[85] & (1 << 5));
    if (valid_word(id[84]))
        o->fua = !!(id[84] & (1 << 6));
    o->trim = !!(id[169] & 1);
    o->dsm_max_blocks = id[105];
    if (o->lba48)                               /* words 100-103 */
        o->sectors = (uint64_t)id[100] | (uint64_t)id[101] << 16 |
                     (uint64_t)id[102] << 32 | (uint64_t)id[103] << 48;
    if (!o->sectors)                            /* words 60-61 */
        o->sectors = (uint32_t)id[60] | (uint32_t)id[61] << 16;
    /* Word 106 bit 12: logical sector longer than 256 words, its size in
     * words in 117-118. */
    o->sector_size = 512;
    if (valid_word(id[106]) && (id[106] & (1 << 12))) {
        uint32_t words = (uint32_t)id[117] | (uint32_t)id[118] << 16;
        if (words >= 256)
            o->sector_size = 2 * words;
    }
    return o->sectors ? 0 : BLK_EIO;
}

void ata_identify_to_blkdev(const struct ata_identify *id, struct blkdev *d)
{
    d->sector_size = id->sector_size;
    d->capacity = id->sectors;
    strlcpy(d->serial, id->serial, sizeof(d->serial));
    strlcpy(d->model, id->model, sizeof(d->model));
    d->write_cache = id->wcache_supported ? id->wcache_enabled : 0;
    d->caps = 0;
    if (id->flush || id->flush_ext)
        d->caps |= BLK_CAP_FLUSH;
    if (id->fua && id->lba48)
        d->caps |= BLK_CAP_FUA;
    if (id->trim)
        d->caps |= BLK_CAP_DISCARD;
    if (id->wcache_supported)
        d->caps |= BLK_CAP_WCE_TOGGLE;
}
