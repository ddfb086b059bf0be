/* PCI configuration mechanism #1 and BAR decoding.
 *
 * Mechanism #1 (PCI Local Bus 3.0 §3.2.2.3.2): write
 *   0x80000000 | bus << 16 | device << 11 | function << 8 | (offset & 0xFC)
 * to CONFIG_ADDRESS (port 0xCF8, a 32-bit access), then access the dword
 * through CONFIG_DATA (0xCFC..0xCFF; byte/word accesses at 0xCFC + (offset
 * & 3) reach the matching bytes).  A read of a vendor ID 0xFFFF means no
 * function is present (§6.2.1). */
#include "pci.h"
#include "console.h"
#include "io.h"
#include "string.h"

#define CONFIG_ADDRESS  0xCF8
#define CONFIG_DATA     0xCFC
#define PCI_MAX_DEVS    64

static struct pci_dev devs[PCI_MAX_DEVS];
static int ndevs, scanned;

static void select(uint8_t bus, uint8_t dev, uint8_t fn, uint8_t off)
{
    outl(CONFIG_ADDRESS, 0x80000000u | (uint32_t)bus << 16 | (uint32_t)(dev & 31) << 11 |
                         (uint32_t)(fn & 7) << 8 | (off & 0xFC));
}

uint32_t pci_conf_read32(uint8_t bus, uint8_t dev, uint8_t fn, uint8_t off)
{
    select(bus, dev, fn, off);
    return inl(CONFIG_DATA);
}

void pci_conf_write32(uint8_t bus, uint8_t dev, uint8_t fn, uint8_t off, uint32_t v)
{
    select(bus, dev, fn, off);
    outl(CONFIG_DATA, v);
}

uint8_t pci_cfg_read8(const struct pci_dev *d, uint8_t off)
{
    select(d->bus, d->dev, d->fn, off);
    return inb(CONFIG_DATA + (off & 3));
}

uint16_t pci_cfg_read16(const struct pci_dev *d, uint8_t off)
{
    select(d->bus, d->dev, d->fn, off);
    return inw(CONFIG_DATA + (off & 2));
}

uint32_t pci_cfg_read32(const struct pci_dev *d, uint8_t off)
{
    return pci_conf_read32(d->bus, d->dev, d->fn, off);
}

void pci_cfg_write8(const struct pci_dev *d, uint8_t off, uint8_t v)
{
    select(d->bus, d->dev, d->fn, off);
    outb(CONFIG_DATA + (off & 3), v);
}

void pci_cfg_write16(const struct pci_dev *d, uint8_t off, uint16_t v)
{
    select(d->bus, d->dev, d->fn, off);
    outw(CONFIG_DATA + (off & 2), v);
}

void pci_cfg_write32(const struct pci_dev *d, uint8_t off, uint32_t v)
{
    pci_conf_write32(d->bus, d->dev, d->fn, off, v);
}

/* Decode and size the BARs (PCI Local Bus 3.0 §6.2.5.1).  Bit 0 tells I/O
 * (1) from memory (0); for memory, bits 2:1 are the type (00 = 32-bit,
 * 10 = 64-bit, the next BAR holding the upper half) and bit 3 is
 * "prefetchable".  The size is found the way firmware does it: write all
 * ones, read back (the device hard-wires the low address bits to zero),
 * restore the original value.  Decoding is disabled in the command
 * register meanwhile, so the half-written BAR never claims addresses. */
