/* selftest: checks the guest library from inside a guest.
 *
 * Covers printf formatting, the string functions, number and command-line
 * parsing, the DMA allocator and the blkdev library (on the ramdisk
 * driver: splitting, validation, sync-over-queued and queued-over-sync,
 * out-of-order completion, queue-full).  Prints one line per failed check
 * and a summary; the exit code is the number of failures (capped).
 *
 * Arguments: irq=1 also checks IDT dispatch with software interrupts
 * (needs a machine that delivers INT n: QEMU does); fault=ud2 executes an
 * invalid opcode to check the exception report (exit code 0x7F). */
#include "guest.h"
#include "ata.h"
#include "endian.h"
#include "scsi.h"

static int checks, failures;

#define CHECK(cond, ...) do {                                               \
        checks++;                                                           \
        if (!(cond)) {                                                      \
            failures++;                                                     \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);          \
            printf(__VA_ARGS__);                                            \
            printf("\n");                                                   \
        }                                                                   \
    } while (0)

static char fbuf[128];

#define FMT(expect, ...) do {                                               \
        snprintf(fbuf, sizeof(fbuf), __VA_ARGS__);                          \
        CHECK(!strcmp(fbuf, expect), "got '%s' want '%s'", fbuf, expect);   \
    } while (0)

static void test_printf(void)
{
    FMT("42 -7 0", "%d %i %u", 42, -7, 0);
    FMT("-2147483648", "%d", (int)0x80000000);
    FMT("4294967295", "%u", 0xFFFFFFFFu);
    FMT("ff FF 377", "%x %X %o", 255, 255, 255);
    FMT("0x0000beef", "0x%08x", 0xBEEF);
    FMT("123456789abcdef0", "%lx", 0x123456789ABCDEF0ul);
    FMT("ffffffffffffffff", "%llx", ~0ull);
    FMT("-9223372036854775808", "%lld", (long long)(1ull << 63));
    FMT("18446744073709551615", "%lu", ~0ul);
    FMT("  42|42   |00042", "%4d|%-5d|%05d", 42, 42, 42);
    FMT("  -42|-0042", "%5d|%05d", -42, -42);
    FMT("+5 +0", "%+d %+d", 5, 0);
    FMT("007", "%.3d", 7);
    FMT("x|  abc|ab|abc  ", "%c|%5s|%.2s|%-5s", 'x', "abc", "abc", "abc");
    const char *volatile null = NULL;     /* hidden from -Wformat */
    FMT("(null)", "%s", null);
    FMT("0x100000", "%p", (void *)0x100000);
    FMT("100%", "%d%%", 100);
    FMT("  7|7  ", "%*d|%-*d", 3, 7, 3, 7);
    FMT("12345", "%zu", (size_t)12345);

    char small[8];
    int n = snprintf(small, sizeof(small), "%s", "0123456789");
    CHECK(n == 10 && !strcmp(small, "0123456"), "n=%d small='%s'", n, small);
}

static void test_string(void)
{
    char b[32];
    strlcpy(b, "abcdefgh", sizeof(b));
    memmove(b + 2, b, 6);                   /* overlap, dst above src */
    CHECK(!memcmp(b, "ababcdef", 8), "memmove up: %.8s", b);
    strlcpy(b, "abcdefgh", sizeof(b));
    memmove(b, b + 2, 6);                   /* overlap, dst below src */
    CHECK(!memcmp(b, "cdefghgh", 8), "memmove down: %.8s", b);
    memset(b, 'z', 5);
    CHECK(!memcmp(b, "zzzzzhgh", 8), "memset: %.8s", b);
    CHECK(memcmp("abc", "abd", 3) < 0 && memcmp("abd", "abc", 3) > 0, "memcmp order");
    CHECK(strcmp("abc", "abc") == 0 && strcmp("ab", "abc") < 0, "strcmp");
    CHECK(strncmp("abcx", "abcy", 3) == 0 && strncmp("abcx", "abcy", 4) < 0, "strncmp");
    CHECK(strlen("hello") == 5 && strnlen("hello", 3) == 3, "strlen/strnlen");
    CHECK(strchr("hello", 'l') && *strchr("hello", 'l') == 'l' && !strchr("hello", 'z'),
          "strchr");
    CHECK(strlcpy(b, "0123456789", 4) == 10 && !strcmp(b, "012"), "strlcpy '%s'", b);
}

