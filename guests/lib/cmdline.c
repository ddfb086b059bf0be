#include "cmdline.h"
#include "console.h"
#include "string.h"

static char buf[1024];
static const char *keys[CMDLINE_MAX_ARGS], *vals[CMDLINE_MAX_ARGS];
static int nargs;

void cmdline_init(const char *cmdline)
{
    strlcpy(buf, cmdline, sizeof(buf));
    nargs = 0;
    char *p = buf;
    while (*p) {
        while (*p == ' ' || *p == '\t')
            *p++ = 0;
        if (!*p)
            break;
        char *word = p;
        while (*p && *p != ' ' && *p != '\t')
            p++;
        if (*p)
            *p++ = 0;
        char *eq = strchr(word, '=');
        if (!eq || eq == word)              /* no '=', or "=x": not a key */
            continue;
        if (nargs == CMDLINE_MAX_ARGS) {
            printf("cmdline: more than %d arguments, ignoring '%s'\n",
                   CMDLINE_MAX_ARGS, word);
            continue;
        }
        *eq = 0;
        keys[nargs] = word;
        vals[nargs] = eq + 1;
        nargs++;
    }
}

static int find(const char *key)
{
    for (int i = nargs - 1; i >= 0; i--)    /* last one wins */
        if (!strcmp(keys[i], key))
            return i;
    return -1;
}

const char *arg_str(const char *key, const char *def)
{
    int i = find(key);
    return i < 0 ? def : vals[i];
}

int arg_present(const char *key) { return find(key) >= 0; }
int arg_count(void) { return nargs; }
const char *arg_key(int i) { return i >= 0 && i < nargs ? keys[i] : 0; }
const char *arg_val(int i) { return i >= 0 && i < nargs ? vals[i] : 0; }

int parse_u64(const char *s, uint64_t *out)
{
    uint64_t v = 0;
    unsigned base = 10;
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        base = 16;
        s += 2;
    }
    const char *start = s;
    for (;; s++) {
        unsigned d;
        if (*s >= '0' && *s <= '9') d = *s - '0';
        else if (base == 16 && *s >= 'a' && *s <= 'f') d = *s - 'a' + 10;
        else if (base == 16 && *s >= 'A' && *s <= 'F') d = *s - 'A' + 10;
        else break;
        if (v > (UINT64_MAX - d) / base)
            return -1;                      /* overflow */
        v = v * base + d;
    }
    if (s == start)
        return -1;                          /* no digits */
    unsigned shift = 0;
    switch (*s) {
    case 'k': case 'K': shift = 10; s++; break;
    case 'm': case 'M': shift = 20; s++; break;
    case 'g': case 'G': shift = 30; s++; break;
    case 't': case 'T': shift = 40; s++; break;
    }
    if (*s)
        return -1;                          /* trailing garbage */
    if (shift && v > (UINT64_MAX >> shift))
        return -1;
    *out = v << shift;
    return 0;
}

uint64_t arg_u64(const char *key, uint64_t def)
{
    const char *s = arg_str(key, 0);
    if (!s)
        return def;
    uint64_t v;
    if (parse_u64(s, &v) < 0)
        panic("cmdline: %s=%s is not a number (decimal or 0x-hex, optional K/M/G/T)",
              key, s);
    return v;
}
