"""A 16550 UART at 0x3F8, enough for a polled console.

Transmit: a write to THR (offset 0 with DLAB=0) appends the byte to the
transcript at once, so LSR always reports THRE|TEMT (bits 5 and 6: the
transmitter is empty).  Receive is not modelled: LSR.DR stays 0 and RBR reads
0.  The other registers (IER, LCR, MCR, SCR, the divisor latch) keep what the
guest writes so that probes which write and read back them succeed.
"""

from __future__ import annotations

from typing import Callable

LSR_THRE_TEMT = 0x60


class Serial16550:
    def __init__(self, echo: Callable[[bytes], None] | None = None):
        self.transcript = bytearray()
        self.echo = echo
        self.regs = bytearray(8)   # IER, IIR/FCR, LCR, MCR, LSR, MSR, SCR by offset
        self.dll = 0x0C
        self.dlm = 0

    @property
    def dlab(self) -> bool:
        return bool(self.regs[3] & 0x80)

    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return self.dll if self.dlab else 0
        if offset == 1:
            return self.dlm if self.dlab else self.regs[1]
        if offset == 2:
            return 0x01  # IIR: no interrupt pending
        if offset == 5:
            return LSR_THRE_TEMT
        if offset == 6:
            return 0xB0  # MSR: DCD, DSR, CTS
        return self.regs[offset]

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 0 and not self.dlab:
            self.transcript.append(value)
            if self.echo is not None:
                self.echo(bytes((value,)))
        elif offset == 0:
            self.dll = value
        elif offset == 1 and self.dlab:
            self.dlm = value
        elif offset not in (2, 5, 6):
            self.regs[offset] = value

    def text(self) -> str:
        return self.transcript.decode("utf-8", "replace")
