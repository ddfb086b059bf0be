/* Enters CPL 3 (IRETQ to a DPL-3 code segment, pages made user-accessible)
 * and executes UD2 there: delivering #UD needs the CPL 3 -> 0 switch with
 * RSP0 from the TSS.  Under QEMU the handler prints "user #UD cs=2b" and
 * exits 0; blockbed cannot apply that switch yet and must end the run with a
 * clear fault report. */
#include "prologue.S"
body:
  orl $4, 0x200000                    /* U/S on PML4[0], PDPT[0], PD[0] */
  orl $4, 0x201000
  orl $4, 0x202000
  mov %cr3, %rax
  mov %rax, %cr3
  lea tss(%rip), %rax                 /* TSS descriptor at 0x28 */
  mov %rax, %rdx
  movw $103, gdt3 + 0x28(%rip)
  mov %ax, gdt3 + 0x2a(%rip)
  shr $16, %rdx
  mov %dl, gdt3 + 0x2c(%rip)
  movb $0x89, gdt3 + 0x2d(%rip)
  mov %dh, gdt3 + 0x2f(%rip)
  lea kstack_top(%rip), %rax
  mov %rax, tss + 4(%rip)             /* RSP0 */
  lgdt gdtr3(%rip)
  mov $0x28, %ax
  ltr %ax
  lea idt(%rip), %rdi                 /* #UD gate -> ud_handler, CS 0x08 */
  lea ud_handler(%rip), %rax
  mov %ax, 6*16(%rdi)
  movw $0x08, 6*16+2(%rdi)
  movw $0x8E00, 6*16+4(%rdi)
  shr $16, %rax
  mov %ax, 6*16+6(%rdi)
  lidt idtr(%rip)
  lea ustack_top(%rip), %rax
  pushq $0x23                         /* SS: user data, RPL 3 */
  push %rax
  pushq $0x2
  pushq $0x1b                         /* CS: user code, RPL 3 */
  lea user(%rip), %rax
  push %rax
  iretq
user:
  ud2
ud_handler:
  lea msg(%rip), %rsi
1: lodsb
  test %al, %al
  jz 2f
  call putc
  jmp 1b
2: mov 8(%rsp), %rax                  /* saved CS: 0x1b */
  add $('0' - 0x1b), %al
  call putc                           /* '0' when it was 0x1b */
  mov $'\n', %al
  call putc
  mov $0, %al
  jmp guest_exit
.section .data
msg: .asciz "user #UD saved-cs-ok="
.align 16
gdt3: .quad 0, 0x00af9a000000ffff, 0x00cf92000000ffff, 0x00affa000000ffff, 0x00cff2000000ffff, 0, 0
gdtr3: .word 7*8-1
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
