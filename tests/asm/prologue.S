/* Minimal multiboot prologue for machine tests: long mode with 0-4 GiB
 * identity-mapped (2 MiB pages), a stack, then falls into `body` (64-bit).
 * Each test program #includes this file and defines `body`. */
.code32
.section .text
.globl _start
.align 4
mbh: .long 0x1BADB002, 0x3, -(0x1BADB002 + 3)
_start:
  mov $0x200000, %edi          /* page tables at 2 MiB: PML4, PDPT, 4 PDs */
  xor %eax, %eax
  mov $(0x1000 * 6 / 4), %ecx
  rep stosl
  movl $0x201003, 0x200000
  movl $0x202003, 0x201000
  movl $0x203003, 0x201008
  movl $0x204003, 0x201010
  movl $0x205003, 0x201018
  mov $0x202000, %edi
  mov $0x83, %eax              /* present, writable, 2 MiB page */
  xor %edx, %edx
  mov $2048, %ecx
1: mov %eax, (%edi)
  mov %edx, 4(%edi)
  add $0x200000, %eax
  adc $0, %edx
  add $8, %edi
  loop 1b
  mov %cr4, %eax
  or $0x20, %eax               /* PAE */
  mov %eax, %cr4
  mov $0x200000, %eax
  mov %eax, %cr3
  mov $0xC0000080, %ecx        /* EFER.LME */
  rdmsr
  or $0x100, %eax
  wrmsr
  mov %cr0, %eax
  or $0x80000001, %eax         /* PG | PE */
  mov %eax, %cr0
  lgdt gdtr
  ljmp $0x08, $long_mode
.code64
long_mode:
  mov $0x10, %ax
  mov %ax, %ds
  mov %ax, %es
  mov %ax, %ss
  lea stack_top(%rip), %rsp
  jmp body

/* putc(%al) on the 16550 */
putc:
  push %rdx
  mov $0x3f8, %dx
  out %al, %dx
  pop %rdx
  ret

/* idt_gate(%rdi IDT base, %esi vector, %rax handler): a present 64-bit interrupt
 * gate, selector 0x08, DPL 0, IST 0 (SDM vol. 3 §6.14.1).  Clobbers RDI, RSI. */
idt_gate:
  push %rax
  shl $4, %esi
  add %rsi, %rdi
  mov %ax, (%rdi)                  /* offset 15:0 */
  movw $0x08, 2(%rdi)              /* selector */
  movw $0x8E00, 4(%rdi)            /* IST 0, present, DPL 0, interrupt gate */
  shr $16, %rax
  mov %ax, 6(%rdi)                 /* offset 31:16 */
  shr $16, %rax
  mov %eax, 8(%rdi)                /* offset 63:32 */
  pop %rax
  ret

/* exit(%al) through isa-debug-exit */
guest_exit:
  mov $0xf4, %dx
  out %al, %dx
  hlt

.align 8
gdt: .quad 0, 0x00af9a000000ffff, 0x00cf92000000ffff
gdtr: .word 23
  .long gdt
.section .bss
.align 16
  .space 16384
stack_top:
.section .text
