/* 3,000,000 32-bit MMIO writes to 0xE0000000 and as many port writes to
 * 0x510, then exit 0: the test device counts them; each must arrive once. */
#include "prologue.S"
body:
  mov $3000000, %ecx
  mov $0xE0000000, %ebx
  mov $0x510, %dx
1: movl %ecx, (%rbx)
  out %eax, %dx
  dec %ecx
  jnz 1b
  mov $0, %al
  jmp guest_exit
