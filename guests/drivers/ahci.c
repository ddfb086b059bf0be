/* ahci: a small AHCI 1.3 driver for SATA disks (blkdev.h).
 *
 * Finds AHCI HBAs by class 01.06.01, resets each (GHC.HR), enables AHCI
 * mode, and brings up every implemented port: command list and received-FIS
 * area, FIS receive on, then the device's signature (PxSIG 0x101 = ATA
 * disk) once the link is up (PxSSTS.DET = 3).  The idx-th ATA disk over all
 * HBAs is the device blkdev_open("ahci", idx) returns.
 *
 * Commands (AHCI 1.3 §4.2 / §5): one command header per slot, a command
 * table per slot with the Register H2D FIS and a PRDT of up to AHCI_PRDS
 * entries (each at most 4 MiB, even byte count).
 *   - synchronous path (slot 0): READ/WRITE DMA (EXT), WRITE DMA FUA EXT for
 *     FUA writes, FLUSH CACHE (EXT), DATA SET MANAGEMENT/TRIM, SET FEATURES
 *     02h/82h, IDENTIFY DEVICE;
 *   - queued path (submit/poll): READ/WRITE FPDMA QUEUED, tag == slot, the
 *     FUA bit (Device bit 7) on FUA writes; completion = PxSACT bit clear.
 * A task-file error (PxIS.TFES, PxTFD.ERR) or a fatal HBA error fails the
 * command(s) with BLK_EIO and recovers the port: clear PxCMD.ST, wait for
 * PxCMD.CR to drop, clear PxSERR/PxIS, COMRESET if the device is still busy,
 * start again (§6.2.2).
 *
 * Support is decided from IDENTIFY only: FUA needs word 84 bit 6 (QEMU 7.2
 * does not set it: it aborts WRITE DMA FUA EXT), NCQ word 76 bit 8, TRIM
 * word 169 bit 0.  Arguments: ahci_ncq=0 turns NCQ off, ahci_fua=0 turns
 * FUA off, ahci_verbose=1 prints the HBA and port registers at probe.
 * Polling by default: every wait is bounded by a count of register reads.
 * ahci_irq=msi or ahci_irq=intx waits for interrupts instead (hlt), with
 * PxIE enabling completions and errors and GHC.IE set. */
#include "guest.h"
#include "ata.h"

/* Generic host control (§3.1) */
#define HBA_CAP     0x00
#define HBA_GHC     0x04
#define HBA_IS      0x08
#define HBA_PI      0x0C
#define HBA_VS      0x10
#define GHC_HR      (1u << 0)
#define GHC_AE      (1u << 31)
#define CAP_S64A    (1u << 31)
#define CAP_SNCQ    (1u << 30)

/* Port registers (§3.3) */
#define PX(p, r)    (0x100 + (p) * 0x80 + (r))
#define PX_CLB      0x00
#define PX_CLBU     0x04
#define PX_FB       0x08
#define PX_FBU      0x0C
#define PX_IS       0x10
#define PX_IE       0x14
#define PX_CMD      0x18
#define PX_TFD      0x20
#define PX_SIG      0x24
#define PX_SSTS     0x28
#define PX_SCTL     0x2C
#define PX_SERR     0x30
#define PX_SACT     0x34
#define PX_CI       0x38
#define CMD_ST      (1u << 0)
#define CMD_FRE     (1u << 4)
#define CMD_FR      (1u << 14)
#define CMD_CR      (1u << 15)
#define IS_TFES     (1u << 30)
#define IS_FATAL    ((1u << 30) | (1u << 29) | (1u << 28) | (1u << 27) | (1u << 24))
#define SIG_ATA     0x00000101u

#define AHCI_SLOTS  32
#define AHCI_PRDS   32
#define AHCI_PRD_MAX (4u << 20)
#define MAX_HBAS    4
#define MAX_DISKS   32
#define SPINS       2000000

struct cmd_hdr {
    uint32_t flags;         /* CFL 4:0, W bit 6, PRDTL 31:16 */
    uint32_t prdbc;
    uint64_t ctba;
    uint32_t rsv[4];
};