static void test_parse(void)
{
    static const struct { const char *s; int ok; uint64_t v; } cases[] = {
        { "0", 1, 0 }, { "4096", 1, 4096 }, { "4K", 1, 4096 }, { "4k", 1, 4096 },
        { "3M", 1, 3 << 20 }, { "2G", 1, 2ull << 30 }, { "1T", 1, 1ull << 40 },
        { "0x10", 1, 16 }, { "0xfFm", 1, 255ull << 20 },
        { "18446744073709551615", 1, ~0ull },
        { "18446744073709551616", 0, 0 }, { "16777216T", 0, 0 },
        { "", 0, 0 }, { "0x", 0, 0 }, { "12x", 0, 0 }, { "K", 0, 0 }, { "-1", 0, 0 },
        { "1KK", 0, 0 },
    };
    for (unsigned i = 0; i < ARRAY_SIZE(cases); i++) {
        uint64_t v = 0;
        int ok = parse_u64(cases[i].s, &v) == 0;
        CHECK(ok == cases[i].ok && (!ok || v == cases[i].v), "parse_u64('%s') ok=%d v=%lu",
              cases[i].s, ok, (unsigned long)v);
    }

    cmdline_init("kernel.elf k1=v1 plain n=0x20k k1=v2 empty= =x");
    CHECK(arg_count() == 4, "arg_count %d", arg_count());
    CHECK(!strcmp(arg_str("k1", "?"), "v2"), "last k1 wins: %s", arg_str("k1", "?"));
    CHECK(arg_u64("n", 0) == 0x8000, "n=%lu", (unsigned long)arg_u64("n", 0));
    CHECK(arg_present("empty") && !strcmp(arg_str("empty", "?"), ""), "empty value");
    CHECK(!arg_present("plain") && !arg_present("kernel.elf"), "words without '='");
    CHECK(arg_u64("missing", 77) == 77 && !strcmp(arg_str("missing", "d"), "d"), "defaults");
    cmdline_init(mb_cmdline());             /* back to the real arguments */
}

static void test_dma(void)
{
    uintptr_t mark = dma_mark();
    uint8_t *a = dma_alloc(100, 0);
    uint8_t *b = dma_alloc(4096, 4096);
    CHECK(((uintptr_t)a & 15) == 0 && ((uintptr_t)b & 4095) == 0, "alignment %p %p", a, b);
    CHECK(b >= a + 100, "overlap %p %p", a, b);
    extern char __image_end[];
    CHECK((uintptr_t)a >= (uintptr_t)__image_end, "pool below image end");
    memset(a, 0xAA, 100);
    dma_release(mark);
    uint8_t *c = dma_alloc(100, 0);
    int zero = 1;
    for (int i = 0; i < 100; i++)
        zero &= c[i] == 0;
    CHECK(c == a && zero, "release/realloc %p %p zeroed=%d", a, c, zero);
    dma_release(mark);
}

static void fill(uint8_t *p, size_t len, uint32_t seed)
{
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)((seed + i) * 2654435761u >> 13);
}

static int order[16], norder;
static void record(struct blkdev *d, struct blk_req *q)
{
    (void)d;
    order[norder++] = (int)(uintptr_t)q->cookie;
}

