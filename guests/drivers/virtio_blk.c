/* virtio_blk: a modern virtio-pci block driver (virtio 1.2 §4.1, §2.7, §5.2).
 *
 * Finds the idx-th virtio block function (1AF4:1042, or a transitional
 * 1AF4:1001 that has the modern capabilities), runs the initialisation
 * sequence of §3.1.1 (reset, ACKNOWLEDGE, DRIVER, feature negotiation with
 * the FEATURES_OK handshake, queue set-up, DRIVER_OK) and implements the
 * queued half of blkdev.h (submit/poll) plus set_write_cache; the library
 * builds the synchronous calls on top.
 *
 * Split virtqueues (§2.7): every request is one descriptor chain
 *   [header (16 bytes, device-readable)] [data segments | discard range] [status (1 byte, writable)]
 * either directly in the ring or, with VIRTIO_F_RING_INDIRECT_DESC, as one
 * ring descriptor pointing at a per-slot indirect table (§2.7.5.3).
 *
 * Notifications: a request is published in the available ring by submit();
 * the doorbell (a 16-bit write to the queue's notify address, §4.1.4.4) is
 * rung by the next poll(), so several requests submitted together cost one
 * exit.  With VIRTIO_F_RING_EVENT_IDX the doorbell is skipped when the
 * device's avail_event says it does not need one (§2.7.10).  Polling is the
 * default: completion is seen by reading used->idx in RAM, no register
 * access.  With virtio_irq=msix the driver programs MSI-X vector 0 for the
 * queues and waits with hlt.
 *
 * Arguments (all optional):
 *   virtio_qsize=N     ring size to use (power of two, <= the device's; default 128)
 *   virtio_queues=N    request queues to use when the device offers MQ (default 1)
 *   virtio_indirect=0  do not negotiate indirect descriptors
 *   virtio_event_idx=0 do not negotiate EVENT_IDX
 *   virtio_nofeat=MASK do not negotiate these feature bits (e.g. 0xa00: neither
 *                      FLUSH nor CONFIG_WCE, virtio 1.2 5.2 durability rule 1)
 *   virtio_irq=msix    interrupt-driven completion instead of polling
 *   virtio_verbose=1   print the raw device configuration at probe
 */
#include "guest.h"

/* ---- virtio-pci transport (§4.1) ------------------------------------------ */
#define VIRTIO_VENDOR           0x1AF4
#define VIRTIO_DEV_BLK_MODERN   0x1042      /* 0x1040 + device type 2 (§4.1.2.1) */
#define VIRTIO_DEV_BLK_TRANS    0x1001

#define CAP_COMMON      1
#define CAP_NOTIFY      2
#define CAP_ISR         3
#define CAP_DEVICE      4

/* struct virtio_pci_common_cfg (§4.1.4.3) */
#define CC_DFSELECT     0x00
#define CC_DF           0x04
#define CC_GFSELECT     0x08
#define CC_GF           0x0C
#define CC_MSIX         0x10
#define CC_NUMQ         0x12
#define CC_STATUS       0x14
#define CC_CFGGEN       0x15
#define CC_Q_SELECT     0x16
#define CC_Q_SIZE       0x18
#define CC_Q_MSIX       0x1A
#define CC_Q_ENABLE     0x1C
#define CC_Q_NOFF       0x1E
#define CC_Q_DESC       0x20
#define CC_Q_AVAIL      0x28
#define CC_Q_USED       0x30

/* Device status (§2.1) */
#define ST_ACK          1
#define ST_DRIVER       2
#define ST_DRIVER_OK    4
#define ST_FEATURES_OK  8
#define ST_NEEDS_RESET  0x40
#define ST_FAILED       0x80

#define NO_VECTOR       0xFFFF

/* Feature bits (§6, §5.2.3) */
#define F_SIZE_MAX      1
#define F_SEG_MAX       2
#define F_GEOMETRY      4
#define F_RO            5
#define F_BLK_SIZE      6
#define F_FLUSH         9
#define F_TOPOLOGY      10
#define F_CONFIG_WCE    11
#define F_MQ            12
#define F_DISCARD       13
#define F_WRITE_ZEROES  14
#define F_INDIRECT      28
#define F_EVENT_IDX     29
#define F_VERSION_1     32

