/* PCI configuration access (mechanism #1) and enumeration.
 *
 * Firmware (SeaBIOS under QEMU, blockbed's firmware step) has assigned the
 * BARs before the guest starts; guests read them and never assume
 * addresses.  pci_scan() runs once, lazily, and records every function
 * on bus 0 and behind PCI-to-PCI bridges. */
#ifndef GUEST_PCI_H
#define GUEST_PCI_H

#include <stdint.h>

/* Configuration space header offsets (PCI Local Bus 3.0 §6.1). */
#define PCI_VENDOR_ID       0x00
#define PCI_DEVICE_ID       0x02
#define PCI_COMMAND         0x04
#define PCI_STATUS          0x06
#define PCI_REVISION        0x08
#define PCI_PROG_IF         0x09
#define PCI_SUBCLASS        0x0A
#define PCI_CLASS           0x0B
#define PCI_HEADER_TYPE     0x0E
#define PCI_BAR0            0x10
#define PCI_SECONDARY_BUS   0x19    /* type 1 (bridge) header */
#define PCI_SUBSYS_VENDOR   0x2C
#define PCI_SUBSYS_ID       0x2E
#define PCI_CAP_PTR         0x34
#define PCI_INTERRUPT_LINE  0x3C
#define PCI_INTERRUPT_PIN   0x3D

#define PCI_CMD_IO          0x0001  /* respond to I/O space accesses */
#define PCI_CMD_MEM         0x0002  /* respond to memory space accesses */
#define PCI_CMD_MASTER      0x0004  /* may act as bus master (DMA) */
#define PCI_CMD_INTX_DISABLE 0x0400
#define PCI_STATUS_CAP_LIST 0x0010

/* Capability IDs (PCI Local Bus 3.0 Appendix H). */
#define PCI_CAP_ID_MSI      0x05
#define PCI_CAP_ID_VNDR     0x09    /* vendor specific (virtio uses it) */
#define PCI_CAP_ID_EXP      0x10
#define PCI_CAP_ID_MSIX     0x11
#define PCI_CAP_ID_SATA     0x12

enum pci_bar_type { PCI_BAR_NONE, PCI_BAR_IO, PCI_BAR_MEM32, PCI_BAR_MEM64 };

struct pci_bar {
    enum pci_bar_type type;
    int prefetch;
    uint64_t addr;                  /* I/O port or physical address */
    uint64_t size;
};

struct pci_dev {
    uint8_t bus, dev, fn;
    uint16_t vendor, device;
    uint8_t class, subclass, prog_if, revision;
    uint8_t header_type;            /* without the multifunction bit */
    uint8_t irq_line, irq_pin;
    struct pci_bar bar[6];          /* a 64-bit BAR fills bar[i], bar[i+1] is NONE */
};

uint8_t  pci_cfg_read8(const struct pci_dev *d, uint8_t off);
uint16_t pci_cfg_read16(const struct pci_dev *d, uint8_t off);
uint32_t pci_cfg_read32(const struct pci_dev *d, uint8_t off);
void pci_cfg_write8(const struct pci_dev *d, uint8_t off, uint8_t v);
void pci_cfg_write16(const struct pci_dev *d, uint8_t off, uint16_t v);
void pci_cfg_write32(const struct pci_dev *d, uint8_t off, uint32_t v);

/* Raw access by address, for enumeration. */
uint32_t pci_conf_read32(uint8_t bus, uint8_t dev, uint8_t fn, uint8_t off);
void pci_conf_write32(uint8_t bus, uint8_t dev, uint8_t fn, uint8_t off, uint32_t v);

void pci_scan(void);
int pci_count(void);
struct pci_dev *pci_get(int i);
/* The index-th function (0-based, in bus/device/function order) with this
 * vendor and device ID; 0xFFFF matches any.  NULL if there is none. */
struct pci_dev *pci_find(uint16_t vendor, uint16_t device, int index);
/* The same by class code; prog_if -1 matches any. */
struct pci_dev *pci_find_class(uint8_t class, uint8_t subclass, int prog_if, int index);
/* Set (never clear) the I/O, memory and bus-master enables. */
void pci_enable(struct pci_dev *d, int io, int mem, int busmaster);
/* Config offset of the first capability with this ID, 0 if none. */
uint8_t pci_find_cap(const struct pci_dev *d, uint8_t id);
/* Config offset of the next capability with this ID after `after`. */
uint8_t pci_find_next_cap(const struct pci_dev *d, uint8_t after, uint8_t id);

/* Program MSI (PCI 3.0 §6.8.1) to deliver `vector` to the local APIC of
 * CPU 0 (address 0xFEE00000, fixed delivery, edge).  Returns 0, or -1
 * without an MSI capability. */
int pci_msi_enable(struct pci_dev *d, uint8_t vector);
/* Program MSI-X table entry `entry` for `vector` and enable MSI-X
 * (PCI 3.0 §6.8.2); the table BAR must be a memory BAR.  Returns 0 or -1. */
int pci_msix_enable(struct pci_dev *d, unsigned entry, uint8_t vector);

const char *pci_bar_type_name(enum pci_bar_type t);

#endif
