/* ide: a small parallel-ATA driver for the PIIX IDE function (blkdev.h).
 *
 * Compatibility mode only (ATA/ATAPI-6 §9, SFF-8038i): the two channels at
 * the legacy ports 1F0h/3F6h and 170h/376h; the bus-master block in BAR4 for
 * DMA.  Disks are counted primary master, primary slave, secondary master,
 * secondary slave (QEMU's if=ide order); blkdev_open("ide", idx) is the
 * idx-th ATA disk that answers IDENTIFY DEVICE.
 *
 * Transfers:
 *   - bus-master DMA (default when BAR4 exists and IDENTIFY says DMA):
 *     READ/WRITE DMA (EXT), WRITE DMA FUA EXT for FUA writes, DATA SET
 *     MANAGEMENT/TRIM; the PRD table splits buffers at 64 KiB boundaries;
 *   - PIO (ide_dma=0): READ/WRITE SECTORS (EXT), one sector per DRQ block,
 *     rep insw/outsw; FUA and TRIM need DMA here, so PIO mode offers neither;
 *   - FLUSH CACHE (EXT), SET FEATURES 02h/82h in both modes.
 * Interrupts stay masked (nIEN); every wait polls the alternate status and
 * the bus-master status with a bounded count.  FUA is used only when
 * IDENTIFY word 84 bit 6 says so (QEMU 7.2 does not; it aborts the command).
 * Arguments: ide_dma=0|1, ide_fua=0 turns FUA off. */
#include "guest.h"
#include "ata.h"

#define REG_DATA    0
#define REG_ERROR   1
#define REG_FEATURE 1
#define REG_COUNT   2
#define REG_LBA0    3
#define REG_LBA1    4
#define REG_LBA2    5
#define REG_DEVICE  6
#define REG_STATUS  7
#define REG_COMMAND 7
#define CTL_NIEN    0x02
#define CTL_SRST    0x04

#define BM_CMD      0
#define BM_STATUS   2
#define BM_PRDT     4
#define BM_START    0x01
#define BM_TOMEM    0x08
#define BM_ACTIVE   0x01
#define BM_ERROR    0x02
#define BM_INTR     0x04

#define PRDS        128
#define SPINS       2000000
#define MAX_DISKS   4

struct prd {
    uint32_t addr;
    uint32_t count;         /* bytes (0 = 64 KiB) in 15:0, EOT in bit 31 */
};

struct ide_disk {
    struct blkdev blk;
    uint16_t cmd, ctl, bm;  /* bm = 0: no bus master */
    int unit, dma;
    struct ata_identify id;
    struct prd *prdt;
    uint16_t *idbuf;
    uint64_t *dsm;
};

static struct ide_disk disks[MAX_DISKS];
static int ndisks = -1;
static const uint16_t cmd_ports[2] = { 0x1F0, 0x170 }, ctl_ports[2] = { 0x3F6, 0x376 };

static struct ide_disk *I(struct blkdev *d) { return container_of(d, struct ide_disk, blk); }

static int wait_not_busy(struct ide_disk *e, uint8_t *st)
{
    uint8_t s = 0;
    if (!SPIN_UNTIL(!((s = inb(e->ctl)) & ATA_SR_BSY), SPINS))
        return BLK_ETIMEDOUT;
    if (st)
        *st = s;
    return 0;
}

static void settle(struct ide_disk *e)
{
    for (int i = 0; i < 4; i++)     /* 400 ns: read the alternate status four times */
        inb(e->ctl);
}

static int select_unit(struct ide_disk *e)
{
    if (wait_not_busy(e, NULL))
        return BLK_ETIMEDOUT;
    outb(e->cmd + REG_DEVICE, 0xA0 | ATA_DEV_LBA | (e->unit << 4));
    settle(e);
    return wait_not_busy(e, NULL);
}

/* Load the task file: 48-bit commands write the "previous" (HOB) bytes
 * first, 28-bit ones put LBA 27:24 in the device register. */
