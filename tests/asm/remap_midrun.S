/* A device that appears in, and then leaves, the MMIO window while the guest runs
 * (as a BAR does when a config-space write enables, then disables, its decode).
 * The guest reads 0xE0000000 (nothing decodes there: all-ones), asks the test's
 * port 0x510 to add a region there, reads again (the region's value, 0x1234), asks
 * the port to remove it, and reads all-ones again.  Exit 0 if all three reads were
 * right, else the number (1-3) of the first wrong one. */
#include "prologue.S"
body:
  mov $0xE0000000, %ebx
  mov $0x510, %dx
  mov (%rbx), %eax
  cmp $0xFFFFFFFF, %eax
  jne 1f
  out %al, %dx                      /* the test's port: map a region at 0xE0000000 */
  mov (%rbx), %eax
  cmp $0x1234, %eax
  jne 2f
  out %al, %dx                      /* ... and unmap it */
  mov (%rbx), %eax
  cmp $0xFFFFFFFF, %eax
  jne 3f
  mov $0, %al
  jmp guest_exit
1: mov $1, %al
  jmp guest_exit
2: mov $2, %al
  jmp guest_exit
3: mov $3, %al
  jmp guest_exit
