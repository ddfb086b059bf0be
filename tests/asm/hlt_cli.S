#include "prologue.S"
body:
  cli
  hlt