static void taskfile(struct ide_disk *e, int lba48, uint64_t lba, uint32_t count,
                     uint16_t features)
{
    uint16_t b = e->cmd;
    if (lba48) {
        outb(b + REG_FEATURE, features >> 8);
        outb(b + REG_COUNT, (count >> 8) & 0xFF);
        outb(b + REG_LBA0, (lba >> 24) & 0xFF);
        outb(b + REG_LBA1, (lba >> 32) & 0xFF);
        outb(b + REG_LBA2, (lba >> 40) & 0xFF);
        outb(b + REG_DEVICE, 0xA0 | ATA_DEV_LBA | (e->unit << 4));
    } else {
        outb(b + REG_DEVICE, 0xA0 | ATA_DEV_LBA | (e->unit << 4) | ((lba >> 24) & 0xF));
    }
    outb(b + REG_FEATURE, features & 0xFF);
    outb(b + REG_COUNT, count & 0xFF);
    outb(b + REG_LBA0, lba & 0xFF);
    outb(b + REG_LBA1, (lba >> 8) & 0xFF);
    outb(b + REG_LBA2, (lba >> 16) & 0xFF);
}

static int end_status(struct ide_disk *e)
{
    uint8_t st;
    if (wait_not_busy(e, &st))
        return BLK_ETIMEDOUT;
    st = inb(e->cmd + REG_STATUS);      /* acknowledge */
    return (st & (ATA_SR_ERR | ATA_SR_DF)) ? BLK_EIO : 0;
}

static int non_data(struct ide_disk *e, uint8_t cmd, uint16_t features)
{
    if (select_unit(e))
        return BLK_ETIMEDOUT;
    taskfile(e, 0, 0, 0, features);
    outb(e->cmd + REG_COMMAND, cmd);
    settle(e);
    return end_status(e);
}

/* PIO data-in/out, one sector per DRQ block. */
static int pio(struct ide_disk *e, uint8_t cmd, int lba48, uint64_t lba, uint32_t count,
               void *buf, int write)
{
    if (select_unit(e))
        return BLK_ETIMEDOUT;
    taskfile(e, lba48, lba, count, 0);
    outb(e->cmd + REG_COMMAND, cmd);
    settle(e);
    uint32_t words = e->blk.sector_size ? e->blk.sector_size / 2 : 256;
    uint32_t blocks = count ? count : (lba48 ? 65536 : 256);
    if (cmd == ATA_CMD_IDENTIFY)
        blocks = 1, words = 256;
    uint16_t *p = buf;
    for (uint32_t i = 0; i < blocks; i++) {
        uint8_t st;
        if (wait_not_busy(e, &st))
            return BLK_ETIMEDOUT;
        if (st & (ATA_SR_ERR | ATA_SR_DF)) {
            inb(e->cmd + REG_STATUS);
            return BLK_EIO;
        }
        if (!(st & ATA_SR_DRQ))
            return BLK_EIO;
        if (write)
            outsw(e->cmd + REG_DATA, p, words);
        else
            insw(e->cmd + REG_DATA, p, words);
        p += words;
        settle(e);
    }
    return end_status(e);
}

