/* Flags survive an interrupt taken at RDTSC.  A periodic local APIC timer
 * interrupts a loop whose only exit (on blockbed) is RDTSC, right after a ROR
 * has left CF/OF in the lazily computed form QEMU keeps them in; the loop checks
 * that RFLAGS after RDTSC equals what the same ROR gives without one.  Prints "tsc-flags: Y" after
 * 200 timer interrupts, "tsc-flags: N" at the first mismatch. */
#include "prologue.S"
body:
  mov $0xff, %al                      /* mask the 8259s (SeaBIOS's PIT under QEMU) */
  out %al, $0x21
  out %al, $0xa1
  lea idt(%rip), %rdi                 /* vector 0x40 -> timer_handler */
  mov $0x40, %esi
  lea timer_handler(%rip), %rax
  call idt_gate
  lidt idtr(%rip)
  mov $0xfee00000, %edi
  movl $0x1ff, 0xf0(%rdi)             /* SVR: enable */
  movl $0xb, 0x3e0(%rdi)              /* divide by 1 */
  movl $0x20040, 0x320(%rdi)          /* periodic, vector 0x40 */
  movl $20000, 0x380(%rdi)
  sti
loop:
  andl $0xfffffff9, scratch(%rip)     /* the kernel's sequence before its RDTSC */
  mov seed(%rip), %ebx                /* (choose_random_kstack_offset): the flags */
  ror $5, %ebx                        /* it leaves, computed once without RDTSC */
  pushfq
  pop %r8
  andl $0xfffffff9, scratch(%rip)     /* the same, CF/OF of the ROR kept lazily */
  mov seed(%rip), %ecx
  ror $5, %ecx
  rdtsc                               /* across the exit (the timer fires here) */
  pushfq
  pop %r9
  cmp %r8, %r9
  jne bad
  xor %eax, %ecx
  mov %ecx, seed(%rip)
  cmpl $200, ticks(%rip)
  jb loop
  cli
  mov $'Y', %bl
  jmp report
bad:
  cli
  mov $'N', %bl
report:
  lea msg(%rip), %rsi
1: lodsb
  test %al, %al
  jz 2f
  call putc
  jmp 1b
2: mov %bl, %al
  call putc
  mov $'\n', %al
  call putc
  mov $0, %al
  jmp guest_exit

timer_handler:
  push %rdi
  incl ticks(%rip)
  mov $0xfee00000, %edi
  movl $0, 0xb0(%rdi)                 /* EOI */
  pop %rdi
  iretq

.section .data
msg: .asciz "tsc-flags: "
.align 4
ticks: .long 0
seed: .long 0x12345678
scratch: .long 0xffffffff
.align 16
idtr: .word 256*16-1
  .long idt, 0
.section .bss
.align 4096
idt: .space 4096
