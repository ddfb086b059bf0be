/* lsi: a polling driver for the LSI53C895A SCSI controller (1000:0012) and the
 * SCSI disks behind it (SBC-3), written against the chip's SCRIPTS engine.
 *
 * The controller runs one small SCRIPTS program that this driver assembles
 * at probe time from macros spelling each instruction format (LSI53C895A
 * Technical Manual, chapter 6).  Every command goes through the same
 * program; a per-command table at DSA (table-indirect addressing) names the
 * target and the buffers of each phase:
 *
 *   start:    SELECT ATN FROM sel, REL(resel)     ; select the target, ATN
 *             MOVE FROM msgout, WHEN MSG_OUT      ; IDENTIFY (disconnect ok, LUN)
 *             MOVE FROM cmd, WHEN CMD             ; the CDB
 *   loop:     JUMP din,  WHEN DATA_IN             ; the target picks the phase
 *             JUMP dout, WHEN DATA_OUT
 *             JUMP stat, WHEN STATUS
 *             JUMP min,  WHEN MSG_IN
 *             INT  ERR_PHASE
 *   din:      MOVE FROM data, WHEN DATA_IN ; JUMP loop
 *   dout:     MOVE FROM data, WHEN DATA_OUT; JUMP loop
 *   stat:     MOVE FROM status, WHEN STATUS; JUMP loop
 *   min:      MOVE FROM msgin, WHEN MSG_IN
 *             JUMP done, IF 0x00                  ; COMMAND COMPLETE
 *             JUMP disc, IF 0x04                  ; DISCONNECT
 *             CLEAR ACK ; JUMP loop               ; SAVE DATA POINTER, IDENTIFY, REJECT
 *   disc:     CLEAR ACK ; WAIT DISCONNECT
 *             WAIT RESELECT REL(sigp)             ; the target comes back
 *             MOVE FROM msgin, WHEN MSG_IN        ; its IDENTIFY
 *             CLEAR ACK ; JUMP loop
 *   done:     CLEAR ACK ; WAIT DISCONNECT ; INT DONE
 *   sigp:     INT ERR_SIGP
 *   resel:    INT ERR_RESEL
 *
 * The CPU starts it by writing DSP and polls ISTAT0 for DIP/SIP, then reads
 * DSTAT / SIST0 / SIST1 (which clears them).  A selection timeout (SIST1
 * STO) means no target at that ID.  A phase mismatch (SIST0 MA: the target
 * moved fewer bytes than asked) restarts the program at `loop` with the
 * residual noted.  Disks are found per target (0..6) and per LUN (REPORT
 * LUNS, then INQUIRY each LUN); idx counts direct-access LUNs in that order.
 *
 * Arguments: lsi_verbose=1 prints each command's CDB and status; lsi_mmio=0
 * reaches the registers through the I/O BAR instead of the memory BAR.
 */
#include "guest.h"
#include "lsi.h"

/* ---- registers (manual chapter 5) --------------------------------------- */
#define SCNTL0   0x00
#define SCNTL1   0x01
#define SCID     0x04
#define SXFER    0x05
#define DSTAT    0x0C
#define SSTAT0   0x0D
#define DSA      0x10
#define ISTAT0   0x14
#define CTEST2   0x1A
#define DBC      0x24
#define DSP      0x2C
#define DSPS     0x30
#define DMODE    0x38
#define DIEN     0x39
#define DCNTL    0x3B
#define SIEN0    0x40
#define SIEN1    0x41
#define SIST0    0x42
#define SIST1    0x43
#define STIME0   0x48

#define ISTAT_SRST  0x40
#define ISTAT_SIGP  0x20
#define ISTAT_INTF  0x04
#define ISTAT_SIP   0x02
#define ISTAT_DIP   0x01
#define DSTAT_BF    0x20
#define DSTAT_SIR   0x04
#define DSTAT_IID   0x01
#define SIST0_MA    0x80
#define SIST0_UDC   0x04
#define SIST0_RST   0x02
#define SIST1_STO   0x04
#define SCNTL1_RST  0x08
#define SCID_RRE    0x40

/* ---- SCRIPTS instruction formats (manual chapter 6) ----------------------- */
#define P_DATA_OUT  0
#define P_DATA_IN   1
#define P_COMMAND   2
#define P_STATUS    3
#define P_MSG_OUT   6
#define P_MSG_IN    7

/* Block move, table indirect: bits 31:30 = 00, 28 table, 27 MOVE, 26:24 phase;
 * word 2 = signed offset of a {count, address} pair from DSA. */
#define S_MOVE_TBL(ph, off)      (0x18000000u | ((uint32_t)(ph) << 24)), (uint32_t)(off)
/* I/O: bits 31:30 = 01, 29:27 opcode, 26 relative alternate, 25 table ID, 24 ATN. */
#define S_SELECT_TBL_ATN(off, alt) (0x43000000u | (uint32_t)(off)), (uint32_t)(alt)
#define S_WAIT_DISCONNECT        0x48000000u, 0u
#define S_WAIT_RESELECT(alt)     0x50000000u, (uint32_t)(alt)
#define S_CLEAR_ACK              0x60000040u, 0u
/* Transfer control: bits 31:30 = 10, 29:27 opcode (0 jump, 3 int), 26:24 phase,
 * 19 jump-if-true, 18 compare data, 17 compare phase, 16 wait for valid phase,
 * 15:8 ignore mask, 7:0 data. */
#define S_JUMP(a)                0x80080000u, (uint32_t)(a)
#define S_JUMP_WHEN(ph, a)       (0x800B0000u | ((uint32_t)(ph) << 24)), (uint32_t)(a)
#define S_JUMP_IF_DATA(v, a)     (0x800C0000u | (uint32_t)(v)), (uint32_t)(a)
#define S_INT(code)              0x98080000u, (uint32_t)(code)

#define INT_DONE     0x01
#define INT_PHASE    0xE1
#define INT_SIGP     0xE2
#define INT_RESEL    0xE3

#define LSI_MAX_CTRL     2
#define LSI_MAX_TARGET   7          /* IDs 0..6; 7 is ours */
#define LSI_MAX_DISKS    16
#define LSI_MAX_LUNS     8
#define LSI_POLL_LIMIT   20000000u  /* ISTAT reads per command before giving up */
#define LSI_MAX_SECTORS  128        /* 64 KiB per command */

/* The table at DSA: table-indirect entries are {count, address} pairs. */
struct lsi_entry { uint32_t count, addr; };
struct lsi_table {
    uint32_t select, pad;           /* +0: ID in bits 19:16 */
    struct lsi_entry msgout;        /* +8 */
    struct lsi_entry cmd;           /* +16 */
    struct lsi_entry data;          /* +24 */
    struct lsi_entry status;        /* +32 */
    struct lsi_entry msgin;         /* +40 */
};

enum { L_START, L_LOOP, L_DIN, L_DOUT, L_STAT, L_MIN, L_DISC, L_DONE, L_SIGP, L_RESEL, L_COUNT };

struct lsi_ctrl {
    struct pci_dev *pci;
    uintptr_t mmio;                 /* memory BAR, or 0: use the I/O BAR */
    uint16_t io;
    uint32_t *script;
    uint32_t label[L_COUNT];
    struct lsi_table *tbl;
    uint8_t *msgout, *cmd, *status, *msgin;
    int ready;
};

struct lsi_disk {
    struct blkdev bd;
    struct lsi_ctrl *c;
    int target, lun;
    uint8_t *bounce;                /* small DMA buffer for emulated commands */
};

static struct lsi_ctrl ctrls[LSI_MAX_CTRL];
static struct lsi_disk disks[LSI_MAX_DISKS];
static int ndisks = -1;
static int verbose;

