/* irqtest: device interrupts end to end, with QEMU's "edu" test device
 * (-device edu; docs/specs/edu.txt in QEMU): MSI through the local APIC,
 * then INTx through the I/O APIC, both into IDT handlers.
 *
 * edu registers (BAR0): 0x24 interrupt status, 0x60 raise (ORs the value
 * into the status and interrupts), 0x64 acknowledge (clears bits; with
 * INTx the line drops when the status becomes 0).
 *
 * Output: "irqtest: msi ok" / "irqtest: intx ok" or a FAIL line; exit code
 * 0 when both work, 2 without the device. */
#include "guest.h"

#define EDU_STATUS  0x24
#define EDU_RAISE   0x60
#define EDU_ACK     0x64
#define VEC_MSI     0x50
#define VEC_INTX    0x51
#define SPINS       1000000

static uintptr_t edu;
static volatile uint32_t seen_status;
static volatile int fired;

static void on_edu(unsigned vector)
{
    (void)vector;
    seen_status = mmio_read32(edu + EDU_STATUS);
    mmio_write32(edu + EDU_ACK, seen_status);   /* drops INTx before the EOI */
    fired++;
}

/* Let a pending interrupt in, bounded: a missing one fails, never hangs. */
static int await_irq(int want)
{
    for (int i = 0; i < SPINS && fired < want; i++)
        irq_window();
    return fired >= want;
}

static int check(const char *what, uint8_t vector, uint32_t value)
{
    int before = fired;
    uint64_t count = irq_count(vector);
    irq_disable();
    mmio_write32(edu + EDU_RAISE, value);
    if (!await_irq(before + 1)) {
        printf("irqtest: FAIL %s: no interrupt on vector 0x%x\n", what, vector);
        return 1;
    }
    /* A second one, waited for with sti;hlt: it is already pending, so
     * the interrupt shadow of sti makes this race-free. */
    mmio_write32(edu + EDU_RAISE, value << 1);
    wait_for_interrupt();
    irq_disable();
    /* Level-triggered INTx must not fire again once acknowledged. */
    await_irq(before + 3);
    if (fired != before + 2 || irq_count(vector) != count + 2 ||
        seen_status != value << 1) {
        printf("irqtest: FAIL %s: fired %d (want 2), status 0x%x\n", what,
               fired - before, seen_status);
        return 1;
    }
    printf("irqtest: %s ok\n", what);
    return 0;
}

int kmain(uint32_t magic, uint32_t mbinfo)
{
    (void)magic, (void)mbinfo;
    struct pci_dev *d = pci_find(0x1234, 0x11E8, 0);
    if (!d || d->bar[0].type != PCI_BAR_MEM32) {
        printf("irqtest: no edu device (-device edu)\n");
        return 2;
    }
    edu = d->bar[0].addr;
    pci_enable(d, 0, 1, 1);    /* MSI is a memory write: needs bus master */
    int fails = 0;

    irq_install(VEC_MSI, on_edu);
    if (pci_msi_enable(d, VEC_MSI) < 0) {
        printf("irqtest: FAIL msi: no MSI capability\n");
        fails++;
    } else {
        fails += check("msi", VEC_MSI, 0x4);
    }

    /* INTx: MSI off again (message control bit 0), line routed by the
     * firmware to ISA IRQ irq_line. */
    uint8_t cap = pci_find_cap(d, PCI_CAP_ID_MSI);
    if (cap)
        pci_cfg_write16(d, cap + 2, pci_cfg_read16(d, cap + 2) & ~1);
    printf("irqtest: intx pin %u irq %u\n", d->irq_pin, d->irq_line);
    irq_install(VEC_INTX, on_edu);
    ioapic_route(d->irq_line, VEC_INTX, 1);
    fails += check("intx", VEC_INTX, 0x10);
    ioapic_mask(d->irq_line);
    return fails;
}
