"""A tiny virtio-blk driver written against the qtest API (in the spirit of
QEMU's tests/qtest/libqos/virtio*.c), for device tests with no guest code.

It finds the capabilities through PCI configuration space, negotiates
features, lays out split rings in guest RAM with a bump allocator and can
build any descriptor chain — including malformed ones, which is the point of
the hostile-queue tests.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from blockbed.block.backend import BlockBackend
from blockbed.block.memory import MemoryDriver
from blockbed.devices.virtio.blk import VirtioBlk
from blockbed.machine import Machine, MachineConfig
from blockbed.machine.qtest import QTest

ACK, DRIVER, DRIVER_OK, FEATURES_OK, NEEDS_RESET, FAILED = 1, 2, 4, 8, 0x40, 0x80
F_INDIRECT, F_EVENT_IDX, F_VERSION_1, F_RING_RESET = 28, 29, 32, 40
F_SEG_MAX, F_GEOMETRY, F_RO, F_BLK_SIZE, F_FLUSH, F_TOPOLOGY = 2, 4, 5, 6, 9, 10
F_CONFIG_WCE, F_MQ, F_DISCARD, F_WRITE_ZEROES = 11, 12, 13, 14
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
D_NEXT, D_WRITE, D_INDIRECT = 1, 2, 4
NO_VECTOR = 0xFFFF

# common configuration offsets (virtio 1.2 §4.1.4.3)
DFSELECT, DF, GFSELECT, GF, MSIX_CFG, NUMQ, STATUS, CFGGEN = 0x0, 0x4, 0x8, 0xC, 0x10, 0x12, 0x14, 0x15
Q_SELECT, Q_SIZE, Q_MSIX, Q_ENABLE, Q_NOFF = 0x16, 0x18, 0x1A, 0x1C, 0x1E
Q_DESC, Q_AVAIL, Q_USED, Q_RESET = 0x20, 0x28, 0x30, 0x3A

QEMU_72_FEATURES = 0x10130006E54
"""What QEMU 7.2's virtio-blk-pci,disable-legacy=on offers with a writable
drive and num-queues=1 (read by the virtio_blk guest driver under
qemu-system-x86_64 7.2): SEG_MAX GEOMETRY BLK_SIZE FLUSH TOPOLOGY CONFIG_WCE
DISCARD WRITE_ZEROES INDIRECT_DESC EVENT_IDX VERSION_1 RING_RESET."""

DEFAULT_FEATURES = (1 << F_VERSION_1) | (1 << F_SEG_MAX) | (1 << F_BLK_SIZE) | (1 << F_FLUSH) | \
    (1 << F_CONFIG_WCE) | (1 << F_DISCARD) | (1 << F_WRITE_ZEROES) | (1 << F_INDIRECT) | \
    (1 << F_EVENT_IDX) | (1 << F_RING_RESET) | (1 << F_MQ) | (1 << F_RO)


@dataclass
class Ring:
    index: int
    size: int
    desc: int
    avail: int
    used: int
    avail_idx: int = 0
    last_used: int = 0
    next_desc: int = 0


class QVirtioBlk:
    """One virtio-blk function on a fresh machine, driven through QTest."""

    def __init__(self, disk: bytes | int = 1 << 20, backend: BlockBackend | None = None,
                 memory_mib: int = 16, **devopts):
        self.machine = Machine(MachineConfig(memory_mib=memory_mib, seed=1))
        if backend is None:
            data = bytearray(disk) if isinstance(disk, int) else bytearray(disk)
            backend = BlockBackend(MemoryDriver(data))
        self.backend = backend
        self.dev = VirtioBlk(backend, **devopts)
        self.machine.add_pci(self.dev)
        self.qt = QTest(self.machine)
        self.qt.boot_firmware()
        self._find_caps()
        self.heap = 0x100000
        self.rings: dict[int, Ring] = {}

    def close(self) -> None:
        self.machine.close()

    # --- capabilities ---------------------------------------------------------
    def _find_caps(self) -> None:
        qt, d = self.qt, self.dev
        self.caps: list[tuple[int, int, int, int, int]] = []   # (cfg_type, bar, offset, length, cfgoff)
        ptr = qt.pci_config_read(d, 0x34, 1)
        self.cap_ids = []
        while ptr:
            cid = qt.pci_config_read(d, ptr, 1)
            self.cap_ids.append(cid)
            if cid == 0x09:
                cfg_type = qt.pci_config_read(d, ptr + 3, 1)
                bar = qt.pci_config_read(d, ptr + 4, 1)
                off = qt.pci_config_read(d, ptr + 8)
                length = qt.pci_config_read(d, ptr + 12)
                self.caps.append((cfg_type, bar, off, length, ptr))
                if cfg_type == 2:
                    self.notify_mult = qt.pci_config_read(d, ptr + 16)
            ptr = qt.pci_config_read(d, ptr + 1, 1)
        addr = {}
        for cfg_type, bar, off, length, _ in self.caps:
            if cfg_type in (1, 2, 3, 4) and cfg_type not in addr:
                addr[cfg_type] = self.qt.bar_address(d, bar) + off
        self.common, self.notify, self.isr_addr, self.devcfg = addr[1], addr[2], addr[3], addr[4]

    # --- register helpers ---------------------------------------------------------
    def cr8(self, off): return self.qt.readb(self.common + off)
    def cr16(self, off): return self.qt.readw(self.common + off)
    def cr32(self, off): return self.qt.readl(self.common + off)
    def cw8(self, off, v): self.qt.writeb(self.common + off, v)
    def cw16(self, off, v): self.qt.writew(self.common + off, v)
    def cw32(self, off, v): self.qt.writel(self.common + off, v)
    def cw64(self, off, v): self.qt.writeq(self.common + off, v)

    @property
    def status(self) -> int:
        return self.cr8(STATUS)

    def offered(self) -> int:
        self.cw32(DFSELECT, 0)
        lo = self.cr32(DF)
        self.cw32(DFSELECT, 1)
        return self.cr32(DF) << 32 | lo

    def config(self, off: int, size: int) -> int:
        return {1: self.qt.readb, 2: self.qt.readw, 4: self.qt.readl}[size](self.devcfg + off)

    def capacity(self) -> int:
        return self.config(0, 4) | self.config(4, 4) << 32

    def isr(self) -> int:
        return self.qt.readb(self.isr_addr)

    def alloc(self, size: int, align: int = 16) -> int:
        a = (self.heap + align - 1) & ~(align - 1)
        self.heap = a + size
        self.qt.memwrite(a, bytes(size))
        return a

    # --- initialisation (§3.1.1) ------------------------------------------------------
    def negotiate(self, want: int | None = None) -> int:
        """Reset, ACK, DRIVER, features, FEATURES_OK; returns the status read back."""
        self.cw8(STATUS, 0)
        self.cw8(STATUS, ACK)
        self.cw8(STATUS, ACK | DRIVER)
        feats = self.offered() & (DEFAULT_FEATURES if want is None else want)
        self.features = feats
        self.cw32(GFSELECT, 0)
        self.cw32(GF, feats & 0xFFFFFFFF)
        self.cw32(GFSELECT, 1)
        self.cw32(GF, feats >> 32)
        self.cw8(STATUS, ACK | DRIVER | FEATURES_OK)
        return self.status

    def setup_queue(self, index: int = 0, size: int = 16, vector: int = NO_VECTOR,
                    desc: int | None = None, avail: int | None = None, used: int | None = None) -> Ring:
        self.cw16(Q_SELECT, index)
        self.cw16(Q_SIZE, size)
        size = self.cr16(Q_SIZE)
        r = Ring(index, size,
                 self.alloc(16 * size, 16) if desc is None else desc,
                 self.alloc(6 + 2 * size, 2) if avail is None else avail,
                 self.alloc(6 + 8 * size, 4) if used is None else used)
        self.cw64(Q_DESC, r.desc)
        self.cw64(Q_AVAIL, r.avail)
        self.cw64(Q_USED, r.used)
        self.cw16(Q_MSIX, vector)
        self.cw16(Q_ENABLE, 1)
        self.rings[index] = r
        return r

    def start(self, want: int | None = None, queues: int = 1, size: int = 16,
              vector: int = NO_VECTOR) -> "QVirtioBlk":
        st = self.negotiate(want)
        assert st & FEATURES_OK, f"features refused: status {st:#x}"
        for i in range(queues):
            self.setup_queue(i, size, vector)
        self.cw8(STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
        return self

    # --- rings ------------------------------------------------------------------------------
    def write_desc(self, table: int, i: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.qt.memwrite(table + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def put_chain(self, parts: list[tuple[int, int, int]], q: int = 0, indirect: bool = False,
                  publish: bool = True) -> int:
        """Write a well-formed chain of (addr, len, flags) parts; returns its head."""
        r = self.rings[q]
        if indirect:
            table = self.alloc(16 * len(parts), 16)
            for i, (a, n, f) in enumerate(parts):
                nf = f | (D_NEXT if i + 1 < len(parts) else 0)
                self.write_desc(table, i, a, n, nf, i + 1 if i + 1 < len(parts) else 0)
            head = r.next_desc % r.size
            r.next_desc += 1
            self.write_desc(r.desc, head, table, 16 * len(parts), D_INDIRECT, 0)
        else:
            ids = [(r.next_desc + i) % r.size for i in range(len(parts))]
            r.next_desc += len(parts)
            for i, (a, n, f) in enumerate(parts):
                last = i + 1 == len(parts)
                self.write_desc(r.desc, ids[i], a, n, f | (0 if last else D_NEXT),
                                0 if last else ids[i + 1])
            head = ids[0]
        if publish:
            self.publish(head, q)
        return head

    def publish(self, head: int, q: int = 0) -> None:
        r = self.rings[q]
        self.qt.writew(r.avail + 4 + 2 * (r.avail_idx % r.size), head)
        r.avail_idx = (r.avail_idx + 1) & 0xFFFF
        self.qt.writew(r.avail + 2, r.avail_idx)

    def kick(self, q: int = 0) -> None:
        self.qt.writew(self.notify + q * self.notify_mult, q)

    def used(self, q: int = 0) -> list[tuple[int, int]]:
        r = self.rings[q]
        idx = self.qt.readw(r.used + 2)
        out = []
        while r.last_used != idx:
            e = r.used + 4 + 8 * (r.last_used % r.size)
            out.append(struct.unpack("<II", self.qt.memread(e, 8)))
            r.last_used = (r.last_used + 1) & 0xFFFF
        return out

    def wait_used(self, q: int = 0, n: int = 1, max_ticks: int = 200) -> list[tuple[int, int]]:
        """Used entries, advancing virtual time until ``n`` arrived (interrupt-driven
        queues complete from the event queue a few ticks after the doorbell)."""
        out = self.used(q)
        ticks = 0
        while len(out) < n and ticks < max_ticks:
            self.qt.clock_step(8)
            ticks += 8
            out += self.used(q)
        return out

    # --- requests -------------------------------------------------------------------------------
    def header(self, rtype: int, sector: int = 0) -> int:
        a = self.alloc(16)
        self.qt.memwrite(a, struct.pack("<IIQ", rtype, 0, sector))
        return a

    def submit(self, rtype: int, sector: int = 0, data: bytes | None = None, read_len: int = 0,
               q: int = 0, indirect: bool = False, segs: int = 1, kick: bool = True):
        """Build a request; returns (head, status_addr, data_addr)."""
        hdr = self.header(rtype, sector)
        parts = [(hdr, 16, 0)]
        buf = 0
        if data is not None:
            buf = self.alloc(max(len(data), 1))
            self.qt.memwrite(buf, data)
            parts += _split(buf, len(data), segs, 0)
        elif read_len:
            buf = self.alloc(read_len)
            parts += _split(buf, read_len, segs, D_WRITE)
        st = self.alloc(1)
        self.qt.memwrite(st, b"\xee")
        parts.append((st, 1, D_WRITE))
        head = self.put_chain(parts, q, indirect)
        if kick:
            self.kick(q)
        return head, st, buf

    def status_at(self, st: int) -> int:
        return self.qt.memread(st, 1)[0]

    def do(self, rtype: int, sector: int = 0, data: bytes | None = None, read_len: int = 0, **kw):
        """Submit, kick, expect exactly one completion; returns (status, data read, used len)."""
        head, st, buf = self.submit(rtype, sector, data, read_len, **kw)
        done = self.wait_used(kw.get("q", 0))
        assert [h for h, _ in done] == [head], f"expected completion of {head}, got {done}"
        return self.status_at(st), self.qt.memread(buf, read_len) if read_len else b"", done[0][1]

    def dwz(self, rtype: int, sector: int, count: int, flags: int = 0, nseg: int = 1) -> int:
        hdr = self.header(rtype)
        payload = b"".join(struct.pack("<QII", sector + i * count, count, flags) for i in range(nseg))
        p = self.alloc(len(payload))
        self.qt.memwrite(p, payload)
        st = self.alloc(1)
        self.put_chain([(hdr, 16, 0), (p, len(payload), 0), (st, 1, D_WRITE)])
        self.kick()
        assert len(self.wait_used()) == 1
        return self.status_at(st)


def _split(addr: int, length: int, n: int, flags: int) -> list[tuple[int, int, int]]:
    """``n`` pieces of uneven, not sector-aligned lengths covering [addr, addr+length)."""
    if n <= 1 or length < n:
        return [(addr, length, flags)]
    cuts = sorted({(length * (i * 7 + 3)) // (n * 7 + 1) for i in range(1, n)} - {0, length})
    bounds = [0] + cuts + [length]
    return [(addr + a, b - a, flags) for a, b in zip(bounds, bounds[1:]) if b > a]
