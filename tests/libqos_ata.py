"""qtest helpers for the ATA controllers (in the spirit of QEMU's libqos/ahci.c).

:class:`AhciQ` builds a machine with an AHCI HBA and drives on MemoryDriver
backends, places command lists, FIS areas, command tables and buffers in
guest RAM with a bump allocator, and issues commands the way a driver does,
through the qtest register interface.
"""

from __future__ import annotations

import struct

from blockbed.block.backend import BlockBackend
from blockbed.block.memory import MemoryDriver
from blockbed.devices import ahci as A
from blockbed.devices.ata import DriveConfig
from blockbed.machine.board import Machine, MachineConfig
from blockbed.machine.qtest import QTest


class Alloc:
    def __init__(self, start: int = 0x200000, end: int = 0x3000000):
        self.next, self.end = start, end

    def __call__(self, size: int, align: int = 4096) -> int:
        a = (self.next + align - 1) & ~(align - 1)
        self.next = a + size
        assert self.next <= self.end
        return a


def h2d(cmd: int, lba: int = 0, count: int = 0, features: int = 0, device: int = 0x40,
        control: int = 0, c: bool = True) -> bytes:
    f = bytearray(20)
    f[0], f[1], f[2], f[3] = 0x27, 0x80 if c else 0, cmd, features & 0xFF
    f[4:7] = (lba & 0xFFFFFF).to_bytes(3, "little")
    f[7] = device
    f[8:11] = ((lba >> 24) & 0xFFFFFF).to_bytes(3, "little")
    f[11] = (features >> 8) & 0xFF
    f[12:14] = (count & 0xFFFF).to_bytes(2, "little")
    f[15] = control
    return bytes(f)


class AhciQ:
    def __init__(self, disks: list[int | bytes] = (1 << 20,), request_log: bool = True,
                 cache: str = "writeback", slots: int = 32, seed: int = 1, discard: str = "unmap",
                 backends: list | None = None):
        self.m = Machine(MachineConfig(memory_mib=64, seed=seed))
        self.hba = A.AhciController(slots=slots)
        self.m.add_pci(self.hba)
        self.backends = backends or [BlockBackend(MemoryDriver(d), cache=cache, request_log=request_log,
                                                  discard=discard) for d in disks]
        for i, b in enumerate(self.backends):
            self.hba.attach_drive(i, b, DriveConfig(serial=f"SER{i}"))
        self.qt = QTest(self.m)
        self.qt.boot_firmware()
        self.abar = self.qt.bar_address(self.hba, 5)
        self.alloc = Alloc()
        self.clb: dict[int, int] = {}
        self.fb: dict[int, int] = {}

    # registers
    def r(self, off: int) -> int:
        return self.qt.readl(self.abar + off)

    def w(self, off: int, v: int) -> None:
        self.qt.writel(self.abar + off, v)

    def pr(self, port: int, off: int) -> int:
        return self.r(0x100 + port * 0x80 + off)

    def pw(self, port: int, off: int, v: int) -> None:
        self.w(0x100 + port * 0x80 + off, v)

    def port_start(self, port: int = 0) -> None:
        """What a driver does: command list and FIS area, FRE, clear errors, ST."""
        self.clb[port] = clb = self.alloc(1024, 1024)
        self.fb[port] = fb = self.alloc(256, 256)
        self.pw(port, A.P_CLB, clb)
        self.pw(port, A.P_CLBU, 0)
        self.pw(port, A.P_FB, fb)
        self.pw(port, A.P_FBU, 0)
        self.pw(port, A.P_CMD, self.pr(port, A.P_CMD) | A.CMD_FRE)
        self.pw(port, A.P_SERR, 0xFFFFFFFF)
        self.pw(port, A.P_IS, 0xFFFFFFFF)
        self.pw(port, A.P_CMD, self.pr(port, A.P_CMD) | A.CMD_ST)

    def build(self, port: int, slot: int, fis: bytes, prdt: list[tuple[int, int]] = (),
              write: bool = False, prdtl: int | None = None, cfl: int = 5, flags: int = 0,
              interrupt_last: bool = False) -> int:
        """Write command header ``slot`` and its table; prdt = [(addr, length)]."""
        ct = self.alloc(0x80 + 16 * max(1, len(prdt)), 128)
        table = bytearray(0x80 + 16 * len(prdt))
        table[:len(fis)] = fis
        for i, (addr, n) in enumerate(prdt):
            dw3 = (n - 1) & 0x3FFFFF
            if interrupt_last and i == len(prdt) - 1:
                dw3 |= 1 << 31
            struct.pack_into("<QII", table, 0x80 + 16 * i, addr, 0, dw3)
        self.qt.memwrite(ct, bytes(table))
        n = len(prdt) if prdtl is None else prdtl
        dw0 = (n << 16) | (0x40 if write else 0) | cfl | flags
        self.qt.memwrite(self.clb[port] + 32 * slot, struct.pack("<IIQ", dw0, 0, ct) + bytes(16))
        return ct

    def prdbc(self, port: int, slot: int) -> int:
        return struct.unpack("<I", self.qt.memread(self.clb[port] + 32 * slot + 4, 4))[0]

    def issue(self, port: int, slots: int, sact: int = 0) -> None:
        if sact:
            self.pw(port, A.P_SACT, sact)
        self.pw(port, A.P_CI, slots)

    def wait(self) -> None:
        self.qt.run_until_idle()

    def run(self, port: int, fis: bytes, prdt=(), write=False, slot: int = 0) -> int:
        """Issue one non-queued command and wait; returns PxTFD."""
        self.build(port, slot, fis, prdt, write)
        self.issue(port, 1 << slot)
        self.wait()
        return self.pr(port, A.P_TFD)

    def rfis(self, port: int, off: int, n: int) -> bytes:
        return self.qt.memread(self.fb[port] + off, n)

    def disk(self, i: int = 0) -> bytes:
        return bytes(self.backends[i].root.buf)