/* struct virtio_blk_config (§5.2.4) */
#define BC_CAPACITY     0
#define BC_SIZE_MAX     8
#define BC_SEG_MAX      12
#define BC_CYLINDERS    16
#define BC_HEADS        18
#define BC_SECTORS      19
#define BC_BLK_SIZE     20
#define BC_PHYS_EXP     24
#define BC_ALIGN_OFF    25
#define BC_MIN_IO       26
#define BC_OPT_IO       28
#define BC_WRITEBACK    32
#define BC_NUM_QUEUES   34
#define BC_MAX_DISCARD  36
#define BC_DISCARD_SEG  40
#define BC_DISCARD_ALIGN 44
#define BC_MAX_WZ       48
#define BC_WZ_SEG       52
#define BC_WZ_UNMAP     56

/* Request types and status (§5.2.6) */
#define T_IN            0
#define T_OUT           1
#define T_FLUSH         4
#define T_GET_ID        8
#define T_DISCARD       11
#define T_WRITE_ZEROES  13
#define S_OK            0
#define S_IOERR         1
#define S_UNSUPP        2

/* ---- split virtqueue layout (§2.7) ----------------------------------------- */
#define VRING_DESC_F_NEXT       1
#define VRING_DESC_F_WRITE      2
#define VRING_DESC_F_INDIRECT   4
#define VRING_AVAIL_F_NO_INTERRUPT 1

struct vring_desc { uint64_t addr; uint32_t len; uint16_t flags, next; };
struct vring_used_elem { uint32_t id, len; };

struct blk_hdr { uint32_t type, reserved; uint64_t sector; };
struct blk_dwz { uint64_t sector; uint32_t num_sectors, flags; };

#define MAX_QUEUES  4
#define MAX_SEGS    64          /* our cap on data segments per request */
#define VBLK_MAX    4
#define POLL_LIMIT  100000000u  /* poll() calls without progress before giving up */

struct vblk;

struct slot {                   /* per in-flight request, in DMA memory */
    struct blk_hdr hdr;
    struct blk_dwz dwz;
    volatile uint8_t status;
    uint8_t busy;
    uint16_t head;
    uint16_t ndesc;
    struct blk_req *req;
    struct vring_desc *table;   /* indirect table (MAX_SEGS + 2 entries) */
};

struct vq {
    uint16_t index, size, notify_off;
    struct vring_desc *desc;
    volatile uint16_t *avail;   /* flags, idx, ring[size], used_event */
    volatile uint8_t *used;     /* flags, idx, ring[size] of 8 bytes, avail_event */
    uint16_t free_head, num_free;
    uint16_t avail_idx;         /* our shadow of avail->idx */
    uint16_t kicked_idx;        /* avail idx at the last doorbell */
    uint16_t last_used;
    int need_kick;
    uint16_t head_slot[1024];   /* descriptor head -> slot number */
    struct slot *slots;
    int nslots;
};

struct vblk {
    struct blkdev dev;
    struct pci_dev *pci;
    uintptr_t common, notify, isr, devcfg;
    uint32_t notify_mult;
    uint64_t offered, features;
    struct vq q[MAX_QUEUES];
    int nq, rr;
    int irq;
    uint32_t seg_max;
    uint32_t idle_polls;
    int said_reset;
    char name[12];
};

static struct vblk vblks[VBLK_MAX];
static const uint8_t MSIX_VECTOR = 0x50;
static volatile uint64_t irq_seen;

static inline int has(const struct vblk *v, int bit) { return (v->features >> bit) & 1; }
static struct vblk *to_v(struct blkdev *d) { return container_of(d, struct vblk, dev); }

static uint8_t  cfg8(struct vblk *v, unsigned o)  { return mmio_read8(v->devcfg + o); }
static uint16_t cfg16(struct vblk *v, unsigned o) { return mmio_read16(v->devcfg + o); }
static uint32_t cfg32(struct vblk *v, unsigned o) { return mmio_read32(v->devcfg + o); }

/* A 64-bit config field read as two 32-bit halves, retried until the
 * config generation is stable (§4.1.4.3.1, §2.5.1). */
static uint64_t cfg64(struct vblk *v, unsigned o)
{
    for (;;) {
        uint8_t g = mmio_read8(v->common + CC_CFGGEN);
        uint64_t lo = cfg32(v, o), hi = cfg32(v, o + 4);
        if (mmio_read8(v->common + CC_CFGGEN) == g)
            return hi << 32 | lo;
    }
}

static void set_status(struct vblk *v, uint8_t bits)
{
    uint8_t s = mmio_read8(v->common + CC_STATUS);
    mmio_write8(v->common + CC_STATUS, s | bits);
}

/* ---- capability discovery (§4.1.4) --------------------------------------- */
static int find_caps(struct vblk *v)
{
    struct pci_dev *p = v->pci;
    int found = 0;
    for (uint8_t c = pci_find_cap(p, PCI_CAP_ID_VNDR); c; c = pci_find_next_cap(p, c, PCI_CAP_ID_VNDR)) {
        uint8_t type = pci_cfg_read8(p, c + 3), bar = pci_cfg_read8(p, c + 4);
        uint32_t off = pci_cfg_read32(p, c + 8);
        if (bar > 5 || (p->bar[bar].type != PCI_BAR_MEM32 && p->bar[bar].type != PCI_BAR_MEM64))
            continue;   /* I/O BAR regions (legacy transitional layouts) are not used */
        uintptr_t a = p->bar[bar].addr + off;
        switch (type) {
        case CAP_COMMON: if (!v->common) { v->common = a; found |= 1; } break;
        case CAP_NOTIFY:
            if (!v->notify) { v->notify = a; v->notify_mult = pci_cfg_read32(p, c + 16); found |= 2; }
            break;
        case CAP_ISR: if (!v->isr) { v->isr = a; found |= 4; } break;
        case CAP_DEVICE: if (!v->devcfg) { v->devcfg = a; found |= 8; } break;
        }
    }
    return found == 15 ? 0 : -1;
}

static struct pci_dev *find_fn(int idx)
{
    for (int i = 0; i < pci_count(); i++) {
        struct pci_dev *p = pci_get(i);
        if (p->vendor == VIRTIO_VENDOR &&
            (p->device == VIRTIO_DEV_BLK_MODERN || p->device == VIRTIO_DEV_BLK_TRANS) &&
            idx-- == 0)
            return p;
    }
    return NULL;
}

/* ---- virtqueue set-up (§4.1.5.1.3) ------------------------------------------ */
static int setup_queue(struct vblk *v, int qi, uint16_t want, int slots)
{
    struct vq *q = &v->q[qi];
    mmio_write16(v->common + CC_Q_SELECT, qi);
    uint16_t max = mmio_read16(v->common + CC_Q_SIZE);
    if (!max) {
        printf("%s: queue %d is not available\n", v->name, qi);
        return BLK_ENODEV;
    }
    uint16_t size = want;
    while (size > max || size > 1024)
        size >>= 1;
    if (size < 4)
        return BLK_ENODEV;
    q->index = qi;
    q->size = size;
    /* Alignment: descriptors 16, available ring 2, used ring 4 (§2.7). */
    q->desc = dma_alloc(16u * size, 4096);
    q->avail = dma_alloc(6 + 2u * size, 4096);
    q->used = dma_alloc(6 + 8u * size, 4096);
    for (uint16_t i = 0; i < size; i++)
        q->desc[i].next = i + 1 < size ? i + 1 : 0;
    q->free_head = 0;
    q->num_free = size;
    q->nslots = slots;
    q->slots = dma_alloc(sizeof(struct slot) * slots, 64);
    for (int s = 0; s < slots; s++)
        q->slots[s].table = has(v, F_INDIRECT) ? dma_alloc(16 * (MAX_SEGS + 2), 16) : NULL;
    if (!v->irq && !has(v, F_EVENT_IDX))
        q->avail[0] = VRING_AVAIL_F_NO_INTERRUPT;   /* §2.7.7: we poll */
    mmio_write16(v->common + CC_Q_SIZE, size);
    mmio_write64(v->common + CC_Q_DESC, virt_to_phys(q->desc));
    mmio_write64(v->common + CC_Q_AVAIL, virt_to_phys((void *)q->avail));
    mmio_write64(v->common + CC_Q_USED, virt_to_phys((void *)q->used));
    mmio_write16(v->common + CC_Q_MSIX, v->irq ? 0 : NO_VECTOR);
    if (v->irq && mmio_read16(v->common + CC_Q_MSIX) != 0) {
        printf("%s: device refused MSI-X vector for queue %d\n", v->name, qi);
        return BLK_EIO;
    }
    q->notify_off = mmio_read16(v->common + CC_Q_NOFF);
    mmio_write16(v->common + CC_Q_ENABLE, 1);
    return 0;
}

