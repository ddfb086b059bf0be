"""The machine's one virtual clock: what a tick of :class:`~.events.EventQueue` is worth.

A tick is one period of the 8254's 1.193182 MHz input clock (pit.py counts in
ticks).  Every other time base of the PC platform is derived from it here, so
that a guest comparing two of them (Linux checks its LAPIC timer against the
ACPI PM timer, and calibrates the TSC against the PIT) finds them consistent:

- TSC: ``TSC_PER_TICK`` counts per tick (1.193 GHz);
- local APIC timer input (the bus clock before the divide register):
  ``APIC_BUS_PER_TICK`` counts per tick (1.193 GHz, near QEMU's 1 GHz);
- nanoseconds for the RTC and the PM timer: ``NS_PER_TICK`` (838.1 ns, exact as a
  fraction).
"""

from __future__ import annotations

from fractions import Fraction

TICK_HZ = 1_193_182
TSC_PER_TICK = 1000
APIC_BUS_PER_TICK = 1000
NS_PER_TICK = Fraction(1_000_000_000, TICK_HZ)