/* The register file is in both the I/O BAR (0) and the memory BAR (1);
 * the memory BAR is the default, lsi_mmio=0 picks port I/O. */
static inline uint8_t rd8(struct lsi_ctrl *c, unsigned r)
{ return c->mmio ? mmio_read8(c->mmio + r) : inb((uint16_t)(c->io + r)); }
static inline void wr8(struct lsi_ctrl *c, unsigned r, uint8_t v)
{ if (c->mmio) mmio_write8(c->mmio + r, v); else outb((uint16_t)(c->io + r), v); }
static inline uint32_t rd32(struct lsi_ctrl *c, unsigned r)
{ return c->mmio ? mmio_read32(c->mmio + r) : inl((uint16_t)(c->io + r)); }
static inline void wr32(struct lsi_ctrl *c, unsigned r, uint32_t v)
{ if (c->mmio) mmio_write32(c->mmio + r, v); else outl((uint16_t)(c->io + r), v); }

/* Emit the program at `base`; labels are filled in (call twice: the first
 * pass learns forward labels). */
static unsigned build_script(struct lsi_ctrl *c)
{
    uint32_t *s = c->script, base = (uint32_t)virt_to_phys(s), *L = c->label;
    unsigned n = 0;
#define AT(lbl) (L[lbl] = base + 4 * n)
#define EMIT(...) do { const uint32_t w_[] = { __VA_ARGS__ }; \
        for (unsigned i_ = 0; i_ < ARRAY_SIZE(w_); i_++) s[n++] = w_[i_]; } while (0)
    AT(L_START);
    EMIT(S_SELECT_TBL_ATN(0, L[L_RESEL]));
    EMIT(S_MOVE_TBL(P_MSG_OUT, 8));
    EMIT(S_MOVE_TBL(P_COMMAND, 16));
    AT(L_LOOP);
    EMIT(S_JUMP_WHEN(P_DATA_IN, L[L_DIN]));
    EMIT(S_JUMP_WHEN(P_DATA_OUT, L[L_DOUT]));
    EMIT(S_JUMP_WHEN(P_STATUS, L[L_STAT]));
    EMIT(S_JUMP_WHEN(P_MSG_IN, L[L_MIN]));
    EMIT(S_INT(INT_PHASE));
    AT(L_DIN);
    EMIT(S_MOVE_TBL(P_DATA_IN, 24));
    EMIT(S_JUMP(L[L_LOOP]));
    AT(L_DOUT);
    EMIT(S_MOVE_TBL(P_DATA_OUT, 24));
    EMIT(S_JUMP(L[L_LOOP]));
    AT(L_STAT);
    EMIT(S_MOVE_TBL(P_STATUS, 32));
    EMIT(S_JUMP(L[L_LOOP]));
    AT(L_MIN);
    EMIT(S_MOVE_TBL(P_MSG_IN, 40));
    EMIT(S_JUMP_IF_DATA(0x00, L[L_DONE]));
    EMIT(S_JUMP_IF_DATA(0x04, L[L_DISC]));
    EMIT(S_CLEAR_ACK);
    EMIT(S_JUMP(L[L_LOOP]));
    AT(L_DISC);
    EMIT(S_CLEAR_ACK);
    EMIT(S_WAIT_DISCONNECT);
    EMIT(S_WAIT_RESELECT(L[L_SIGP]));
    EMIT(S_MOVE_TBL(P_MSG_IN, 40));
    EMIT(S_CLEAR_ACK);
    EMIT(S_JUMP(L[L_LOOP]));
    AT(L_DONE);
    EMIT(S_CLEAR_ACK);
    EMIT(S_WAIT_DISCONNECT);
    EMIT(S_INT(INT_DONE));
    AT(L_SIGP);
    EMIT(S_INT(INT_SIGP));
    AT(L_RESEL);
    EMIT(S_INT(INT_RESEL));
#undef AT
#undef EMIT
    return n;
}

static void ctrl_reset(struct lsi_ctrl *c)
{
    wr8(c, ISTAT0, ISTAT_SRST);         /* soft reset; the bit must be cleared again */
    wr8(c, ISTAT0, 0);
    wr8(c, SCID, SCID_RRE | 7);         /* we are ID 7; respond to reselection */
    wr8(c, SXFER, 0);                   /* asynchronous */
    wr8(c, DMODE, 0);                   /* automatic start on DSP write */
    wr8(c, DCNTL, 0);
    wr8(c, DIEN, 0);                    /* polling: no interrupt line */
    wr8(c, SIEN0, 0);
    wr8(c, SIEN1, 0);
    wr8(c, STIME0, 0x0B);               /* selection timeout ~ 204.8 ms (real chips) */
    wr32(c, DSA, (uint32_t)virt_to_phys(c->tbl));   /* one table for every command */
}

static int ctrl_init(int k)
{
    struct lsi_ctrl *c = &ctrls[k];
    if (c->ready)
        return 0;
    struct pci_dev *p = pci_find(0x1000, 0x0012, k);
    if (!p)
        return BLK_ENODEV;
    int use_mmio = (int)arg_u64("lsi_mmio", 1);
    if (use_mmio ? (p->bar[1].type != PCI_BAR_MEM32 || !p->bar[1].addr)
                 : (p->bar[0].type != PCI_BAR_IO || !p->bar[0].addr)) {
        printf("lsi%d: %s BAR not assigned\n", k, use_mmio ? "memory" : "I/O");
        return BLK_EIO;
    }
    pci_enable(p, 1, 1, 1);
    c->pci = p;
    c->mmio = use_mmio ? (uintptr_t)p->bar[1].addr : 0;
    c->io = (uint16_t)p->bar[0].addr;
    c->script = dma_alloc(512, 8);
    c->tbl = dma_alloc(sizeof(struct lsi_table), 8);
    c->msgout = dma_alloc(16, 8);
    c->cmd = dma_alloc(16, 8);
    c->status = dma_alloc(8, 8);
    c->msgin = dma_alloc(8, 8);
    build_script(c);
    build_script(c);
    ctrl_reset(c);
    c->ready = 1;
    return 0;
}

/* Run one command; see lsi.h. */
static int ctrl_command(struct lsi_ctrl *c, int target, int lun, const uint8_t *cdb,
                        unsigned cdb_len, int dir, void *buf, uint32_t len,
                        uint8_t *status, uint32_t *residual)
{
    struct lsi_table *t = c->tbl;
    uint32_t resid = 0;
    memcpy(c->cmd, cdb, cdb_len);
    c->msgout[0] = 0xC0 | (lun & 7);        /* IDENTIFY, disconnect privilege */
    *c->status = 0xFF;
    t->select = (uint32_t)target << 16;
    t->msgout = (struct lsi_entry){ 1, (uint32_t)virt_to_phys(c->msgout) };
    t->cmd = (struct lsi_entry){ cdb_len, (uint32_t)virt_to_phys(c->cmd) };
    t->data = (struct lsi_entry){ len ? len : 1, (uint32_t)virt_to_phys(buf ? buf : c->status + 4) };
    t->status = (struct lsi_entry){ 1, (uint32_t)virt_to_phys(c->status) };
    t->msgin = (struct lsi_entry){ 1, (uint32_t)virt_to_phys(c->msgin) };
    barrier();
    wr32(c, DSP, c->label[L_START]);
    for (;;) {
        uint8_t ist = 0;
        if (!SPIN_UNTIL((ist = rd8(c, ISTAT0)) & (ISTAT_DIP | ISTAT_SIP), LSI_POLL_LIMIT)) {
            printf("lsi: target %d: no interrupt (ISTAT0 0x%x)\n", target, ist);
            ctrl_reset(c);
            return BLK_ETIMEDOUT;
        }
        uint8_t dstat = (ist & ISTAT_DIP) ? rd8(c, DSTAT) : 0;
        uint8_t sist0 = (ist & ISTAT_SIP) ? rd8(c, SIST0) : 0;
        uint8_t sist1 = (ist & ISTAT_SIP) ? rd8(c, SIST1) : 0;
        if ((dstat & DSTAT_SIR) && rd32(c, DSPS) == INT_DONE) {
            if (sist0 & SIST0_MA)           /* short transfer, then completion */
                resid = rd32(c, DBC) & 0xFFFFFF;
            break;
        }
        if (sist1 & SIST1_STO) {
            ctrl_reset(c);
            return BLK_ENODEV;
        }
        if ((sist0 & SIST0_MA) && !dstat) {
            /* The target left the phase early: note the residual, carry on. */
            resid = rd32(c, DBC) & 0xFFFFFF;
            wr32(c, DSP, c->label[L_LOOP]);
            continue;
        }
        printf("lsi: target %d: controller error DSTAT 0x%x SIST0 0x%x SIST1 0x%x DSPS 0x%x\n",
               target, dstat, sist0, sist1, rd32(c, DSPS));
        ctrl_reset(c);
        return BLK_EIO;
    }
    if (dir == LSI_DIR_NONE)
        resid = 0;      /* QEMU's target shows DATA IN while a no-data command is in flight */
    if (status)
        *status = *c->status;
    if (residual)
        *residual = resid;
    if (verbose)
        printf("lsi: t%d l%d cdb %02x len %u -> status 0x%x resid %u\n", target, lun,
               cdb[0], len, *c->status, resid);
    return 0;
}

int lsi_scsi_command(struct blkdev *d, const uint8_t *cdb, unsigned cdb_len, int dir,
                     void *buf, uint32_t len, uint8_t *status, uint32_t *residual)
{
    struct lsi_disk *k = container_of(d, struct lsi_disk, bd);
    if (cdb_len < 6 || cdb_len > 16)
        return BLK_EINVAL;
    return ctrl_command(k->c, k->target, k->lun, cdb, cdb_len, dir, buf, len, status, residual);
}

int lsi_request_sense(struct blkdev *d, uint8_t *sense)
{
    struct lsi_disk *k = container_of(d, struct lsi_disk, bd);
    const uint8_t cdb[6] = { 0x03, 0, 0, 0, 18, 0 };
    uint8_t st;
    int r = ctrl_command(k->c, k->target, k->lun, cdb, 6, LSI_DIR_IN, k->bounce, 18, &st, NULL);
    if (r == 0)
        memcpy(sense, k->bounce, 18);
    return r ? r : (st ? BLK_EIO : 0);
}

/* A command whose CHECK CONDITION is followed by REQUEST SENSE (no autosense
 * on parallel SCSI); a unit attention is retried once. */
static int disk_cmd(struct lsi_disk *k, const uint8_t *cdb, unsigned n, int dir, void *buf,
                    uint32_t len)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        uint8_t st;
        int r = ctrl_command(k->c, k->target, k->lun, cdb, n, dir, buf, len, &st, NULL);
        if (r)
            return r;
        if (st == 0)
            return 0;
        if (st != 2)
            return BLK_EIO;
        uint8_t sense[18];
        if (lsi_request_sense(&k->bd, sense))
            return BLK_EIO;
        uint8_t key = sense[2] & 0xF, asc = sense[12];
        if (key == 0x6)                     /* UNIT ATTENTION: retry */
            continue;
        if (key == 0x5 && asc == 0x21)
            return BLK_ERANGE;
        if (key == 0x5 && asc == 0x20)
            return BLK_EUNSUPP;
        if (key == 0x5)
            return BLK_EINVAL;
        return BLK_EIO;
    }
    return BLK_EIO;
}

static void put_be32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static void put_be64(uint8_t *p, uint64_t v) { put_be32(p, v >> 32); put_be32(p + 4, (uint32_t)v); }
static uint32_t get_be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }

/* READ/WRITE (10) when the fields fit, else (16). */
static void rw_cdb(uint8_t *cdb, unsigned *n, int write, uint64_t lba, uint32_t count, int fua)
{
    memset(cdb, 0, 16);
    if (lba + count <= 0xFFFFFFFFull && count <= 0xFFFF) {
        cdb[0] = write ? 0x2A : 0x28;
        cdb[1] = fua ? 0x08 : 0;
        put_be32(cdb + 2, (uint32_t)lba);
        cdb[7] = count >> 8;
        cdb[8] = count;
        *n = 10;
    } else {
        cdb[0] = write ? 0x8A : 0x88;
        cdb[1] = fua ? 0x08 : 0;
        put_be64(cdb + 2, lba);
        put_be32(cdb + 10, count);
        *n = 16;
    }
}

static int op_read(struct blkdev *d, uint64_t lba, uint32_t count, void *buf)
{
    struct lsi_disk *k = container_of(d, struct lsi_disk, bd);
    uint8_t cdb[16];
    unsigned n;
    rw_cdb(cdb, &n, 0, lba, count, 0);
    return disk_cmd(k, cdb, n, LSI_DIR_IN, buf, count * 512u);
}

static int op_write(struct blkdev *d, uint64_t lba, uint32_t count, const void *buf, int fua)
{
    struct lsi_disk *k = container_of(d, struct lsi_disk, bd);
    uint8_t cdb[16];
    unsigned n;
    rw_cdb(cdb, &n, 1, lba, count, fua);
    return disk_cmd(k, cdb, n, LSI_DIR_OUT, (void *)buf, count * 512u);
}

static int op_flush(struct blkdev *d)
{
    struct lsi_disk *k = container_of(d, struct lsi_disk, bd);
    const uint8_t cdb[10] = { 0x35 };                    /* SYNCHRONIZE CACHE (10), whole disk */
    return disk_cmd(k, cdb, 10, LSI_DIR_NONE, NULL, 0);
}

static int op_discard(struct blkdev *d, uint64_t lba, uint32_t count)
{
    struct lsi_disk *k = container_of(d, struct lsi_disk, bd);
    uint8_t *p = k->bounce;                              /* UNMAP parameter list (SBC-3 §5.28) */
    memset(p, 0, 24);
    p[1] = 22;                                           /* UNMAP DATA LENGTH */
    p[3] = 16;                                           /* BLOCK DESCRIPTOR DATA LENGTH */
    put_be64(p + 8, lba);
    put_be32(p + 16, count);
    const uint8_t cdb[10] = { 0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0 };
    return disk_cmd(k, cdb, 10, LSI_DIR_OUT, p, 24);
}

static int op_write_zeroes(struct blkdev *d, uint64_t lba, uint32_t count, int unmap)
{
    struct lsi_disk *k = container_of(d, struct lsi_disk, bd);
    uint8_t cdb[16] = { 0x93, unmap ? 0x08 : 0 };        /* WRITE SAME (16) of a zero block */
    put_be64(cdb + 2, lba);
    put_be32(cdb + 10, count);
    memset(k->bounce, 0, 512);
    return disk_cmd(k, cdb, 16, LSI_DIR_OUT, k->bounce, 512);
}

/* MODE SENSE (6) of the caching page, DBD: 4-byte header + 20-byte page. */
static int read_caching_page(struct lsi_disk *k)
{
    const uint8_t cdb[6] = { 0x1A, 0x08, 0x08, 0, 24, 0 };
    int r = disk_cmd(k, cdb, 6, LSI_DIR_IN, k->bounce, 24);
    if (r)
        return r;
    if ((k->bounce[4] & 0x3F) != 0x08)
        return BLK_EIO;
    return 0;
}

