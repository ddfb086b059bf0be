"""MC146818 RTC and CMOS memory (ports 0x70/0x71), time from the virtual clock.

Motorola MC146818A data sheet: index port 0x70 (bit 7 = NMI disable on a PC,
kept in ``nmi_masked``), data port 0x71.  Registers 0x00-0x09 are the clock
(seconds, alarm seconds, minutes, alarm minutes, hours, alarm hours, day of
week, day, month, year), 0x0A-0x0D status registers A-D, 0x32 the century
(as QEMU's hw/rtc/mc146818rtc.c).  Register B selects BCD or binary (DM, bit 2)
and 24/12-hour (bit 1); SET (bit 7) freezes the clock while software writes it.
Register A bit 7, update-in-progress, is 1 for the last 244 us of every
second (data sheet: tBUC).  Register C (IRQF/PF/AF/UF) clears on read and
drops IRQ8.  Periodic interrupt rates come from register A RS3-RS0 (32.768 kHz
>> (rate-1); rates 1 and 2 are 256 and 128 Hz).

Time: ``epoch`` (seconds, UTC) plus ``events.now * ns_per_tick`` — the
deterministic event-queue clock, never the host's.  CMOS memory-size bytes are
filled as QEMU's pc_cmos_init does (0x15/0x16 base KiB, 0x17/0x18 and
0x30/0x31 KiB above 1 MiB capped at 65535, 0x34/0x35 64 KiB units above 16 MiB
below 4 GiB, 0x5B-0x5D 64 KiB units above 4 GiB).
"""

from __future__ import annotations

import calendar
import time as _time
from fractions import Fraction
from typing import Callable

from .clock import NS_PER_TICK
from .events import Event, EventQueue

NS = 1_000_000_000
UIP_NS = 244_000
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
B_SET, B_PIE, B_AIE, B_UIE, B_DM, B_24H = 0x80, 0x40, 0x20, 0x10, 0x04, 0x02
C_IRQF, C_PF, C_AF, C_UF = 0x80, 0x40, 0x20, 0x10
KIB, MIB, GIB = 1024, 1 << 20, 1 << 30


