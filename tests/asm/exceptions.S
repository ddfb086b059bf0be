/* CPU exceptions delivered through an IDT at a higher-half virtual address
 * (Intel SDM vol. 3 §6.14), as Linux sets it up: IDT, GDT, TSS and handlers
 * are reached through the alias 0xffffffff80000000 + phys.  Each test sets
 * `fault_rip` (the RIP the frame must hold) and `resume`, triggers one
 * exception, and the common handler prints one line on COM1:
 *   v=<vector> e=<error code> [c=<cr2>] r=<ok|bad> cs=<CS> ist=<0|1>
 * The same ELF under qemu-system-x86_64 -kernel must print the same lines. */
#include "prologue.S"
#define HH 0xffffffff80000000
#define PDPT_HI 0x206000
#define PD_RO   0x207000
body:
  /* PML4[511] -> PDPT_HI; PDPT_HI[510] -> the identity PD of 0-1 GiB (so
   * HH + x = x), PDPT_HI[509] -> PD_RO: 0xffffffff40000000 read-only,
   * 0xffffffff40200000 no-execute. */
  mov $PDPT_HI, %edi
  xor %eax, %eax
  mov $(0x2000 / 4), %ecx
  rep stosl
  movl $(PDPT_HI + 3), 0x200000 + 511 * 8
  movl $0x202003, PDPT_HI + 510 * 8
  movl $(PD_RO + 3), PDPT_HI + 509 * 8
  movl $0x81, PD_RO                   /* 2 MiB, present, read-only */
  movl $0x81, PD_RO + 8
  movl $0x80000000, PD_RO + 12        /* NX */
  mov %cr3, %rax
  mov %rax, %cr3
  mov $0xC0000080, %ecx               /* EFER.NXE */
  rdmsr
  or $0x800, %eax
  wrmsr
  mov %cr0, %rax
  or $0x10000, %rax                   /* CR0.WP: supervisor writes honour R/W */
  mov %rax, %cr0
  /* TSS descriptor (selector 0x28) for the TSS at HH + tss */
  movabs $HH, %rbx
  lea tss(%rip), %rax
  add %rbx, %rax
  mov %rax, %rdx
  movw $103, gdt2 + 0x28(%rip)        /* limit */
  mov %ax, gdt2 + 0x2a(%rip)          /* base 15:0 */
  shr $16, %rdx
  mov %dl, gdt2 + 0x2c(%rip)          /* base 23:16 */
  movb $0x89, gdt2 + 0x2d(%rip)       /* present, available 64-bit TSS */
  mov %dh, gdt2 + 0x2f(%rip)          /* base 31:24 */
  shr $16, %rdx
  mov %edx, gdt2 + 0x30(%rip)         /* base 63:32 */
  lea ist_top(%rip), %rax
  add %rbx, %rax
  mov %rax, tss + 0x24(%rip)          /* IST1 */
  lea gdt2(%rip), %rax
  add %rbx, %rax
  mov %rax, gdtr2 + 2(%rip)
  lgdt gdtr2(%rip)
  mov $0x28, %ax
  ltr %ax
  /* the IDT: gate v -> HH + stub_v, CS 0x08, interrupt gates */
  lea idt(%rip), %rdi
  lea stubs(%rip), %rsi
  xor %ecx, %ecx
1: lea (%rsi,%rcx,8), %rax            /* stubs are 8 bytes apart... */
  lea (%rax,%rcx,8), %rax             /* ...16, actually */
  add %rbx, %rax
  mov %rcx, %rdx
  shl $4, %rdx
  mov %ax, (%rdi,%rdx)
  movw $0x08, 2(%rdi,%rdx)
  movw $0x8E00, 4(%rdi,%rdx)
  shr $16, %rax
  mov %ax, 6(%rdi,%rdx)
  shr $16, %rax
  mov %eax, 8(%rdi,%rdx)
  inc %ecx
  cmp $32, %ecx
  jb 1b
  movb $0x8F, 3*16+5(%rdi)            /* #BP: trap gate ... */
  movw $0x18, 3*16+2(%rdi)            /* ... into the second 64-bit code segment */
  movb $1, 3*16+4(%rdi)               /* ... on IST1 */
  lea idt(%rip), %rax
  add %rbx, %rax
  mov %rax, idtr + 2(%rip)
  lidt idtr(%rip)

  /* 1: #PF reading a not-present address: e=0, cr2 = the address */
  movabs $0xffff800000001234, %rsi
  lea 1f(%rip), %rax; mov %rax, fault_rip(%rip)
  lea 2f(%rip), %rax; mov %rax, resume(%rip)
1: mov (%rsi), %rax
2:
  /* 2: #PF writing a read-only page: e=3 (P|W) */
  movabs $0xffffffff40000010, %rsi
  lea 1f(%rip), %rax; mov %rax, fault_rip(%rip)
  lea 2f(%rip), %rax; mov %rax, resume(%rip)
1: movl $1, (%rsi)
2:
  /* 3: #PF fetching from a no-execute page: e=0x11 (P|I), frame RIP = target */
  movabs $0xffffffff40200000, %rsi
  mov %rsi, fault_rip(%rip)
  lea 2f(%rip), %rax; mov %rax, resume(%rip)
  jmp *%rsi
2:
  /* 4: #GP(selector) loading DS with a selector beyond the GDT limit */
  lea 1f(%rip), %rax; mov %rax, fault_rip(%rip)
  lea 2f(%rip), %rax; mov %rax, resume(%rip)
  mov $0x78, %ax
1: mov %ax, %ds
2:
  /* 5: #GP(0) on a non-canonical address */
  movabs $0x0000800000000000, %rsi
  lea 1f(%rip), %rax; mov %rax, fault_rip(%rip)
  lea 2f(%rip), %rax; mov %rax, resume(%rip)
1: mov (%rsi), %rax
2:
  /* 6: #UD */
  lea 1f(%rip), %rax; mov %rax, fault_rip(%rip)
  lea 2f(%rip), %rax; mov %rax, resume(%rip)
1: ud2
2:
  /* 7: #DE */
  xor %ecx, %ecx
  lea 1f(%rip), %rax; mov %rax, fault_rip(%rip)
  lea 2f(%rip), %rax; mov %rax, resume(%rip)
1: div %ecx
2:
  /* 8: #BP (trap: frame RIP after INT3) through a trap gate, CS 0x18, IST1 */
  lea 2f(%rip), %rax; mov %rax, fault_rip(%rip)
  lea 2f(%rip), %rax; mov %rax, resume(%rip)
  int3
2:
  /* 9: INT 0x41 beyond the IDT limit: #GP(0x41*8+2, IDT bit), frame RIP = the INT */
  lea 1f(%rip), %rax; mov %rax, fault_rip(%rip)
  lea 2f(%rip), %rax; mov %rax, resume(%rip)
1: int $0x41
2:
  /* 10: #DE whose gate names a selector beyond the GDT: #GP + #GP -> #DF(0) */
  lea idt(%rip), %rdi
  movw $0x80, 2(%rdi)
  xor %ecx, %ecx
  lea 1f(%rip), %rax; mov %rax, fault_rip(%rip)
  lea 2f(%rip), %rax; mov %rax, resume(%rip)
1: div %ecx
2:
  mov $'.', %al
  call putc
  mov $'\n', %al
  call putc
  mov $0, %al
  jmp guest_exit

/* print %rax as %cl hex digits */
print_hex:
  push %rax
  push %rcx
  push %rdx
  mov %rax, %rdx
  shl $2, %cl
1: sub $4, %cl
  mov %rdx, %rax
  shr %cl, %rax
  and $0xf, %eax
  push %rsi
  lea hexdig(%rip), %rsi
  movb (%rsi,%rax), %al
  pop %rsi
  call putc
  test %cl, %cl
  jnz 1b
  pop %rdx
  pop %rcx
  pop %rax
  ret
puts:                                   /* %rsi: NUL-terminated */
  push %rax
1: lodsb
  test %al, %al
  jz 2f
  call putc
  jmp 1b
2: pop %rax
  ret

.align 16
stubs:
.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
  .align 16
  .if (\v == 8) || (\v == 10) || (\v == 11) || (\v == 12) || (\v == 13) || (\v == 14) || (\v == 17)
  push $\v
  .else
  push $0
  push $\v
  .endif
  jmp common
.endr
common:
  push %rax
  push %rcx
  push %rsi
  lea s_v(%rip), %rsi; call puts
  mov 24(%rsp), %rax; mov $2, %cl; call print_hex
  lea s_e(%rip), %rsi; call puts
  mov 32(%rsp), %rax; mov $4, %cl; call print_hex
  cmpq $14, 24(%rsp)
  je 3f
  cmpq $6, 24(%rsp)                   /* #UD must leave CR2 alone: print it too */
  jne 1f
3: lea s_c(%rip), %rsi; call puts
  mov %cr2, %rax; mov $16, %cl; call print_hex
1: lea s_ok(%rip), %rsi
  mov 40(%rsp), %rax
  cmp fault_rip(%rip), %rax
  je 1f
  lea s_bad(%rip), %rsi
1: call puts
  lea s_cs(%rip), %rsi; call puts
  mov 48(%rsp), %rax; mov $2, %cl; call print_hex      /* interrupted CS */
  mov %cs, %ax; mov $2, %cl; call print_hex            /* handler's CS */
  lea s_ist(%rip), %rsi; call puts
  lea ist_top(%rip), %rax
  sub %rsp, %rax
  cmp $4096, %rax
  mov $'0', %al
  jae 1f
  mov $'1', %al
1: call putc
  mov $'\n', %al
  call putc
  mov resume(%rip), %rax
  mov %rax, 40(%rsp)
  pop %rsi
  pop %rcx
  pop %rax
  add $16, %rsp
  iretq

.section .data
hexdig: .ascii "0123456789abcdef"
s_v: .asciz "v="
s_e: .asciz " e="
s_c: .asciz " c="
s_ok: .asciz " r=ok"
s_bad: .asciz " r=bad"
s_cs: .asciz " cs="
s_ist: .asciz " ist="
.align 16
gdt2: .quad 0, 0x00af9a000000ffff, 0x00cf92000000ffff, 0x00af9a000000ffff, 0, 0, 0
gdtr2: .word 7*8-1
  .quad 0
.align 16
idtr: .word 32*16-1
  .quad 0
fault_rip: .quad 0
resume: .quad 0
.section .bss
.align 4096
idt: .space 256*16
tss: .space 104
.align 4096
ist_stack: .space 4096
ist_top:
