/* Constants shared by the assembly files and C. */
#ifndef GUEST_ASM_H
#define GUEST_ASM_H

#define GDT_CODE64  0x08        /* selector of the 64-bit code segment */
#define GDT_DATA    0x10        /* selector of the flat data segment */
#define STACK_SIZE  (64 * 1024) /* the one kernel stack, in .bss */

#endif
