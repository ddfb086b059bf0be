/* Port-I/O string and single transfers while the device keeps asking the CPU to
 * stop: `rep insw` of 20000 words from port 0x520 into a buffer, then 100000
 * single `inw`; every word must be the device's next counter value.  Then
 * `rep outsw` of the buffer back to port 0x520 (the device checks the order).
 * Exit 0 when every value read was in sequence, else 1. */
#include "prologue.S"
body:
  mov $0x520, %dx
  lea buf(%rip), %rdi
  mov $20000, %ecx
  cld
  rep insw
  lea buf(%rip), %rsi           /* buf[i] must be (i + 1) & 0xffff */
  mov $20000, %ecx
  mov $1, %ebx
1: movzwl (%rsi), %eax
  cmp %bx, %ax
  jne fail
  add $2, %rsi
  inc %ebx
  dec %ecx
  jnz 1b
  /* single inw continuing the sequence, as a polling loop that keeps RCX/RSI/RDI
   * unchanged (counters in r8/r9): a completed IN must not be taken for a replay */
  mov %rbx, %r8
  mov $10000, %r9
2: in %dx, %ax
  cmp %r8w, %ax
  jne fail
  inc %r8
  dec %r9
  jnz 2b
  lea buf(%rip), %rsi           /* rep outsw: the device checks 1, 2, 3 ... */
  mov $20000, %ecx
  rep outsw
  mov $0, %al
  jmp guest_exit
fail:
  mov $1, %al
  jmp guest_exit
.section .bss
.align 16
buf: .space 40000
