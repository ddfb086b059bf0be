"""The local APIC and MSI delivery.

Intel SDM vol. 3 ch. 10 (xAPIC, memory-mapped at 0xFEE00000).  Registers:
ID (0x20), version (0x30), TPR (0x80), EOI (0xB0), LDR (0xD0), DFR (0xE0),
spurious vector (0xF0, bit 8 = software enable), ISR/TMR/IRR read-back
(0x100/0x180/0x200), ESR (0x280), ICR (0x300/0x310), the local vector table —
timer (0x320), thermal (0x330), performance counter (0x340), LINT0 (0x350),
LINT1 (0x360), error (0x370) — and the timer's initial count (0x380), current
count (0x390) and divide configuration (0x3E0).

Vectors arrive in the IRR from MSI writes (address 0xFEExxxxx, vector in data
bits 7:0, SDM §10.11), from the I/O APIC, from the timer and from self-IPIs;
the CPU loop delivers the highest-priority pending vector when RFLAGS.IF=1 and
its priority class is above the highest in service; an EOI retires the highest
in-service vector.

Virtual wire (SDM §10.5.1, MP spec §3.6.2.2): while LINT0 is unmasked in ExtINT
mode the 8259 pair (``extint``) is an interrupt source behind the APIC's own
vectors, as QEMU's ``apic_accept_pic_intr``; as QEMU does for the boot CPU,
LINT0 starts in ExtINT mode (0x700), so a guest that never programs the APIC
takes PIC interrupts.

The timer (SDM §10.5.4) counts the bus clock (clock.APIC_BUS_PER_TICK per
virtual tick) divided by the divide configuration register, one-shot or
periodic; TSC-deadline mode is not offered (CPUID.1:ECX[24] is 0 on this CPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Protocol

from .. import trace
from .clock import APIC_BUS_PER_TICK

if TYPE_CHECKING:
    from .events import Event, EventQueue

APIC_BASE = 0xFEE00000
APIC_SIZE = 0x1000

# Local vector table registers (SDM table 10-1) and their fields (figure 10-8).
LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = (
    0x320, 0x330, 0x340, 0x350, 0x360, 0x370)
LVT_REGS = (LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR)
LVT_MASKED = 1 << 16
LVT_VECTOR = 0xFF
DM_FIXED, DM_LOWEST, DM_NMI, DM_EXTINT = 0, 1, 4, 7
TIMER_ONESHOT, TIMER_PERIODIC, TIMER_TSC_DEADLINE = 0, 1, 2
# Writable bits per LVT register: vector, delivery mode (not timer/error), status is RO,
# polarity/remote IRR/trigger (LINT0/1 only), mask, timer mode (timer only).
_LVT_WRITABLE = {LVT_TIMER: 0x700FF, LVT_THERMAL: 0x107FF, LVT_PERF: 0x107FF,
                 LVT_LINT0: 0x1A7FF, LVT_LINT1: 0x1A7FF, LVT_ERROR: 0x100FF}
SVR_ENABLE = 1 << 8
ICR_DELIVERY_MODE = 0x700
ICR_SHORTHAND_SHIFT = 18
VERSION = 0x00050014     # version 0x14 (integrated xAPIC), max LVT entry 5 (six LVTs)


class InterruptSource(Protocol):
    """An 8259-style source: the vector an INTA cycle would return, and the cycle."""

    def pending_vector(self) -> int | None: ...
    def accept(self, vector: int) -> None: ...


def _divisor(dcr: int) -> int:
    """Divide configuration register bits 3,1:0 (SDM figure 10-10): 111b = 1, else 2^(n+1)."""
    n = (dcr & 3) | (dcr >> 1 & 4)
    return 1 if n == 7 else 2 << n


class LocalAPIC:
    def __init__(self, kick: Callable[[], None], events: "EventQueue | None" = None):
        self.irr = 0  # 256-bit bitmaps as Python ints
        self.isr = 0
        self.tmr = 0
        self.tpr = 0
        self.svr = 0xFF
        self.apic_id = 0
        self.ldr = 0
        self.dfr = 0xFFFFFFFF
        self.esr = 0
        self.icr = 0
        self.lvt = {r: LVT_MASKED for r in LVT_REGS}
        self.lvt[LVT_LINT0] = DM_EXTINT << 8        # virtual wire at reset (QEMU's BSP)
        self.timer_initial = 0
        self.timer_dcr = 0
        self._timer_start = 0       # tick at which the current count was loaded
        self._timer_event: "Event | None" = None
        self.timer_fired = 0
        self.delivered = 0
        self.events = events
        self.extint: InterruptSource | None = None   # the 8259 pair behind LINT0
        self._kick = kick  # asks the CPU loop to look at the IRR soon
        self.eoi_listeners: list[Callable[[int | None], None]] = []  # the I/O APIC

    # --- sources ---------------------------------------------------------
    def raise_vector(self, vector: int) -> None:
        if not 16 <= vector <= 255:  # vectors 0–15 are illegal for fixed delivery (SDM 10.5.2)
            self.esr |= 1 << 6 if vector else 0   # "received illegal vector" (not for 0)
            if trace.enabled:
                trace.emit("apic.illegal_vector", vector=vector)
            return
        self.irr |= 1 << vector
        if trace.enabled:
            trace.emit("apic.irr", vector=vector)
        self._kick()

    def msi(self, address: int, data: int) -> None:
        """A device's MSI/MSI-X write (address 0xFEExxxxx, data = vector)."""
        if (address & 0xFFF00000) != APIC_BASE:
            if trace.enabled:
                trace.emit("apic.msi_bad_address", address=address, data=data)
            return
        self.raise_vector(data & 0xFF)

    # --- the CPU side --------------------------------------------------------
    def pending_vector(self) -> int | None:
        """The APIC vector to deliver now, or None."""
        if not self.irr:
            return None
        vec = self.irr.bit_length() - 1
        isr_class = (self.isr.bit_length() - 1) >> 4 if self.isr else 0
        if (vec >> 4) <= max(isr_class, self.tpr >> 4):
            return None
        return vec

    def accept(self, vector: int) -> None:
        """The CPU took ``vector``: IRR → ISR."""
        self.irr &= ~(1 << vector)
        self.isr |= 1 << vector
        self.delivered += 1

    def extint_open(self) -> bool:
        """LINT0 passes the 8259's INTR (unmasked, ExtINT delivery mode)."""
        lint0 = self.lvt[LVT_LINT0]
        return self.extint is not None and not lint0 & LVT_MASKED and (lint0 >> 8 & 7) == DM_EXTINT

    def pending_extint(self) -> int | None:
        """The 8259's vector, when virtual wire lets it through (after APIC vectors)."""
        return self.extint.pending_vector() if self.extint_open() else None

    def has_pending(self) -> bool:
        return bool(self.irr) or self.pending_extint() is not None

    def eoi(self) -> None:
        vector = None
        if self.isr:
            vector = self.isr.bit_length() - 1
            self.isr &= ~(1 << vector)
        for listener in self.eoi_listeners:
            listener(vector)
        if self.irr:
            self._kick()

    # --- the timer (SDM §10.5.4) ----------------------------------------------------
    def _timer_mode(self) -> int:
        return self.lvt[LVT_TIMER] >> 17 & 3

    def _counts_elapsed(self) -> int:
        return (self.events.now - self._timer_start) * APIC_BUS_PER_TICK // _divisor(self.timer_dcr)

    def timer_current(self) -> int:
        """The current-count register: counts down from the initial count to 0 (one-shot)
        or wraps to the initial count (periodic)."""
        if not self.timer_initial or self.events is None or self._timer_event is None and \
                self._timer_mode() != TIMER_PERIODIC:
            return 0
        left = self.timer_initial - self._counts_elapsed()
        if self._timer_mode() == TIMER_PERIODIC:
            return left % self.timer_initial or self.timer_initial if left <= 0 else left
        return max(0, left)

    def _timer_stop(self) -> None:
        if self._timer_event is not None:
            self.events.cancel(self._timer_event)
            self._timer_event = None

    def _timer_arm(self, counts: int) -> None:
        """Fire after ``counts`` more timer counts (ticks rounded up, at least one)."""
        self._timer_stop()
        per = _divisor(self.timer_dcr)
        ticks = max(1, -(-counts * per // APIC_BUS_PER_TICK))
        self._timer_event = self.events.schedule(ticks, self._timer_expire, name="apic.timer")

    def _timer_load(self, initial: int) -> None:
        self.timer_initial = initial
        self._timer_stop()
        if self.events is None or not initial or self._timer_mode() == TIMER_TSC_DEADLINE:
            return
        self._timer_start = self.events.now
        self._timer_arm(initial)

    def _timer_expire(self) -> None:
        self._timer_event = None
        self.timer_fired += 1
        lvt = self.lvt[LVT_TIMER]
        if trace.enabled:
            trace.emit("apic.timer", vector=lvt & LVT_VECTOR, masked=bool(lvt & LVT_MASKED))
        if self._timer_mode() == TIMER_PERIODIC and self.timer_initial:
            # The next period starts where this one ended, not when it was served.
            self._timer_start += -(-self.timer_initial * _divisor(self.timer_dcr)
                                   // APIC_BUS_PER_TICK)
            self._timer_start = min(self._timer_start, self.events.now)
            self._timer_arm(self.timer_initial - self._counts_elapsed())
        if not lvt & LVT_MASKED and self.svr & SVR_ENABLE:
            self.raise_vector(lvt & LVT_VECTOR)

    # --- inter-processor interrupts (SDM §10.6) -----------------------------------------
    def accepts(self, dest: int, logical: bool) -> bool:
        """Whether this APIC is a destination of an IPI (SDM vol. 3 §10.6.2).

        Physical mode names an APIC ID (0xFF: all).  Logical mode matches the LDR's
        logical ID: in the flat model (DFR bits 31:28 = 1111b) by a bitwise AND of
        the 8-bit destination with it; in the cluster model (0000b) the high
        nibbles name the cluster and the low nibbles AND.  0xFF is a broadcast in
        both.  Linux's flat APIC driver sends its single-CPU IPIs (the retrigger of
        an edge interrupt that arrived while disabled) in logical mode.
        """
        if dest == 0xFF:
            return True
        if not logical:
            return dest == self.apic_id
        logical_id = self.ldr >> 24
        if self.dfr >> 28 == 0xF:
            return bool(dest & logical_id)
        return dest >> 4 == logical_id >> 4 and bool(dest & logical_id & 0xF)

    def _send_ipi(self) -> None:
        """ICR low written: one CPU, so the IPI reaches it through the shorthands 'self'
        (01b) and 'all including self' (10b), or a destination it accepts (see
        :meth:`accepts`); 'all excluding self' and INIT/SIPI/NMI reach nobody.  Fixed
        and lowest-priority delivery both raise the vector here (one candidate)."""
        icr = self.icr
        mode = (icr & ICR_DELIVERY_MODE) >> 8
        shorthand = icr >> ICR_SHORTHAND_SHIFT & 3
        dest = icr >> 56 & 0xFF
        to_self = shorthand in (1, 2) or (shorthand == 0 and self.accepts(dest, bool(icr >> 11 & 1)))
        if trace.enabled:
            trace.emit("apic.ipi", icr=icr, to_self=to_self)
        if to_self and mode in (DM_FIXED, DM_LOWEST):
            self.raise_vector(icr & 0xFF)

    # --- MMIO registers --------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        reg = offset & 0xFF0
        if reg == 0x20:
            return self.apic_id << 24
        if reg == 0x30:
            return VERSION
        if reg == 0x80:
            return self.tpr
        if reg == 0xA0:         # processor priority (SDM §10.8.3.1)
            isrv = self.isr.bit_length() - 1 if self.isr else 0
            return self.tpr if (self.tpr >> 4) >= (isrv >> 4) else isrv & 0xF0
        if reg == 0xD0:
            return self.ldr
        if reg == 0xE0:
            return self.dfr
        if reg == 0xF0:
            return self.svr
        if 0x100 <= reg < 0x180:
            return (self.isr >> (32 * ((reg - 0x100) >> 4))) & 0xFFFFFFFF
        if 0x180 <= reg < 0x200:
            return (self.tmr >> (32 * ((reg - 0x180) >> 4))) & 0xFFFFFFFF
        if 0x200 <= reg < 0x280:
            return (self.irr >> (32 * ((reg - 0x200) >> 4))) & 0xFFFFFFFF
        if reg == 0x280:
            return self.esr
        if reg == 0x300:
            return self.icr & 0xFFFFFFFF & ~(1 << 12)   # delivery status: always idle
        if reg == 0x310:
            return self.icr >> 32
        if reg in self.lvt:
            return self.lvt[reg]
        if reg == 0x380:
            return self.timer_initial
        if reg == 0x390:
            return self.timer_current()
        if reg == 0x3E0:
            return self.timer_dcr
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        reg = offset & 0xFF0
        value &= 0xFFFFFFFF
        if reg == 0xB0:
            self.eoi()
        elif reg == 0x80:
            self.tpr = value & 0xFF
        elif reg == 0xF0:
            self.svr = value & 0x3FF
            if not value & SVR_ENABLE:          # software disable masks every LVT (§10.4.7.2)
                for r in self.lvt:
                    self.lvt[r] |= LVT_MASKED
        elif reg == 0x20:
            self.apic_id = (value >> 24) & 0xFF
        elif reg == 0xD0:
            self.ldr = value & 0xFF000000
        elif reg == 0xE0:
            self.dfr = value | 0x0FFFFFFF
        elif reg == 0x280:
            self.esr = 0                        # a write latches (and here clears) the errors
        elif reg == 0x310:
            self.icr = (self.icr & 0xFFFFFFFF) | (value & 0xFF000000) << 32
        elif reg == 0x300:
            self.icr = (self.icr & ~0xFFFFFFFF) | (value & 0x000CCFFF)
            self._send_ipi()
        elif reg in self.lvt:
            if not self.svr & SVR_ENABLE:
                value |= LVT_MASKED
            was_deadline = self._timer_mode() == TIMER_TSC_DEADLINE
            self.lvt[reg] = value & _LVT_WRITABLE[reg]
            if reg == LVT_TIMER and was_deadline != (self._timer_mode() == TIMER_TSC_DEADLINE):
                self._timer_load(0)     # entering/leaving TSC-deadline mode disarms (§10.5.4.1)
            if reg == LVT_LINT0 and self.pending_extint() is not None:
                self._kick()
        elif reg == 0x380:
            self._timer_load(value)
        elif reg == 0x3E0:
            running = self.events is not None and self._timer_event is not None
            left = self.timer_current() if running else 0
            self.timer_dcr = value & 0xB
            if running:     # go on from the current count at the new rate
                self._timer_start = self.events.now - (
                    (self.timer_initial - left) * _divisor(self.timer_dcr) // APIC_BUS_PER_TICK)
                self._timer_arm(left)
