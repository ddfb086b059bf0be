/* hello: the smoke-test guest.  Prints what the machine looks like from
 * inside (memory, command line, PCI functions with their BARs) and exits 0.
 * Under QEMU with isa-debug-exit the process status is then 1.
 *
 * Output (one line each):
 *   blockbed hello guest
 *   mem: <MiB> MiB
 *   arg <key>=<value>                      per command-line argument
 *   pci BB:DD.F VVVV:DDDD class CC.SS.PI   per PCI function
 *     bar N io|mem32|mem64 [prefetch] addr=0x... size=0x...
 *   hello: done */
#include "guest.h"

int kmain(uint32_t magic, uint32_t mbinfo)
{
    (void)mbinfo;
    printf("blockbed hello guest\n");
    if (magic != MB_BOOT_MAGIC)
        printf("warning: not booted by a multiboot loader (eax=0x%x)\n", magic);
    printf("mem: %lu MiB\n", (unsigned long)(mb_ram_bytes() >> 20));
    for (int i = 0; i < arg_count(); i++)
        printf("arg %s=%s\n", arg_key(i), arg_val(i));

    for (int i = 0; i < pci_count(); i++) {
        const struct pci_dev *d = pci_get(i);
        printf("pci %02x:%02x.%x %04x:%04x class %02x.%02x.%02x\n", d->bus, d->dev,
               d->fn, d->vendor, d->device, d->class, d->subclass, d->prog_if);
        for (int b = 0; b < 6; b++) {
            const struct pci_bar *bar = &d->bar[b];
            if (bar->type == PCI_BAR_NONE)
                continue;
            printf("  bar %d %s%s addr=0x%lx size=0x%lx\n", b,
                   pci_bar_type_name(bar->type), bar->prefetch ? " prefetch" : "",
                   bar->addr, bar->size);
        }
    }
    printf("hello: done\n");
    /* wait=1: stay up (halted) so a test can inspect the machine from the
     * outside, e.g. compare with QEMU's "info pci". */
    if (arg_u64("wait", 0))
        halt();
    return 0;
}
