"""Reset and power-off controls: port 0x92, the 8042's 0xFE command, 0xCF9, PIIX4 PM1a.

- Port 0x92 (PS/2 system control port A, PIIX datasheet / QEMU hw/i386/port92.c):
  bit 1 is the fast A20 gate (kept, read back); writing bit 0 as 1 resets.
- Keyboard controller command port 0x64: command 0xFE pulses the reset line
  (8042 "pulse output port" with bit 0 low).  Status reads 0x1C here only
  as far as a reset path needs: input/output buffers empty, system flag set.
- Port 0xCF9 (PIIX3 reset control register): bit 2 (RST_CPU) with bit 1 (SYS_RST)
  requests a reset; other bits are kept.  The handler answers *byte* accesses at
  offset 0; the board must place it so it does not shadow 0xCF8 dword accesses.
- PIIX4 PM I/O block at 0x600 (ACPI §4.8.3, the FADT in acpi.py points here):
  PM1a_STS (0x600, write-1-to-clear), PM1a_EN (0x602), PM1a_CNT (0x604: SCI_EN
  bit 0, SLP_TYP bits 12:10, SLP_EN bit 13 write-only), PM_TMR (0x608, the 24-bit
  3.579545 MHz timer, from the virtual clock).  SLP_EN with SLP_TYP 0 (the DSDT's
  \\_S5) powers off, which is what Linux's ``poweroff -f`` does through ACPI.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Callable

from .acpi import ACPI_DISABLE, ACPI_ENABLE
from .clock import NS_PER_TICK
from .events import EventQueue

PM_TIMER_HZ = 3_579_545
SLP_EN = 1 << 13
SCI_EN = 1 << 0
S5_TYPE = 0


class ResetControl:
    def __init__(self, on_reset: Callable[[str], None], on_poweroff: Callable[[str], None],
                 events: EventQueue | None = None, ns_per_tick: "int | Fraction" = NS_PER_TICK):
        self.on_reset = on_reset
        self.on_poweroff = on_poweroff
        self.events = events
        self.ns_per_tick = ns_per_tick
        self.port92 = 0
        self.cf9 = 0
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = 0
        self.apm_cmd = 0
        self.apm_status = 0

    # --- port 0x92 -------------------------------------------------------------
    def port92_handler(self):
        rc = self

        class _H:
            def read(self, offset: int, size: int) -> int:
                return rc.port92 & 0x02

            def write(self, offset: int, size: int, value: int) -> None:
                rc.port92 = value & 0x02
                if value & 1:
                    rc.on_reset("port 0x92 bit 0")
        return _H()

    # --- 8042 command port 0x64 -----------------------------------------------------
    def kbc_handler(self):
        rc = self

        class _H:
            def read(self, offset: int, size: int) -> int:
                return 0x1C

            def write(self, offset: int, size: int, value: int) -> None:
                if value & 0xFF == 0xFE:
                    rc.on_reset("keyboard controller command 0xFE")
        return _H()

    # --- 0xCF9 ---------------------------------------------------------------------------
    def cf9_handler(self):
        rc = self

        class _H:
            def read(self, offset: int, size: int) -> int:
                return rc.cf9

            def write(self, offset: int, size: int, value: int) -> None:
                rc.cf9 = value & 0x0A
                if value & 0x04:
                    rc.on_reset("port 0xCF9 RST_CPU")
        return _H()

    # --- APM/SMI command port 0xB2 ----------------------------------------------------------
    def smi_cmd_handler(self):
        """Port 0xB2, the FADT's SMI_CMD: writing ACPI_ENABLE (0xF1) or ACPI_DISABLE (0xF0)
        hands the PM registers to the OS by setting or clearing PM1a_CNT.SCI_EN (ACPI
        §4.8.2.5; on QEMU's PIIX4 the SMI handler of the firmware does it, here the port).
        Port 0xB3 (APM status) is a scratch byte."""
        rc = self

        class _H:
            def read(self, offset: int, size: int) -> int:
                return rc.apm_status if offset == 1 else rc.apm_cmd

            def write(self, offset: int, size: int, value: int) -> None:
                if offset == 1:
                    rc.apm_status = value & 0xFF
                    return
                rc.apm_cmd = value & 0xFF
                if rc.apm_cmd == ACPI_ENABLE:
                    rc.pm1_cnt |= SCI_EN
                elif rc.apm_cmd == ACPI_DISABLE:
                    rc.pm1_cnt &= ~SCI_EN
        return _H()

    # --- PIIX4 PM block at 0x600 ------------------------------------------------------------
    def pm_timer(self) -> int:
        if self.events is None:
            return 0
        ns = int(self.events.now * self.ns_per_tick)
        return (ns * PM_TIMER_HZ // 1_000_000_000) & 0xFFFFFF

    def pm_handler(self):
        rc = self

        class _H:
            def read(self, offset: int, size: int) -> int:
                if 8 <= offset < 12:
                    return rc.pm_timer() >> (8 * (offset - 8)) & ((1 << (8 * size)) - 1)
                regs = (rc.pm1_sts | rc.pm1_en << 16 | (rc.pm1_cnt & ~SLP_EN) << 32)
                return regs >> (8 * offset) & ((1 << (8 * size)) - 1)

            def write(self, offset: int, size: int, value: int) -> None:
                if offset == 0:
                    rc.pm1_sts &= ~value & 0xFFFF
                elif offset == 2:
                    rc.pm1_en = value & 0xFFFF
                elif offset == 4:
                    rc.pm1_cnt = value & 0xFFFF & ~SLP_EN
                    if value & SLP_EN and (value >> 10 & 7) == S5_TYPE:
                        rc.on_poweroff("ACPI PM1a_CNT SLP_EN, SLP_TYP S5")
        return _H()
