"""The 16550A UART driven from Python: the register file, the THR-empty interrupt a
Linux tty relies on, loopback, FIFO detection, and its wiring to IRQ4 on the Linux
platform.  Register semantics: PC16550D datasheet Tables II and IV."""

from blockbed.machine.serial import Serial16550, line_echo
from blockbed.machine.board import Machine, MachineConfig
from blockbed.machine.platform import LinuxPlatform
from blockbed.machine.qtest import QTest

THR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)


def make():
    lines: list[bool] = []
    uart = Serial16550(irq=lines.append)
    return uart, lines


def test_polled_transmit_and_registers_read_back():
    uart, lines = make()
    for ch in b"ok\n":
        assert uart.read(LSR, 1) & 0x60 == 0x60      # THRE|TEMT: always ready
        uart.write(THR, 1, ch)
    assert uart.text() == "ok\n"
    uart.write(SCR, 1, 0x5A)
    assert uart.read(SCR, 1) == 0x5A
    uart.write(LCR, 1, 0x83)                          # DLAB=1: divisor latch
    uart.write(THR, 1, 0x01)
    uart.write(IER, 1, 0x00)
    assert (uart.read(THR, 1), uart.read(IER, 1)) == (0x01, 0x00)
    uart.write(LCR, 1, 0x03)
    assert uart.text() == "ok\n"                      # divisor writes are not data
    assert uart.read(IIR, 1) == 0x01 and lines == []  # nothing enabled: no interrupt


def test_ier_keeps_only_its_four_bits():
    uart, _ = make()
    uart.write(IER, 1, 0xFF)
    assert uart.read(IER, 1) == 0x0F


def test_enabling_thri_while_empty_interrupts_and_iir_read_acknowledges():
    """Linux's serial8250_startup enables THRI twice and expects IIR to show a pending
    THR-empty interrupt each time (else it flags UART_BUG_THRE)."""
    uart, lines = make()
    uart.write(IER, 1, 0x02)
    assert lines == [True]
    assert uart.read(IIR, 1) == 0x02                  # THR empty, pending
    assert lines == [True, False]                     # the read acknowledged it
    assert uart.read(IIR, 1) == 0x01
    uart.write(IER, 1, 0x00)
    uart.write(IER, 1, 0x02)
    assert uart.read(IIR, 1) == 0x02                  # re-armed by the 0 -> 1 edge of ETBEI


def test_each_transmitted_byte_rearms_thr_empty():
    """The interrupt-driven tty: handler reads IIR (ack), writes bytes, the line rises
    again; when the driver clears ETBEI the line drops."""
    uart, lines = make()
    uart.write(IER, 1, 0x02)
    for chunk in (b"hello ", b"world"):
        assert uart.read(IIR, 1) == 0x02
        assert lines[-1] is False
        for ch in chunk:
            uart.write(THR, 1, ch)
        assert lines[-1] is True                      # a new edge for the next interrupt
    uart.write(IER, 1, 0x00)
    assert lines[-1] is False
    assert uart.text() == "hello world"


def test_fifo_enable_shows_in_iir_bits_7_6():
    uart, _ = make()
    assert uart.read(IIR, 1) & 0xC0 == 0
    uart.write(IIR, 1, 0x07)                          # FCR: enable + clear both FIFOs
    assert uart.read(IIR, 1) & 0xC0 == 0xC0           # 16550A
    uart.write(IIR, 1, 0x00)
    assert uart.read(IIR, 1) & 0xC0 == 0


def test_loopback_modem_lines_and_data():
    """8250 autoconfig: MCR = LOOP|0x0A must read back MSR 7:4 = 0x9 (CTS, DCD)."""
    uart, lines = make()
    assert uart.read(MSR, 1) & 0xF0 == 0xB0           # DCD, DSR, CTS with no loopback
    uart.write(MCR, 1, 0x10 | 0x0A)
    assert uart.read(MSR, 1) & 0xF0 == 0x90
    uart.write(MCR, 1, 0x10 | 0x05)                   # DTR, OUT1 -> DSR, RI
    assert uart.read(MSR, 1) & 0xF0 == 0x60
    uart.write(IIR, 1, 0x01)                          # FIFO on
    uart.write(IER, 1, 0x01)                          # received data interrupt
    uart.write(THR, 1, 0x42)
    assert uart.text() == ""                          # looped back, not transmitted
    assert uart.read(LSR, 1) & 0x01
    assert uart.read(IIR, 1) & 0x0F == 0x04 and lines[-1] is True
    assert uart.read(THR, 1) == 0x42
    assert lines[-1] is False and not uart.read(LSR, 1) & 0x01


def test_loopback_overrun_sets_lsr_oe_once():
    uart, _ = make()
    uart.write(MCR, 1, 0x10)
    uart.write(THR, 1, 1)
    uart.write(THR, 1, 2)                             # no FIFO: one-byte holding register
    assert uart.read(LSR, 1) & 0x02
    assert not uart.read(LSR, 1) & 0x02               # cleared by the read
    assert uart.read(THR, 1) == 1


def test_modem_status_interrupt_on_delta():
    uart, lines = make()
    uart.write(IER, 1, 0x08)
    assert lines == []
    uart.write(MCR, 1, 0x10)                          # loopback drops CTS/DSR/DCD: deltas
    assert uart.read(IIR, 1) & 0x0F == 0x00 and lines[-1] is True
    assert uart.read(MSR, 1) & 0x0F == 0x0B           # DCTS, DDSR, DDCD
    assert lines[-1] is False and uart.read(IIR, 1) & 0x01


def test_uart_interrupt_reaches_the_8259_on_irq4():
    m = Machine(MachineConfig(memory_mib=16))
    try:
        plat = LinuxPlatform(m)
        qt = QTest(m)
        for port, v in ((0x20, 0x11), (0x21, 0x30), (0x21, 0x04), (0x21, 0x01), (0x21, 0xEF)):
            qt.outb(port, v)                          # ICW1-4, then unmask IR4 only
        assert plat.pic.pending_vector() is None
        qt.outb(0x3F9, 0x02)                          # IER: THR empty
        assert plat.pic.pending_vector() == 0x34
    finally:
        m.close()


def test_line_echo_hands_on_whole_lines_and_marks_their_starts():
    """The console splitter the crash recorder and the benchmarks share: a line is
    handed on when its newline arrives however the bytes were chunked, CR dropped;
    line starts are marked at each line's first byte; the rest stays in ``tail``."""
    got: list[str] = []
    starts: list[int] = []
    echo = line_echo(got.append, lambda: starts.append(len(got)))
    for b in b"ab\r\ncd\n":
        echo(bytes([b]))
    echo(b"ef\ngh\nij")
    assert got == ["ab", "cd", "ef", "gh"]
    assert starts == [0, 1, 2, 3, 4]          # "ij" started after four lines
    assert echo.tail == "ij"