struct prd {
    uint64_t dba;
    uint32_t rsv;
    uint32_t dbc;           /* byte count - 1, bit 31 = interrupt on completion */
};

struct cmd_table {
    uint8_t cfis[64];
    uint8_t acmd[16];
    uint8_t rsv[48];
    struct prd prdt[AHCI_PRDS];
};

struct ahci_disk {
    struct blkdev blk;
    uintptr_t abar;
    int port;
    struct ata_identify id;
    struct cmd_hdr *clb;
    uint8_t *fis;
    struct cmd_table *tables;   /* AHCI_SLOTS of them */
    uint16_t *idbuf;
    uint64_t *dsm;
    int ncq, fua;
    int irq;                    /* interrupt mode: wait with hlt, PxIS gathered by the handler */
    volatile uint32_t irq_is;   /* PxIS bits the handler took since last looked at */
    uint32_t active;            /* NCQ tags in flight */
    struct blk_req *reqs[AHCI_SLOTS];
};

static struct ahci_disk disks[MAX_DISKS];
static int ndisks = -1;
static int irq_mode;            /* 0 poll, 1 MSI, 2 INTx */

static inline uint32_t rd(const struct ahci_disk *a, uint32_t r) { return mmio_read32(a->abar + r); }
static inline void wr(const struct ahci_disk *a, uint32_t r, uint32_t v) { mmio_write32(a->abar + r, v); }

/* ---- interrupts (ahci_irq=msi|intx; default: poll) ------------------------
 * One vector for all HBAs.  The handler moves each port's PxIS into
 * irq_is (writing the bits back clears them, §3.3.5), then clears the HBA's
 * IS, so a level INTx line drops before the EOI.  Waiters check their
 * condition with interrupts off and sleep with "sti; hlt", so an interrupt
 * cannot slip in between. */
#define AHCI_VECTOR 0x48
#define IRQ_WAITS   100000

static void ahci_irq_handler(unsigned vector)
{
    (void)vector;
    for (int i = 0; i < ndisks; i++) {
        struct ahci_disk *a = &disks[i];
        uint32_t is = rd(a, PX(a->port, PX_IS));
        if (is) {
            wr(a, PX(a->port, PX_IS), is);
            a->irq_is |= is;
        }
    }
    for (int i = 0; i < ndisks; i++)
        wr(&disks[i], HBA_IS, 0xFFFFFFFFu);
}

/* Sleep until an interrupt arrives for this port (or one already did). */
static void irq_sleep(struct ahci_disk *a)
{
    irq_disable();
    if (!a->irq_is)
        wait_for_interrupt();
    irq_disable();
}

/* ---- port bring-up and recovery ------------------------------------------ */

static int port_stop(struct ahci_disk *a)
{
    int p = a->port;
    wr(a, PX(p, PX_CMD), rd(a, PX(p, PX_CMD)) & ~CMD_ST);
    if (!SPIN_UNTIL(!(rd(a, PX(p, PX_CMD)) & CMD_CR), SPINS))
        return BLK_ETIMEDOUT;
    return 0;
}

static int port_start(struct ahci_disk *a)
{
    int p = a->port;
    wr(a, PX(p, PX_SERR), 0xFFFFFFFFu);
    wr(a, PX(p, PX_IS), 0xFFFFFFFFu);
    if (!SPIN_UNTIL(!(rd(a, PX(p, PX_TFD)) & (ATA_SR_BSY | ATA_SR_DRQ)), SPINS))
        return BLK_ETIMEDOUT;
    wr(a, PX(p, PX_CMD), rd(a, PX(p, PX_CMD)) | CMD_ST);
    return 0;
}

/* COMRESET (§10.4.2): PxSCTL.DET = 1, then 0; wait for the link and the
 * device's signature FIS. */
