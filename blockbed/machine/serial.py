"""A 16550A UART at 0x3F8 (COM1): polled console and the interrupt-driven tty.

Registers by offset (National Semiconductor PC16550D datasheet, Table II):

====== ============================== =============================================
offset read                           write
====== ============================== =============================================
0      RBR (DLAB=0) / DLL (DLAB=1)    THR (DLAB=0) / DLL
1      IER (DLAB=0) / DLM (DLAB=1)    IER / DLM
2      IIR                            FCR
3      LCR                            LCR (bit 7 = DLAB)
4      MCR                            MCR (bit 4 = loopback)
5      LSR                            (read-only)
6      MSR                            (read-only)
7      SCR                            SCR
====== ============================== =============================================

Transmit is instantaneous and deterministic: a THR write goes to the transcript
at once, so the transmitter is always empty again (LSR THRE|TEMT) and the
THR-empty interrupt is re-armed immediately, as QEMU's hw/char/serial.c does
when its character backend accepts the byte.  Host input is not modelled; the
receiver only sees the loopback path (MCR bit 4), which is what a driver's
self-test uses.

Interrupts (datasheet Table IV, priority order): receiver line status (IIR 0x06),
received data available (0x04), THR empty (0x02), modem status (0x00); IIR bit 0
is 0 while one is pending.  The THR-empty source is set when THR empties or when
ETBEI is enabled while it is empty, and cleared by reading IIR while it is the
reported source or by writing THR.  IIR bits 7:6 read 11 when the FIFOs are
enabled (FCR bit 0): that is how Linux's 8250 autoconfig tells a 16550A.  The
INTR output is reported through ``irq(level)`` (ISA IRQ4 on the Linux platform)
and, as in QEMU, is not gated by MCR.OUT2.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from .. import trace

FIFO_DEPTH = 16

# IER bits (Table II)
IER_RDI = 0x01     # received data available
IER_THRI = 0x02    # THR empty
IER_RLSI = 0x04    # receiver line status
IER_MSI = 0x08     # modem status

# IIR values
IIR_NO_INT = 0x01
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_RLSI = 0x06
IIR_FIFO_ENABLED = 0xC0

# FCR bits
FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04

# LSR bits
LSR_DR = 0x01
LSR_OE = 0x02
LSR_THRE = 0x20
LSR_TEMT = 0x40
LSR_THRE_TEMT = LSR_THRE | LSR_TEMT

# MCR bits
MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10

# MSR: no host line is connected, so the inputs read as QEMU's defaults.
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80
MSR_IDLE = MSR_DCD | MSR_DSR | MSR_CTS
MSR_DELTAS = 0x0F


class line_echo:
    """An ``echo_serial`` callback that hands the console on a line at a time.

    ``on_line(text)`` runs when a line's newline arrives (text without it, and
    without a trailing CR), inside the transmit exit of that newline: the machine
    state it reads (exit counts, a write log's position) is the state at that
    instant.  ``on_line_start()`` runs at a line's first byte, for callers that
    time a line from when the guest began printing it.  :attr:`tail` is what came
    after the last newline.
    """

    def __init__(self, on_line: Callable[[str], None],
                 on_line_start: Callable[[], None] | None = None):
        self.on_line = on_line
        self.on_line_start = on_line_start
        self.pending = bytearray()

    def __call__(self, data: bytes) -> None:
        pending = self.pending
        if self.on_line_start is not None and not pending and data[:1] != b"\n":
            self.on_line_start()
        pending.extend(data)
        while (nl := pending.find(b"\n")) >= 0:
            text = pending[:nl].decode(errors="replace").rstrip("\r")
            del pending[:nl + 1]
            self.on_line(text)
            if self.on_line_start is not None and pending:
                self.on_line_start()

    @property
    def tail(self) -> str:
        return self.pending.decode(errors="replace")


class Serial16550:
    def __init__(self, echo: Callable[[bytes], None] | None = None,
                 irq: Callable[[bool], None] | None = None):
        self.transcript = bytearray()
        self.echo = echo
        self.irq = irq                 # INTR output; set by the platform that wires it
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.scr = 0
        self.fcr = 0
        self.dll = 0x0C                # 9600 baud, what SeaBIOS leaves behind
        self.dlm = 0
        self.msr = MSR_IDLE
        self.lsr_errors = 0            # overrun, cleared by reading LSR
        self.rx: deque[int] = deque()
        self.thr_pending = False       # the THR-empty interrupt source
        self.line = False              # the INTR output's current level

    @property
    def dlab(self) -> bool:
        return bool(self.lcr & 0x80)

    # --- interrupt logic ------------------------------------------------------------
    def _source(self) -> int:
        """The highest-priority pending interrupt's IIR value (Table IV)."""
        if self.ier & IER_RLSI and self.lsr_errors:
            return IIR_RLSI
        if self.ier & IER_RDI and self.rx:
            return IIR_RDI
        if self.ier & IER_THRI and self.thr_pending:
            return IIR_THRI
        if self.ier & IER_MSI and self.msr & MSR_DELTAS:
            return IIR_MSI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        level = self._source() != IIR_NO_INT
        if level != self.line:
            self.line = level
            if trace.enabled:
                trace.emit("serial.irq", level=level)
            if self.irq is not None:
                self.irq(level)

    # --- modem lines -------------------------------------------------------------------
    def _set_msr_inputs(self, inputs: int) -> None:
        """Update MSR bits 7:4, setting the delta bits 3:0 as the datasheet defines them
        (DCTS, DDSR, TERI on RI's falling edge, DDCD)."""
        old = self.msr
        delta = 0
        if (old ^ inputs) & MSR_CTS:
            delta |= 0x01
        if (old ^ inputs) & MSR_DSR:
            delta |= 0x02
        if old & MSR_RI and not inputs & MSR_RI:
            delta |= 0x04
        if (old ^ inputs) & MSR_DCD:
            delta |= 0x08
        self.msr = inputs | (old & MSR_DELTAS) | delta

    def _loop_inputs(self) -> int:
        """Loopback wiring (datasheet, MCR bit 4): RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD."""
        m = self.mcr
        return ((MSR_CTS if m & MCR_RTS else 0) | (MSR_DSR if m & MCR_DTR else 0)
                | (MSR_RI if m & MCR_OUT1 else 0) | (MSR_DCD if m & MCR_OUT2 else 0))

    # --- the register file ------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            if self.dlab:
                return self.dll
            value = self.rx.popleft() if self.rx else 0
            self._update_irq()
            return value
        if offset == 1:
            return self.dlm if self.dlab else self.ier
        if offset == 2:
            source = self._source()
            if source == IIR_THRI:       # reading IIR acknowledges THR empty
                self.thr_pending = False
                self._update_irq()
            return source | (IIR_FIFO_ENABLED if self.fcr & FCR_ENABLE else 0)
        if offset == 3:
            return self.lcr
        if offset == 4:
            return self.mcr
        if offset == 5:
            value = LSR_THRE_TEMT | (LSR_DR if self.rx else 0) | self.lsr_errors
            if self.lsr_errors:
                self.lsr_errors = 0
                self._update_irq()
            return value
        if offset == 6:
            value = self.msr
            if value & MSR_DELTAS:
                self.msr &= ~MSR_DELTAS
                self._update_irq()
            return value
        return self.scr

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 0:
            if self.dlab:
                self.dll = value
            else:
                self._transmit(value)
        elif offset == 1:
            if self.dlab:
                self.dlm = value
            else:
                old, self.ier = self.ier, value & 0x0F
                if value & IER_THRI and not old & IER_THRI:
                    self.thr_pending = True      # THR is always empty: arm at once
                self._update_irq()
        elif offset == 2:
            self._write_fcr(value)
        elif offset == 3:
            self.lcr = value
        elif offset == 4:
            was_loop = self.mcr & MCR_LOOP
            self.mcr = value & 0x1F
            if self.mcr & MCR_LOOP:
                self._set_msr_inputs(self._loop_inputs())
            elif was_loop:
                self._set_msr_inputs(MSR_IDLE)
            self._update_irq()
        elif offset == 7:
            self.scr = value
        # LSR and MSR are read-only

    def _write_fcr(self, value: int) -> None:
        if value & FCR_CLEAR_RX:
            self.rx.clear()
        # The transmit FIFO is always empty here, so FCR_CLEAR_TX has nothing to drop.
        self.fcr = value & 0xC9
        self._update_irq()

    def _transmit(self, value: int) -> None:
        self.thr_pending = False
        if self.mcr & MCR_LOOP:
            self._receive(value)
        else:
            self.transcript.append(value)
            if self.echo is not None:
                self.echo(bytes((value,)))
        self.thr_pending = True          # the byte left at once: THR empty again
        self._update_irq()

    def _receive(self, value: int) -> None:
        depth = FIFO_DEPTH if self.fcr & FCR_ENABLE else 1
        if len(self.rx) >= depth:
            self.lsr_errors |= LSR_OE    # overrun: the new byte is lost
        else:
            self.rx.append(value)

    def text(self) -> str:
        return self.transcript.decode("utf-8", "replace")
