/* Polled 16550 UART output and a small printf.
 *
 * 16550 registers (PC16550D data sheet, Table II): at base+0 THR (write),
 * base+1 IER, base+3 LCR, base+5 LSR.  LSR bit 5 (THRE) set means the
 * transmitter holding register can take the next byte. */
#include <stdint.h>
#include "console.h"
#include "io.h"
#include "string.h"
#include "sys.h"

#define COM1        0x3F8
#define UART_THR    0
#define UART_IER    1
#define UART_LCR    3
#define UART_LSR    5
#define LSR_THRE    0x20
#define LCR_8N1     0x03

/* A UART that never reports THRE (absent, or a broken model) must not hang
 * the guest: after this many polls the byte is sent anyway. */
#define THRE_SPINS  100000

void console_init(void)
{
    outb(COM1 + UART_IER, 0x00);    /* no UART interrupts: we poll */
    outb(COM1 + UART_LCR, LCR_8N1); /* 8 data bits, no parity, 1 stop; DLAB=0 */
}

void putchar(int c)
{
    for (int i = 0; i < THRE_SPINS && !(inb(COM1 + UART_LSR) & LSR_THRE); i++)
        cpu_relax();
    outb(COM1 + UART_THR, (uint8_t)c);
}

void puts(const char *s)
{
    while (*s)
        putchar(*s++);
}

/* --- formatting core: emits through a sink ------------------------------ */

struct sink {
    void (*put)(struct sink *, char);
    char *buf;
    size_t size, len;           /* len counts every byte, even truncated ones */
};

static void sink_console(struct sink *s, char c) { putchar(c); s->len++; }

static void sink_buf(struct sink *s, char c)
{
    if (s->len + 1 < s->size)
        s->buf[s->len] = c;
    s->len++;
}

static void pad(struct sink *s, char c, int n)
{
    while (n-- > 0)
        s->put(s, c);
}

static void fmt_num(struct sink *s, unsigned long long v, int neg, unsigned base,
                    int upper, int width, int prec, int left, int zero, char sign,
                    const char *prefix)
{
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = digits[v % base];
        v /= base;
    } while (v);
    if (prec == 0 && n == 1 && tmp[0] == '0')
        n = 0;                              /* "%.0d" of 0 prints nothing */
    int ndigits = n > prec ? n : prec;
    int nsign = (neg || sign) ? 1 : 0;
    int nprefix = prefix ? (int)strlen(prefix) : 0;
    int total = ndigits + nsign + nprefix;
    if (prec >= 0)
        zero = 0;                           /* C: precision overrides '0' */
    if (!left && !zero)
        pad(s, ' ', width - total);
    if (neg)
        s->put(s, '-');
    else if (sign)
        s->put(s, sign);
    for (int i = 0; i < nprefix; i++)
        s->put(s, prefix[i]);
    if (!left && zero)
        pad(s, '0', width - total);
    pad(s, '0', ndigits - n);
    while (n)
        s->put(s, tmp[--n]);
    if (left)
        pad(s, ' ', width - total);
}

static void format(struct sink *s, const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            s->put(s, *fmt);
            continue;
        }
        int left = 0, zero = 0, width = 0, prec = -1, lng = 0;
        char sign = 0;
        for (;; fmt++) {
            char f = fmt[1];
            if (f == '-') left = 1;
            else if (f == '0') zero = 1;
            else if (f == '+') sign = '+';
            else if (f == ' ') { if (!sign) sign = ' '; }
            else break;
        }
        fmt++;
        if (*fmt == '*') {
            width = va_arg(ap, int);
            if (width < 0) { left = 1; width = -width; }
            fmt++;
        } else {
            while (*fmt >= '0' && *fmt <= '9')
                width = width * 10 + (*fmt++ - '0');
        }
        if (*fmt == '.') {
            fmt++;
            prec = 0;
            if (*fmt == '*') {
                prec = va_arg(ap, int);
                fmt++;
            } else {
                while (*fmt >= '0' && *fmt <= '9')
                    prec = prec * 10 + (*fmt++ - '0');
            }
        }
        for (;; fmt++) {
            if (*fmt == 'l') lng++;
            else if (*fmt == 'z') lng = 2;      /* size_t is 64-bit */
            else if (*fmt == 'h') ;             /* promoted to int anyway */
            else break;
        }
        unsigned long long u;
        long long d;
        switch (*fmt) {
        case 'd':
        case 'i':
            d = lng ? va_arg(ap, long long) : va_arg(ap, int);
            u = d < 0 ? -(unsigned long long)d : (unsigned long long)d;
            fmt_num(s, u, d < 0, 10, 0, width, prec, left, zero, sign, NULL);
            break;
        case 'u':
        case 'x':
        case 'X':
        case 'o':
            u = lng ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned);
            fmt_num(s, u, 0, *fmt == 'u' ? 10 : *fmt == 'o' ? 8 : 16,
                    *fmt == 'X', width, prec, left, zero, 0, NULL);
            break;
        case 'p':
            u = (uintptr_t)va_arg(ap, void *);
            fmt_num(s, u, 0, 16, 0, width, prec, left, zero, 0, "0x");
            break;
        case 'c': {
            char c = (char)va_arg(ap, int);
            if (!left) pad(s, ' ', width - 1);
            s->put(s, c);
            if (left) pad(s, ' ', width - 1);
            break;
        }
        case 's': {
            const char *str = va_arg(ap, const char *);
            if (!str)
                str = "(null)";
            int n = prec >= 0 ? (int)strnlen(str, prec) : (int)strlen(str);
            if (!left) pad(s, ' ', width - n);
            for (int i = 0; i < n; i++)
                s->put(s, str[i]);
            if (left) pad(s, ' ', width - n);
            break;
        }
        case '%':
            s->put(s, '%');
            break;
        case 0:
            return;                             /* lone '%' at the end */
        default:                                /* unknown: print verbatim */
            s->put(s, '%');
            s->put(s, *fmt);
            break;
        }
    }
}

int vprintf(const char *fmt, va_list ap)
{
    struct sink s = { .put = sink_console };
    format(&s, fmt, ap);
    return (int)s.len;
}

int printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vprintf(fmt, ap);
    va_end(ap);
    return n;
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct sink s = { .put = sink_buf, .buf = buf, .size = size };
    format(&s, fmt, ap);
    if (size)
        buf[s.len < size ? s.len : size - 1] = 0;
    return (int)s.len;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

void panic(const char *fmt, ...)
{
    va_list ap;
    puts("panic: ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    exit(PANIC_EXIT_CODE);
}

void hexdump(const void *data, size_t len, unsigned long base)
{
    const uint8_t *p = data;
    for (size_t off = 0; off < len; off += 16) {
        printf("%08lx:", base + off);
        for (size_t i = off; i < off + 16 && i < len; i++)
            printf(" %02x", p[i]);
        putchar('\n');
    }
}