/* Bus-master DMA (SFF-8038i §2): PRD table, direction, command, start. */
static int dma(struct ide_disk *e, uint8_t cmd, int lba48, uint64_t lba, uint32_t count,
               uint16_t features, void *buf, uint32_t bytes, int write)
{
    uint16_t bm = e->bm;
    uint32_t addr = (uint32_t)virt_to_phys(buf), left = bytes;
    int n = 0;
    while (left) {
        uint32_t chunk = 0x10000 - (addr & 0xFFFF);     /* no 64 KiB boundary crossing */
        if (chunk > left)
            chunk = left;
        if (n == PRDS)
            return BLK_EINVAL;
        e->prdt[n].addr = addr;
        e->prdt[n].count = chunk & 0xFFFF;              /* 64 KiB encodes as 0 */
        n++;
        addr += chunk;
        left -= chunk;
    }
    e->prdt[n - 1].count |= 0x80000000u;
    outb(bm + BM_CMD, 0);
    outb(bm + BM_STATUS, inb(bm + BM_STATUS) | BM_ERROR | BM_INTR);
    outl(bm + BM_PRDT, (uint32_t)virt_to_phys(e->prdt));
    outb(bm + BM_CMD, write ? 0 : BM_TOMEM);
    if (select_unit(e))
        return BLK_ETIMEDOUT;
    taskfile(e, lba48, lba, count, features);
    outb(e->cmd + REG_COMMAND, cmd);
    mb();
    outb(bm + BM_CMD, (write ? 0 : BM_TOMEM) | BM_START);
    uint8_t bst = 0, st = 0;
    int ok = SPIN_UNTIL(!((st = inb(e->ctl)) & ATA_SR_BSY) &&
                        !((bst = inb(bm + BM_STATUS)) & BM_ACTIVE), SPINS);
    outb(bm + BM_CMD, 0);
    st = inb(e->cmd + REG_STATUS);
    outb(bm + BM_STATUS, inb(bm + BM_STATUS) | BM_ERROR | BM_INTR);
    if (!ok)
        return BLK_ETIMEDOUT;
    if ((bst & BM_ERROR) || (st & (ATA_SR_ERR | ATA_SR_DF)))
        return BLK_EIO;
    return 0;
}

static int rw(struct blkdev *d, uint64_t lba, uint32_t count, void *buf, int write, int fua)
{
    struct ide_disk *e = I(d);
    int lba48 = e->id.lba48 && (lba + count > ATA_LBA28_LIMIT || count > 256 || fua);
    if (e->dma) {
        uint8_t cmd = lba48 ? (write ? (fua ? ATA_CMD_WRITE_DMA_FUA_EXT : ATA_CMD_WRITE_DMA_EXT)
                                     : ATA_CMD_READ_DMA_EXT)
                            : (write ? ATA_CMD_WRITE_DMA : ATA_CMD_READ_DMA);
        return dma(e, cmd, lba48, lba, count & (lba48 ? 0xFFFF : 0xFF), 0, buf,
                   count * d->sector_size, write);
    }
    uint8_t cmd = lba48 ? (write ? ATA_CMD_WRITE_SECTORS_EXT : ATA_CMD_READ_SECTORS_EXT)
                        : (write ? ATA_CMD_WRITE_SECTORS : ATA_CMD_READ_SECTORS);
    return pio(e, cmd, lba48, lba, count & (lba48 ? 0xFFFF : 0xFF), buf, write);
}

static int ide_read(struct blkdev *d, uint64_t lba, uint32_t count, void *buf)
{
    return rw(d, lba, count, buf, 0, 0);
}

static int ide_write(struct blkdev *d, uint64_t lba, uint32_t count, const void *buf, int fua)
{
    return rw(d, lba, count, (void *)buf, 1, fua);
}

static int ide_flush(struct blkdev *d)
{
    struct ide_disk *e = I(d);
    return non_data(e, e->id.flush_ext ? ATA_CMD_FLUSH_CACHE_EXT : ATA_CMD_FLUSH_CACHE, 0);
}

static int ide_discard(struct blkdev *d, uint64_t lba, uint32_t count)
{
    struct ide_disk *e = I(d);
    while (count) {
        memset(e->dsm, 0, 512);
        unsigned n = 0;
        while (count && n < 64) {
            uint32_t c = MIN(count, 0xFFFFu);
            e->dsm[n++] = ata_trim_entry(lba, (uint16_t)c);
            lba += c;
            count -= c;
        }
        int r = dma(e, ATA_CMD_DSM, 1, 0, 1, ATA_DSM_TRIM, e->dsm, 512, 1);
        if (r)
            return r;
    }
    return 0;
}

