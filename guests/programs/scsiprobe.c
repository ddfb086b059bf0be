/* scsiprobe: SCSI-level conversation with a disk behind the LSI controller.
 *
 *   dev=lsi idx=N
 *
 * Runs a fixed list of commands (SPC-4 / SBC-3) through lsi_scsi_command()
 * and prints, for each, the status, the sense key/ASC/ASCQ after a CHECK
 * CONDITION, and the data bytes that identify the behaviour (no addresses,
 * no timings), so the transcript compares between QEMU and blockbed:
 * standard INQUIRY, VPD pages, READ CAPACITY (10/16), MODE SENSE (6/10)
 * of the caching page (current, changeable, default; saved must fail),
 * MODE SELECT changing WCE, READ/WRITE (6/10/12/16) round trips with FUA,
 * VERIFY, WRITE SAME, UNMAP, SYNCHRONIZE CACHE (10/16) with IMMED,
 * REPORT LUNS, an absent LUN, START STOP UNIT, and invalid CDBs.
 * Exit code 0; 1 if the device could not be opened or a round trip lost data. */
#include "guest.h"
#include "../drivers/lsi.h"

static struct blkdev *d;
static uint8_t *buf, *buf2;
static int failures;

static void put32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static void put64(uint8_t *p, uint64_t v) { put32(p, v >> 32); put32(p + 4, (uint32_t)v); }

/* Run one command and print "name: status ..." plus sense on CHECK CONDITION. */
static int run(const char *name, const uint8_t *cdb, unsigned n, int dir, void *b, uint32_t len)
{
    uint8_t st = 0xFF;
    uint32_t resid = 0;
    int r = lsi_scsi_command(d, cdb, n, dir, b, len, &st, &resid);
    if (r) {
        printf("%s: transport error %s\n", name, blk_strerror(r));
        return -1;
    }
    if (st == 2) {
        uint8_t sense[18];
        if (lsi_request_sense(d, sense) == 0)
            printf("%s: CHECK CONDITION sense %x/%02x/%02x\n", name, sense[2] & 0xF, sense[12],
                   sense[13]);
        else
            printf("%s: CHECK CONDITION (REQUEST SENSE failed)\n", name);
    } else {
        printf("%s: status 0x%02x%s\n", name, st, resid ? " (short transfer)" : "");
    }
    return st;
}

static void hex(const char *label, const uint8_t *p, unsigned n)
{
    printf("  %s:", label);
    for (unsigned i = 0; i < n; i++)
        printf(" %02x", p[i]);
    printf("\n");
}

static void fill(uint8_t *p, unsigned n, uint8_t seed)
{
    for (unsigned i = 0; i < n; i++)
        p[i] = (uint8_t)(seed + i * 7 + (i >> 9));
}

/* Write `count` blocks with one CDB form, read them back with another, compare. */
static void roundtrip(const char *name, const uint8_t *wcdb, unsigned wn, const uint8_t *rcdb,
                      unsigned rn, unsigned count, uint8_t seed)
{
    fill(buf, count * 512, seed);
    memset(buf2, 0, count * 512);
    char nm[48];
    snprintf(nm, sizeof nm, "%s write", name);
    run(nm, wcdb, wn, LSI_DIR_OUT, buf, count * 512);
    snprintf(nm, sizeof nm, "%s read", name);
    run(nm, rcdb, rn, LSI_DIR_IN, buf2, count * 512);
    int same = !memcmp(buf, buf2, count * 512);
    printf("  %s round trip: %s\n", name, same ? "ok" : "MISMATCH");
    failures += !same;
}

/* VPD page: header (4 bytes) first, then exactly its length. */
static int vpd(uint8_t page)
{
    uint8_t cdb[6] = { 0x12, 1, page, 0, 4, 0 };
    char nm[32];
    snprintf(nm, sizeof nm, "inquiry vpd %02x", page);
    if (run(nm, cdb, 6, LSI_DIR_IN, buf, 4) != 0)
        return -1;
    unsigned len = 4u + buf[3];
    cdb[4] = (uint8_t)len;
    if (run(nm, cdb, 6, LSI_DIR_IN, buf, len) != 0)
        return -1;
    return (int)len;
}

