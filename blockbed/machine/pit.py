"""The 8254 programmable interval timer (ports 0x40-0x43), on the virtual clock.

Intel 82C54 data sheet (order 231244): three 16-bit down counters, a control
word register at 0x43 and one data port per counter (0x40-0x42).  Channel 0's
OUT drives ISA IRQ0.  Implemented: control word (SC/RW/M/BCD fields, §"Control
Word Format"), modes 0 (interrupt on terminal count), 2 (rate generator) and 3
(square wave), the counter-latch command, the read-back command (count and
status latches, status byte bit 7 = OUT, bit 6 = null count), and LSB/MSB/
LSB-then-MSB access.  A count of 0 means 65536, as the data sheet says.  BCD
counting is stored in the status byte but counts in binary (Linux never sets
it).  Modes 1/4/5 need the GATE input (channel 2 on port 0x61) and are counted
like mode 0, which is what QEMU's hw/timer/i8254_common.c does for the count.

Time: the counter clock (1.193182 MHz on a PC) is ``clocks_per_tick`` counter
clocks per tick of the machine's deterministic event queue (events.py); the
count read back and the IRQ0 edges are functions of that virtual time only,
so a run is reproducible exit for exit.  ``irq(level)`` is called with the
OUT level of channel 0 — modes 2 and 3 give one rising edge per period, mode
0 one rising edge at terminal count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .events import Event, EventQueue

PIT_HZ = 1_193_182
PIT_BASE = 0x40
PIT_PORTS = 4

# RW field of the control word (bits 5-4)
RW_LATCH, RW_LSB, RW_MSB, RW_WORD = 0, 1, 2, 3


@dataclass
class Channel:
    rw: int = RW_WORD
    mode: int = 3               # QEMU's pit_reset_common leaves every channel in mode 3
    bcd: bool = False
    count: int = 0x10000        # reload value (0 written means 65536)
    load_tick: int = 0          # virtual tick at which the count was loaded
    loaded: bool = False        # a full count has been written since the control word
    null_count: bool = True
    write_lsb_pending: bool = False   # RW_WORD: LSB written, MSB awaited
    write_lsb: int = 0
    read_msb_next: bool = False       # RW_WORD: next unlatched read is the MSB
    latched: list[int] = field(default_factory=list)   # bytes still to read from a count latch
    status_latch: int | None = None
    event: Event | None = None


class PIT:
    """Three 8254 counters; a RegionHandler for ports 0x40-0x43."""

    def __init__(self, events: EventQueue, irq: Callable[[bool], None] | None = None,
                 clocks_per_tick: int = 1):
        if clocks_per_tick < 1:
            raise ValueError("clocks_per_tick must be >= 1")
        self.events = events
        self.irq = irq or (lambda level: None)
        self.cpt = clocks_per_tick
        self.ch = [Channel() for _ in range(3)]
        self.out0 = True          # mode 3, not counting: OUT high

    # --- time -----------------------------------------------------------------
    def _elapsed(self, c: Channel) -> int:
        return (self.events.now - c.load_tick) * self.cpt

    def _current_count(self, c: Channel) -> int:
        """The counting element now (8254 data sheet, mode descriptions)."""
        if not c.loaded:
            return c.count & 0xFFFF
        d = self._elapsed(c)
        if c.mode in (2, 6):
            return c.count - (d % c.count)
        if c.mode in (3, 7):
            return (c.count - ((2 * d) % c.count)) & 0xFFFF
        return (c.count - d) & 0xFFFF

    def _out(self, c: Channel) -> bool:
        if not c.loaded:
            return c.mode not in (0,)
        d = self._elapsed(c)
        if c.mode in (2, 6):
            return d % c.count != c.count - 1          # low for the clock when the count is 1
        if c.mode in (3, 7):
            return d % c.count < (c.count + 1) // 2    # high for the first half (rounded up)
        return d >= c.count                            # mode 0: high at terminal count

    def output(self, index: int) -> bool:
        return self._out(self.ch[index])

    # --- IRQ0 scheduling ----------------------------------------------------------
    def _ticks_for(self, clocks: int) -> int:
        return -(-clocks // self.cpt)

    def _arm(self, index: int) -> None:
        c = self.ch[index]
        if c.event is not None:
            self.events.cancel(c.event)
            c.event = None
        if index != 0 or not c.loaded:
            return
        d = self._elapsed(c)
        if c.mode in (0, 1, 4, 5):
            if d >= c.count:
                return
            target = c.count                        # clock at which OUT rises
        else:
            target = (d // c.count + 1) * c.count   # next period boundary: a rising edge
        due = c.load_tick + self._ticks_for(target)
        c.event = self.events.schedule(max(0, due - self.events.now), self._fire, name="pit.irq0")

    def _fire(self) -> None:
        c = self.ch[0]
        c.event = None
        if c.mode in (0, 1, 4, 5):
            self._set_out0(True)
        else:
            # one rising edge per period: drop and raise (the low phase is shorter
            # than one tick at any useful rate)
            self._set_out0(False)
            self._set_out0(True)
        self._arm(0)

    def _set_out0(self, level: bool) -> None:
        if level != self.out0:
            self.out0 = level
            self.irq(level)

    # --- port access ------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == 3:
            return 0xFF                    # the control word register is write-only
        c = self.ch[offset]
        if c.status_latch is not None:
            v, c.status_latch = c.status_latch, None
            return v
        if c.latched:
            return c.latched.pop(0)
        n = self._current_count(c)
        if c.rw == RW_LSB:
            return n & 0xFF
        if c.rw == RW_MSB:
            return n >> 8 & 0xFF
        c.read_msb_next = not c.read_msb_next
        return (n >> 8 & 0xFF) if not c.read_msb_next else (n & 0xFF)

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 3:
            self._control(value)
            return
        c = self.ch[offset]
        if c.rw == RW_LSB:
            self._load(offset, value)
        elif c.rw == RW_MSB:
            self._load(offset, value << 8)
        elif not c.write_lsb_pending:
            c.write_lsb, c.write_lsb_pending = value, True
            if c.mode == 0:                  # mode 0: writing the LSB stops the count
                c.loaded = False
                self._arm(offset)
        else:
            c.write_lsb_pending = False
            self._load(offset, c.write_lsb | value << 8)

    def _load(self, index: int, n: int) -> None:
        c = self.ch[index]
        c.count = n or 0x10000
        c.load_tick = self.events.now
        c.loaded = True
        c.null_count = False
        if index == 0:
            self._set_out0(self._out(c))
        self._arm(index)

    def _status(self, c: Channel) -> int:
        return (int(self._out(c)) << 7 | int(c.null_count) << 6 | c.rw << 4
                | c.mode << 1 | int(c.bcd))

    def _latch_count(self, c: Channel) -> None:
        if c.latched:
            return                                # a second latch before reading is ignored
        n = self._current_count(c)
        if c.rw == RW_LSB:
            c.latched = [n & 0xFF]
        elif c.rw == RW_MSB:
            c.latched = [n >> 8 & 0xFF]
        else:
            c.latched = [n & 0xFF, n >> 8 & 0xFF]

    def _control(self, v: int) -> None:
        sc = v >> 6
        if sc == 3:                               # read-back command
            for i in range(3):
                if v & (2 << i):
                    c = self.ch[i]
                    if not v & 0x20:
                        self._latch_count(c)
                    if not v & 0x10 and c.status_latch is None:
                        c.status_latch = self._status(c)
            return
        c = self.ch[sc]
        rw = v >> 4 & 3
        if rw == RW_LATCH:
            self._latch_count(c)
            return
        c.rw, c.mode, c.bcd = rw, v >> 1 & 7, bool(v & 1)
        if c.mode > 5:
            c.mode -= 4                           # modes 6/7 are 2/3 (data sheet: X10, X11)
        c.loaded = False
        c.null_count = True
        c.write_lsb_pending = c.read_msb_next = False
        c.latched, c.status_latch = [], None
        if sc == 0:
            self._set_out0(c.mode != 0)          # mode 0: OUT low after the control word
        self._arm(sc)
