#include "prologue.S"
/* (not *.S: test_machine builds those without -D) write EXIT_VALUE (32 bits, -DEXIT_VALUE=N) to isa-debug-exit at 0xF4 */
body:
  mov $EXIT_VALUE, %eax
  out %eax, $0xf4
1: hlt
  jmp 1b
