/* Installs an IDT with a handler at vector 0x40, enables interrupts, asks
 * the test device (BAR0 address passed in the first dword of `devbar`, which
 * the test patches in RAM... simpler: a fixed I/O port 0x510 handled by the
 * test) to raise vector 0x40, halts, and after the handler ran exits with the
 * number of interrupts taken. */
#include "prologue.S"
body:
  lea idt(%rip), %rdi
  mov $0x40, %esi
  lea handler(%rip), %rax
  call idt_gate
  lidt idtr(%rip)
  sti
  mov $0x510, %dx
  mov $0x40, %al
  out %al, %dx                      /* test device: raise vector 0x40 later */
2: hlt
  cmpl $0, count(%rip)
  je 2b
  mov $'i', %al
  call putc
  mov count(%rip), %eax
  jmp guest_exit
handler:
  push %rax
  incl count(%rip)
  mov $0xFEE000B0, %eax             /* local APIC EOI */
  movl $0, (%rax)
  pop %rax
  iretq
.section .data
.align 16
idtr: .word 256*16-1
  .long idt, 0
count: .long 0
.section .bss
.align 16
idt: .space 256*16
.section .text
