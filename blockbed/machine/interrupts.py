"""The local APIC (a minimal one) and MSI delivery.

Only what a polled-or-MSI guest needs, per the Intel SDM vol. 3 ch. 10:
ID (0x20), version (0x30), TPR (0x80), EOI (0xB0), spurious vector (0xF0),
ISR/IRR read-back (0x100–0x170 / 0x200–0x270).  Vectors arrive in the IRR from
MSI writes (address 0xFEExxxxx, vector in data bits 7:0, SDM §10.11) and from
devices asserting an interrupt; the CPU loop delivers the highest-priority
pending vector when RFLAGS.IF=1 and its priority class is above the highest
in service; an EOI retires the highest in-service vector.
"""

from __future__ import annotations

from typing import Callable

from .. import trace

APIC_BASE = 0xFEE00000
APIC_SIZE = 0x1000


class LocalAPIC:
    def __init__(self, kick: Callable[[], None]):
        self.irr = 0  # 256-bit bitmaps as Python ints
        self.isr = 0
        self.tpr = 0
        self.svr = 0xFF
        self.apic_id = 0
        self.delivered = 0
        self._kick = kick  # asks the CPU loop to look at the IRR soon
        self.eoi_listeners: list[Callable[[int | None], None]] = []  # the I/O APIC

    # --- sources ---------------------------------------------------------
    def raise_vector(self, vector: int) -> None:
        if not 16 <= vector <= 255:  # vectors 0–15 are illegal for fixed delivery (SDM 10.5.2)
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
        """The vector to deliver now, or None."""
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

    def eoi(self) -> None:
        vector = None
        if self.isr:
            vector = self.isr.bit_length() - 1
            self.isr &= ~(1 << vector)
        for listener in self.eoi_listeners:
            listener(vector)
        if self.irr:
            self._kick()

    # --- MMIO registers --------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        reg = offset & 0xFF0
        if reg == 0x20:
            return self.apic_id << 24
        if reg == 0x30:
            return 0x00050014  # version 0x14, max LVT entry 5
        if reg == 0x80:
            return self.tpr
        if reg == 0xF0:
            return self.svr
        if 0x100 <= reg < 0x180:
            return (self.isr >> (32 * ((reg - 0x100) >> 4))) & 0xFFFFFFFF
        if 0x200 <= reg < 0x280:
            return (self.irr >> (32 * ((reg - 0x200) >> 4))) & 0xFFFFFFFF
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        reg = offset & 0xFF0
        if reg == 0xB0:
            self.eoi()
        elif reg == 0x80:
            self.tpr = value & 0xFF
        elif reg == 0xF0:
            self.svr = value & 0x3FF
        elif reg == 0x20:
            self.apic_id = (value >> 24) & 0xFF
