#include "prologue.S"
body:
  mov $'u', %al
  call putc
  ud2