static void test_blkdev(void)
{
    CHECK(blkdev_open("nosuch", 0) == NULL && blkdev_errno == BLK_ENODEV, "nosuch");
    CHECK(blkdev_open("ram", 99) == NULL && blkdev_errno == BLK_ENODEV, "ram 99");
    struct blkdev *d = blkdev_open("ram", 0);
    CHECK(d != NULL, "open ram0");
    if (!d)
        return;
    blkdev_describe(d);
    uint32_t ss = d->sector_size;
    CHECK(d->capacity * ss == arg_u64("ram_size", 1 << 20), "capacity %lu",
          (unsigned long)d->capacity);

    /* 200 sectors: more than max_sectors (64), so the library splits. */
    uint32_t n = 200;
    uint8_t *w = dma_alloc(n * ss, 4096), *r = dma_alloc(n * ss, 4096);
    fill(w, n * ss, 1);
    CHECK(blk_write(d, 10, n, w, 0) == 0, "write");
    CHECK(blk_read(d, 10, n, r) == 0 && !memcmp(w, r, n * ss), "read back");
    memset(r, 0, ss);
    CHECK(blk_read(d, 9, 1, r) == 0 && r[0] == 0 && !memcmp(r, r + 1, ss - 1),
          "sector before untouched");
    CHECK(blk_write(d, 300, 2, w + ss, BLK_REQ_FUA) == 0 && blk_read(d, 300, 2, r) == 0 &&
          !memcmp(r, w + ss, 2 * ss), "fua write");

    CHECK(blk_read(d, d->capacity - 1, 2, r) == BLK_ERANGE, "range");
    CHECK(blk_read(d, d->capacity, 1, r) == BLK_ERANGE, "range at end");
    CHECK(blk_read(d, ~0ull, 1, r) == BLK_ERANGE, "range overflow");
    CHECK(blk_read(d, 0, 0, r) == BLK_EINVAL, "zero count");
    CHECK(blk_read(d, 0, 1, r + 1) == BLK_EINVAL, "misaligned buffer");
    CHECK(blk_read(d, d->capacity - 1, 1, r) == 0, "last sector");

    CHECK(blk_write_zeroes(d, 50, 100, 0) == 0, "write_zeroes");
    CHECK(blk_read(d, 10, n, r) == 0, "read after zeroes");
    int zok = 1;
    for (uint32_t i = 40 * ss; i < 140 * ss; i++)
        zok &= r[i] == 0;
    CHECK(zok && !memcmp(r, w, 40 * ss) && !memcmp(r + 140 * ss, w + 140 * ss, 60 * ss),
          "zeroed range exact");
    CHECK(blk_discard(d, 0, d->capacity) == 0, "discard all");
    CHECK(blk_flush(d) == 0, "flush");
    CHECK(blk_set_write_cache(d, 0) == 0 && d->write_cache == 0, "wce off");
    CHECK(blk_set_write_cache(d, 1) == 0 && d->write_cache == 1, "wce on");

    /* Queued: fill the queue with 2-segment writes, one more is EBUSY,
     * completions arrive newest first through the done callback. */
    static struct blk_req q[9];
    static struct blk_seg segs[9][2];
    norder = 0;
    for (int i = 0; i < 9; i++) {
        segs[i][0] = (struct blk_seg){ w + i * 4 * ss, ss };
        segs[i][1] = (struct blk_seg){ w + i * 4 * ss + ss, 3 * ss };
        q[i] = (struct blk_req){ .op = BLK_OP_WRITE, .lba = 100 + 4 * i, .count = 4,
                                 .segs = segs[i], .nsegs = 2, .done = record,
                                 .cookie = (void *)(uintptr_t)i };
    }
    int sub = 0;
    for (int i = 0; i < d->queue_depth; i++)
        sub += blk_submit(d, &q[i]) == 0;
    CHECK(sub == d->queue_depth && d->inflight == d->queue_depth, "submitted %d", sub);
    CHECK(blk_submit(d, &q[8]) == BLK_EBUSY, "queue full");
    CHECK(q[0].status == BLK_PENDING, "pending before poll");
    CHECK(blk_poll(d) == 8 && d->inflight == 0, "poll reaped all");
    CHECK(norder == 8 && order[0] == 7 && order[7] == 0, "out of order %d %d", order[0],
          order[7]);
    CHECK(blk_read(d, 100, 32, r) == 0 && !memcmp(r, w, 32 * ss), "queued data");

    struct blk_req bad = { .op = BLK_OP_WRITE, .lba = 0, .count = 4, .segs = segs[0],
                           .nsegs = 1 };
    CHECK(blk_submit(d, &bad) == BLK_EINVAL, "segments do not add up");
    struct blk_req zq = { .op = BLK_OP_WRITE_ZEROES, .lba = 100, .count = 4 };
    CHECK(blk_submit(d, &zq) == 0 && blk_wait(d, &zq) == 0, "queued write_zeroes");
    CHECK(blk_read(d, 100, 4, r) == 0 && r[0] == 0 && !memcmp(r, r + 1, 4 * ss - 1),
          "queued write_zeroes data");
    struct blk_req fq = { .op = BLK_OP_FLUSH };
    CHECK(blk_submit(d, &fq) == 0 && blk_wait(d, &fq) == 0, "queued flush");
}

