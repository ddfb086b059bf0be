"""The local APIC's registers, timer, self-IPI and virtual wire (machine/interrupts.py),
driven directly (SDM vol. 3 ch. 10); the guest-level differential test is
tests/test_exceptions.py::test_user_mode_round_trips_match_qemu (timer in user mode)."""

from __future__ import annotations

from blockbed.machine.clock import APIC_BUS_PER_TICK
from blockbed.machine.events import EventQueue
from blockbed.machine.interrupts import (LVT_LINT0, LVT_MASKED, LVT_TIMER, LocalAPIC, _divisor)
from blockbed.machine.pic import PICPair

SVR, LVT_T, ICNT, CCNT, DCR, EOI, ICR_LO, ICR_HI, ESR, TPR, PPR = (
    0xF0, 0x320, 0x380, 0x390, 0x3E0, 0xB0, 0x300, 0x310, 0x280, 0x80, 0xA0)


def make() -> tuple[LocalAPIC, EventQueue, list[int]]:
    ev = EventQueue()
    kicks: list[int] = []
    apic = LocalAPIC(kick=lambda: kicks.append(ev.now), events=ev)
    apic.write(SVR, 4, 0x1FF)
    return apic, ev, kicks


def test_divide_configuration_encoding():
    # SDM figure 10-10: bits 3,1:0 -> 2,4,8,16,32,64,128,1
    assert [_divisor(v) for v in (0x0, 0x1, 0x2, 0x3, 0x8, 0x9, 0xA, 0xB)] == \
        [2, 4, 8, 16, 32, 64, 128, 1]


def test_reset_state():
    apic = LocalAPIC(kick=lambda: None)
    assert apic.read(0x30, 4) == 0x00050014
    for reg in (0x320, 0x330, 0x340, 0x360, 0x370):
        assert apic.read(reg, 4) == LVT_MASKED
    assert apic.read(LVT_LINT0, 4) == 0x700          # ExtINT, unmasked: virtual wire
    assert apic.read(0xE0, 4) == 0xFFFFFFFF and apic.read(SVR, 4) == 0xFF


def test_one_shot_counts_down_and_fires_once():
    apic, ev, _ = make()
    apic.write(DCR, 4, 0x3)                          # divide by 16
    apic.write(LVT_T, 4, 0x40)
    apic.write(ICNT, 4, 16_000)                      # 16000 * 16 / 1000 = 256 ticks
    ticks = 16_000 * 16 // APIC_BUS_PER_TICK
    ev.step(ticks // 2)
    assert apic.read(CCNT, 4) == 16_000 - (ticks // 2) * APIC_BUS_PER_TICK // 16
    assert not apic.irr
    ev.step(ticks - ticks // 2)
    assert apic.irr == 1 << 0x40 and apic.timer_fired == 1
    assert apic.read(CCNT, 4) == 0
    ev.step(10 * ticks)
    assert apic.timer_fired == 1                     # one-shot


def test_periodic_reloads_without_drift():
    apic, ev, _ = make()
    apic.write(DCR, 4, 0xB)                          # divide by 1
    apic.write(LVT_T, 4, 0x41 | 1 << 17)             # periodic
    apic.write(ICNT, 4, 10 * APIC_BUS_PER_TICK)      # every 10 ticks
    for _ in range(95):                              # time moves a tick per exit
        ev.step(1)
    assert apic.timer_fired == 9
    assert 0 < apic.read(CCNT, 4) <= 10 * APIC_BUS_PER_TICK
    apic.write(ICNT, 4, 0)                           # 0 stops the timer (§10.5.4)
    ev.step(100)
    assert apic.timer_fired == 9


def test_masked_timer_counts_but_raises_nothing():
    apic, ev, _ = make()
    apic.write(LVT_T, 4, 0x40 | LVT_MASKED)
    apic.write(ICNT, 4, 1000)
    ev.step(1000)
    assert apic.timer_fired == 1 and not apic.irr


def test_software_disable_masks_every_lvt():
    apic, ev, _ = make()
    apic.write(LVT_T, 4, 0x40)
    apic.write(SVR, 4, 0xFF)
    assert apic.read(LVT_T, 4) & LVT_MASKED and apic.read(LVT_LINT0, 4) & LVT_MASKED
    apic.write(LVT_T, 4, 0x40)                       # stays masked while disabled
    assert apic.read(LVT_T, 4) & LVT_MASKED


def test_self_ipi_and_illegal_vector():
    apic, ev, kicks = make()
    apic.write(ICR_HI, 4, 0)
    apic.write(ICR_LO, 4, 0x40000 | 0x55)            # shorthand 01: self, fixed, vector 0x55
    assert apic.irr == 1 << 0x55
    assert not apic.read(ICR_LO, 4) & (1 << 12)      # delivery status idle
    apic.write(ICR_LO, 4, 0x40000 | 0x05)            # vector 5: illegal
    assert apic.irr == 1 << 0x55 and apic.read(ESR, 4) & (1 << 6)
    apic.write(ESR, 4, 0)
    assert apic.read(ESR, 4) == 0
    apic.write(ICR_HI, 4, 7 << 24)                   # physical destination 7: nobody here
    apic.write(ICR_LO, 4, 0x66)
    assert not apic.irr >> 0x66 & 1


def test_processor_priority():
    apic, _, _ = make()
    apic.write(TPR, 4, 0x35)
    assert apic.read(PPR, 4) == 0x35
    apic.raise_vector(0x61)
    apic.accept(0x61)
    assert apic.read(PPR, 4) == 0x60


def test_virtual_wire_passes_the_8259_only_while_lint0_is_open():
    apic, _, kicks = make()
    pic = PICPair(notify=lambda: None)
    apic.extint = pic
    for port, v in ((0, 0x11), (1, 0x30), (1, 0x04), (1, 0x01), (1, 0xFE)):   # ICW1-4, IMR
        pic.handler("master").write(port, 1, v)
    pic.set_irq(0, True)
    assert apic.pending_vector() is None and apic.pending_extint() == 0x30
    apic.write(LVT_LINT0, 4, 0x700 | LVT_MASKED)    # Linux's "symmetric I/O mode"
    assert apic.pending_extint() is None and not apic.has_pending()
    apic.write(LVT_LINT0, 4, 0x700)
    assert apic.pending_extint() == 0x30 and kicks  # reopening asks the CPU to look


def test_ipi_destinations_physical_logical_flat_and_cluster():
    """SDM §10.6.2: which destinations reach this (only) APIC.  Linux's flat driver
    retriggers an edge interrupt with a logical-mode IPI to its own LDR bit."""
    apic, ev, kicks = make()
    LDR, DFR, LOGICAL = 0xD0, 0xE0, 1 << 11

    def reaches(dest: int, mode_bits: int, vector: int) -> bool:
        apic.write(ICR_HI, 4, dest << 24)
        apic.write(ICR_LO, 4, mode_bits | vector)
        hit = bool(apic.irr >> vector & 1)
        apic.irr &= ~(1 << vector)
        return hit

    assert reaches(0, 0, 0x40)                       # physical: our APIC ID 0
    assert reaches(0xFF, 0, 0x41)                    # physical broadcast
    apic.write(LDR, 4, 0x01 << 24)                   # flat model (DFR reset 0xFFFFFFFF)
    assert reaches(0x01, LOGICAL, 0x42)
    assert reaches(0x03, LOGICAL, 0x43)              # any overlapping bit
    assert not reaches(0x02, LOGICAL, 0x44)
    assert reaches(0x01, LOGICAL | 0x100, 0x45)      # lowest priority: the one candidate
    assert not reaches(0x01, LOGICAL | 0x400, 0x46)  # NMI: not delivered as a vector
    assert not reaches(0x01, LOGICAL | 0xC0000, 0x47)  # shorthand 'all excluding self'
    apic.write(DFR, 4, 0x0FFFFFFF)                   # cluster model
    apic.write(LDR, 4, 0x21 << 24)                   # cluster 2, member bit 0
    assert apic.read(DFR, 4) == 0x0FFFFFFF
    assert reaches(0x21, LOGICAL, 0x48)
    assert reaches(0x23, LOGICAL, 0x49)
    assert not reaches(0x11, LOGICAL, 0x4A)          # another cluster
    assert not reaches(0x22, LOGICAL, 0x4B)          # another member