int kmain(uint32_t magic, uint32_t mbinfo)
{
    (void)magic; (void)mbinfo;
    if (!lsi_scsi_command || !lsi_request_sense) {
        printf("scsiprobe: FAIL: built without drivers/lsi.c\n");
        return 1;
    }
    d = blkdev_open_args();
    if (!d) {
        printf("scsiprobe: FAIL: cannot open device\n");
        return 1;
    }
    buf = dma_alloc(64 * 1024, 4096);
    buf2 = dma_alloc(64 * 1024, 4096);
    printf("scsiprobe: %s capacity %lu\n", d->name, (unsigned long)d->capacity);

    /* --- identification ---------------------------------------------------- */
    uint8_t inq[6] = { 0x12, 0, 0, 0, 36, 0 };
    if (run("inquiry", inq, 6, LSI_DIR_IN, buf, 36) == 0) {
        hex("bytes 0-7", buf, 8);
        printf("  vendor '%.8s' product '%.16s' revision '%.4s'\n", buf + 8, buf + 16, buf + 32);
    }
    inq[4] = 96;
    if (run("inquiry 96", inq, 6, LSI_DIR_IN, buf, 96) == 0)
        printf("  additional length %u\n", buf[4]);
    uint8_t inq_bad[6] = { 0x12, 0, 0x80, 0, 36, 0 };           /* page code without EVPD */
    run("inquiry page without evpd", inq_bad, 6, LSI_DIR_IN, buf, 36);
    int n = vpd(0x00);
    if (n > 0)
        hex("supported pages", buf + 4, n - 4);
    if ((n = vpd(0x83)) > 0)
        hex("device identification", buf + 4, n - 4);
    if ((n = vpd(0xB0)) > 0)
        printf("  block limits: page length %u wsnz %u max unmap descriptors %u\n",
               buf[3], buf[4] & 1, buf[24] << 24 | buf[25] << 16 | buf[26] << 8 | buf[27]);
    if ((n = vpd(0xB1)) > 0)
        printf("  block device characteristics: page length %u\n", buf[3]);
    if ((n = vpd(0xB2)) > 0)
        hex("logical block provisioning", buf + 4, n - 4);
    uint8_t vpd_bad[6] = { 0x12, 1, 0x99, 0, 255, 0 };
    run("inquiry vpd 99", vpd_bad, 6, LSI_DIR_IN, buf, 255);

    /* --- capacity ---------------------------------------------------------------- */
    uint8_t cap10[10] = { 0x25 };
    if (run("read capacity 10", cap10, 10, LSI_DIR_IN, buf, 8) == 0)
        hex("data", buf, 8);
    uint8_t cap16[16] = { 0x9E, 0x10 };
    cap16[13] = 32;
    if (run("read capacity 16", cap16, 16, LSI_DIR_IN, buf, 32) == 0)
        hex("bytes 0-13", buf, 14);
    uint8_t cap10_bad[10] = { 0x25, 0, 0, 0, 0, 1 };            /* LBA without PMI */
    run("read capacity 10 lba without pmi", cap10_bad, 10, LSI_DIR_IN, buf, 8);

    /* --- mode pages ----------------------------------------------------------------- */
    static const char *const pcname[] = { "current", "changeable", "default" };
    for (int pc = 0; pc < 3; pc++) {
        uint8_t ms[6] = { 0x1A, 0x08, (uint8_t)(pc << 6 | 0x08), 0, 24, 0 };
        char nm[48];
        snprintf(nm, sizeof nm, "mode sense 6 caching %s", pcname[pc]);
        if (run(nm, ms, 6, LSI_DIR_IN, buf, 24) == 0)
            printf("  header %02x %02x %02x %02x page %02x len %02x byte2 %02x\n", buf[0],
                   buf[1], buf[2] & 0x80, buf[3], buf[4] & 0x3F, buf[5], buf[6]);
    }
    uint8_t ms_saved[6] = { 0x1A, 0x08, 0xC8, 0, 24, 0 };
    run("mode sense 6 caching saved", ms_saved, 6, LSI_DIR_IN, buf, 24);
    uint8_t ms10[10] = { 0x5A, 0x08, 0x08, 0, 0, 0, 0, 0, 28, 0 };
    if (run("mode sense 10 caching", ms10, 10, LSI_DIR_IN, buf, 28) == 0)
        printf("  length %u block descriptor length %u page %02x wce %u\n",
               buf[0] << 8 | buf[1], buf[6] << 8 | buf[7], buf[8] & 0x3F, (buf[10] >> 2) & 1);
    uint8_t ms_bad[6] = { 0x1A, 0x08, 0x1C, 0, 255, 0 };        /* a page neither has */
    run("mode sense 6 page 1c", ms_bad, 6, LSI_DIR_IN, buf, 255);
    for (int on = 0; on < 2; on++) {
        uint8_t ms[6] = { 0x1A, 0x08, 0x08, 0, 24, 0 };
        run("mode sense for select", ms, 6, LSI_DIR_IN, buf, 24);
        buf[0] = buf[1] = buf[2] = buf[3] = 0;
        buf[6] = (buf[6] & ~4) | (on ? 4 : 0);
        uint8_t sel[6] = { 0x15, 0x10, 0, 0, 24, 0 };
        run(on ? "mode select wce=1" : "mode select wce=0", sel, 6, LSI_DIR_OUT, buf, 24);
        run("mode sense after select", ms, 6, LSI_DIR_IN, buf, 24);
        printf("  wce now %u\n", (buf[6] >> 2) & 1);
    }
    uint8_t ms_cur[6] = { 0x1A, 0x08, 0x08, 0, 24, 0 };
    run("mode sense for bad select", ms_cur, 6, LSI_DIR_IN, buf, 24);
    buf[0] = buf[1] = buf[2] = buf[3] = 0;
    buf[6] |= 0x01;                                               /* RCD: not changeable */
    uint8_t sel_bad[6] = { 0x15, 0x10, 0, 0, 24, 0 };
    run("mode select rcd=1", sel_bad, 6, LSI_DIR_OUT, buf, 24);

    /* --- reads and writes -------------------------------------------------------------- */
    uint8_t w6[6] = { 0x0A, 0, 0, 8, 2, 0 }, r6[6] = { 0x08, 0, 0, 8, 2, 0 };
    roundtrip("rw6", w6, 6, r6, 6, 2, 1);
    uint8_t w10[10] = { 0x2A, 0x08, 0, 0, 0, 16, 0, 0, 4, 0 }, r10[10] = { 0x28, 0, 0, 0, 0, 16, 0, 0, 4, 0 };
    roundtrip("rw10 fua", w10, 10, r10, 10, 4, 2);
    uint8_t w12[12] = { 0xAA, 0, 0, 0, 0, 24, 0, 0, 0, 8 }, r12[12] = { 0xA8, 0, 0, 0, 0, 24, 0, 0, 0, 8 };
    roundtrip("rw12", w12, 12, r12, 12, 8, 3);
    uint8_t w16[16] = { 0x8A, 0x08 }, r16[16] = { 0x88 };
    put64(w16 + 2, 40); put32(w16 + 10, 16);
    put64(r16 + 2, 40); put32(r16 + 10, 16);
    roundtrip("rw16 fua", w16, 16, r16, 16, 16, 4);
    uint8_t big_r[10] = { 0x28, 0, 0, 0, 0, 0, 0, 0, 128, 0 };
    if (run("read 10 of 128 blocks", big_r, 10, LSI_DIR_IN, buf, 128 * 512) == 0)
        printf("  block 8 byte 0: %02x, block 40 byte 5: %02x\n", buf[8 * 512], buf[40 * 512 + 5]);
    uint64_t last = d->capacity - 1;
    uint8_t r_oor[16] = { 0x88 };
    put64(r_oor + 2, last); put32(r_oor + 10, 2);
    run("read 16 past the end", r_oor, 16, LSI_DIR_IN, buf, 1024);
    uint8_t r_last[16] = { 0x88 };
    put64(r_last + 2, last); put32(r_last + 10, 1);
    run("read 16 of the last block", r_last, 16, LSI_DIR_IN, buf, 512);
    uint8_t r_zero[10] = { 0x28 };
    run("read 10 of 0 blocks", r_zero, 10, LSI_DIR_NONE, NULL, 0);

    /* --- verify, write same, unmap, sync ----------------------------------------------------- */
    uint8_t v10[10] = { 0x2F, 0, 0, 0, 0, 16, 0, 0, 4, 0 };
    run("verify 10 bytchk=0", v10, 10, LSI_DIR_NONE, NULL, 0);
    uint8_t v_oor[16] = { 0x8F };
    put64(v_oor + 2, last + 1); put32(v_oor + 10, 1);
    run("verify 16 past the end", v_oor, 16, LSI_DIR_NONE, NULL, 0);
    fill(buf, 512, 0x55);
    uint8_t ws10[10] = { 0x41, 0, 0, 0, 0, 64, 0, 0, 8, 0 };
    run("write same 10 pattern x8", ws10, 10, LSI_DIR_OUT, buf, 512);
    uint8_t rd64[10] = { 0x28, 0, 0, 0, 0, 64, 0, 0, 8, 0 };
    if (run("read back", rd64, 10, LSI_DIR_IN, buf2, 8 * 512) == 0) {
        int ok = 1;
        for (int i = 0; i < 8; i++)
            ok &= !memcmp(buf2 + i * 512, buf, 512);
        printf("  write same replicated: %s\n", ok ? "ok" : "MISMATCH");
        failures += !ok;
    }
    memset(buf, 0, 512);
    uint8_t ws16[16] = { 0x93, 0x08 };
    put64(ws16 + 2, 64); put32(ws16 + 10, 4);
    run("write same 16 unmap zeroes x4", ws16, 16, LSI_DIR_OUT, buf, 512);
    if (run("read back", rd64, 10, LSI_DIR_IN, buf2, 8 * 512) == 0) {
        int zero = 1;
        for (int i = 0; i < 4 * 512; i++)
            zero &= buf2[i] == 0;
        printf("  first 4 blocks zero: %s, block 4 byte 0: %02x\n", zero ? "yes" : "no",
               buf2[4 * 512]);
    }
    uint8_t ws_zero[10] = { 0x41, 0, 0, 0, 0, 64, 0, 0, 0, 0 };  /* 0 blocks with WSNZ */
    run("write same 10 of 0 blocks", ws_zero, 10, LSI_DIR_OUT, buf, 512);
    memset(buf, 0, 24);
    buf[1] = 22; buf[3] = 16;
    put64(buf + 8, 72); put32(buf + 16, 4);
    uint8_t unmap[10] = { 0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0 };
    run("unmap 4 blocks", unmap, 10, LSI_DIR_OUT, buf, 24);
    memset(buf, 0, 24);
    buf[1] = 22; buf[3] = 16;
    put64(buf + 8, last); put32(buf + 16, 4);
    run("unmap past the end", unmap, 10, LSI_DIR_OUT, buf, 24);
    uint8_t sc10[10] = { 0x35 }, sc10i[10] = { 0x35, 0x02 };
    run("synchronize cache 10", sc10, 10, LSI_DIR_NONE, NULL, 0);
    run("synchronize cache 10 immed", sc10i, 10, LSI_DIR_NONE, NULL, 0);
    uint8_t sc16[16] = { 0x91, 0x02 };
    run("synchronize cache 16 immed", sc16, 16, LSI_DIR_NONE, NULL, 0);

    /* --- luns, start/stop, bad commands ---------------------------------------------------------- */
    uint8_t rl[12] = { 0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16 };
    if (run("report luns", rl, 12, LSI_DIR_IN, buf, 16) == 0)
        hex("data", buf, 16);
    uint8_t ssu_stop[6] = { 0x1B, 0, 0, 0, 0, 0 }, ssu_start[6] = { 0x1B, 0, 0, 0, 1, 0 };
    run("start stop unit stop", ssu_stop, 6, LSI_DIR_NONE, NULL, 0);
    run("start stop unit start", ssu_start, 6, LSI_DIR_NONE, NULL, 0);
    uint8_t tur[6] = { 0 };
    run("test unit ready", tur, 6, LSI_DIR_NONE, NULL, 0);
    uint8_t fmt[6] = { 0x04, 0, 0, 0, 0, 0 };                    /* FORMAT UNIT: a no-op */
    run("format unit", fmt, 6, LSI_DIR_NONE, NULL, 0);
    uint8_t bad_op[6] = { 0x07, 0, 0, 0, 0, 0 };                 /* REASSIGN BLOCKS: not offered */
    run("reassign blocks", bad_op, 6, LSI_DIR_NONE, NULL, 0);
    uint8_t vendor_op[10] = { 0xC0 };                            /* reserved group 6 */
    run("opcode c0", vendor_op, 10, LSI_DIR_NONE, NULL, 0);
    uint8_t rs[6] = { 0x03, 0, 0, 0, 18, 0 };
    if (run("request sense with nothing pending", rs, 6, LSI_DIR_IN, buf, 18) == 0)
        printf("  key %x asc %02x ascq %02x\n", buf[2] & 0xF, buf[12], buf[13]);

    printf("scsiprobe: %s\n", failures ? "FAIL" : "done");
    return failures ? 1 : 0;
}