/* ---- descriptors ----------------------------------------------------------- */
static uint16_t alloc_desc(struct vq *q)
{
    uint16_t d = q->free_head;
    q->free_head = q->desc[d].next;
    q->num_free--;
    return d;
}

static void free_chain(struct vq *q, uint16_t head, uint16_t n)
{
    uint16_t d = head;
    for (uint16_t i = 1; i < n; i++)
        d = q->desc[d].next;
    q->desc[d].next = q->free_head;
    q->free_head = head;
    q->num_free += n;
}

/* Put one request's chain (n parts) into the ring: as an indirect table
 * when negotiated, else as n ring descriptors; then publish its head. */
static int publish(struct vblk *v, struct vq *q, struct slot *s, int sn,
                   const struct vring_desc *parts, int n)
{
    uint16_t head;
    if (s->table) {
        if (!q->num_free)
            return BLK_EBUSY;
        for (int i = 0; i < n; i++) {
            s->table[i] = parts[i];
            s->table[i].next = i + 1;
            if (i + 1 < n)
                s->table[i].flags |= VRING_DESC_F_NEXT;
        }
        head = alloc_desc(q);
        q->desc[head].addr = virt_to_phys(s->table);
        q->desc[head].len = 16u * n;
        q->desc[head].flags = VRING_DESC_F_INDIRECT;
        s->ndesc = 1;
    } else {
        if (q->num_free < n)
            return BLK_EBUSY;
        head = alloc_desc(q);
        uint16_t d = head;
        for (int i = 0; i < n; i++) {
            uint16_t next = q->desc[d].next;
            q->desc[d].addr = parts[i].addr;
            q->desc[d].len = parts[i].len;
            q->desc[d].flags = parts[i].flags;
            if (i + 1 < n) {
                uint16_t nd = alloc_desc(q);
                q->desc[d].flags |= VRING_DESC_F_NEXT;
                q->desc[d].next = nd;
                d = nd;
            } else {
                q->desc[d].next = next;
            }
        }
        s->ndesc = n;
    }
    s->head = head;
    q->head_slot[head] = sn;
    /* §2.7.13: ring entry, then (after a barrier) the index. */
    q->avail[2 + (q->avail_idx % q->size)] = head;
    barrier();
    q->avail_idx++;
    q->avail[1] = q->avail_idx;
    q->need_kick = 1;
    (void)v;
    return 0;
}

/* Ring the doorbell if the device wants it (§2.7.10, vring_need_event). */
static void kick(struct vblk *v, struct vq *q)
{
    if (!q->need_kick)
        return;
    q->need_kick = 0;
    mb();
    uint16_t new_idx = q->avail_idx, old = q->kicked_idx;
    q->kicked_idx = new_idx;
    if (has(v, F_EVENT_IDX)) {
        uint16_t event = *(volatile uint16_t *)(q->used + 4 + 8u * q->size);
        if ((uint16_t)(new_idx - event - 1) >= (uint16_t)(new_idx - old))
            return;
    } else if (*(volatile uint16_t *)q->used & 1) {     /* VRING_USED_F_NO_NOTIFY */
        return;
    }
    mmio_write16(v->notify + (uintptr_t)q->notify_off * v->notify_mult, q->index);
}

static int status_to_blk(uint8_t st)
{
    return st == S_OK ? BLK_OK : st == S_UNSUPP ? BLK_EUNSUPP : BLK_EIO;
}