static int port_comreset(struct ahci_disk *a)
{
    int p = a->port;
    wr(a, PX(p, PX_SCTL), (rd(a, PX(p, PX_SCTL)) & ~0xFu) | 1);
    for (int i = 0; i < 100; i++)       /* >= 1 ms of COMRESET on real hardware */
        io_delay();
    wr(a, PX(p, PX_SCTL), rd(a, PX(p, PX_SCTL)) & ~0xFu);
    if (!SPIN_UNTIL((rd(a, PX(p, PX_SSTS)) & 0xF) == 3, SPINS))
        return BLK_ETIMEDOUT;
    if (!SPIN_UNTIL(!(rd(a, PX(p, PX_TFD)) & (ATA_SR_BSY | ATA_SR_DRQ)), SPINS))
        return BLK_ETIMEDOUT;
    return 0;
}

/* After an error: stop the port (which clears PxCI and PxSACT), reset the
 * link if the device stays busy, start again. */
static int port_recover(struct ahci_disk *a)
{
    int r = port_stop(a);
    if (!r && (rd(a, PX(a->port, PX_TFD)) & (ATA_SR_BSY | ATA_SR_DRQ)))
        r = port_comreset(a);
    if (!r)
        r = port_start(a);
    if (r)
        printf("%s: port recovery failed: %s\n", a->blk.name, blk_strerror(r));
    return r;
}

/* ---- building and running commands ------------------------------------------ */

static void fis_h2d(uint8_t *f, uint8_t cmd, uint64_t lba, uint16_t count,
                    uint16_t features, uint8_t device)
{
    memset(f, 0, 20);
    f[0] = 0x27;                /* Register H2D */
    f[1] = 0x80;                /* C: command register update */
    f[2] = cmd;
    f[3] = features & 0xFF;
    f[4] = lba & 0xFF;
    f[5] = (lba >> 8) & 0xFF;
    f[6] = (lba >> 16) & 0xFF;
    f[7] = device;
    f[8] = (lba >> 24) & 0xFF;
    f[9] = (lba >> 32) & 0xFF;
    f[10] = (lba >> 40) & 0xFF;
    f[11] = features >> 8;
    f[12] = count & 0xFF;
    f[13] = count >> 8;
}

/* Fill slot's header and PRDT from a scatter list; returns 0 or BLK_EINVAL. */
static int build(struct ahci_disk *a, int slot, const struct blk_seg *segs, unsigned nsegs,
                 int write)
{
    struct cmd_table *t = &a->tables[slot];
    unsigned n = 0;
    for (unsigned i = 0; i < nsegs; i++) {
        uint64_t addr = virt_to_phys(segs[i].buf);
        uint32_t left = segs[i].len;
        while (left) {
            uint32_t chunk = MIN(left, AHCI_PRD_MAX);
            if (n == AHCI_PRDS)
                return BLK_EINVAL;
            t->prdt[n].dba = addr;
            t->prdt[n].rsv = 0;
            t->prdt[n].dbc = chunk - 1;
            n++;
            addr += chunk;
            left -= chunk;
        }
    }
    struct cmd_hdr *h = &a->clb[slot];
    h->flags = (n << 16) | (write ? (1u << 6) : 0) | 5;    /* CFL = 5 dwords */
    h->prdbc = 0;
    h->ctba = virt_to_phys(t);
    return 0;
}

/* Run a non-queued command in slot 0 and wait for it. */
static int ahci_poll_disk(struct ahci_disk *a);

