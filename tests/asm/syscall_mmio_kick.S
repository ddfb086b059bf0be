/* A SYSCALL, then a kick inside an MMIO write in a later block of the same slice.
 * Each pass: SYSCALL (in CPL 0; the entry returns with `jmp *%rcx`), then an
 * indirect call to `bump`, whose second block reuses RDI and adds 3 to EBX before
 * writing 2 * counter to the test device at 0xE0000000 (every 7th write kicks).
 * Unicorn once left RIP at a stale block start after such a kick when a SYSCALL
 * had run earlier in the slice (its hook wrote RIP), so the instructions before
 * the write ran again.  Exit 0 if EBX = 3 * passes and the counter = passes,
 * 1 otherwise. */
#include "prologue.S"
body:
  mov $0xC0000080, %ecx               /* EFER.SCE */
  rdmsr
  or $1, %eax
  wrmsr
  mov $0xC0000081, %ecx               /* STAR[47:32] = 0x08: CS 0x08, SS 0x10 */
  xor %eax, %eax
  mov $0x00000008, %edx
  wrmsr
  mov $0xC0000082, %ecx               /* LSTAR */
  lea syscall_entry(%rip), %rax
  mov %rax, %rdx
  shr $32, %rdx
  wrmsr
  mov $0xC0000084, %ecx               /* FMASK: nothing cleared */
  xor %eax, %eax
  xor %edx, %edx
  wrmsr
  mov $0xE0000000, %esi
  xor %ebx, %ebx
  mov $20000, %r12d
1: syscall
  lea counter(%rip), %rdi
  lea bump(%rip), %rax
  call *%rax
  dec %r12d
  jnz 1b
  cmp $60000, %ebx
  jne 2f
  cmpq $20000, counter(%rip)
  jne 2f
  mov $0, %al
  jmp guest_exit
2: mov $1, %al
  jmp guest_exit

syscall_entry:                        /* RCX = return RIP, R11 = RFLAGS */
  push %r11
  popfq
  jmp *%rcx

bump:                                 /* counter += 1; EBX += 3; write 2 * counter */
  mov (%rdi), %rcx
  add $1, %rcx
  mov %rcx, (%rdi)
  test %rcx, %rcx
  je 3f
  mov %rcx, %rdi
  add $3, %ebx
  shl $1, %rdi
  mov %edi, (%rsi)
3: ret

.data
.align 8
counter: .quad 0
