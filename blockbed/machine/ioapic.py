"""A minimal I/O APIC at 0xFEC00000 for INTx (82093AA datasheet §3.2).

IOREGSEL at offset 0x00 selects a register, IOWIN at 0x10 reads or writes it:
0x00 ID, 0x01 version (24 entries), 0x10 + 2n / 0x11 + 2n the low/high dword of
redirection entry n (vector in bits 7:0, level trigger bit 15, mask bit 16).
PCI INTx# lines are level-triggered: while a line is asserted and its entry
unmasked, the vector is raised in the local APIC; after the guest's EOI a
still-asserted line raises it again (remote IRR cleared by the EOI broadcast).
"""

from __future__ import annotations

from .interrupts import LocalAPIC

IOAPIC_BASE = 0xFEC00000
IOAPIC_SIZE = 0x1000
ENTRIES = 24


class IOAPIC:
    def __init__(self, apic: LocalAPIC):
        self.apic = apic
        self.select = 0
        self.redir = [1 << 16] * ENTRIES  # masked at reset
        self.asserted: set[int] = set()
        self.remote_irr: set[int] = set()

    def set_line(self, gsi: int, level: bool) -> None:
        if not 0 <= gsi < ENTRIES:
            return
        if level:
            self.asserted.add(gsi)
            self._deliver(gsi)
        else:
            self.asserted.discard(gsi)

    def _deliver(self, gsi: int) -> None:
        entry = self.redir[gsi]
        if entry & (1 << 16) or gsi in self.remote_irr:
            return
        if entry & (1 << 15):
            self.remote_irr.add(gsi)
        self.apic.raise_vector(entry & 0xFF)

    def eoi(self, vector: int | None = None) -> None:
        for gsi in list(self.remote_irr):
            if vector is None or (self.redir[gsi] & 0xFF) == vector:
                self.remote_irr.discard(gsi)
                if gsi in self.asserted:
                    self._deliver(gsi)

    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return self.select
        if offset == 0x10:
            s = self.select
            if s == 0:
                return 0
            if s == 1:
                return ((ENTRIES - 1) << 16) | 0x11
            if 0x10 <= s < 0x10 + 2 * ENTRIES:
                n, high = divmod(s - 0x10, 2)
                return (self.redir[n] >> (32 * high)) & 0xFFFFFFFF
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.select = value & 0xFF
        elif offset == 0x10 and 0x10 <= self.select < 0x10 + 2 * ENTRIES:
            n, high = divmod(self.select - 0x10, 2)
            if high:
                self.redir[n] = (self.redir[n] & 0xFFFFFFFF) | (value << 32)
            else:
                self.redir[n] = (self.redir[n] & ~0xFFFFFFFF) | (value & 0xFFFFFFFF)
                if n in self.asserted:
                    self._deliver(n)