static int run_dev(struct ahci_disk *a, uint8_t cmd, uint64_t lba, uint16_t count,
                   uint16_t features, uint8_t device, const struct blk_seg *segs,
                   unsigned nsegs, int write)
{
    int p = a->port;
    /* Non-queued commands must not overlap NCQ ones: drain first. */
    for (uint64_t n = 0; a->active; n++) {
        if (n >= SPINS || ahci_poll_disk(a) < 0)
            return BLK_ETIMEDOUT;
    }
    int r = build(a, 0, segs, nsegs, write);
    if (r)
        return r;
    fis_h2d(a->tables[0].cfis, cmd, lba, count, features, device);
    mb();
    uint32_t is = 0;
    if (a->irq) {
        a->irq_is = 0;
        wr(a, PX(p, PX_CI), 1);
        int n = 0;
        while ((rd(a, PX(p, PX_CI)) & 1) && !(a->irq_is & IS_FATAL) && n++ < IRQ_WAITS) {
            irq_sleep(a);
            if (a->irq_is & ~IS_FATAL)
                a->irq_is &= IS_FATAL;      /* a completion interrupt: look again */
        }
        is = a->irq_is | rd(a, PX(p, PX_IS));
        a->irq_is = 0;
        if (n >= IRQ_WAITS) {
            printf("%s: command 0x%02x: no interrupt\n", a->blk.name, cmd);
            port_recover(a);
            return BLK_ETIMEDOUT;
        }
    } else {
        wr(a, PX(p, PX_CI), 1);
        if (!SPIN_UNTIL(!(rd(a, PX(p, PX_CI)) & 1) || ((is = rd(a, PX(p, PX_IS))) & IS_FATAL),
                        SPINS)) {
            printf("%s: command 0x%02x timed out\n", a->blk.name, cmd);
            port_recover(a);
            return BLK_ETIMEDOUT;
        }
        is = rd(a, PX(p, PX_IS));
    }
    uint32_t tfd = rd(a, PX(p, PX_TFD));
    if ((is & IS_FATAL) || (tfd & ATA_SR_ERR)) {
        port_recover(a);
        return BLK_EIO;
    }
    wr(a, PX(p, PX_IS), is);
    return 0;
}

static int run_sync(struct ahci_disk *a, uint8_t cmd, uint64_t lba, uint16_t count,
                    uint16_t features, const struct blk_seg *segs, unsigned nsegs, int write)
{
    return run_dev(a, cmd, lba, count, features, ATA_DEV_LBA, segs, nsegs, write);
}

static int identify(struct ahci_disk *a)
{
    struct blk_seg s = { a->idbuf, 512 };
    int r = run_sync(a, ATA_CMD_IDENTIFY, 0, 0, 0, &s, 1, 0);
    if (r)
        return r;
    return ata_parse_identify(a->idbuf, &a->id);
}

/* ---- blkdev operations ---------------------------------------------------------- */

static struct ahci_disk *A(struct blkdev *d) { return container_of(d, struct ahci_disk, blk); }

/* READ/WRITE DMA (EXT) or WRITE DMA FUA EXT over a scatter list, in slot 0. */
static int rw_segs(struct ahci_disk *a, uint64_t lba, uint32_t count, const struct blk_seg *segs,
                   unsigned nsegs, int write, int fua)
{
    uint8_t cmd;
    if (a->id.lba48)
        cmd = write ? (fua ? ATA_CMD_WRITE_DMA_FUA_EXT : ATA_CMD_WRITE_DMA_EXT)
                    : ATA_CMD_READ_DMA_EXT;
    else
        cmd = write ? ATA_CMD_WRITE_DMA : ATA_CMD_READ_DMA;
    if (!a->id.lba48)   /* 28-bit: LBA 27:24 in the device register, count 0 = 256 */
        return run_dev(a, cmd, lba & 0xFFFFFF, count & 0xFF, 0,
                       ATA_DEV_LBA | ((lba >> 24) & 0xF), segs, nsegs, write);
    return run_sync(a, cmd, lba, (uint16_t)count, 0, segs, nsegs, write);
}

static int rw(struct blkdev *d, uint64_t lba, uint32_t count, void *buf, int write, int fua)
{
    struct blk_seg s = { buf, count * d->sector_size };
    return rw_segs(A(d), lba, count, &s, 1, write, fua);
}

/* Without NCQ: one command at a time, but still with the whole scatter list. */
static int ahci_submit_nq(struct blkdev *d, struct blk_req *q)
{
    int r = rw_segs(A(d), q->lba, q->count, q->segs, q->nsegs, q->op == BLK_OP_WRITE,
                    !!(q->flags & BLK_REQ_FUA));
    blk_complete(d, q, r);
    return 0;
}

static int ahci_poll_nq(struct blkdev *d)
{
    (void)d;
    return 0;
}