static void decode_bars(struct pci_dev *d, int nbars)
{
    uint16_t cmd = pci_cfg_read16(d, PCI_COMMAND);
    pci_cfg_write16(d, PCI_COMMAND, cmd & ~(PCI_CMD_IO | PCI_CMD_MEM));

    for (int i = 0; i < nbars; i++) {
        uint8_t off = PCI_BAR0 + 4 * i;
        uint32_t orig = pci_cfg_read32(d, off);
        pci_cfg_write32(d, off, 0xFFFFFFFF);
        uint32_t probe = pci_cfg_read32(d, off);
        pci_cfg_write32(d, off, orig);
        struct pci_bar *b = &d->bar[i];

        if (probe == 0 || probe == 0xFFFFFFFF)      /* not implemented */
            continue;
        if (orig & 1) {                             /* I/O space */
            uint32_t mask = probe & ~3u;
            if (!(mask & 0xFFFF0000))               /* 16-bit decoders */
                mask |= 0xFFFF0000;
            b->type = PCI_BAR_IO;
            b->addr = orig & ~3u;
            b->size = (uint32_t)(~mask + 1);
            continue;
        }
        b->prefetch = (orig >> 3) & 1;
        uint64_t mask = probe & ~0xFu;
        b->addr = orig & ~0xFu;
        if (((orig >> 1) & 3) == 2 && i + 1 < nbars) {   /* 64-bit */
            uint8_t hi = off + 4;
            uint32_t orig_hi = pci_cfg_read32(d, hi);
            pci_cfg_write32(d, hi, 0xFFFFFFFF);
            uint32_t probe_hi = pci_cfg_read32(d, hi);
            pci_cfg_write32(d, hi, orig_hi);
            mask |= (uint64_t)probe_hi << 32;
            b->addr |= (uint64_t)orig_hi << 32;
            b->type = PCI_BAR_MEM64;
            i++;                                    /* upper half consumed */
        } else {
            mask |= 0xFFFFFFFF00000000ull;
            b->type = PCI_BAR_MEM32;
        }
        b->size = ~mask + 1;
    }
    pci_cfg_write16(d, PCI_COMMAND, cmd);
}

static void scan_bus(uint8_t bus, int depth);

static void add_function(uint8_t bus, uint8_t dev, uint8_t fn, uint32_t id, int depth)
{
    if (ndevs == PCI_MAX_DEVS) {
        printf("pci: more than %d functions, ignoring %02x:%02x.%x\n",
               PCI_MAX_DEVS, bus, dev, fn);
        return;
    }
    struct pci_dev *d = &devs[ndevs++];
    memset(d, 0, sizeof(*d));
    d->bus = bus;
    d->dev = dev;
    d->fn = fn;
    d->vendor = id & 0xFFFF;
    d->device = id >> 16;
    uint32_t cls = pci_cfg_read32(d, PCI_REVISION);
    d->revision = cls & 0xFF;
    d->prog_if = cls >> 8;
    d->subclass = cls >> 16;
    d->class = cls >> 24;
    d->header_type = pci_cfg_read8(d, PCI_HEADER_TYPE) & 0x7F;
    d->irq_line = pci_cfg_read8(d, PCI_INTERRUPT_LINE);
    d->irq_pin = pci_cfg_read8(d, PCI_INTERRUPT_PIN);

    if (d->header_type == 0) {
        decode_bars(d, 6);
    } else if (d->header_type == 1) {               /* PCI-to-PCI bridge */
        decode_bars(d, 2);
        uint8_t sec = pci_cfg_read8(d, PCI_SECONDARY_BUS);
        if (sec > bus && depth < 8)                 /* firmware numbered it */
            scan_bus(sec, depth + 1);
    }
}

/* Walk the 32 devices of a bus; function 0 tells through bit 7 of the
 * header type whether functions 1-7 exist (PCI 3.0 §6.2.1). */
static void scan_bus(uint8_t bus, int depth)
{
    for (uint8_t dev = 0; dev < 32; dev++) {
        uint32_t id = pci_conf_read32(bus, dev, 0, PCI_VENDOR_ID);
        if ((id & 0xFFFF) == 0xFFFF)
            continue;
        select(bus, dev, 0, PCI_HEADER_TYPE);
        int multi = inb(CONFIG_DATA + (PCI_HEADER_TYPE & 3)) & 0x80;
        add_function(bus, dev, 0, id, depth);
        for (uint8_t fn = 1; multi && fn < 8; fn++) {
            id = pci_conf_read32(bus, dev, fn, PCI_VENDOR_ID);
            if ((id & 0xFFFF) != 0xFFFF)
                add_function(bus, dev, fn, id, depth);
        }
    }
}

void pci_scan(void)
{
    if (scanned)
        return;
    scanned = 1;
    scan_bus(0, 0);
}

int pci_count(void)
{
    pci_scan();
    return ndevs;
}

struct pci_dev *pci_get(int i)
{
    pci_scan();
    return i >= 0 && i < ndevs ? &devs[i] : NULL;
}

struct pci_dev *pci_find(uint16_t vendor, uint16_t device, int index)
{
    pci_scan();
    for (int i = 0; i < ndevs; i++)
        if ((vendor == 0xFFFF || devs[i].vendor == vendor) &&
            (device == 0xFFFF || devs[i].device == device) && index-- == 0)
            return &devs[i];
    return NULL;
}

