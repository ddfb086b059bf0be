/* Everything a guest program needs, in one include. */
#ifndef GUEST_GUEST_H
#define GUEST_GUEST_H

#include <stdint.h>
#include <stddef.h>
#include <stdbool.h>
#include "blkdev.h"
#include "cmdline.h"
#include "console.h"
#include "dma.h"
#include "io.h"
#include "irq.h"
#include "multiboot.h"
#include "pci.h"
#include "string.h"
#include "sys.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define container_of(ptr, type, member) \
    ((type *)((char *)(ptr) - __builtin_offsetof(type, member)))
#define ALIGN_UP(x, a)   (((x) + (a) - 1) & ~((__typeof__(x))(a) - 1))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