static void put_ata_string(uint16_t *w, const char *s, int nwords)
{
    for (int i = 0; i < nwords; i++) {
        char a = *s ? *s++ : ' ';
        char b = *s ? *s++ : ' ';
        w[i] = (uint16_t)((uint8_t)a << 8 | (uint8_t)b);
    }
}

static void test_ata(void)
{
    static uint16_t id[256];
    struct ata_identify a;
    /* A 28-bit-only disk: capacity from words 60-61, no FUA without LBA48. */
    put_ata_string(&id[10], "  SN1", 10);
    put_ata_string(&id[27], "Model X", 20);
    id[49] = 1 << 8 | 1 << 9;
    id[60] = 0x5678;
    id[61] = 0x0012;
    id[83] = 0x4000 | 1 << 12;
    id[84] = 0x4000 | 1 << 6;
    id[82] = 1 << 5;
    CHECK(ata_parse_identify(id, &a) == 0, "parse");
    CHECK(a.sectors == 0x125678 && !a.lba48 && a.flush && !a.flush_ext && a.dma,
          "lba28 sectors=%lx", (unsigned long)a.sectors);
    CHECK(!strcmp(a.serial, "  SN1") && !strcmp(a.model, "Model X"), "strings '%s' '%s'",
          a.serial, a.model);
    struct blkdev d = { 0 };
    ata_identify_to_blkdev(&a, &d);
    CHECK(d.caps == (BLK_CAP_FLUSH | BLK_CAP_WCE_TOGGLE) && d.write_cache == 0,
          "caps 0x%x", d.caps);
    /* 48-bit, 4096-byte logical sectors (words 106, 117-118), NCQ depth 32,
     * TRIM, write cache on. */
    id[83] |= 1 << 10 | 1 << 13;
    id[100] = 0x0000; id[101] = 0x0001; id[102] = 0x0002; id[103] = 0;
    id[106] = 0x4000 | 1 << 12;
    id[117] = 2048; id[118] = 0;
    id[75] = 31;
    id[76] = 1 << 8;
    id[85] = 1 << 5;
    id[169] = 1;
    CHECK(ata_parse_identify(id, &a) == 0 && a.sectors == 0x200010000ull &&
          a.sector_size == 4096 && a.ncq && a.ncq_depth == 32 && a.trim && a.fua &&
          a.wcache_enabled, "lba48 sectors=%lx size %u ncq %d/%d", (unsigned long)a.sectors,
          a.sector_size, a.ncq, a.ncq_depth);
    ata_identify_to_blkdev(&a, &d);
    CHECK(d.caps == (BLK_CAP_FLUSH | BLK_CAP_FUA | BLK_CAP_DISCARD | BLK_CAP_WCE_TOGGLE) &&
          d.write_cache == 1 && d.sector_size == 4096, "caps 0x%x", d.caps);
    id[0] = 0x8000;                             /* ATAPI */
    CHECK(ata_parse_identify(id, &a) == BLK_EIO, "atapi rejected");
    CHECK(ata_trim_entry(0x123456789ABCull, 8) == 0x0008123456789ABCull, "trim entry");
}

