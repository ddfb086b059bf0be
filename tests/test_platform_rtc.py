"""MC146818 RTC/CMOS driven from Python: time from the virtual clock, formats, UIP, IRQ8."""

from blockbed.machine.events import EventQueue
from blockbed.machine.rtc import RTC, cmos_memory_bytes

EPOCH = 1_700_000_000   # 2023-11-14 22:13:20 UTC (a Tuesday)


def make(ns_per_tick=1_000_000):
    ev = EventQueue()
    lines = []
    rtc = RTC(ev, irq=lines.append, ns_per_tick=ns_per_tick, epoch=EPOCH)
    return ev, rtc, lines


def rd(rtc, reg):
    rtc.write(0, 1, reg)
    return rtc.read(1, 1)


def wr(rtc, reg, v):
    rtc.write(0, 1, reg)
    rtc.write(1, 1, v)


def test_bcd_time_from_virtual_clock():
    ev, rtc, _ = make()
    assert [rd(rtc, r) for r in (0, 2, 4, 7, 8, 9, 0x32)] == [0x20, 0x13, 0x22, 0x14, 0x11, 0x23, 0x20]
    assert rd(rtc, 6) == 3                      # Tuesday (Sunday = 1)
    ev.step(45_000)                             # 45 s of virtual time
    assert rd(rtc, 0) == 0x05 and rd(rtc, 2) == 0x14


def test_binary_and_12_hour_modes():
    ev, rtc, _ = make()
    wr(rtc, 0x0B, 0x04)                         # binary, 12-hour
    assert rd(rtc, 4) == 0x80 | 10              # 10 PM
    assert rd(rtc, 0) == 20


def test_set_bit_freezes_and_writes_set_the_clock():
    ev, rtc, _ = make()
    wr(rtc, 0x0B, 0x82)                         # SET, 24h, BCD
    wr(rtc, 4, 0x05)
    wr(rtc, 2, 0x30)
    ev.step(10_000)
    assert rd(rtc, 2) == 0x30                   # frozen
    wr(rtc, 0x0B, 0x02)
    ev.step(60_000)
    assert rd(rtc, 4) == 0x05 and rd(rtc, 2) == 0x31


def test_update_in_progress_in_last_244us_of_the_second():
    ev, rtc, _ = make(ns_per_tick=1000)         # 1 us per tick
    ev.step(999_700)
    assert rd(rtc, 0x0A) & 0x80 == 0
    ev.step(100)                                # 999.8 ms
    assert rd(rtc, 0x0A) & 0x80


def test_periodic_interrupt_and_register_c_clears():
    ev, rtc, lines = make(ns_per_tick=1000)
    wr(rtc, 0x0A, 0x26)                         # 1024 Hz
    wr(rtc, 0x0B, 0x42)                         # PIE
    ev.step(976)
    assert lines == []
    ev.step(1)
    assert lines == [True]
    assert rd(rtc, 0x0C) == 0xC0
    assert lines == [True, False]
    assert rd(rtc, 0x0C) == 0x00


def test_alarm_and_update_interrupts():
    ev, rtc, lines = make()
    wr(rtc, 0x01, 0x22)                         # alarm at hh:mm:22, any hour/minute
    wr(rtc, 0x03, 0xFF)
    wr(rtc, 0x05, 0xFF)
    wr(rtc, 0x0B, 0x22)                         # AIE only
    for _ in range(1000):
        ev.step(1)
    assert lines == []                          # :21 — UF set but not enabled
    assert rd(rtc, 0x0C) & 0x10
    ev.step(1000)
    assert lines == [True]
    assert rd(rtc, 0x0C) == 0xB0               # IRQF | AF | UF
    assert lines == [True, False]

def test_nmi_mask_bit_and_cmos_memory():
    ev, rtc, _ = make()
    rtc.write(0, 1, 0x80 | 0x34)
    assert rtc.nmi_masked
    rtc.set_memory(48 << 20)
    assert rd(rtc, 0x15) | rd(rtc, 0x16) << 8 == 640
    assert rd(rtc, 0x17) | rd(rtc, 0x18) << 8 == 48 * 1024 - 1024
    assert rd(rtc, 0x30) | rd(rtc, 0x31) << 8 == 48 * 1024 - 1024
    assert rd(rtc, 0x34) | rd(rtc, 0x35) << 8 == (48 - 16) * 16
    b = cmos_memory_bytes(3 << 30, 2 << 30)
    assert b[0x17] | b[0x18] << 8 == 65535
    assert b[0x5B] | b[0x5C] << 8 | b[0x5D] << 16 == 2 * 16384
