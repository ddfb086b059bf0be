/* What Linux does while it sizes a device's BARs: turn the function's memory and
 * I/O decode off and on again with 16-bit writes to its COMMAND register (config
 * mechanism #1, 0xCF8/0xCFC), which takes its BARs out of the MMIO window and puts
 * them back.  The function is 00:02.0 (devfn 0x10: the first virtio-blk).  Exits 0
 * after 100 rounds. */
#include "prologue.S"
body:
  mov $100, %ecx
1: mov $0xCF8, %dx
  mov $0x80001004, %eax             /* bus 0, devfn 0x10, register 0x04 (COMMAND) */
  out %eax, %dx
  mov $0xCFC, %dx
  mov $0x0004, %ax                  /* bus master only: decode off */
  out %ax, %dx
  mov $0x0007, %ax                  /* I/O, memory, bus master */
  out %ax, %dx
  dec %ecx
  jnz 1b
  mov $0, %al
  jmp guest_exit
