/* Register effects before an MMIO write in the same translation block must happen
 * once even when the device asks the CPU to stop inside the write (an interrupt
 * kick): the loop adds 3 to EBX, derives the written value from it, writes it to
 * the test device at 0xE0000000 and checks at the end that EBX = 3 * iterations.
 * Exit 0 if so, 1 if EBX is wrong (an instruction before the write ran twice). */
#include "prologue.S"
body:
  mov $0xE0000000, %esi
  xor %ebx, %ebx
  mov $100000, %ecx
1: add $3, %ebx
  mov %ebx, %edi
  shl $1, %edi
  mov %edi, (%rsi)
  dec %ecx
  jnz 1b
  cmp $300000, %ebx
  jne 2f
  mov $0, %al
  jmp guest_exit
2: mov $1, %al
  jmp guest_exit
