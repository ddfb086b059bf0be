/* C runtime start: initialise the library, run the program, exit. */
#include "cmdline.h"
#include "console.h"
#include "dma.h"
#include "io.h"
#include "irq.h"
#include "multiboot.h"
#include "sys.h"

int _cstart(uint32_t magic, uint32_t mbinfo);

int _cstart(uint32_t magic, uint32_t mbinfo)
{
    console_init();
    idt_init();                 /* exceptions print a message and exit */
    mb_init(magic, mbinfo);     /* copy the boot data before anything reuses it */
    cmdline_init(mb_cmdline());
    dma_init();
    return kmain(magic, mbinfo);
}

void halt(void)
{
    for (;;)
        __asm__ volatile("cli; hlt");
}

void exit(int code)
{
    /* isa-debug-exit: QEMU exits with status (code << 1) | 1. */
    outb(DEBUG_EXIT_PORT, (uint8_t)code);
    halt();                     /* no debug-exit device: stop here */
}
