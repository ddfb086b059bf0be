/* Reads an MMIO address where nothing decodes (all-ones expected), writes to
 * it (dropped), reads an unused port (all-ones), and exits with 0 if all of
 * that held, 1 otherwise. */
#include "prologue.S"
body:
  mov $0xE0001000, %ebx
  movl $0x12345678, (%rbx)
  mov (%rbx), %eax
  cmp $0xFFFFFFFF, %eax
  jne 1f
  mov $0x0510, %dx
  in %dx, %al
  cmp $0xFF, %al
  jne 1f
  mov $0, %al
  jmp guest_exit
1: mov $1, %al
  jmp guest_exit