static int identify(struct ide_disk *e)
{
    int r = pio(e, ATA_CMD_IDENTIFY, 0, 0, 0, e->idbuf, 0);
    if (r)
        return r;
    return ata_parse_identify(e->idbuf, &e->id);
}

static int ide_set_write_cache(struct blkdev *d, int on)
{
    struct ide_disk *e = I(d);
    int r = non_data(e, ATA_CMD_SET_FEATURES, on ? ATA_SF_ENABLE_WCACHE : ATA_SF_DISABLE_WCACHE);
    if (r)
        return r;
    r = identify(e);
    if (!r)
        d->write_cache = e->id.wcache_enabled;
    return r;
}

static void scan(void)
{
    ndisks = 0;
    struct pci_dev *pd = pci_find_class(0x01, 0x01, -1, 0);
    uint16_t bmbase = 0;
    if (pd) {
        if (pd->prog_if & 0x05)     /* a channel in native mode: not handled here */
            printf("ide: controller in native-PCI mode, using legacy ports anyway\n");
        if (pd->bar[4].type == PCI_BAR_IO) {
            pci_enable(pd, 1, 0, 1);
            bmbase = (uint16_t)pd->bar[4].addr;
        }
    }
    static uint16_t *idbuf;
    for (int ch = 0; ch < 2; ch++) {
        outb(ctl_ports[ch], CTL_NIEN);
        for (int unit = 0; unit < 2 && ndisks < MAX_DISKS; unit++) {
            struct ide_disk *e = &disks[ndisks];
            memset(e, 0, sizeof(*e));
            e->cmd = cmd_ports[ch];
            e->ctl = ctl_ports[ch];
            e->unit = unit;
            e->bm = bmbase ? (uint16_t)(bmbase + 8 * ch) : 0;
            outb(e->cmd + REG_DEVICE, 0xA0 | (unit << 4));
            settle(e);
            uint8_t st = inb(e->cmd + REG_STATUS);
            if (st == 0xFF || st == 0x00)
                continue;           /* floating bus or no device */
            if (!idbuf)
                idbuf = dma_alloc(512, 512);
            e->idbuf = idbuf;
            if (identify(e))
                continue;           /* ATAPI or no answer */
            e->idbuf = dma_alloc(512, 512);
            e->prdt = dma_alloc(sizeof(struct prd) * PRDS, 65536);
            e->dsm = dma_alloc(512, 512);
            ndisks++;
        }
    }
}

static int ide_probe(int idx, struct blkdev **out)
{
    if (ndisks < 0)
        scan();
    if (idx < 0 || idx >= ndisks)
        return BLK_ENODEV;
    struct ide_disk *e = &disks[idx];
    struct blkdev *d = &e->blk;
    static char names[MAX_DISKS][8];
    snprintf(names[idx], sizeof(names[idx]), "ide%d", idx);
    d->name = names[idx];
    int r = identify(e);
    if (r) {
        printf("%s: IDENTIFY DEVICE failed: %s\n", d->name, blk_strerror(r));
        return r;
    }
    ata_identify_to_blkdev(&e->id, d);
    e->dma = e->bm && e->id.dma && arg_u64("ide_dma", 1);
    if (!e->dma)
        d->caps &= ~(BLK_CAP_FUA | BLK_CAP_DISCARD);
    if (!arg_u64("ide_fua", 1))
        d->caps &= ~BLK_CAP_FUA;
    d->queue_depth = 1;
    d->dma_align = 2;
    d->max_segs = 1;
    d->max_sectors = e->id.lba48 ? 2048 : 256;
    d->read = ide_read;
    d->write = ide_write;
    if (e->id.flush || e->id.flush_ext)
        d->flush = ide_flush;
    if (d->caps & BLK_CAP_DISCARD)
        d->discard = ide_discard;
    if (e->id.wcache_supported)
        d->set_write_cache = ide_set_write_cache;
    *out = d;
    return 0;
}

BLKDEV_DRIVER("ide", ide_probe);
