/* REP INS/OUTS against a string-capable test port (0x520, tests/test_pio_string.py):
 * every case reports RCX and RDI/RSI (low and high halves) to port 0x530 after
 * the instruction; the host compares buf, the reports and what the port received
 * with the bulk path (machine/pio_string.py) on and off.  Last case: a rep insw
 * running into a not-present 4 KiB page (no IDT: the #PF ends the run). */
#include "prologue.S"
#define REPORT(r) mov r, %rax; out %eax, %dx; shr $32, %rax; out %eax, %dx
#define DONE(ptr) mov $0x530, %dx; REPORT(%rcx); REPORT(ptr); mov $0x520, %dx
body:
  mov $0x530, %dx
  lea buf(%rip), %rax
  out %eax, %dx
  mov $0x520, %dx
  cld
  lea buf(%rip), %rdi            /* 256 words, one page */
  mov $256, %ecx
  rep insw
  DONE(%rdi)
  lea buf+0x1000-6(%rip), %rdi   /* 1000 words: device blocks and pages crossed */
  mov $1000, %ecx
  rep insw
  DONE(%rdi)
  lea buf+0x2003(%rip), %rdi     /* insl, odd address */
  mov $300, %ecx
  rep insl
  DONE(%rdi)
  lea buf+0x3000(%rip), %rdi     /* insb */
  mov $100, %ecx
  rep insb
  DONE(%rdi)
  lea buf+0x4000(%rip), %rdi     /* 32-bit addressing: ECX counts, RCX's top is dropped */
  mov $0x1000000c8, %rcx
  addr32 rep insw
  DONE(%rdi)
  lea buf+0x5100(%rip), %rdi     /* DF=1 */
  mov $50, %ecx
  std
  rep insw
  cld
  DONE(%rdi)
  lea buf+0x5400(%rip), %rdi     /* a count of 1 */
  mov $1, %ecx
  rep insw
  DONE(%rdi)
  lea buf(%rip), %rsi            /* outsw */
  mov $700, %ecx
  rep outsw
  DONE(%rsi)
  lea buf+0x1001(%rip), %rsi     /* outsl */
  mov $333, %ecx
  rep outsl
  DONE(%rsi)
  lea buf+7(%rip), %rsi          /* outsb */
  mov $77, %ecx
  rep outsb
  DONE(%rsi)
  lea buf+0x5200(%rip), %rsi     /* outsw with DF=1 */
  mov $40, %ecx
  std
  rep outsw
  cld
  DONE(%rsi)
  /* 0x40000000: 4 KiB pages, page 0 -> pf_page, page 1 not present */
  lea pf_page(%rip), %rax
  or $3, %rax
  mov %rax, pt(%rip)
  lea pt(%rip), %rax
  or $3, %rax
  mov %rax, 0x203000             /* PD entry 0 of the 1-2 GiB directory */
  invlpg 0x40000000
  mov $0x40000000+0x1000-40, %rdi
  mov $100, %ecx
  rep insw
  mov $1, %al                    /* not reached */
  jmp guest_exit
.section .bss
.align 4096
buf: .space 0x6000
pt: .space 4096
pf_page: .space 4096
