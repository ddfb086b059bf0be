/* Program lifecycle: entry point contract and exit. */
#ifndef GUEST_SYS_H
#define GUEST_SYS_H

#include <stdint.h>

#define MB_BOOT_MAGIC   0x2BADB002  /* EAX from a multiboot loader */

/* Every program defines kmain.  entry.S reaches it in 64-bit mode with the
 * library initialised (console, IDT, multiboot info, command line, DMA
 * pool); its return value becomes the exit code. */
int kmain(uint32_t magic, uint32_t mbinfo);

/* Exit through QEMU's isa-debug-exit device (-device isa-debug-exit,
 * iobase=0xf4,iosize=4): a byte written to port 0xF4 ends the emulator with
 * process status (code << 1) | 1, so exit(0) gives status 1.  Without the
 * device the CPU halts forever with interrupts off. */
#define DEBUG_EXIT_PORT 0xF4
void exit(int code) __attribute__((noreturn));

/* Stop for good: cli; hlt in a loop. */
void halt(void) __attribute__((noreturn));

#endif
