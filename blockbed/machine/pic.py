"""The 8259A PIC pair (master 0x20/0x21, slave 0xA0/0xA1, ELCR 0x4D0/0x4D1).

Intel 8259A data sheet (order 231468): ICW1-ICW4 initialisation sequence,
OCW1 (IMR), OCW2 (non-specific / specific EOI), OCW3 (read IRR/ISR select),
auto-EOI (ICW4 bit 1), the slave cascaded on master input 2.  Edge-triggered
inputs latch a rising edge into the IRR; inputs whose ELCR bit is set (PIIX
edge/level control registers, ports 0x4D0/0x4D1, as QEMU's hw/intc/i8259.c)
follow the line level.  Priority is fixed (IR0 highest; rotation is not
implemented).

The CPU side takes interrupts through the *interrupt source* interface:
``pending_vector() -> int | None`` (the vector the INTA cycle would return,
without side effects) and ``accept(vector)`` (the INTA cycle: IRR -> ISR, or
nothing in ISR under auto-EOI).  ``notify`` is called when a new request may
be pending, so the CPU loop can look (LINT0/ExtINT in virtual-wire mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class Chip:
    irr: int = 0
    isr: int = 0
    imr: int = 0xFF
    base: int = 0
    elcr: int = 0
    levels: int = 0
    init_step: int = 0      # 0 = ready; 2/3/4 = next ICW expected
    need_icw4: bool = False
    auto_eoi: bool = False
    read_isr: bool = False

    def highest(self, bits: int) -> int | None:
        for i in range(8):
            if bits >> i & 1:
                return i
        return None

    def request(self) -> int | None:
        """The highest unmasked request above everything in service."""
        req = self.highest(self.irr & ~self.imr)
        if req is None:
            return None
        svc = self.highest(self.isr)
        return req if svc is None or req < svc else None


class PICPair:
    def __init__(self, notify: Callable[[], None] | None = None):
        self.master, self.slave = Chip(), Chip()
        self.notify = notify or (lambda: None)

    # --- lines ----------------------------------------------------------------
    def set_irq(self, irq: int, level: bool) -> None:
        chip, pin = (self.master, irq) if irq < 8 else (self.slave, irq - 8)
        bit = 1 << pin
        was = bool(chip.levels & bit)
        chip.levels = chip.levels | bit if level else chip.levels & ~bit
        if chip.elcr & bit:
            chip.irr = chip.irr | bit if level else chip.irr & ~bit
        elif level and not was:
            chip.irr |= bit
        self._cascade()
        if self.pending_vector() is not None:
            self.notify()

    def _cascade(self) -> None:
        if self.slave.request() is not None:
            self.master.irr |= 1 << 2
        else:
            self.master.irr &= ~(1 << 2)

    # --- interrupt source ------------------------------------------------------------
    def pending_vector(self) -> int | None:
        m = self.master.request()
        if m is None:
            return None
        if m == 2:
            s = self.slave.request()
            return None if s is None else self.slave.base + s
        return self.master.base + m

    def accept(self, vector: int) -> None:
        m = self.master.request()
        if m is None:
            return
        self._ack(self.master, m)
        if m == 2:
            s = self.slave.request()
            if s is not None:
                self._ack(self.slave, s)
            self._cascade()

    @staticmethod
    def _ack(chip: Chip, pin: int) -> None:
        bit = 1 << pin
        if not chip.elcr & bit:
            chip.irr &= ~bit              # an edge request is consumed by INTA
        if not chip.auto_eoi:
            chip.isr |= bit

    # --- ports -------------------------------------------------------------------
    def handler(self, which: str):
        pic = self

        class _H:
            def read(self, offset: int, size: int) -> int:
                return pic.read(which, offset)

            def write(self, offset: int, size: int, value: int) -> None:
                pic.write(which, offset, value & 0xFF)
        return _H()

    def _chip(self, which: str) -> Chip:
        return self.master if which == "master" else self.slave

    def read(self, which: str, offset: int) -> int:
        if which == "elcr":
            return (self.master if offset == 0 else self.slave).elcr
        c = self._chip(which)
        if offset == 1:
            return c.imr
        return c.isr if c.read_isr else c.irr

    def write(self, which: str, offset: int, v: int) -> None:
        if which == "elcr":
            # ELCR: IRQ0-2 and IRQ8/IRQ13 are always edge (PIIX datasheet §4.1.8)
            if offset == 0:
                self.master.elcr = v & 0xF8
            else:
                self.slave.elcr = v & 0xDE
            return
        c = self._chip(which)
        if offset == 0:
            if v & 0x10:                                   # ICW1
                c.init_step, c.need_icw4 = 2, bool(v & 1)
                c.imr = c.isr = c.irr = 0
                c.auto_eoi = c.read_isr = False
            elif v & 0x08:                                 # OCW3
                if v & 0x02:
                    c.read_isr = bool(v & 1)
            else:                                          # OCW2
                cmd = v >> 5
                if cmd in (1, 5):                          # non-specific EOI
                    top = c.highest(c.isr)
                    if top is not None:
                        c.isr &= ~(1 << top)
                elif cmd in (3, 7):                        # specific EOI
                    c.isr &= ~(1 << (v & 7))
        else:
            if c.init_step == 2:                           # ICW2: vector base
                c.base = v & 0xF8
                c.init_step = 3
            elif c.init_step == 3:                         # ICW3: cascade wiring
                c.init_step = 4 if c.need_icw4 else 0
            elif c.init_step == 4:                         # ICW4
                c.auto_eoi = bool(v & 2)
                c.init_step = 0
            else:                                          # OCW1
                c.imr = v
        self._cascade()
        if self.pending_vector() is not None:
            self.notify()
