/* key=value arguments from the multiboot command line.
 *
 * The command line is split at spaces; words without '=' are ignored (QEMU
 * passes the kernel file name as the first word: "hello.elf a=1").  A key
 * given twice takes its last value. */
#ifndef GUEST_CMDLINE_H
#define GUEST_CMDLINE_H

#include <stdint.h>

#define CMDLINE_MAX_ARGS 64

void cmdline_init(const char *cmdline);
/* Value of `key`, or `def` when absent. */
const char *arg_str(const char *key, const char *def);
/* Value of `key` as an unsigned number: decimal or 0x-hex, with an
 * optional K/M/G/T suffix (powers of 1024, either case).  A malformed
 * value is a fatal error with a clear message (panic), never a silent 0. */
uint64_t arg_u64(const char *key, uint64_t def);
int arg_present(const char *key);
/* The parsed arguments in command-line order. */
int arg_count(void);
const char *arg_key(int i);
const char *arg_val(int i);
/* Parse a number as arg_u64 does; returns 0 and sets *out, or -1. */
int parse_u64(const char *s, uint64_t *out);

#endif