static int ahci_read(struct blkdev *d, uint64_t lba, uint32_t count, void *buf)
{
    return rw(d, lba, count, buf, 0, 0);
}

static int ahci_write(struct blkdev *d, uint64_t lba, uint32_t count, const void *buf, int fua)
{
    return rw(d, lba, count, (void *)buf, 1, fua);
}

static int ahci_flush(struct blkdev *d)
{
    struct ahci_disk *a = A(d);
    return run_sync(a, a->id.flush_ext ? ATA_CMD_FLUSH_CACHE_EXT : ATA_CMD_FLUSH_CACHE,
                    0, 0, 0, NULL, 0, 0);
}

/* TRIM: up to 64 ranges of <= 65535 sectors per 512-byte block. */
static int ahci_discard(struct blkdev *d, uint64_t lba, uint32_t count)
{
    struct ahci_disk *a = A(d);
    unsigned blocks = a->id.dsm_max_blocks ? MIN(a->id.dsm_max_blocks, 8u) : 1;
    while (count) {
        memset(a->dsm, 0, 512 * blocks);
        unsigned n = 0;
        while (count && n < 64 * blocks) {
            uint32_t c = MIN(count, 0xFFFFu);
            a->dsm[n++] = ata_trim_entry(lba, (uint16_t)c);
            lba += c;
            count -= c;
        }
        unsigned used = (n + 63) / 64;
        struct blk_seg s = { a->dsm, 512 * used };
        int r = run_sync(a, ATA_CMD_DSM, 0, (uint16_t)used, ATA_DSM_TRIM, &s, 1, 1);
        if (r)
            return r;
    }
    return 0;
}

static int ahci_set_write_cache(struct blkdev *d, int on)
{
    struct ahci_disk *a = A(d);
    int r = run_sync(a, ATA_CMD_SET_FEATURES, 0, 0,
                     on ? ATA_SF_ENABLE_WCACHE : ATA_SF_DISABLE_WCACHE, NULL, 0, 0);
    if (r)
        return r;
    r = identify(a);
    if (!r)
        d->write_cache = a->id.wcache_enabled;
    return r;
}

/* NCQ: tag == slot; PxSACT before PxCI (§5.3.?). */
static int ahci_submit(struct blkdev *d, struct blk_req *q)
{
    struct ahci_disk *a = A(d);
    int p = a->port;
    uint32_t busy = a->active | rd(a, PX(p, PX_CI));
    int tag = -1;
    for (int t = 1; t <= d->queue_depth; t++)       /* slot 0: synchronous commands */
        if (!(busy & (1u << t))) {
            tag = t;
            break;
        }
    if (tag < 0)
        return BLK_EBUSY;
    int write = q->op == BLK_OP_WRITE;
    int r = build(a, tag, q->segs, q->nsegs, write);
    if (r)
        return r;
    uint8_t dev = ATA_DEV_LBA | ((write && (q->flags & BLK_REQ_FUA)) ? 0x80 : 0);
    fis_h2d(a->tables[tag].cfis, write ? ATA_CMD_WRITE_FPDMA_QUEUED : ATA_CMD_READ_FPDMA_QUEUED,
            q->lba, (uint16_t)(tag << 3), (uint16_t)q->count, dev);
    a->reqs[tag] = q;
    q->tag = (uint32_t)tag;
    a->active |= 1u << tag;
    mb();
    wr(a, PX(p, PX_SACT), 1u << tag);
    wr(a, PX(p, PX_CI), 1u << tag);
    return 0;
}