static int op_set_write_cache(struct blkdev *d, int on)
{
    struct lsi_disk *k = container_of(d, struct lsi_disk, bd);
    int r = read_caching_page(k);
    if (r)
        return r;
    uint8_t *p = k->bounce;
    p[0] = p[1] = p[2] = p[3] = 0;                       /* header: reserved in MODE SELECT */
    p[4] &= 0x3F;                                        /* PS is reserved too */
    p[6] = (p[6] & ~0x04) | (on ? 0x04 : 0);             /* WCE */
    const uint8_t cdb[6] = { 0x15, 0x10, 0, 0, 24, 0 };  /* MODE SELECT (6), PF */
    r = disk_cmd(k, cdb, 6, LSI_DIR_OUT, p, 24);
    if (r)
        return r;
    r = read_caching_page(k);
    if (r)
        return r;
    d->write_cache = (k->bounce[6] & 0x04) ? 1 : 0;
    return d->write_cache == on ? 0 : BLK_EIO;
}

static void copy_trim(char *dst, const uint8_t *src, unsigned n)
{
    memcpy(dst, src, n);
    dst[n] = 0;
    while (n && (dst[n - 1] == ' ' || dst[n - 1] == 0))
        dst[--n] = 0;
}

/* Fill a disk's blkdev from INQUIRY, VPD 0x80, READ CAPACITY, MODE SENSE. */
static int disk_setup(struct lsi_disk *k, int index)
{
    struct blkdev *d = &k->bd;
    uint8_t *b = k->bounce;
    const uint8_t tur[6] = { 0 };
    int r = disk_cmd(k, tur, 6, LSI_DIR_NONE, NULL, 0);  /* eats the power-on unit attention */
    if (r)
        return r;
    const uint8_t inq[6] = { 0x12, 0, 0, 0, 36, 0 };
    if ((r = disk_cmd(k, inq, 6, LSI_DIR_IN, b, 36)))
        return r;
    char vendor[9], product[17];
    copy_trim(vendor, b + 8, 8);
    copy_trim(product, b + 16, 16);
    snprintf(d->model, sizeof d->model, "%s %s", vendor, product);
    /* Unit serial number page: header first, then exactly its length. */
    const uint8_t vpd80h[6] = { 0x12, 1, 0x80, 0, 4, 0 };
    uint8_t st;
    d->serial[0] = 0;
    if (ctrl_command(k->c, k->target, k->lun, vpd80h, 6, LSI_DIR_IN, b, 4, &st, NULL) == 0 && st == 0) {
        unsigned n = b[3] > 20 ? 20 : b[3];
        const uint8_t vpd80[6] = { 0x12, 1, 0x80, 0, (uint8_t)(4 + b[3]), 0 };
        if (n && disk_cmd(k, vpd80, 6, LSI_DIR_IN, b, 4u + b[3]) == 0)
            copy_trim(d->serial, b + 4, n);
    } else if (st == 2) {
        uint8_t sense[18];
        lsi_request_sense(d, sense);                     /* no serial: clear the sense */
    }
    const uint8_t cap10[10] = { 0x25 };
    if ((r = disk_cmd(k, cap10, 10, LSI_DIR_IN, b, 8)))
        return r;
    uint64_t last = get_be32(b);
    if (last == 0xFFFFFFFFu) {
        const uint8_t cap16[16] = { 0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0 };
        if ((r = disk_cmd(k, cap16, 16, LSI_DIR_IN, b, 32)))
            return r;
        last = (uint64_t)get_be32(b) << 32 | get_be32(b + 4);
    }
    d->sector_size = get_be32(b + 4);
    if (d->sector_size != 512) {
        printf("lsi: target %d lun %d: %u-byte blocks are not supported\n", k->target, k->lun,
               d->sector_size);
        return BLK_EUNSUPP;
    }
    d->capacity = last + 1;
    d->write_cache = read_caching_page(k) == 0 ? !!(k->bounce[6] & 0x04) : -1;
    static char names[LSI_MAX_DISKS][12];
    snprintf(names[index], sizeof names[index], "lsi%d", index);
    d->name = names[index];
    d->caps = BLK_CAP_FLUSH | BLK_CAP_FUA | BLK_CAP_DISCARD | BLK_CAP_WRITE_ZEROES
              | BLK_CAP_WCE_TOGGLE;
    d->queue_depth = 1;
    d->max_sectors = LSI_MAX_SECTORS;
    d->max_segs = 1;
    d->dma_align = 4;
    d->read = op_read;
    d->write = op_write;
    d->flush = op_flush;
    d->discard = op_discard;
    d->write_zeroes = op_write_zeroes;
    d->set_write_cache = op_set_write_cache;
    return 0;
}

