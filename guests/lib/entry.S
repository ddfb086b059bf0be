/*
 * Multiboot v1 entry: 32-bit protected mode -> 64-bit long mode -> kmain.
 *
 * Machine state on entry (Multiboot 0.6.96 §3.2 "Machine state"):
 *   EAX = 0x2BADB002, EBX = physical address of the multiboot information,
 *   CS = 32-bit read/execute flat segment, DS/ES/FS/GS/SS = flat read/write,
 *   A20 enabled, CR0.PG = 0, CR0.PE = 1, EFLAGS.IF = 0, EFLAGS.VM = 0.
 *   ESP, GDTR and IDTR are undefined: "the OS image must create its own
 *   stack" and "must not load any segment register until it sets up its
 *   own GDT".
 *
 * Long-mode activation follows Intel SDM Vol. 3A §9.8.5 "Initializing
 * IA-32e Mode": with paging off, set CR4.PAE, load CR3 with the PML4, set
 * IA32_EFER.LME (MSR 0xC0000080 bit 8), then set CR0.PG; the CPU is then in
 * compatibility mode until a far jump loads a code segment with L=1.
 */
#include "asm.h"

#define MB_MAGIC        0x1BADB002
#define MB_PAGE_ALIGN   (1 << 0)    /* modules page aligned */
#define MB_MEMORY_INFO  (1 << 1)    /* ask for mem_* and mmap_* */
#define MB_FLAGS        (MB_PAGE_ALIGN | MB_MEMORY_INFO)

#define CR0_PE          (1 << 0)
#define CR0_PG          (1 << 31)
#define CR4_PAE         (1 << 5)
#define MSR_EFER        0xC0000080
#define EFER_LME        (1 << 8)

#define PTE_P           0x001       /* present */
#define PTE_W           0x002       /* writable */
#define PTE_PWT         0x008       /* write-through */
#define PTE_PCD         0x010       /* cache disable */
#define PTE_PS          0x080       /* 2 MiB page (in a PD entry) */

/* Multiboot header (Multiboot 0.6.96 §3.1.1): magic, flags, checksum with
 * magic + flags + checksum == 0 (mod 2^32).  No address fields (flag bit
 * 16 clear): the loader uses the ELF program headers. */
    .section .multiboot, "a"
    .balign 4
multiboot_header:
    .long MB_MAGIC
    .long MB_FLAGS
    .long -(MB_MAGIC + MB_FLAGS)

    .section .text.boot, "ax"
    .code32
    .globl _start
_start:
    cli
    cld
    /* Keep the loader's registers: .data is loaded, not zeroed. */
    movl %eax, boot_magic
    movl %ebx, boot_mbinfo

    /* Zero .bss (the loader zeroes it too, but the spec does not oblige a
     * loader to, and the page tables and stack below live there). */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb

    /* Identity map 0..4 GiB with 2 MiB pages: PML4[0] -> PDPT,
     * PDPT[0..3] -> four page directories of 512 entries each
     * (SDM Vol. 3A §4.5 "4-Level Paging").  The last GiB holds the PCI
     * MMIO hole and the local APIC (0xFEE00000): mapped uncached. */
    movl $(pdpt + PTE_P + PTE_W), pml4
    movl $(pd + PTE_P + PTE_W), %eax
    xorl %ecx, %ecx
1:  movl %eax, pdpt(, %ecx, 8)
    addl $4096, %eax
    incl %ecx
    cmpl $4, %ecx
    jb 1b

    xorl %ecx, %ecx                     /* entry index 0..2047 */
2:  movl %ecx, %eax
    shll $21, %eax                      /* physical address = index * 2 MiB */
    orl $(PTE_P + PTE_W + PTE_PS), %eax
    cmpl $1536, %ecx                    /* >= 3 GiB: MMIO, uncached */
    jb 3f
    orl $(PTE_PCD + PTE_PWT), %eax
3:  movl %eax, pd(, %ecx, 8)            /* high dword stays 0 */
    incl %ecx
    cmpl $2048, %ecx
    jb 2b

    /* Our own GDT: the loader's is undefined (Multiboot §3.2). */
    lgdt gdt_desc

    movl %cr4, %eax
    orl $CR4_PAE, %eax
    movl %eax, %cr4

    movl $pml4, %eax
    movl %eax, %cr3

    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr

    movl %cr0, %eax
    orl $(CR0_PG | CR0_PE), %eax
    movl %eax, %cr0                     /* IA-32e mode active (compat) */

    ljmp $GDT_CODE64, $long_mode        /* load a 64-bit CS (L=1) */

    .code64
long_mode:
    movl $GDT_DATA, %eax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    leaq stack_top(%rip), %rsp
    xorl %ebp, %ebp

    movl boot_magic(%rip), %edi         /* zero-extended */
    movl boot_mbinfo(%rip), %esi
    call _cstart                        /* runs kmain(magic, mbinfo) */
    movl %eax, %edi
    call exit                           /* does not return */
4:  cli
    hlt
    jmp 4b

    .section .data
    .balign 8
/* Flat GDT: null, 64-bit code (L=1, D=0), data (SDM Vol. 3A §3.4.5,
 * §5.2.1: in 64-bit mode base/limit are ignored except for FS/GS). */
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF            /* GDT_CODE64: P DPL0 code R, L=1 G=1 */
    .quad 0x00CF92000000FFFF            /* GDT_DATA:   P DPL0 data W, D/B=1 G=1 */
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt
    .globl boot_magic, boot_mbinfo
boot_magic:     .long 0
boot_mbinfo:    .long 0

    .section .bss
    .balign 4096
pml4:   .skip 4096
pdpt:   .skip 4096
pd:     .skip 4 * 4096
    .balign 16
stack:  .skip STACK_SIZE
stack_top:

    .section .note.GNU-stack, "", @progbits