static int ahci_poll_disk(struct ahci_disk *a)
{
    int p = a->port, done = 0;
    if (a->irq && a->active) {
        /* Sleep unless something already happened; the SDB FIS interrupt wakes us.
         * (Never with nothing in flight: no interrupt would come.) */
        irq_disable();
        uint32_t pending = a->active & ~(rd(a, PX(p, PX_SACT)) | rd(a, PX(p, PX_CI)));
        if (!pending && !a->irq_is)
            wait_for_interrupt();
        irq_disable();
    }
    uint32_t is = rd(a, PX(p, PX_IS)) | a->irq_is;
    a->irq_is &= IS_FATAL & ~is;
    if (is & IS_FATAL) {
        /* An NCQ error aborts every outstanding command (SATA §13.6.?). */
        uint32_t failed = a->active;
        a->active = 0;
        port_recover(a);
        for (int t = 0; t < AHCI_SLOTS; t++)
            if (failed & (1u << t)) {
                blk_complete(&a->blk, a->reqs[t], BLK_EIO);
                done++;
            }
        return done;
    }
    uint32_t sact = rd(a, PX(p, PX_SACT)) | rd(a, PX(p, PX_CI));
    uint32_t fin = a->active & ~sact;
    if (fin) {
        wr(a, PX(p, PX_IS), is);
        a->active &= ~fin;
        for (int t = 0; t < AHCI_SLOTS; t++)
            if (fin & (1u << t)) {
                blk_complete(&a->blk, a->reqs[t], 0);
                done++;
            }
    }
    return done;
}

static int ahci_poll(struct blkdev *d)
{
    return ahci_poll_disk(A(d));
}

/* ---- discovery --------------------------------------------------------------------- */

static void setup_port(struct ahci_disk *a, uintptr_t abar, int port, int hba)
{
    memset(a, 0, sizeof(*a));
    a->abar = abar;
    a->port = port;
    a->clb = dma_alloc(1024, 1024);
    a->fis = dma_alloc(256, 256);
    a->tables = dma_alloc(sizeof(struct cmd_table) * AHCI_SLOTS, 128);
    a->idbuf = dma_alloc(512, 512);
    a->dsm = dma_alloc(512 * 8, 512);
    (void)hba;
}

static void scan(void)
{
    ndisks = 0;
    int verbose = (int)arg_u64("ahci_verbose", 0);
    const char *im = arg_str("ahci_irq", "poll");
    irq_mode = !strcmp(im, "msi") ? 1 : !strcmp(im, "intx") ? 2 : 0;
    if (irq_mode)
        irq_install(AHCI_VECTOR, ahci_irq_handler);
    for (int h = 0; h < MAX_HBAS; h++) {
        struct pci_dev *pd = pci_find_class(0x01, 0x06, 0x01, h);
        if (!pd)
            break;
        if (pd->bar[5].type != PCI_BAR_MEM32 && pd->bar[5].type != PCI_BAR_MEM64)
            continue;
        pci_enable(pd, 0, 1, 1);
        uintptr_t abar = (uintptr_t)pd->bar[5].addr;
        mmio_write32(abar + HBA_GHC, GHC_AE);
        mmio_write32(abar + HBA_GHC, GHC_AE | GHC_HR);
        if (!SPIN_UNTIL(!(mmio_read32(abar + HBA_GHC) & GHC_HR), SPINS)) {
            printf("ahci: HBA reset did not complete\n");
            continue;
        }
        mmio_write32(abar + HBA_GHC, GHC_AE);
        if (irq_mode == 1 && pci_msi_enable(pd, AHCI_VECTOR) < 0) {
            printf("ahci%d: no MSI capability; using INTx\n", h);
            irq_mode = 2;
        }
        if (irq_mode == 2) {
            pci_cfg_write16(pd, PCI_COMMAND, pci_cfg_read16(pd, PCI_COMMAND) & ~PCI_CMD_INTX_DISABLE);
            ioapic_route(pd->irq_line, AHCI_VECTOR, 1);
        }
        uint32_t cap = mmio_read32(abar + HBA_CAP), pi = mmio_read32(abar + HBA_PI);
        if (verbose)
            printf("ahci%d: cap 0x%08x pi 0x%08x vs 0x%08x\n", h, cap,
                   pi, mmio_read32(abar + HBA_VS));
        for (int p = 0; p < 32 && ndisks < MAX_DISKS; p++) {
            if (!(pi & (1u << p)))
                continue;
            struct ahci_disk *a = &disks[ndisks];
            setup_port(a, abar, p, h);
            if (port_stop(a))
                continue;
            wr(a, PX(p, PX_CMD), rd(a, PX(p, PX_CMD)) & ~CMD_FRE);
            SPIN_UNTIL(!(rd(a, PX(p, PX_CMD)) & CMD_FR), SPINS);
            wr(a, PX(p, PX_CLB), (uint32_t)virt_to_phys(a->clb));
            wr(a, PX(p, PX_CLBU), (uint32_t)(virt_to_phys(a->clb) >> 32));
            wr(a, PX(p, PX_FB), (uint32_t)virt_to_phys(a->fis));
            wr(a, PX(p, PX_FBU), (uint32_t)(virt_to_phys(a->fis) >> 32));
            wr(a, PX(p, PX_IE), 0);
            wr(a, PX(p, PX_CMD), rd(a, PX(p, PX_CMD)) | CMD_FRE);
            if ((rd(a, PX(p, PX_SSTS)) & 0xF) != 3)
                continue;               /* no device on this port */
            if (!SPIN_UNTIL(!(rd(a, PX(p, PX_TFD)) & (ATA_SR_BSY | ATA_SR_DRQ)), SPINS))
                continue;
            uint32_t sig = rd(a, PX(p, PX_SIG));
            if (verbose)
                printf("ahci%d.%d: ssts 0x%x tfd 0x%x sig 0x%08x cmd 0x%x\n", h, p,
                       rd(a, PX(p, PX_SSTS)), rd(a, PX(p, PX_TFD)), sig, rd(a, PX(p, PX_CMD)));
            if (sig != SIG_ATA)
                continue;               /* ATAPI, port multiplier ... */
            if (port_start(a))
                continue;
            a->ncq = !!(cap & CAP_SNCQ);
            if (irq_mode) {
                a->irq = 1;
                wr(a, PX(p, PX_IE), 0x7DC0007Fu & ~(1u << 22));   /* all but PRCE */
            }
            ndisks++;
        }
        if (irq_mode)
            mmio_write32(abar + HBA_GHC, GHC_AE | (1u << 1));    /* GHC.IE */
    }
}