/* ---- blkdev operations ----------------------------------------------------- */
static int fill_and_publish(struct vblk *v, struct vq *q, int sn, struct blk_req *r)
{
    struct slot *s = &q->slots[sn];
    struct vring_desc parts[MAX_SEGS + 2];
    int n = 0;
    uint32_t ss = v->dev.sector_size;
    s->hdr.reserved = 0;
    s->hdr.sector = r->lba * (ss / 512);
    parts[n++] = (struct vring_desc){ virt_to_phys(&s->hdr), sizeof(s->hdr), 0, 0 };
    switch (r->op) {
    case BLK_OP_READ:
    case BLK_OP_WRITE:
        s->hdr.type = r->op == BLK_OP_READ ? T_IN : T_OUT;
        for (unsigned i = 0; i < r->nsegs; i++)
            parts[n++] = (struct vring_desc){ virt_to_phys(r->segs[i].buf), r->segs[i].len,
                                              r->op == BLK_OP_READ ? VRING_DESC_F_WRITE : 0, 0 };
        break;
    case BLK_OP_FLUSH:
        s->hdr.type = T_FLUSH;
        s->hdr.sector = 0;
        break;
    case BLK_OP_DISCARD:
    case BLK_OP_WRITE_ZEROES:
        s->hdr.type = r->op == BLK_OP_DISCARD ? T_DISCARD : T_WRITE_ZEROES;
        s->hdr.sector = 0;
        s->dwz.sector = r->lba * (ss / 512);
        s->dwz.num_sectors = r->count * (ss / 512);
        s->dwz.flags = r->op == BLK_OP_WRITE_ZEROES && (r->flags & BLK_REQ_UNMAP) ? 1 : 0;
        parts[n++] = (struct vring_desc){ virt_to_phys(&s->dwz), sizeof(s->dwz), 0, 0 };
        break;
    default:
        return BLK_EINVAL;
    }
    s->status = 0xFF;
    parts[n++] = (struct vring_desc){ virt_to_phys((void *)&s->status), 1, VRING_DESC_F_WRITE, 0 };
    int rc = publish(v, q, s, sn, parts, n);
    if (rc)
        return rc;
    s->busy = 1;
    s->req = r;
    r->tag = sn;
    r->drv = q;
    return 0;
}

static int vblk_submit(struct blkdev *d, struct blk_req *r)
{
    struct vblk *v = to_v(d);
    for (int t = 0; t < v->nq; t++) {
        struct vq *q = &v->q[(v->rr + t) % v->nq];
        for (int sn = 0; sn < q->nslots; sn++) {
            if (q->slots[sn].busy)
                continue;
            int rc = fill_and_publish(v, q, sn, r);
            if (rc == BLK_EBUSY)
                break;          /* ring full: try another queue */
            if (rc == 0)
                v->rr = (v->rr + 1) % v->nq;
            return rc;
        }
    }
    return BLK_EBUSY;
}

static int reap(struct vblk *v, struct vq *q)
{
    int n = 0;
    volatile uint16_t *used_idx = (volatile uint16_t *)(q->used + 2);
    while (q->last_used != *used_idx) {
        barrier();
        const volatile struct vring_used_elem *e =
            (const volatile struct vring_used_elem *)(q->used + 4 + 8u * (q->last_used % q->size));
        uint32_t id = e->id;
        q->last_used++;
        if (id >= q->size)
            panic("%s: device returned descriptor id %u >= queue size %u", v->name, id, q->size);
        struct slot *s = &q->slots[q->head_slot[id]];
        if (!s->busy || s->head != id)
            panic("%s: device completed descriptor %u that is not in flight", v->name, id);
        free_chain(q, s->head, s->ndesc);
        s->busy = 0;
        uint8_t st = s->status;
        blk_complete(&v->dev, s->req, st == 0xFF ? BLK_EIO : status_to_blk(st));
        n++;
    }
    if (has(v, F_EVENT_IDX))        /* interrupt me for the next completion */
        q->avail[2 + q->size] = q->last_used;
    return n;
}