/* Is there a direct-access LUN here?  INQUIRY: qualifier 0, type 0. */
static int lun_is_disk(struct lsi_ctrl *c, int target, int lun, uint8_t *b)
{
    const uint8_t inq[6] = { 0x12, 0, 0, 0, 36, 0 };
    uint8_t st;
    int r = ctrl_command(c, target, lun, inq, 6, LSI_DIR_IN, b, 36, &st, NULL);
    if (r)
        return r;
    return st == 0 && b[0] == 0x00;
}

static void scan(void)
{
    ndisks = 0;
    verbose = (int)arg_u64("lsi_verbose", 0);
    uint8_t *b = dma_alloc(512, 8);
    for (int k = 0; k < LSI_MAX_CTRL; k++) {
        if (ctrl_init(k))
            break;
        struct lsi_ctrl *c = &ctrls[k];
        for (int t = 0; t < LSI_MAX_TARGET; t++) {
            int r = lun_is_disk(c, t, 0, b);
            if (r < 0)                                   /* selection timeout: nobody there */
                continue;
            int luns[LSI_MAX_LUNS], nl = 0;
            if (r == 1)
                luns[nl++] = 0;
            /* REPORT LUNS: the list length first, then exactly the list. */
            uint8_t rl[12] = { 0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0 };
            uint8_t st;
            if (ctrl_command(c, t, 0, rl, 12, LSI_DIR_IN, b, 16, &st, NULL) == 0 && st == 0) {
                uint32_t len = get_be32(b);
                if (len > 8 * LSI_MAX_LUNS)
                    len = 8 * LSI_MAX_LUNS;
                if (len > 8) {
                    rl[9] = (uint8_t)(8 + len);
                    if (ctrl_command(c, t, 0, rl, 12, LSI_DIR_IN, b, 8 + len, &st, NULL) || st)
                        len = 8;
                }
                uint8_t list[8 * LSI_MAX_LUNS];
                memcpy(list, b + 8, len);
                for (uint32_t i = 0; i < len / 8; i++) {
                    int lun = list[8 * i + 1];
                    if (lun != 0 && lun < LSI_MAX_LUNS && nl < LSI_MAX_LUNS
                        && lun_is_disk(c, t, lun, b) == 1)
                        luns[nl++] = lun;
                }
            }
            for (int i = 0; i < nl && ndisks < LSI_MAX_DISKS; i++) {
                struct lsi_disk *dk = &disks[ndisks++];
                dk->c = c;
                dk->target = t;
                dk->lun = luns[i];
            }
        }
    }
}

static int lsi_probe(int idx, struct blkdev **out)
{
    if (ndisks < 0)
        scan();
    if (idx < 0 || idx >= ndisks)
        return BLK_ENODEV;
    struct lsi_disk *k = &disks[idx];
    if (!k->bounce)
        k->bounce = dma_alloc(512, 512);
    int r = disk_setup(k, idx);
    if (r) {
        printf("lsi%d: target %d lun %d: setup failed: %s\n", idx, k->target, k->lun,
               blk_strerror(r));
        return r;
    }
    *out = &k->bd;
    return 0;
}

BLKDEV_DRIVER("lsi", lsi_probe);