static int ahci_probe(int idx, struct blkdev **out)
{
    if (ndisks < 0)
        scan();
    if (idx < 0 || idx >= ndisks)
        return BLK_ENODEV;
    struct ahci_disk *a = &disks[idx];
    struct blkdev *d = &a->blk;
    static char names[MAX_DISKS][12];
    snprintf(names[idx], sizeof(names[idx]), "ahci%d", idx);
    d->name = names[idx];
    int r = identify(a);
    if (r) {
        printf("%s: IDENTIFY DEVICE failed: %s\n", d->name, blk_strerror(r));
        return r;
    }
    ata_identify_to_blkdev(&a->id, d);
    if (!arg_u64("ahci_fua", 1))
        d->caps &= ~BLK_CAP_FUA;
    a->ncq = a->ncq && a->id.ncq && a->id.lba48 && arg_u64("ahci_ncq", 1);
    d->dma_align = 2;
    d->max_segs = 16;
    d->max_sectors = a->id.lba48 ? 8192 : 256;     /* 4 MiB: a segment fits one PRD */
    d->read = ahci_read;
    d->write = ahci_write;
    if (a->id.flush || a->id.flush_ext)
        d->flush = ahci_flush;
    if (a->id.trim)
        d->discard = ahci_discard;
    if (a->id.wcache_supported)
        d->set_write_cache = ahci_set_write_cache;
    if (a->ncq) {
        d->queue_depth = MIN(a->id.ncq_depth, AHCI_SLOTS - 1);  /* slot 0 stays for sync */
        d->caps |= BLK_CAP_QUEUED;
        d->submit = ahci_submit;
        d->poll = ahci_poll;
    } else {
        d->queue_depth = 1;
        d->submit = ahci_submit_nq;
        d->poll = ahci_poll_nq;
    }
    *out = d;
    return 0;
}

BLKDEV_DRIVER("ahci", ahci_probe);
