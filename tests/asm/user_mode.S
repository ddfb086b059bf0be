/* User mode round trips (CPL 3 <-> 0), each printing one line:
 *   "ud: Y"        #UD in user mode, handler skips UD2 and IRETQs back to CPL 3
 *   "int80: Y"     INT 0x80 through a DPL-3 gate, saved CS is the user's (0x2b)
 *   "syscall: YYY" SYSCALL: CS=0x08 in the entry, RCX = the return address,
 *                  R11 = the user's RFLAGS (IF set)
 *   "sysret: YY"   SYSRETQ back: RAX as the kernel left it, CS = 0x2b
 *   "timer: Y"     the local APIC timer interrupts user code (saved CS 0x2b)
 * then exits 0.  The same ELF runs under qemu-system-x86_64 -kernel.
 * GDT: 0x08 kernel code, 0x10 kernel data, 0x18 (unused 32-bit user code),
 * 0x20 user data, 0x28 user code (64-bit), 0x30 TSS; STAR[47:32] = 0x08,
 * STAR[63:48] = 0x1b, so SYSRET loads SS 0x23 and CS 0x2b, as Linux's layout. */
#include "prologue.S"
body:
  mov $0xff, %al                      /* mask the 8259s: under QEMU, SeaBIOS left the PIT */
  out %al, $0x21                      /* on IRQ0, which would arrive once IF=1 */
  out %al, $0xa1
  orl $4, 0x200000                    /* U/S on PML4[0], PDPT[0], PD[0] */
  orl $4, 0x201000
  orl $4, 0x202000
  mov %cr3, %rax
  mov %rax, %cr3
  lea tss(%rip), %rax                 /* TSS descriptor at 0x30 */
  mov %rax, %rdx
  movw $103, gdt3 + 0x30(%rip)
  mov %ax, gdt3 + 0x32(%rip)
  shr $16, %rdx
  mov %dl, gdt3 + 0x34(%rip)
  movb $0x89, gdt3 + 0x35(%rip)
  mov %dh, gdt3 + 0x37(%rip)
  lea kstack_top(%rip), %rax
  mov %rax, tss + 4(%rip)             /* RSP0: the stack for CPL 3 -> 0 */
  lgdt gdtr3(%rip)
  mov $0x30, %ax
  ltr %ax
  /* IDT gates: vector, handler, type (0x8E00 DPL 0 interrupt gate, 0xEE00 DPL 3) */
  mov $6, %edi
  lea ud_handler(%rip), %rax
  mov $0x8E00, %ecx
  call set_gate
  mov $0x80, %edi
  lea int80_handler(%rip), %rax
  mov $0xEE00, %ecx
  call set_gate
  mov $0x40, %edi
  lea timer_handler(%rip), %rax
  mov $0x8E00, %ecx
  call set_gate
  lidt idtr(%rip)
  /* SYSCALL: EFER.SCE, STAR, LSTAR, FMASK (IF cleared in the kernel) */
  mov $0xC0000080, %ecx
  rdmsr
  or $1, %eax
  wrmsr
  mov $0xC0000081, %ecx
  xor %eax, %eax
  mov $0x001b0008, %edx
  wrmsr
  mov $0xC0000082, %ecx
  lea syscall_entry(%rip), %rax
  mov %rax, %rdx
  shr $32, %rdx
  wrmsr
  mov $0xC0000084, %ecx
  mov $0x200, %eax
  xor %edx, %edx
  wrmsr
  /* IRETQ to CPL 3 with IF=1 */
  lea ustack_top(%rip), %rax
  pushq $0x23                         /* SS: user data, RPL 3 */
  push %rax
  pushq $0x202
  pushq $0x2b                         /* CS: user code, RPL 3 */
  lea user(%rip), %rax
  push %rax
  iretq

/* set_gate(%edi vector, %rax handler, %ecx type) */
set_gate:
  lea idt(%rip), %rsi
  shl $4, %edi
  add %rdi, %rsi
  mov %ax, (%rsi)
  movw $0x08, 2(%rsi)
  mov %cx, 4(%rsi)
  shr $16, %rax
  mov %ax, 6(%rsi)
  shr $16, %rax
  mov %eax, 8(%rsi)
  ret

/* print the NUL-terminated string at %rsi (CPL 0 only: port I/O) */
puts:
  lodsb
  test %al, %al
  jz 1f
  call putc
  jmp puts
