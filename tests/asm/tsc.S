/* RDTSC twice and RDTSCP once; prints the three 64-bit values in hex and
 * exits.  On blockbed the TSC follows the virtual clock, so the output is the
 * same on every run and consecutive reads differ by exactly one tick. */
#include "prologue.S"
body:
  mov $0xC0000103, %ecx          /* TSC_AUX = 0x5a */
  mov $0x5a, %eax
  xor %edx, %edx
  wrmsr
  rdtsc
  mov %eax, %r8d
  mov %edx, %r9d
  rdtsc
  mov %eax, %r10d
  mov %edx, %r11d
  xor %ecx, %ecx
  rdtscp
  mov %eax, %r12d
  mov %edx, %r13d
  mov %ecx, %r14d
  mov %r8, %rax; mov %r9, %rdx; call print_edx_eax
  mov %r10, %rax; mov %r11, %rdx; call print_edx_eax
  mov %r12, %rax; mov %r13, %rdx; call print_edx_eax
  mov %r14, %rax; xor %edx, %edx; call print_edx_eax
  mov $0, %al
  jmp guest_exit
print_edx_eax:
  push %rcx
  shl $32, %rdx
  or %rdx, %rax
  mov $60, %cl
1: mov %rax, %rdx
  shr %cl, %rdx
  and $0xf, %edx
  push %rax
  lea hexdig(%rip), %rax
  movb (%rax,%rdx), %al
  call putc
  pop %rax
  sub $4, %cl
  jns 1b
  push %rax
  mov $'\n', %al
  call putc
  pop %rax
  pop %rcx
  ret
.section .data
hexdig: .ascii "0123456789abcdef"
