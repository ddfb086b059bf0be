/* Interrupts: a 64-bit IDT, handlers in C, local APIC EOI.
 *
 * Guests poll by default; interrupts are optional.  The IDT is loaded at
 * boot so CPU exceptions print a message and exit(EXCEPTION_EXIT_CODE)
 * under QEMU (blockbed's machine reports exceptions itself instead of
 * delivering them; do not rely on these handlers).
 *
 * Interrupt sources: MSI/MSI-X (pci_msi_enable/pci_msix_enable) deliver a
 * vector to the local APIC.  irq_install() for a vector >= 32 enables the
 * local APIC (spurious-vector register, SDM Vol. 3A §10.9) and masks the
 * legacy 8259 PICs, which SeaBIOS leaves programmed with the timer at
 * vector 8 (that would look like a double fault).
 *
 * Handlers run with interrupts off; the dispatcher sends the local APIC
 * EOI after the handler for vectors 32..254 — handlers must not.
 *
 * Waiting without a race:
 *     irq_disable();
 *     while (!done) { wait_for_interrupt(); irq_disable(); }
 *     irq_enable();   // if wanted
 * or, bounded (a lost interrupt must not hang the guest):
 *     for (n = 0; !done && n < LIMIT; n++) irq_window();
 * wait_for_interrupt() is "sti; hlt": the interrupt shadow of sti keeps an
 * interrupt from landing between the two (SDM Vol. 2B, STI). */
#ifndef GUEST_IRQ_H
#define GUEST_IRQ_H

#include <stdint.h>

#define EXCEPTION_EXIT_CODE 0x7F
#define LAPIC_BASE          0xFEE00000u
#define LAPIC_ID            0x020
#define LAPIC_EOI           0x0B0
#define LAPIC_SVR           0x0F0
#define SPURIOUS_VECTOR     0xFF

/* The register frame the entry stubs build (isr.S). */
struct irq_frame {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
    uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
    uint64_t vector, error;             /* error is 0 for vectors without one */
    uint64_t rip, cs, rflags, rsp, ss;  /* pushed by the CPU */
};

typedef void (*irq_handler_t)(unsigned vector);

void idt_init(void);
/* Install (or with NULL remove) the handler of a vector (0..255). */
void irq_install(uint8_t vector, irq_handler_t handler);
void lapic_enable(void);
void lapic_eoi(void);
uint32_t lapic_id(void);
/* I/O APIC (82093AA datasheet §3.2) at 0xFEC00000, for line interrupts:
 * route input `gsi` to `vector` on CPU 0, fixed delivery, active high;
 * `level` selects level trigger (PCI INTx) over edge (ISA, e.g. IDE's IRQ
 * 14/15).  On QEMU's pc machine ISA IRQ n (n != 0) is I/O APIC input n,
 * and a PCI function's INTx arrives on the ISA IRQ the firmware wrote to
 * its interrupt line register (pci_dev.irq_line).  A level handler must
 * make the device drop the line before returning (the EOI follows). */
#define IOAPIC_BASE         0xFEC00000u
void ioapic_route(unsigned gsi, uint8_t vector, int level);
void ioapic_mask(unsigned gsi);
/* Number of interrupts delivered on a vector since boot. */
uint64_t irq_count(uint8_t vector);

static inline void irq_enable(void)  { __asm__ volatile("sti" ::: "memory"); }
static inline void irq_disable(void) { __asm__ volatile("cli" ::: "memory"); }
static inline void wait_for_interrupt(void) { __asm__ volatile("sti; hlt" ::: "memory"); }
/* Let pending interrupts in, for polling loops that run with interrupts
 * off: the instruction after sti is in its interrupt shadow, and it must
 * be a plain one — QEMU's TCG does not take an interrupt after a "pause"
 * in the shadow before the next cli. */
static inline void irq_window(void) { __asm__ volatile("sti; nop; cli" ::: "memory"); }

#endif