static int vblk_poll(struct blkdev *d)
{
    struct vblk *v = to_v(d);
    int n = 0;
    for (int i = 0; i < v->nq; i++)
        kick(v, &v->q[i]);
    for (int i = 0; i < v->nq; i++)
        n += reap(v, &v->q[i]);
    if (!n && v->irq) {
        /* Sleep until the next interrupt (race-free: see irq.h). */
        irq_disable();
        uint64_t seen = irq_seen;
        int pending = 0;
        for (int i = 0; i < v->nq; i++)
            pending |= v->q[i].last_used != *(volatile uint16_t *)(v->q[i].used + 2);
        if (!pending && seen == irq_seen)
            wait_for_interrupt();
        irq_enable();
    }
    /* A device that needs a reset completes nothing more (§2.1.2): look at
     * the status register now and then while nothing completes (a register
     * read is an exit; the used ring is RAM). */
    if (n) {
        v->idle_polls = 0;
    } else if (++v->idle_polls % 4096 == 0 &&
               mmio_read8(v->common + CC_STATUS) & ST_NEEDS_RESET) {
        if (!v->said_reset++)
            printf("%s: device set DEVICE_NEEDS_RESET\n", v->name);
        return BLK_EIO;
    }
    return n;
}

static int vblk_set_write_cache(struct blkdev *d, int on)
{
    struct vblk *v = to_v(d);
    if (!has(v, F_CONFIG_WCE))
        return BLK_EUNSUPP;
    mmio_write8(v->devcfg + BC_WRITEBACK, on ? 1 : 0);
    d->write_cache = cfg8(v, BC_WRITEBACK) ? 1 : 0;
    return d->write_cache == !!on ? 0 : BLK_EIO;
}

static void vblk_irq(unsigned vector)
{
    (void)vector;
    irq_seen++;
}

/* GET_ID (§5.2.6): 20 bytes, NUL-padded when shorter. */
static void read_serial(struct vblk *v)
{
    static uint8_t *idbuf;
    if (!idbuf)
        idbuf = dma_alloc(20, 16);
    memset(idbuf, 0, 20);
    struct vq *q = &v->q[0];
    struct slot *s = &q->slots[0];
    s->hdr = (struct blk_hdr){ T_GET_ID, 0, 0 };
    s->status = 0xFF;
    struct vring_desc parts[3] = {
        { virt_to_phys(&s->hdr), sizeof(s->hdr), 0, 0 },
        { virt_to_phys(idbuf), 20, VRING_DESC_F_WRITE, 0 },
        { virt_to_phys((void *)&s->status), 1, VRING_DESC_F_WRITE, 0 },
    };
    if (publish(v, q, s, 0, parts, 3))
        return;
    s->busy = 1;
    kick(v, q);
    volatile uint16_t *used_idx = (volatile uint16_t *)(q->used + 2);
    for (uint32_t n = 0; q->last_used == *used_idx; n++) {
        if (n > POLL_LIMIT) {
            printf("%s: GET_ID timed out\n", v->name);
            return;
        }
        if (v->irq)
            wait_for_interrupt();
        else
            cpu_relax();
    }
    q->last_used++;
    free_chain(q, s->head, s->ndesc);
    s->busy = 0;
    if (s->status == S_OK) {
        memcpy(v->dev.serial, idbuf, 20);
        v->dev.serial[20] = 0;
        for (int i = (int)strlen(v->dev.serial) - 1; i >= 0 && v->dev.serial[i] == ' '; i--)
            v->dev.serial[i] = 0;
    }
    if (has(v, F_EVENT_IDX))
        q->avail[2 + q->size] = q->last_used;
}

static void dump_config(struct vblk *v)
{
    printf("%s: config capacity=%lu size_max=%u seg_max=%u geometry=%u/%u/%u blk_size=%u\n",
           v->name, (unsigned long)cfg64(v, BC_CAPACITY), cfg32(v, BC_SIZE_MAX),
           cfg32(v, BC_SEG_MAX), cfg16(v, BC_CYLINDERS), cfg8(v, BC_HEADS), cfg8(v, BC_SECTORS),
           cfg32(v, BC_BLK_SIZE));
    printf("%s: config topology=%u/%u/%u/%u writeback=%u num_queues=%u\n", v->name,
           cfg8(v, BC_PHYS_EXP), cfg8(v, BC_ALIGN_OFF), cfg16(v, BC_MIN_IO), cfg32(v, BC_OPT_IO),
           cfg8(v, BC_WRITEBACK), cfg16(v, BC_NUM_QUEUES));
    printf("%s: config discard=%u/%u/%u write_zeroes=%u/%u/%u\n", v->name,
           cfg32(v, BC_MAX_DISCARD), cfg32(v, BC_DISCARD_SEG), cfg32(v, BC_DISCARD_ALIGN),
           cfg32(v, BC_MAX_WZ), cfg32(v, BC_WZ_SEG), cfg8(v, BC_WZ_UNMAP));
}

static int virtio_blk_probe(int idx, struct blkdev **out)
{
    if (idx >= VBLK_MAX)
        return BLK_ENODEV;
    struct vblk *v = &vblks[idx];
    if (v->dev.capacity || v->common) {
        *out = &v->dev;
        return 0;
    }
    struct pci_dev *p = find_fn(idx);
    if (!p)
        return BLK_ENODEV;
    memset(v, 0, sizeof(*v));
    v->pci = p;
    snprintf(v->name, sizeof(v->name), "virtio%d", idx);
    if (find_caps(v)) {
        printf("%s: missing virtio-pci modern capabilities\n", v->name);
        return BLK_ENODEV;
    }
    pci_enable(p, 0, 1, 1);
    const char *irqmode = arg_str("virtio_irq", "poll");
    v->irq = !strcmp(irqmode, "msix");
    if (!v->irq && strcmp(irqmode, "poll")) {
        printf("%s: virtio_irq=%s: expected poll or msix\n", v->name, irqmode);
        return BLK_EINVAL;
    }

    /* §3.1.1 steps 1-3: reset (wait for status 0), ACKNOWLEDGE, DRIVER. */
    mmio_write8(v->common + CC_STATUS, 0);
    for (uint32_t n = 0; mmio_read8(v->common + CC_STATUS); n++)
        if (n > 1000000) {
            printf("%s: reset did not complete\n", v->name);
            return BLK_ETIMEDOUT;
        }
    set_status(v, ST_ACK);
    set_status(v, ST_DRIVER);

    /* Step 4: features. */
    mmio_write32(v->common + CC_DFSELECT, 0);
    uint64_t lo = mmio_read32(v->common + CC_DF);
    mmio_write32(v->common + CC_DFSELECT, 1);
    uint64_t hi = mmio_read32(v->common + CC_DF);
    v->offered = hi << 32 | lo;
    if (!((v->offered >> F_VERSION_1) & 1)) {
        printf("%s: device does not offer VIRTIO_F_VERSION_1\n", v->name);
        set_status(v, ST_FAILED);
        return BLK_ENODEV;
    }
    uint64_t want = 1ull << F_VERSION_1 | 1ull << F_SEG_MAX | 1ull << F_BLK_SIZE |
                    1ull << F_FLUSH | 1ull << F_TOPOLOGY | 1ull << F_CONFIG_WCE |
                    1ull << F_DISCARD | 1ull << F_WRITE_ZEROES | 1ull << F_RO |
                    1ull << F_MQ | 1ull << F_INDIRECT | 1ull << F_EVENT_IDX;
    if (!arg_u64("virtio_indirect", 1))
        want &= ~(1ull << F_INDIRECT);
    if (!arg_u64("virtio_event_idx", 1))
        want &= ~(1ull << F_EVENT_IDX);
    want &= ~arg_u64("virtio_nofeat", 0);
    v->features = v->offered & want;
    mmio_write32(v->common + CC_GFSELECT, 0);
    mmio_write32(v->common + CC_GF, (uint32_t)v->features);
    mmio_write32(v->common + CC_GFSELECT, 1);
    mmio_write32(v->common + CC_GF, (uint32_t)(v->features >> 32));
    /* Steps 5-6: FEATURES_OK, and check the device kept it. */
    set_status(v, ST_FEATURES_OK);
    if (!(mmio_read8(v->common + CC_STATUS) & ST_FEATURES_OK)) {
        printf("%s: device rejected features 0x%lx\n", v->name, (unsigned long)v->features);
        set_status(v, ST_FAILED);
        return BLK_EIO;
    }
    printf("%s: pci %04x:%04x rev %u, features offered 0x%lx negotiated 0x%lx\n", v->name,
           p->vendor, p->device, p->revision, (unsigned long)v->offered,
           (unsigned long)v->features);
    if (arg_u64("virtio_verbose", 0))
        dump_config(v);

    /* Step 7: queues. */
    uint16_t dev_queues = mmio_read16(v->common + CC_NUMQ);
    int nq = 1;
    if (has(v, F_MQ)) {
        uint16_t cfgq = cfg16(v, BC_NUM_QUEUES);
        nq = (int)arg_u64("virtio_queues", 1);
        if (nq > cfgq) nq = cfgq;
        if (nq > dev_queues) nq = dev_queues;
        if (nq > MAX_QUEUES) nq = MAX_QUEUES;
        if (nq < 1) nq = 1;
    }
    uint64_t qs = arg_u64("virtio_qsize", 128);
    if (qs < 4 || qs > 1024 || (qs & (qs - 1))) {
        printf("%s: virtio_qsize=%lu: expected a power of two in 4..1024\n", v->name,
               (unsigned long)qs);
        set_status(v, ST_FAILED);
        return BLK_EINVAL;
    }
    v->seg_max = has(v, F_SEG_MAX) ? cfg32(v, BC_SEG_MAX) : 1;
    if (v->seg_max < 1) v->seg_max = 1;
    uint32_t segs = v->seg_max < MAX_SEGS ? v->seg_max : MAX_SEGS;
    int per_q_slots = 0;
    if (v->irq) {
        irq_install(MSIX_VECTOR, vblk_irq);
        if (pci_msix_enable(p, 0, MSIX_VECTOR)) {
            printf("%s: no usable MSI-X capability\n", v->name);
            set_status(v, ST_FAILED);
            return BLK_ENODEV;
        }
        mmio_write16(v->common + CC_MSIX, NO_VECTOR);
    }
    for (int i = 0; i < nq; i++) {
        /* Without indirect descriptors a request needs segs + 2 ring slots. */
        uint16_t size = (uint16_t)qs;
        int slots = has(v, F_INDIRECT) ? size : size / 2;
        if (slots > 128) slots = 128;
        int r = setup_queue(v, i, size, slots);
        if (r) {
            set_status(v, ST_FAILED);
            return r;
        }
        /* A chain, indirect table entries included, may not be longer
         * than the queue (§2.7.5.3.1): header + segments + status. */
        if (segs > (uint32_t)v->q[i].size - 2)
            segs = v->q[i].size - 2;
        per_q_slots += v->q[i].nslots;
    }
    v->nq = nq;
    /* Step 8: DRIVER_OK. */
    set_status(v, ST_DRIVER_OK);

    uint32_t bs = has(v, F_BLK_SIZE) ? cfg32(v, BC_BLK_SIZE) : 512;
    if (bs < 512 || bs > 4096 || (bs & (bs - 1)))
        bs = 512;
    v->dev = (struct blkdev){
        .name = v->name,
        .sector_size = bs,
        .capacity = cfg64(v, BC_CAPACITY) / (bs / 512),
        .write_cache = has(v, F_CONFIG_WCE) ? cfg8(v, BC_WRITEBACK) != 0
                     : has(v, F_FLUSH) ? 1 : 0,
        .caps = BLK_CAP_QUEUED | (has(v, F_FLUSH) ? BLK_CAP_FLUSH : 0) |
                (has(v, F_DISCARD) ? BLK_CAP_DISCARD : 0) |
                (has(v, F_WRITE_ZEROES) ? BLK_CAP_WRITE_ZEROES : 0) |
                (has(v, F_CONFIG_WCE) ? BLK_CAP_WCE_TOGGLE : 0),
        .queue_depth = per_q_slots,
        .max_sectors = 65535,
        .max_segs = segs,
        .dma_align = 1,
        .set_write_cache = vblk_set_write_cache,
        .submit = vblk_submit,
        .poll = vblk_poll,
    };
    if (has(v, F_DISCARD)) {
        uint32_t m = cfg32(v, BC_MAX_DISCARD) / (bs / 512);
        if (m && m < v->dev.max_sectors) v->dev.max_sectors = m;
    }
    if (has(v, F_WRITE_ZEROES)) {
        uint32_t m = cfg32(v, BC_MAX_WZ) / (bs / 512);
        if (m && m < v->dev.max_sectors) v->dev.max_sectors = m;
    }
    strlcpy(v->dev.model, "virtio-blk", sizeof(v->dev.model));
    read_serial(v);
    if (has(v, F_RO))
        printf("%s: read-only\n", v->name);
    *out = &v->dev;
    return 0;
}

BLKDEV_DRIVER("virtio", virtio_blk_probe);
