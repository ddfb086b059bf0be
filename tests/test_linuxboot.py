"""Linux boot protocol loader (Documentation/x86/boot.rst): boot_params as the spec says."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from blockbed.machine import Machine, MachineConfig
from blockbed.machine.boot import BootError, e820_map
from blockbed.machine import linuxboot as lb


def fake_bzimage(tmp_path: Path, *, version: int = 0x020F, setup_sects: int = 2,
                 loadflags: int = lb.LOADED_HIGH, pm: bytes = b"\xf4" * 64,
                 init_size: int = 0x200000, addr_max: int = 0x7FFFFFFF) -> Path:
    """A file with a real-mode part whose setup header carries the given fields."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[lb.HDR_SETUP_SECTS] = setup_sects
    struct.pack_into("<H", setup, lb.HDR_BOOT_FLAG, 0xAA55)
    setup[0x201] = 0x6A  # header length byte: header ends at 0x26C
    setup[lb.HDR_MAGIC:lb.HDR_MAGIC + 4] = lb.HDRS_MAGIC
    struct.pack_into("<H", setup, lb.HDR_VERSION, version)
    setup[lb.HDR_LOADFLAGS] = loadflags
    struct.pack_into("<I", setup, lb.HDR_CODE32_START, 0x100000)
    struct.pack_into("<I", setup, lb.HDR_INITRD_ADDR_MAX, addr_max)
    struct.pack_into("<I", setup, lb.HDR_CMDLINE_SIZE, 2047)
    struct.pack_into("<I", setup, lb.HDR_INIT_SIZE, init_size)
    p = tmp_path / "bzImage"
    p.write_bytes(bytes(setup) + pm)
    return p


def test_boot_params_fields(tmp_path):
    pm = bytes(range(256)) * 4
    k = fake_bzimage(tmp_path, pm=pm)
    rd = tmp_path / "initrd"
    rd.write_bytes(b"R" * 5000)
    m = Machine(MachineConfig(memory_mib=64))
    try:
        kern = m.load_kernel(str(k), "console=ttyS0 root=/dev/ram0", str(rd))
        mem = m.memory
        bp = lb.BOOT_PARAMS_ADDR
        assert mem.read(lb.KERNEL_ADDR, len(pm)) == pm           # protected-mode part at 1 MiB
        assert mem.read(bp + lb.HDR_MAGIC, 4) == b"HdrS"           # header copied
        assert mem.read(bp + lb.HDR_TYPE_OF_LOADER, 1) == b"\xff"
        assert mem.read(bp + lb.HDR_LOADFLAGS, 1)[0] & (lb.LOADED_HIGH | lb.CAN_USE_HEAP) == 0x81
        cmd = mem.read_u32(bp + lb.HDR_CMD_LINE_PTR)
        assert mem.read(cmd, 29) == b"console=ttyS0 root=/dev/ram0\0"
        image, size = mem.read_u32(bp + lb.HDR_RAMDISK_IMAGE), mem.read_u32(bp + lb.HDR_RAMDISK_SIZE)
        assert size == 5000 and image % 4096 == 0 and image + size <= 64 << 20
        assert image + 4096 + size > 64 << 20                      # as high as it goes
        assert mem.read(image, size) == b"R" * 5000
        n = mem.read(bp + lb.BP_E820_ENTRIES, 1)[0]
        table = [struct.unpack_from("<QQI", mem.read(bp + lb.BP_E820_TABLE + 20 * i, 20))
                 for i in range(n)]
        assert [tuple(e) for e in table] == e820_map(64 << 20)
        assert (0x100000, (64 << 20) - 0x100000, 1) in table
        regs = m.cpu.uc
        from unicorn import x86_const as X
        assert regs.reg_read(X.UC_X86_REG_ESI) == bp
        assert regs.reg_read(X.UC_X86_REG_EIP) == 0x100000
        assert regs.reg_read(X.UC_X86_REG_CS) == 0x10 and regs.reg_read(X.UC_X86_REG_DS) == 0x18
        assert kern.initrd == (image, size)
    finally:
        m.memory.close()


def test_initrd_below_initrd_addr_max(tmp_path):
    k = fake_bzimage(tmp_path, addr_max=0x1FFFFFF)   # 32 MiB - 1
    rd = tmp_path / "initrd"
    rd.write_bytes(b"x" * 10000)
    m = Machine(MachineConfig(memory_mib=128))
    try:
        kern = m.load_kernel(str(k), "", str(rd))
        assert kern.initrd[0] + kern.initrd[1] <= 0x2000000
        assert kern.initrd[0] == (0x2000000 - 10000) & ~0xFFF
    finally:
        m.memory.close()


@pytest.mark.parametrize("kw,msg", [
    (dict(version=0x0204), "too old"),
    (dict(loadflags=0), "zImage"),
    (dict(init_size=512 << 20), "needs"),
])
def test_bad_kernels_get_clear_errors(tmp_path, kw, msg):
    k = fake_bzimage(tmp_path, **kw)
    m = Machine(MachineConfig(memory_mib=64))
    try:
        with pytest.raises(BootError, match=msg):
            m.load_kernel(str(k))
    finally:
        m.memory.close()


def test_initrd_with_multiboot_kernel_is_refused(tmp_path):
    hello = Path(__file__).parent.parent / "guests" / "build" / "hello.elf"
    if not hello.exists():
        pytest.skip("guests not built (make -C guests)")
    m = Machine(MachineConfig(memory_mib=16))
    try:
        with pytest.raises(BootError, match="bzImage"):
            m.load_kernel(str(hello), "", str(tmp_path))
    finally:
        m.memory.close()


DEBIAN_KERNEL = os.environ.get("BLOCKBED_LINUX_KERNEL",
                               str(Path(__file__).resolve().parents[1] / "build/linux/bzImage"))


def test_debian_kernel_header_is_accepted():
    """The real Debian bzImage loads (protocol 2.15, relocatable, init_size fits)."""
    if not Path(DEBIAN_KERNEL).exists():
        pytest.skip(f"no Linux kernel at {DEBIAN_KERNEL} (set BLOCKBED_LINUX_KERNEL)")
    m = Machine(MachineConfig(memory_mib=256))
    try:
        kern = m.load_kernel(DEBIAN_KERNEL, "console=ttyS0")
        assert kern.protocol >= 0x020F
        assert m.memory.read(lb.BOOT_PARAMS_ADDR + lb.HDR_MAGIC, 4) == b"HdrS"
    finally:
        m.memory.close()
