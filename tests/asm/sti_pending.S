/* An interrupt raised while IF=0 is taken right after STI, not at the next exit.
 * With interrupts disabled the guest sends itself vector 0x40 (local APIC ICR,
 * an MMIO exit), then STI and a loop of 1,000,000 register-only iterations (no
 * exit at all).  The handler records ECX.  Exit 0 if the handler ran within the
 * first 1000 iterations (ECX >= 999000), 1 if it ran late, 2 if never. */
#include "prologue.S"
body:
  lea idt(%rip), %rdi
  mov $0x40, %esi
  lea handler(%rip), %rax
  call idt_gate
  lidt idtr(%rip)
  cli
  mov $0xFEE000F0, %eax             /* SVR: APIC software-enabled */
  movl $0x1FF, (%rax)
  mov $0xFEE00300, %eax             /* ICR: shorthand self, fixed, vector 0x40 */
  movl $0x40040, (%rax)
  mov $1000000, %ecx
  sti
1: dec %ecx
  jnz 1b
  mov seen(%rip), %eax
  cmp $0xFFFFFFFF, %eax
  je 3f
  cmp $999000, %eax
  jb 2f
  mov $0, %al
  jmp guest_exit
2: mov $1, %al
  jmp guest_exit
3: mov $2, %al
  jmp guest_exit
handler:
  push %rax
  mov %ecx, seen(%rip)
  mov $0xFEE000B0, %eax             /* EOI */
  movl $0, (%rax)
  pop %rax
  iretq
.section .data
.align 16
idtr: .word 256*16-1
  .long idt, 0
seen: .long 0xFFFFFFFF
.section .bss
.align 16
idt: .space 256*16
.section .text
