"""8254 PIT driven from Python (qtest-style): counts, latches, read-back, IRQ0 edges."""

from blockbed.machine.events import EventQueue
from blockbed.machine.pit import PIT


def make(cpt: int = 1):
    ev = EventQueue()
    edges: list[tuple[int, bool]] = []
    pit = PIT(ev, irq=lambda lvl: edges.append((ev.now, lvl)), clocks_per_tick=cpt)
    return ev, pit, edges


def rising(edges):
    return [t for t, lvl in edges if lvl]


def test_mode0_counts_down_and_raises_irq0_once_at_terminal_count():
    ev, pit, edges = make()
    pit.write(3, 1, 0x30)          # ch0, LSB/MSB, mode 0
    assert pit.output(0) is False
    pit.write(0, 1, 100)
    pit.write(0, 1, 0)
    ev.step(40)
    pit.write(3, 1, 0x00)          # counter latch
    lo, hi = pit.read(0, 1), pit.read(0, 1)
    assert lo | hi << 8 == 60
    ev.step(59)
    assert rising(edges) == []
    ev.step(1)
    assert rising(edges) == [100]
    ev.step(1000)
    assert rising(edges) == [100]  # one-shot


def test_mode2_rate_generator_periodic_edges():
    ev, pit, edges = make()
    pit.write(3, 1, 0x34)          # ch0, LSB/MSB, mode 2 (what Linux's PIT clockevent uses)
    pit.write(0, 1, 10)
    pit.write(0, 1, 0)
    for _ in range(35):
        ev.step(1)
    assert rising(edges) == [10, 20, 30]


def test_mode3_square_wave_count_decrements_by_two_and_output_halves():
    ev, pit, _ = make()
    pit.write(3, 1, 0x36)          # ch0 mode 3
    pit.write(0, 1, 10)
    pit.write(0, 1, 0)
    ev.step(2)
    pit.write(3, 1, 0x00)
    assert pit.read(0, 1) | pit.read(0, 1) << 8 == 6
    assert pit.output(0) is True
    ev.step(4)                     # 6 clocks into a period of 10: second half, low
    assert pit.output(0) is False


def test_count_zero_means_65536_and_unlatched_word_reads_alternate():
    ev, pit, _ = make()
    pit.write(3, 1, 0xB0)          # ch2, LSB/MSB, mode 0
    pit.write(2, 1, 0)
    pit.write(2, 1, 0)
    ev.step(1)
    assert pit.read(2, 1) == 0xFF and pit.read(2, 1) == 0xFF   # 65535
    pit.write(3, 1, 0x90)          # ch2, LSB only
    pit.write(2, 1, 0x20)
    ev.step(3)
    assert pit.read(2, 1) == 0x1D


def test_latch_freezes_the_value_until_read():
    ev, pit, _ = make()
    pit.write(3, 1, 0x34)
    pit.write(0, 1, 0x00)
    pit.write(0, 1, 0x10)          # 0x1000
    ev.step(5)
    pit.write(3, 1, 0x00)
    ev.step(100)
    pit.write(3, 1, 0x00)          # second latch before reading: ignored
    assert pit.read(0, 1) | pit.read(0, 1) << 8 == 0x1000 - 5


def test_read_back_status_and_count():
    ev, pit, _ = make()
    pit.write(3, 1, 0x30)          # ch0 mode 0
    # before the count is written: null count set, OUT low
    pit.write(3, 1, 0xE2)          # read-back status only, ch0
    assert pit.read(0, 1) == 0x40 | 0x30
    pit.write(0, 1, 50)
    pit.write(0, 1, 0)
    ev.step(50)
    pit.write(3, 1, 0xC2)          # count and status, ch0: status first
    assert pit.read(0, 1) == 0x80 | 0x30
    assert pit.read(0, 1) | pit.read(0, 1) << 8 == 0   # terminal count reached


def test_virtual_clock_scaling():
    ev, pit, edges = make(cpt=4)
    pit.write(3, 1, 0x34)
    pit.write(0, 1, 10)            # 10 clocks = 2.5 ticks -> edges at ticks 3, 5, 8, 10
    pit.write(0, 1, 0)
    for _ in range(10):
        ev.step(1)
    assert rising(edges) == [3, 5, 8, 10]


def test_reprogramming_cancels_the_old_period():
    ev, pit, edges = make()
    pit.write(3, 1, 0x34)
    pit.write(0, 1, 10)
    pit.write(0, 1, 0)
    ev.step(5)
    pit.write(3, 1, 0x30)          # mode 0, count not yet written: stops IRQs
    for _ in range(50):
        ev.step(1)
    assert rising(edges) == []
