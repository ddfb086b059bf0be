"""REP INS/OUTS in one exit (machine/pio_string.py): the bulk path must leave the
guest, the registers and the device exactly as the per-unit path does.

Each guest runs twice, with ``cpu.pio_strings.enabled`` on and off, and the
runs are compared byte for byte (guest buffers, the RCX/RDI/RSI the guest
reports after every instruction, what the device received); the data is also
checked against what the device or the disk holds.
"""

from __future__ import annotations

import pytest

from blockbed.devices.attach import attach_drives
from blockbed.machine import ExitKind, Machine, MachineConfig
from blockbed.machine.pio_string import decode
from test_machine import KickingSequencePort, asm_build, check_kicking_sequence  # noqa: F401

BLOCK = 512          # StreamPort's "DRQ block"


class StreamPort:
    """Port 0x520: reads return the next bytes of a fixed stream, writes are kept.
    The string methods stop at the end of each 512-byte block of the stream, as the
    IDE data register stops at the end of its DRQ block."""

    def __init__(self):
        self.pos = 0
        self.written = bytearray()
        self.string_calls = 0

    @staticmethod
    def stream(start: int, n: int) -> bytes:
        return bytes((i * 7 + (i >> 9)) & 0xFF for i in range(start, start + n))

    def read(self, offset, size):
        b = self.stream(self.pos, size)
        self.pos += size
        return int.from_bytes(b, "little")

    def write(self, offset, size, value):
        self.written += value.to_bytes(size, "little")

    probe = None        # a callable run inside read_string (the translate test)

    def read_string(self, offset, size, count):
        self.string_calls += 1
        if self.probe is not None:
            self.probe()
        n = min(count, (BLOCK - self.pos % BLOCK) // size) * size
        b = self.stream(self.pos, n)
        self.pos += n
        return b

    def write_string(self, offset, size, data):
        self.string_calls += 1
        units = min(len(data), BLOCK - len(self.written) % BLOCK) // size
        self.written += data[:units * size]
        return units


class Reports:
    def __init__(self):
        self.values = []

    def read(self, offset, size):
        return 0

    def write(self, offset, size, value):
        self.values.append(value)


def run_stream_guest(elf, enabled: bool, probe=None):
    m = Machine(MachineConfig(memory_mib=32, timeout_s=60))
    m.cpu.pio_strings.enabled = enabled
    port, reports = StreamPort(), Reports()
    if probe is not None:
        port.probe = lambda: probe(m)
    m.pio.add("stream", 0x520, 4, port)
    m.pio.add("reports", 0x530, 4, reports)
    m.load_kernel(str(elf))
    r = m.run()
    buf = reports.values[0]
    mem = m.memory.read(buf, 0x8000)          # buf, pt, pf_page
    return m, r, port, reports.values, mem


def test_decode():
    assert decode(bytes.fromhex("66f36d"), False) == (2, False)
    assert decode(bytes.fromhex("f3666d"), False) == (2, False)
    assert decode(bytes.fromhex("f36d"), False) == (4, False)
    assert decode(bytes.fromhex("6766f36d"), False) == (2, True)
    assert decode(bytes.fromhex("66f3486d"), False) == (4, False)     # REX.W beats 66h
    assert decode(bytes.fromhex("f3486690"), False) is None
    assert decode(bytes.fromhex("66f36f"), True) == (2, False)
    assert decode(bytes.fromhex("f26e"), True) == (1, False)           # REPNE acts as REP
    assert decode(bytes.fromhex("66f36f"), False) is None              # an OUTS in an IN hook
    assert decode(bytes.fromhex("666d"), False) is None                # no REP
    assert decode(bytes.fromhex("f0f36d"), False) is None              # LOCK
    assert decode(bytes.fromhex("64f36f"), True) is None               # FS base
    assert decode(bytes.fromhex("2ef36f"), True) == (4, False)
    assert decode(b"\x66" * 15, False) is None


def test_stream_guest_bulk_matches_per_unit(asm_build):
    runs = [run_stream_guest(asm_build / "pio_string.elf", en) for en in (True, False)]
    (mb, rb, pb, repb, memb), (mu, ru, pu, repu, memu) = runs
    for r, m in ((rb, mb), (ru, mu)):
        assert r.kind is ExitKind.FAULT, r.reason            # the not-present page, last case
        assert "#PF" in r.reason, r.reason
    assert repb == repu
    assert memb == memu
    assert pb.written == pu.written and pb.pos == pu.pos
    assert {k: v for k, v in mb.cpu.fault.registers.items()} == mu.cpu.fault.registers
    assert mb.cpu.pio_strings.transfers > 0 and mu.cpu.pio_strings.transfers == 0
    assert mb.cpu.exits.pio * 10 < mu.cpu.exits.pio

    # The bytes themselves: the stream in order, each case where the guest put it.
    s = StreamPort.stream
    buf = repb[0]
    cases = [repb[1 + 4 * i:5 + 4 * i] for i in range(11)]
    rcx = [c[0] | c[1] << 32 for c in cases]
    ptr = [c[2] | c[3] << 32 for c in cases]
    pos = 0
    for off, n in ((0, 512), (0x1000 - 6, 2000), (0x2003, 1200), (0x3000, 100), (0x4000, 400)):
        assert memb[off:off + n] == s(pos, n), hex(off)
        pos += n
    words = s(pos, 100)
    assert memb[0x5100 - 98:0x5102] == b"".join(words[i:i + 2] for i in range(98, -2, -2))
    assert memb[0x5400:0x5402] == s(pos + 100, 2)
    assert rcx[:7] == [0] * 7
    assert ptr[:7] == [buf + 512, buf + 0x1000 - 6 + 2000, buf + 0x2003 + 1200, buf + 0x3000 + 100,
                       buf + 0x4000 + 400, buf + 0x5100 - 100, buf + 0x5402]
    assert bytes(pb.written[:1400]) == memb[0:1400]
    assert bytes(pb.written[1400:2732]) == memb[0x1001:0x1001 + 1332]
    assert bytes(pb.written[2732:2809]) == memb[7:84]
    back = memb[0x5200 - 78:0x5202]
    assert bytes(pb.written[2809:2889]) == b"".join(back[i:i + 2] for i in range(78, -2, -2))
    assert ptr[7:] == [buf + 1400, buf + 0x1001 + 1332, buf + 84, buf + 0x5200 - 80]
    # The faulting rep insw filled its first page up to the boundary, and stopped there.
    regs = mb.cpu.fault.registers
    assert regs["rdi"] == 0x40001000 and regs["rcx"] == 80
    start = pos + 102
    assert memb[0x7000 + 0x1000 - 40:0x8000] == s(start, 40)
    assert pb.pos == start + 40


@pytest.mark.parametrize("enabled", [True, False])
def test_replay_guard_with_kicks_mid_transfer(asm_build, enabled):
    """The KickingSequencePort guest (pio_string_kick.S) with a string-capable port
    that kicks inside read_string/write_string: a bulk transfer whose handler asks
    the CPU to stop must not be applied twice (cpu.py's replay record holds the
    last unit, the one unicorn re-executes)."""

    class KickingBulk(KickingSequencePort):
        def read_string(self, offset, size, count):
            n = min(count, 37)
            out = b"".join(((self.reads + i + 1) & 0xFFFF).to_bytes(2, "little") for i in range(n))
            self.reads += n
            self._maybe_kick_always()
            return out

        def write_string(self, offset, size, data):
            n = min(len(data) // 2, 41)
            for i in range(n):
                self.writes += 1
                if int.from_bytes(data[2 * i:2 * i + 2], "little") != self.writes & 0xFFFF:
                    self.out_of_order += 1
            self._maybe_kick_always()
            return n

        def _maybe_kick_always(self):
            self.m.cpu.kick()

    m = check_kicking_sequence(asm_build, KickingBulk, enabled)
    assert (m.cpu.pio_strings.transfers > 0) is enabled


def run_ide_guest(elf, image, enabled: bool):
    m = Machine(MachineConfig(memory_mib=32, timeout_s=60))
    m.cpu.pio_strings.enabled = enabled
    reports = Reports()
    m.pio.add("reports", 0x530, 4, reports)
    attach_drives(m, [f"file={image},format=raw,if=ide,cache=writeback"])
    m.load_kernel(str(elf))
    try:
        r = m.run()
        assert r.kind is ExitKind.GUEST_EXIT and r.exit_code == 0, r.reason
        return m.memory.read(reports.values[0], 0x8000), m.cpu.exits.pio, m.cpu.pio_strings.transfers
    finally:
        m.close()


def test_ide_pio_bulk_matches_per_unit(asm_build, tmp_path):
    """IDE data register (devices/ide.py read_data_string/write_data_string): the
    same guest memory and the same disk with the bulk path on and off, and the
    sectors where the guest put them."""
    pattern = bytes((i * 131 + (i >> 9) * 17) & 0xFF for i in range(2 << 20))
    images = []
    for enabled in (True, False):
        img = tmp_path / f"disk{int(enabled)}.img"
        img.write_bytes(pattern)
        images.append((img, run_ide_guest(asm_build / "pio_string_ide.elf", img, enabled)))
    (img_b, (buf, exits_b, transfers)), (img_u, (buf_u, exits_u, _)) = images
    disk = img_b.read_bytes()
    assert buf == buf_u and disk == img_u.read_bytes()
    assert transfers > 0 and exits_b * 20 < exits_u

    def sec(lba, n=1):
        return pattern[lba * 512:(lba + n) * 512]

    def words_reversed(b):
        return b"".join(b[i:i + 2] for i in range(len(b) - 2, -2, -2))

    assert buf[0:512] == sec(0)
    assert buf[0x1000:0x3000] == sec(8, 16)
    # A count past the DRQ block: the word read while the next block is BSY is 0.
    assert buf[0x3000:0x3400] == sec(100) + b"\0\0" + sec(101)[:-2]
    assert buf[0x4002:0x4202] == sec(200)
    assert buf[0x5000:0x5200] == words_reversed(sec(300))          # DF=1: from 0x51fe down
    assert buf[0x6000 - 100:0x6000 - 100 + 1024] == sec(400, 2)
    w = lambda lba, n=1: disk[lba * 512:(lba + n) * 512]  # noqa: E731
    assert w(1000, 2) == buf[0x1000:0x1400]
    assert w(1100, 16) == buf[0x1000:0x3000]
    assert w(1200) == buf[0x4002:0x4202]
    # The word written while BSY is dropped; the second sector starts one word late.
    assert w(1300, 2) == buf[0x1000:0x1200] + buf[0x1202:0x1400] + b"\x5a\x5a"


def test_a_refused_translation_leaves_cr2_alone(asm_build):
    """uc_vmem_translate of an unmapped address writes CR2 as a #PF would; the bulk
    path's translate puts it back (and says None)."""
    from unicorn import UC_PROT_WRITE
    from unicorn import x86_const as X
    seen = []

    def probe(m):
        uc = m.cpu.uc
        before = uc.reg_read(X.UC_X86_REG_CR2)
        got = m.cpu.pio_strings.regs.translate(0x2_0000_0000, UC_PROT_WRITE)   # past 4 GiB
        seen.append((got, before, uc.reg_read(X.UC_X86_REG_CR2)))
        m.cpu.pio_strings.enabled = False
    m, r, *_ = run_stream_guest(asm_build / "pio_string.elf", True, probe)
    assert seen and seen[0][0] is None and seen[0][1] == seen[0][2] != 0x2_0000_0000