1: ret

/* print 'Y' if ZF else 'N' */
yes_no:
  mov $'Y', %al
  je 1f
  mov $'N', %al
1: jmp putc

user:
  ud2                                 /* -> ud_handler, back here + 2 */
  mov $1, %eax
  int $0x80                           /* -> int80_handler */
  mov $42, %eax
  pushfq
  pop %r12                            /* RFLAGS before SYSCALL, for the entry to compare */
  lea after_syscall(%rip), %r13
  syscall
after_syscall:
  mov %cs, %rbx
  mov %rax, %r14
  mov $2, %eax
  int $0x80                           /* report the SYSRET results (RAX 43, CS 0x2b) */
  /* the LAPIC timer: one-shot, vector 0x40, divide by 1 */
  mov $3, %eax
  int $0x80                           /* the kernel arms it */
1: rdtsc                               /* wait polling the TSC (blockbed's clock moves on exits) */
  cmpb $0, timer_seen(%rip)
  je 1b
  mov $4, %eax
  int $0x80                           /* report and exit */

ud_handler:
  addq $2, (%rsp)                     /* skip UD2 */
  mov 8(%rsp), %rax
  cmp $0x2b, %rax
  lea msg_ud(%rip), %rsi
  pushfq
  call puts
  popfq
  call yes_no
  mov $'\n', %al
  call putc
  iretq

int80_handler:
  cmp $1, %eax
  je int80_1
  cmp $2, %eax
  je int80_2
  cmp $3, %eax
  je int80_3
  /* 4: the timer report, then exit */
  lea msg_timer(%rip), %rsi
  call puts
  cmpq $0x2b, timer_cs(%rip)
  call yes_no
  mov $'\n', %al
  call putc
  mov $0, %al
  jmp guest_exit
int80_1:
  lea msg_int80(%rip), %rsi
  call puts
  cmpq $0x2b, 8(%rsp)
  call yes_no
  mov $'\n', %al
  call putc
  iretq
int80_2:
  lea msg_sysret(%rip), %rsi
  call puts
  cmp $43, %r14
  call yes_no
  cmp $0x2b, %rbx
  call yes_no
  mov $'\n', %al
  call putc
  iretq
int80_3:
  mov $0xfee00000, %edi               /* the local APIC */
  movl $0x1ff, 0xf0(%rdi)             /* SVR: APIC software enable */
  movl $0xb, 0x3e0(%rdi)              /* divide by 1 */
  movl $0x40, 0x320(%rdi)             /* LVT timer: one-shot, vector 0x40 */
  movl $100000, 0x380(%rdi)           /* initial count */
  iretq

timer_handler:
  push %rax
  mov 16(%rsp), %rax                  /* saved CS */
  mov %rax, timer_cs(%rip)
  movb $1, timer_seen(%rip)
  push %rdi
  mov $0xfee00000, %edi
  movl $0, 0xb0(%rdi)                 /* EOI */
  pop %rdi
  pop %rax
  iretq

syscall_entry:
  mov %cs, %rbx
  mov %rcx, %r8
  mov %r11, %r9
  mov %rax, %r10
  lea msg_syscall(%rip), %rsi
  call puts
  cmp $0x08, %rbx
  call yes_no
  cmp %r13, %r8
  call yes_no
  cmp %r12, %r9
  call yes_no
  mov $'\n', %al
  call putc
  lea 1(%r10), %rax
  mov %r8, %rcx
  mov %r9, %r11
  sysretq

.section .data
msg_ud: .asciz "ud: "
msg_int80: .asciz "int80: "
msg_syscall: .asciz "syscall: "
msg_sysret: .asciz "sysret: "
msg_timer: .asciz "timer: "
timer_seen: .byte 0
.align 8
timer_cs: .quad 0
.align 16
gdt3: .quad 0, 0x00af9a000000ffff, 0x00cf92000000ffff, 0x00cffa000000ffff
      .quad 0x00cff2000000ffff, 0x00affa000000ffff, 0, 0
gdtr3: .word 8*8-1
  .long gdt3, 0
.align 16
idtr: .word 256*16-1
  .long idt, 0
.section .bss
.align 4096
idt: .space 4096
tss: .space 104
.align 16
  .space 4096
kstack_top:
  .space 4096
ustack_top:
