"""8259A pair driven from Python: init sequence, masking, EOI, cascade, ELCR, auto-EOI."""

from blockbed.machine.pic import PICPair


def init(p: PICPair, auto_eoi: bool = False) -> None:
    # Linux's init_8259A: ICW1=0x11, ICW2 base, ICW3 cascade, ICW4 (0x01 or 0x03 auto-EOI)
    for which, base, icw3 in (("master", 0x30, 0x04), ("slave", 0x38, 0x02)):
        p.write(which, 0, 0x11)
        p.write(which, 1, base)
        p.write(which, 1, icw3)
        p.write(which, 1, 0x03 if auto_eoi else 0x01)


def test_edge_irq_masking_and_vector():
    p = PICPair()
    init(p)
    p.write("master", 1, 0xFF)
    p.set_irq(0, True)
    assert p.pending_vector() is None           # masked (request stays in IRR)
    assert p.read("master", 0) & 1
    p.write("master", 1, 0xFE)
    assert p.pending_vector() == 0x30
    p.accept(0x30)
    p.write("master", 0, 0x0B)                  # OCW3: read ISR
    assert p.read("master", 0) == 1
    assert p.pending_vector() is None
    p.write("master", 0, 0x20)                  # non-specific EOI
    assert p.read("master", 0) == 0
    p.set_irq(0, True)                          # no new edge: nothing
    assert p.pending_vector() is None


def test_priority_and_specific_eoi():
    p = PICPair()
    init(p)
    p.write("master", 1, 0x00)
    p.set_irq(4, True)
    p.accept(p.pending_vector())
    p.set_irq(1, True)                          # higher priority than IR4 in service
    assert p.pending_vector() == 0x31
    p.accept(0x31)
    p.set_irq(6, False); p.set_irq(6, True)
    assert p.pending_vector() is None           # IR6 below the in-service IR1/IR4
    p.write("master", 0, 0x60 | 4)              # specific EOI for IR4
    p.write("master", 0, 0x60 | 1)
    assert p.pending_vector() == 0x36


def test_cascade_slave_irq_through_master_ir2():
    p = PICPair()
    init(p)
    p.write("master", 1, 0xFB)                  # only IR2 (cascade) unmasked
    p.write("slave", 1, 0xFE)                   # IRQ8 unmasked
    p.set_irq(8, True)
    assert p.pending_vector() == 0x38
    p.accept(0x38)
    for which in ("master", "slave"):
        p.write(which, 0, 0x0B)
    assert p.read("master", 0) == 0x04 and p.read("slave", 0) == 0x01


def test_auto_eoi_leaves_isr_empty():
    p = PICPair()
    init(p, auto_eoi=True)
    p.write("master", 1, 0x00)
    p.set_irq(3, True)
    p.accept(p.pending_vector())
    p.write("master", 0, 0x0B)
    assert p.read("master", 0) == 0
    p.set_irq(3, False); p.set_irq(3, True)
    assert p.pending_vector() == 0x33


def test_elcr_level_triggered_follows_the_line():
    p = PICPair()
    init(p)
    p.write("elcr", 1, 0xFF)
    assert p.read("elcr", 1) == 0xDE            # IRQ8 and IRQ13 cannot be level
    p.write("elcr", 0, 0x20)                    # IRQ5 level
    p.write("master", 1, 0x00)
    p.set_irq(5, True)
    p.accept(0x35)
    p.write("master", 0, 0x20)
    assert p.pending_vector() == 0x35           # still asserted: requests again
    p.set_irq(5, False)
    assert p.pending_vector() is None


def test_notify_called_when_a_request_becomes_deliverable():
    calls = []
    p = PICPair(notify=lambda: calls.append(1))
    init(p)
    p.write("master", 1, 0xFE)
    n = len(calls)
    p.set_irq(1, True)                          # masked: no notify
    assert len(calls) == n
    p.set_irq(0, True)
    assert len(calls) == n + 1
