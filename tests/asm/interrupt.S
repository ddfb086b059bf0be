/* Installs an IDT with a handler at vector 0x40, enables interrupts, asks
 * the test device (BAR0 address passed in the first dword of `devbar`, which
 * the test patches in RAM... simpler: a fixed I/O port 0x510 handled by the
 * test) to raise vector 0x40, halts, and after the handler ran exits with the
 * number of interrupts taken. */
#include "prologue.S"
body:
  lea idt(%rip), %rdi
  lea handler(%rip), %rax
  mov %ax, 0x40*16(%rdi)            /* offset 15:0 */
  movw $0x08, 0x40*16+2(%rdi)       /* selector */
  movb $0, 0x40*16+4(%rdi)          /* IST 0 */
  movb $0x8E, 0x40*16+5(%rdi)       /* present, DPL0, 64-bit interrupt gate */
  shr $16, %rax
  mov %ax, 0x40*16+6(%rdi)          /* offset 31:16 */
  shr $16, %rax
  mov %eax, 0x40*16+8(%rdi)         /* offset 63:32 */
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