def cmos_memory_bytes(below_4g: int, above_4g: int = 0) -> dict[int, int]:
    """The memory-size CMOS bytes for a PC with this much RAM (QEMU pc_cmos_init)."""
    out: dict[int, int] = {0x15: 640 & 0xFF, 0x16: 640 >> 8}
    ext = min(max(below_4g // KIB - 1024, 0), 65535)
    for lo in (0x17, 0x30):
        out[lo], out[lo + 1] = ext & 0xFF, ext >> 8
    hi = min(max((below_4g - 16 * MIB) // (64 * KIB), 0), 65535)
    out[0x34], out[0x35] = hi & 0xFF, hi >> 8
    a4 = above_4g // (64 * KIB)
    out[0x5B], out[0x5C], out[0x5D] = a4 & 0xFF, a4 >> 8 & 0xFF, a4 >> 16 & 0xFF
    return out


class RTC:
    """A RegionHandler for ports 0x70-0x71."""

    def __init__(self, events: EventQueue, irq: Callable[[bool], None] | None = None,
                 ns_per_tick: "int | Fraction" = NS_PER_TICK, epoch: int = 1_700_000_000):
        self.events = events
        self.irq = irq or (lambda level: None)
        self.ns_per_tick = ns_per_tick
        self.offset_s = epoch            # seconds at virtual time 0
        self.cmos = bytearray(128)
        self.cmos[REG_A] = 0x26          # 32.768 kHz time base, 1024 Hz rate (BIOS default)
        self.cmos[REG_B] = B_24H
        self.cmos[REG_D] = 0x80          # VRT: the battery is good
        self.index = 0
        self.nmi_masked = False
        self._frozen: int | None = None  # seconds while SET is on
        self._periodic: Event | None = None
        self._alarm: Event | None = None

    # --- time ------------------------------------------------------------------
    def _now_ns(self) -> int:
        return int(self.events.now * self.ns_per_tick)

    def seconds(self) -> int:
        if self._frozen is not None:
            return self._frozen
        return self.offset_s + self._now_ns() // NS

    def _enc(self, v: int) -> int:
        return v if self.cmos[REG_B] & B_DM else (v // 10) << 4 | v % 10

    def _dec(self, v: int) -> int:
        return v if self.cmos[REG_B] & B_DM else (v >> 4) * 10 + (v & 0xF)

    def _enc_hour(self, h: int) -> int:
        if self.cmos[REG_B] & B_24H:
            return self._enc(h)
        pm = h >= 12
        return self._enc(h % 12 or 12) | (0x80 if pm else 0)

    def _dec_hour(self, v: int) -> int:
        if self.cmos[REG_B] & B_24H:
            return self._dec(v)
        h = self._dec(v & 0x7F) % 12
        return h + 12 if v & 0x80 else h

    def _clock_reg(self, reg: int) -> int:
        t = _time.gmtime(self.seconds())
        return {0: self._enc(t.tm_sec), 2: self._enc(t.tm_min), 4: self._enc_hour(t.tm_hour),
                6: self._enc((t.tm_wday + 1) % 7 + 1), 7: self._enc(t.tm_mday),
                8: self._enc(t.tm_mon), 9: self._enc(t.tm_year % 100),
                0x32: self._enc(t.tm_year // 100)}[reg]

    def _set_clock_reg(self, reg: int, v: int) -> None:
        t = list(_time.gmtime(self.seconds()))      # year, mon, mday, hour, min, sec
        if reg == 0: t[5] = self._dec(v)
        elif reg == 2: t[4] = self._dec(v)
        elif reg == 4: t[3] = self._dec_hour(v)
        elif reg == 7: t[2] = self._dec(v)
        elif reg == 8: t[1] = self._dec(v)
        elif reg == 9: t[0] = t[0] // 100 * 100 + self._dec(v)
        elif reg == 0x32: t[0] = self._dec(v) * 100 + t[0] % 100
        else: return                                  # day of week follows the date
        secs = calendar.timegm(tuple(t[:6]) + (0, 0, 0))
        if self._frozen is not None:
            self._frozen = secs
        else:
            self.offset_s = secs - self._now_ns() // NS

    # --- interrupts ----------------------------------------------------------------
    def _flag(self, bit: int) -> None:
        self.cmos[REG_C] |= bit
        enables = self.cmos[REG_B] & (B_PIE | B_AIE | B_UIE)
        if self.cmos[REG_C] & enables and not self.cmos[REG_C] & C_IRQF:
            self.cmos[REG_C] |= C_IRQF
            self.irq(True)

    def periodic_ns(self) -> int | None:
        rate = self.cmos[REG_A] & 0xF
        if rate == 0 or (self.cmos[REG_A] >> 4 & 7) != 2:
            return None
        hz = {1: 256, 2: 128}.get(rate, 32768 >> (rate - 1))
        return NS // hz

    def _arm(self) -> None:
        for ev in (self._periodic, self._alarm):
            if ev is not None:
                self.events.cancel(ev)
        self._periodic = self._alarm = None
        p = self.periodic_ns()
        if p is not None and self.cmos[REG_B] & B_PIE:
            nxt = (self._now_ns() // p + 1) * p
            self._periodic = self.events.schedule(self._ticks_until(nxt), self._on_periodic, name="rtc.pf")
        if self.cmos[REG_B] & (B_AIE | B_UIE) and self._frozen is None:
            nxt = (self._now_ns() // NS + 1) * NS
            self._alarm = self.events.schedule(self._ticks_until(nxt), self._on_second, name="rtc.sec")

    def _ticks_until(self, ns: int) -> int:
        return max(1, -(-(ns - self._now_ns()) // self.ns_per_tick))

    def _on_periodic(self) -> None:
        self._periodic = None
        self._flag(C_PF)
        self._arm()

    def _on_second(self) -> None:
        self._alarm = None
        self._flag(C_UF)
        match = all(a >= 0xC0 or a == self._clock_reg(r)
                    for a, r in ((self.cmos[1], 0), (self.cmos[3], 2), (self.cmos[5], 4)))
        if match:
            self._flag(C_AF)
        self._arm()

    # --- ports -----------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF
        reg = self.index
        if reg in (0, 2, 4, 6, 7, 8, 9, 0x32):
            return self._clock_reg(reg)
        if reg == REG_A:
            uip = (self._frozen is None and self._now_ns() % NS >= NS - UIP_NS)
            return self.cmos[REG_A] & 0x7F | (0x80 if uip else 0)
        if reg == REG_C:
            v = self.cmos[REG_C]
            self.cmos[REG_C] = 0
            if v & C_IRQF:
                self.irq(False)
            return v
        return self.cmos[reg]

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 0:
            self.index = value & 0x7F
            self.nmi_masked = bool(value & 0x80)
            return
        reg = self.index
        if reg in (0, 2, 4, 7, 8, 9, 0x32):
            self._set_clock_reg(reg, value)
        elif reg == REG_A:
            self.cmos[REG_A] = value & 0x7F
            self._arm()
        elif reg == REG_B:
            if value & B_SET and self._frozen is None:
                self._frozen = self.seconds()
            elif not value & B_SET and self._frozen is not None:
                self.offset_s = self._frozen - self._now_ns() // NS
                self._frozen = None
            self.cmos[REG_B] = value & ~(B_UIE if value & B_SET else 0)
            self._arm()
        elif reg in (REG_C, REG_D, 6):
            pass                                     # read-only (D, C) / derived (day of week)
        else:
            self.cmos[reg] = value

    def set_memory(self, below_4g: int, above_4g: int = 0) -> None:
        for k, v in cmos_memory_bytes(below_4g, above_4g).items():
            self.cmos[k] = v
