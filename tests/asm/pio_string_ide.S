/* IDE PIO with rep insw/insl/outsw/outsl on the primary channel (polled, nIEN):
 * single sectors, a READ/WRITE MULTIPLE block of 16 sectors in one instruction,
 * counts running past a DRQ block, DF=1, a buffer across a page.  Reports buf's
 * address to port 0x530; tests/test_pio_string.py checks buf and the disk. */
#include "prologue.S"
#define ATA(c, l, n) mov $(l), %ebx; mov $(n), %ecx; mov $(c), %al; call ata_cmd
body:
  mov $0x530, %dx
  lea buf(%rip), %rax
  out %eax, %dx
  mov $0x3f6, %dx                /* nIEN */
  mov $2, %al
  out %al, %dx
  call wait_bsy
  cld
  ATA(0x20, 0, 1)                /* READ SECTORS, 256 words */
  lea buf(%rip), %rdi
  mov $256, %ecx
  rep insw
  ATA(0xc6, 0, 16)               /* SET MULTIPLE 16, READ MULTIPLE: one 8 KiB block */
  ATA(0xc4, 8, 16)
  lea buf+0x1000(%rip), %rdi
  mov $4096, %ecx
  rep insw
  ATA(0x20, 100, 2)              /* two sectors in one rep insw: past the DRQ block */
  lea buf+0x3000(%rip), %rdi
  mov $512, %ecx
  rep insw
  in %dx, %ax                    /* the last word of the second sector */
  ATA(0x20, 200, 1)              /* insl, unaligned */
  lea buf+0x4002(%rip), %rdi
  mov $128, %ecx
  rep insl
  ATA(0x20, 300, 1)              /* DF=1 */
  lea buf+0x5000+510(%rip), %rdi
  mov $256, %ecx
  std
  rep insw
  cld
  ATA(0x20, 400, 2)              /* across a page, a block at a time */
  lea buf+0x6000-100(%rip), %rdi
  mov $256, %ecx
  rep insw
  call wait_bsy
  mov $256, %ecx
  rep insw
  ATA(0x30, 1000, 2)             /* WRITE SECTORS, a block at a time */
  lea buf+0x1000(%rip), %rsi
  mov $256, %ecx
  rep outsw
  call wait_bsy
  mov $256, %ecx
  rep outsw
  ATA(0xc5, 1100, 16)            /* WRITE MULTIPLE: 16 sectors in one rep outsw */
  lea buf+0x1000(%rip), %rsi
  mov $4096, %ecx
  rep outsw
  ATA(0x30, 1200, 1)             /* outsl */
  lea buf+0x4002(%rip), %rsi
  mov $128, %ecx
  rep outsl
  ATA(0x30, 1300, 2)             /* two sectors in one rep outsw: past the DRQ block */
  lea buf+0x1000(%rip), %rsi
  mov $512, %ecx
  rep outsw
  mov $0x5a5a, %ax
  out %ax, %dx
  call wait_bsy
  mov $0, %al
  jmp guest_exit

/* ata_cmd: command %al, LBA28 %ebx, count %cl; waits for BSY clear; %dx = data port */
ata_cmd:
  push %rax
  mov $0x1f2, %dx
  mov %cl, %al
  out %al, %dx
  inc %dx
  mov %bl, %al
  out %al, %dx
  inc %dx
  mov %bh, %al
  out %al, %dx
  inc %dx
  mov %ebx, %eax
  shr $16, %eax
  out %al, %dx
  inc %dx
  mov $0xe0, %al
  out %al, %dx
  inc %dx
  pop %rax
  out %al, %dx
  call wait_bsy
  ret
wait_bsy:
  mov $0x1f7, %dx
1: in %dx, %al
  test $0x80, %al
  jnz 1b
  mov $0x1f0, %dx
  ret
.section .bss
.align 4096
buf: .space 0x8000