static void test_scsi(void)
{
    uint8_t cdb[SCSI_CDB_MAX];
    CHECK(scsi_cdb_rw(cdb, 0, 0x12345678, 8, 0) == 10 && cdb[0] == SCSI_READ_10 &&
          get_be32(cdb + 2) == 0x12345678 && get_be16(cdb + 7) == 8 && cdb[1] == 0, "read10");
    CHECK(scsi_cdb_rw(cdb, 1, 5, 1, 1) == 10 && cdb[0] == SCSI_WRITE_10 && cdb[1] == 0x08,
          "write10 fua");
    CHECK(scsi_cdb_rw(cdb, 1, 0x100000000ull, 70000, 1) == 16 && cdb[0] == SCSI_WRITE_16 &&
          get_be64(cdb + 2) == 0x100000000ull && get_be32(cdb + 10) == 70000 &&
          cdb[1] == 0x08, "write16");
    CHECK(scsi_cdb_rw(cdb, 0, 0, 0x10000, 0) == 16, "count > 65535 needs 16");
    CHECK(scsi_cdb_read_capacity16(cdb, 32) == 16 && cdb[0] == 0x9E && cdb[1] == 0x10 &&
          get_be32(cdb + 10) == 32, "read capacity 16");
    CHECK(scsi_cdb_inquiry(cdb, 1, 0xB0, 64) == 6 && cdb[1] == 1 && cdb[2] == 0xB0 &&
          get_be16(cdb + 3) == 64, "inquiry vpd");
    uint8_t p[24];
    CHECK(scsi_unmap_param(p, 0x1122334455ull, 99) == 24 && get_be16(p) == 22 &&
          get_be16(p + 2) == 16 && get_be64(p + 8) == 0x1122334455ull &&
          get_be32(p + 16) == 99, "unmap param");

    uint8_t cap[32] = { 0 };
    put_be64(cap, 2047);
    put_be32(cap + 8, 4096);
    cap[14] = 0xC0;
    struct scsi_capacity c;
    CHECK(scsi_parse_capacity16(cap, 32, &c) == 0 && c.blocks == 2048 &&
          c.block_size == 4096 && c.lbpme && c.lbprz, "capacity16");

    uint8_t fixed[18] = { 0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x01 };
    uint8_t desc[8] = { 0x72, 0x06, 0x29, 0x00 };
    struct scsi_sense sn;
    CHECK(scsi_parse_sense(fixed, 18, &sn) == 0 && sn.key == 5 && sn.asc == 0x24 &&
          sn.ascq == 1, "fixed sense");
    CHECK(scsi_parse_sense(desc, 8, &sn) == 0 && sn.key == 6 && sn.asc == 0x29,
          "descriptor sense");
    CHECK(scsi_parse_sense(fixed, 10, &sn) < 0, "short sense");
    CHECK(!strcmp(scsi_sense_key_name(5), "ILLEGAL REQUEST"), "sense key name");

    uint8_t inq[36] = { 0x00 };
    memcpy(inq + 8, "QEMU    QEMU HARDDISK   2.5+", 28);
    struct scsi_inquiry iq;
    CHECK(scsi_parse_inquiry(inq, 36, &iq) == 0 && iq.type == 0 &&
          !strcmp(iq.vendor, "QEMU") && !strcmp(iq.product, "QEMU HARDDISK") &&
          !strcmp(iq.revision, "2.5+"), "inquiry '%s' '%s' '%s'", iq.vendor, iq.product,
          iq.revision);

    /* MODE SENSE(10): header, an unrelated page 0x01, then caching. */
    uint8_t ms[8 + 12 + 20] = { 0 };
    put_be16(ms, sizeof(ms) - 2);
    ms[8] = 0x01; ms[9] = 10;
    ms[20] = 0x08; ms[21] = 18; ms[22] = 0x04;
    int wce = -1;
    CHECK(scsi_find_caching_page(ms, sizeof(ms), &wce) == 20 && wce == 1, "caching wce=%d",
          wce);
    ms[22] = 0;
    CHECK(scsi_find_caching_page(ms, sizeof(ms), &wce) == 20 && wce == 0, "caching off");
    put_be16(ms, 8 + 12 - 2);                   /* data ends before the page */
    CHECK(scsi_find_caching_page(ms, sizeof(ms), &wce) < 0, "caching page absent");
}

static volatile unsigned last_vector;
static void on_irq(unsigned v) { last_vector = v; }

static void test_irq(void)
{
    irq_install(0x40, on_irq);
    __asm__ volatile("int $0x40");
    CHECK(last_vector == 0x40 && irq_count(0x40) == 1, "int 0x40 -> %u", last_vector);
    irq_install(3, on_irq);                 /* an exception with a handler */
    __asm__ volatile("int3");
    CHECK(last_vector == 3, "int3 -> %u", last_vector);
    irq_install(3, NULL);
}

int kmain(uint32_t magic, uint32_t mbinfo)
{
    (void)magic, (void)mbinfo;
    printf("selftest: start\n");
    if (!strcmp(arg_str("fault", ""), "ud2"))
        __asm__ volatile("ud2");
    test_printf();
    test_string();
    test_parse();
    test_dma();
    test_blkdev();
    test_ata();
    test_scsi();
    if (arg_u64("irq", 0))
        test_irq();
    printf("selftest: %d checks, %d failures\n", checks, failures);
    return failures > 0x7D ? 0x7D : failures;
}
