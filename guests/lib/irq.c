#include "irq.h"
#include "asm.h"
#include "console.h"
#include "io.h"
#include "sys.h"

/* 64-bit interrupt gate (SDM Vol. 3A §6.14.1, Figure 6-8). */
struct idt_gate {
    uint16_t off_lo, selector;
    uint8_t ist, type_attr;             /* 0x8E: present, DPL 0, interrupt gate */
    uint16_t off_mid;
    uint32_t off_hi, reserved;
} __attribute__((packed));

static struct idt_gate idt[256] __attribute__((aligned(16)));
static irq_handler_t handlers[256];
static uint64_t counts[256];
static int lapic_on;
extern const uint64_t isr_table[256];

void irq_dispatch(struct irq_frame *f);

static const char *const exc_names[32] = {
    "divide error", "debug", "NMI", "breakpoint", "overflow", "bound range",
    "invalid opcode", "device not available", "double fault",
    "coprocessor segment overrun", "invalid TSS", "segment not present",
    "stack fault", "general protection", "page fault", "reserved",
    "x87 floating point", "alignment check", "machine check",
    "SIMD floating point", "virtualization", "control protection",
};

void idt_init(void)
{
    for (int v = 0; v < 256; v++) {
        uint64_t a = isr_table[v];
        idt[v] = (struct idt_gate){
            .off_lo = a & 0xFFFF, .selector = GDT_CODE64, .ist = 0,
            .type_attr = 0x8E, .off_mid = (a >> 16) & 0xFFFF, .off_hi = a >> 32,
        };
    }
    struct { uint16_t limit; uint64_t base; } __attribute__((packed)) idtr = {
        sizeof(idt) - 1, (uintptr_t)idt,
    };
    __asm__ volatile("lidt %0" :: "m"(idtr));
}

void lapic_enable(void)
{
    if (lapic_on)
        return;
    /* Mask both 8259 PICs (OCW1 = all ones on the data ports): their
     * vectors as programmed by the BIOS overlap the exceptions. */
    outb(0x21, 0xFF);
    outb(0xA1, 0xFF);
    /* APIC software enable (SVR bit 8) with the spurious vector; an
     * APIC that is software-disabled does not accept fixed interrupts. */
    mmio_write32(LAPIC_BASE + LAPIC_SVR, 0x100 | SPURIOUS_VECTOR);
    lapic_on = 1;
}

void lapic_eoi(void)
{
    mmio_write32(LAPIC_BASE + LAPIC_EOI, 0);
}

uint32_t lapic_id(void)
{
    return mmio_read32(LAPIC_BASE + LAPIC_ID) >> 24;
}

/* I/O APIC: IOREGSEL at +0x00 selects a register, IOWIN at +0x10
 * accesses it; redirection entry n is registers 0x10 + 2n (low: vector
 * 7:0, delivery mode 10:8 = 000 fixed, destination mode 11 = 0 physical,
 * polarity 13 = 0 high, trigger 15, mask 16) and 0x11 + 2n (high:
 * destination APIC ID in 31:24). */
static void ioapic_write(uint32_t reg, uint32_t v)
{
    mmio_write32(IOAPIC_BASE + 0x00, reg);
    mmio_write32(IOAPIC_BASE + 0x10, v);
}

void ioapic_route(unsigned gsi, uint8_t vector, int level)
{
    lapic_enable();
    ioapic_write(0x10 + 2 * gsi, 1u << 16);             /* masked while changing */
    ioapic_write(0x11 + 2 * gsi, 0);                    /* destination: APIC ID 0 */
    ioapic_write(0x10 + 2 * gsi, vector | (level ? 1u << 15 : 0));
}

void ioapic_mask(unsigned gsi)
{
    ioapic_write(0x10 + 2 * gsi, 1u << 16);
}

void irq_install(uint8_t vector, irq_handler_t handler)
{
    if (vector >= 32 && handler)
        lapic_enable();
    handlers[vector] = handler;
}

uint64_t irq_count(uint8_t vector) { return counts[vector]; }

void irq_dispatch(struct irq_frame *f)
{
    unsigned v = f->vector & 0xFF;
    counts[v]++;
    if (handlers[v]) {
        handlers[v](v);
    } else if (v < 32) {
        uint64_t cr2;
        __asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
        printf("\nexception %u (%s) error=0x%lx rip=0x%lx rsp=0x%lx cr2=0x%lx\n",
               v, exc_names[v] ? exc_names[v] : "reserved", f->error, f->rip,
               f->rsp, cr2);
        exit(EXCEPTION_EXIT_CODE);
    } else if (v != SPURIOUS_VECTOR) {
        printf("irq: unexpected interrupt on vector %u\n", v);
    }
    if (v >= 32 && v != SPURIOUS_VECTOR && lapic_on)
        lapic_eoi();
}
