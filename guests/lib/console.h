/* Console output on the first 16550 UART (COM1, I/O port 0x3F8), polled.
 *
 * printf supports the subset guests use: %d %i %u %x %X %o %c %s %p %%,
 * length modifiers h hh l ll z, flags '-' '0' ' ' '+', a field width and a
 * precision (numbers: minimum digits; %s: maximum characters), both also
 * as '*'.  Output is byte-exact: '\n' is not translated to "\r\n", so a
 * transcript captured by QEMU (-serial file:...) and by blockbed compare
 * equal. */
#ifndef GUEST_CONSOLE_H
#define GUEST_CONSOLE_H

#include <stdarg.h>
#include <stddef.h>

void console_init(void);
void putchar(int c);
void puts(const char *s);           /* no newline appended */
int printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int vprintf(const char *fmt, va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);

/* Print "fmt..." and exit(PANIC_EXIT_CODE). */
#define PANIC_EXIT_CODE 0x7E
void panic(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* hexdump of `len` bytes, 16 per line, offsets starting at `base`. */
void hexdump(const void *data, size_t len, unsigned long base);

#endif
