/*
 * Interrupt entry stubs, one per vector.  In 64-bit mode the CPU pushes
 * SS, RSP, RFLAGS, CS, RIP and, for some exceptions, an error code, after
 * aligning RSP to 16 bytes (SDM Vol. 3A §6.14.2 "64-Bit Mode Stack
 * Frame").  Each stub pushes a dummy error code where the CPU pushes none
 * (all but vectors 8, 10-14, 17, 21, 29, 30; SDM Vol. 3A Table 6-1), then
 * its vector, so every frame has the same layout (struct irq_frame).
 */
    .text
    .code64

.macro stub v
    .balign 16
isr_\v:
    .if (\v == 8 || (\v >= 10 && \v <= 14) || \v == 17 || \v == 21 || \v == 29 || \v == 30)
    .else
    pushq $0
    .endif
    pushq $\v
    jmp isr_common
.endm

.altmacro
.macro stubs from, to
    stub %(\from)
    .if \to-\from
    stubs %(\from+1), \to
    .endif
.endm

    stubs 0, 63
    stubs 64, 127
    stubs 128, 191
    stubs 192, 255

/* Save every general register, call irq_dispatch(frame), restore, iretq.
 * 7 + 15 quadwords keep RSP 16-byte aligned for the call (SysV ABI). */
isr_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    cld
    movq %rsp, %rdi
    call irq_dispatch
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp                      /* vector and error code */
    iretq

/* Stub addresses for idt_init. */
    .section .rodata
    .balign 8
    .globl isr_table
isr_table:
.macro entry v
    .quad isr_\v
.endm
.macro entries from, to
    entry %(\from)
    .if \to-\from
    entries %(\from+1), \to
    .endif
.endm
    entries 0, 63
    entries 64, 127
    entries 128, 191
    entries 192, 255

    .section .note.GNU-stack, "", @progbits
