#include "prologue.S"
body:
  mov $'w', %al
  call putc
  movabs $0x0000000500000000, %rax   /* above the 4 GiB identity map: #PF on fetch */
  jmp *%rax