struct pci_dev *pci_find_class(uint8_t class, uint8_t subclass, int prog_if, int index)
{
    pci_scan();
    for (int i = 0; i < ndevs; i++)
        if (devs[i].class == class && devs[i].subclass == subclass &&
            (prog_if < 0 || devs[i].prog_if == prog_if) && index-- == 0)
            return &devs[i];
    return NULL;
}

void pci_enable(struct pci_dev *d, int io, int mem, int busmaster)
{
    uint16_t cmd = pci_cfg_read16(d, PCI_COMMAND);
    if (io) cmd |= PCI_CMD_IO;
    if (mem) cmd |= PCI_CMD_MEM;
    if (busmaster) cmd |= PCI_CMD_MASTER;
    pci_cfg_write16(d, PCI_COMMAND, cmd);
}

/* Capability list (PCI 3.0 §6.7): status bit 4 says it exists; 0x34 points
 * to the first entry; each entry is {id, next}.  The low two bits of the
 * pointers are reserved and masked.  A bounded walk survives a looping
 * list from a broken device. */
uint8_t pci_find_next_cap(const struct pci_dev *d, uint8_t after, uint8_t id)
{
    if (!(pci_cfg_read16(d, PCI_STATUS) & PCI_STATUS_CAP_LIST))
        return 0;
    uint8_t ptr = after ? pci_cfg_read8(d, after + 1) : pci_cfg_read8(d, PCI_CAP_PTR);
    for (int n = 0; n < 48 && (ptr & ~3) >= 0x40; n++) {
        ptr &= ~3;
        if (pci_cfg_read8(d, ptr) == id)
            return ptr;
        ptr = pci_cfg_read8(d, ptr + 1);
    }
    return 0;
}

uint8_t pci_find_cap(const struct pci_dev *d, uint8_t id)
{
    return pci_find_next_cap(d, 0, id);
}

#define LAPIC_MSI_ADDR 0xFEE00000u  /* SDM Vol. 3A §10.11.1: dest APIC ID 0 */

int pci_msi_enable(struct pci_dev *d, uint8_t vector)
{
    uint8_t cap = pci_find_cap(d, PCI_CAP_ID_MSI);
    if (!cap)
        return -1;
    /* Message control (cap+2): bit 7 = 64-bit address capable; the data
     * register follows the address (cap+8, or cap+12 when 64-bit). */
    uint16_t ctl = pci_cfg_read16(d, cap + 2);
    pci_cfg_write32(d, cap + 4, LAPIC_MSI_ADDR);
    if (ctl & 0x80) {
        pci_cfg_write32(d, cap + 8, 0);
        pci_cfg_write16(d, cap + 12, vector);   /* fixed delivery, edge */
    } else {
        pci_cfg_write16(d, cap + 8, vector);
    }
    ctl &= ~0x70;                               /* one message */
    pci_cfg_write16(d, cap + 2, ctl | 1);       /* MSI enable */
    return 0;
}

int pci_msix_enable(struct pci_dev *d, unsigned entry, uint8_t vector)
{
    uint8_t cap = pci_find_cap(d, PCI_CAP_ID_MSIX);
    if (!cap)
        return -1;
    uint16_t ctl = pci_cfg_read16(d, cap + 2);
    if (entry > (ctl & 0x7FFu))                 /* table size is N-1 */
        return -1;
    uint32_t tbl = pci_cfg_read32(d, cap + 4);  /* BIR in bits 2:0 */
    const struct pci_bar *b = &d->bar[tbl & 7];
    if (b->type != PCI_BAR_MEM32 && b->type != PCI_BAR_MEM64)
        return -1;
    uintptr_t e = b->addr + (tbl & ~7u) + 16 * entry;
    /* Function mask while the table entry changes (§6.8.2.3). */
    pci_cfg_write16(d, cap + 2, ctl | 0x4000 | 0x8000);
    mmio_write32(e + 0, LAPIC_MSI_ADDR);        /* message address */
    mmio_write32(e + 4, 0);                     /* upper address */
    mmio_write32(e + 8, vector);                /* message data */
    mmio_write32(e + 12, 0);                    /* vector control: unmasked */
    pci_cfg_write16(d, cap + 2, (ctl | 0x8000) & ~0x4000);
    return 0;
}

const char *pci_bar_type_name(enum pci_bar_type t)
{
    switch (t) {
    case PCI_BAR_IO: return "io";
    case PCI_BAR_MEM32: return "mem32";
    case PCI_BAR_MEM64: return "mem64";
    default: return "none";
    }
}
