"""Linux/x86 boot protocol loader (Documentation/x86/boot.rst, "32-bit boot protocol").

Boots a bzImage the way a boot loader that skips the real-mode setup does
(QEMU's ``-kernel`` on a machine without option ROMs does the equivalent in
its linuxboot ROM; hw/i386/x86.c x86_load_linux fills the same fields):

* the file is a bzImage when the setup header at 0x1F1 carries "HdrS" at
  0x202 (boot.rst "The real-mode kernel header"); protocol 2.06 or newer is
  required (cmdline_size, relocatable kernels, LOADED_HIGH);
* the protected-mode kernel, the file from ``(setup_sects + 1) * 512`` on
  (setup_sects 0 means 4), is copied to ``code32_start`` (1 MiB);
* ``boot_params`` (the "zero page", struct boot_params in
  arch/x86/include/uapi/asm/bootparam.h) is zeroed, the setup header is
  copied into it at 0x1F1, and the loader fields are written:
  type_of_loader 0xFF (undefined loader), loadflags with CAN_USE_HEAP,
  cmd_line_ptr, ramdisk_image/ramdisk_size, the e820 table (0x2D0) and
  e820_entries (0x1E8) from the same map the multiboot loader reports;
* the initrd goes as high as possible below ``min(initrd_addr_max, RAM end)``
  on a 4 KiB boundary, as QEMU places it;
* the CPU enters ``code32_start`` in flat 32-bit protected mode, paging and
  interrupts off, CS=__BOOT_CS (0x10), DS/ES/SS=__BOOT_DS (0x18), ESI = the
  boot_params address, EBP/EDI/EBX = 0 (boot.rst "32-bit BOOT PROTOCOL").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from .boot import BootError, LoadedKernel, e820_map
from .memory import GuestMemory

HDRS_MAGIC = b"HdrS"
MIN_PROTOCOL = 0x0206
# Loader placement, as QEMU for protocol >= 2.02: zero page at 0x10000 (the
# real-mode segment), command line 64 KiB above it, a GDT below.
BOOT_PARAMS_ADDR = 0x10000
CMDLINE_ADDR = 0x20000
LINUX_GDT_ADDR = 0x7000
KERNEL_ADDR = 0x100000
# Offsets in struct boot_params (bootparam.h) and the setup header (boot.rst).
BP_EXT_RAMDISK_IMAGE = 0x0C0
BP_EXT_RAMDISK_SIZE = 0x0C4
BP_EXT_CMD_LINE_PTR = 0x0C8
BP_E820_ENTRIES = 0x1E8
BP_E820_TABLE = 0x2D0
E820_MAX = 128
HDR_START = 0x1F1
HDR_SETUP_SECTS = 0x1F1
HDR_BOOT_FLAG = 0x1FE
HDR_MAGIC = 0x202
HDR_VERSION = 0x206
HDR_TYPE_OF_LOADER = 0x210
HDR_LOADFLAGS = 0x211
HDR_CODE32_START = 0x214
HDR_RAMDISK_IMAGE = 0x218
HDR_RAMDISK_SIZE = 0x21C
HDR_HEAP_END_PTR = 0x224
HDR_CMD_LINE_PTR = 0x228
HDR_INITRD_ADDR_MAX = 0x22C
HDR_CMDLINE_SIZE = 0x238
HDR_INIT_SIZE = 0x260
LOADED_HIGH = 0x01
CAN_USE_HEAP = 0x80
BOOT_CS = 0x10
BOOT_DS = 0x18


@dataclass
class LinuxKernel(LoadedKernel):
    """A loaded bzImage: ``info_addr`` is the boot_params address (ESI at entry)."""

    protocol: int = 0
    initrd: tuple[int, int] | None = None   # (address, size)


def is_bzimage(path: str | Path) -> bool:
    """True when the file carries the boot protocol's "HdrS" signature at 0x202."""
    try:
        with open(path, "rb") as f:
            head = f.read(HDR_MAGIC + 4)
    except OSError:
        return False
    return head[HDR_MAGIC:HDR_MAGIC + 4] == HDRS_MAGIC


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BootError(f"cannot read {what} {path}: {exc.strerror}") from None


def load_linux(memory: GuestMemory, path: str | Path, append: str = "",
               initrd: str | Path | None = None) -> LinuxKernel:
    data = _read(path, "kernel")
    if len(data) < 0x264 or data[HDR_MAGIC:HDR_MAGIC + 4] != HDRS_MAGIC:
        raise BootError("not a bzImage (no 'HdrS' setup header at 0x202)")
    version = struct.unpack_from("<H", data, HDR_VERSION)[0]
    if version < MIN_PROTOCOL:
        raise BootError(f"boot protocol {version >> 8}.{version & 0xFF:02d} is too old "
                        f"(blockbed needs 2.06 or newer)")
    loadflags = data[HDR_LOADFLAGS]
    if not loadflags & LOADED_HIGH:
        raise BootError("zImage (not LOADED_HIGH): only bzImage kernels load at 1 MiB")
    setup_sects = data[HDR_SETUP_SECTS] or 4
    pm_off = (setup_sects + 1) * 512
    if pm_off >= len(data):
        raise BootError(f"setup_sects {setup_sects} points past the end of the file")
    kernel = data[pm_off:]
    init_size = struct.unpack_from("<I", data, HDR_INIT_SIZE)[0]
    need = max(len(kernel), init_size)
    if not memory.contains(KERNEL_ADDR, need):
        raise BootError(f"the kernel needs {need >> 20} MiB above 1 MiB (init_size); the guest has "
                        f"{memory.size >> 20} MiB of RAM")
    memory.write(KERNEL_ADDR, kernel)

    cmdline_size = struct.unpack_from("<I", data, HDR_CMDLINE_SIZE)[0]
    raw = append.encode() + b"\0"
    if len(raw) > min(cmdline_size + 1, 0x10000):
        raise BootError(f"command line longer than the kernel's cmdline_size ({cmdline_size} bytes)")

    hdr_end = min(0x202 + 2 + data[0x201], 0x1000)  # the header's length byte at 0x201
    bp = bytearray(4096)
    bp[HDR_START:hdr_end] = data[HDR_START:hdr_end]
    bp[HDR_TYPE_OF_LOADER] = 0xFF
    bp[HDR_LOADFLAGS] = loadflags | CAN_USE_HEAP
    struct.pack_into("<H", bp, HDR_HEAP_END_PTR, 0xFE00)
    struct.pack_into("<I", bp, HDR_CMD_LINE_PTR, CMDLINE_ADDR)
    struct.pack_into("<I", bp, HDR_CODE32_START, KERNEL_ADDR)

    placed_initrd = None
    if initrd is not None:
        rd = _read(initrd, "initrd")
        addr_max = struct.unpack_from("<I", data, HDR_INITRD_ADDR_MAX)[0] or 0x37FFFFFF
        top = min(addr_max, memory.size - 1)
        addr = (top + 1 - len(rd)) & ~0xFFF
        if addr < KERNEL_ADDR + need:
            raise BootError(f"initrd of {len(rd)} bytes does not fit between the kernel and "
                            f"{top + 1:#x}; give the guest more --memory")
        memory.write(addr, rd)
        struct.pack_into("<II", bp, HDR_RAMDISK_IMAGE, addr, len(rd))
        placed_initrd = (addr, len(rd))

    e820 = e820_map(memory.size)[:E820_MAX]
    bp[BP_E820_ENTRIES] = len(e820)
    for i, (base, length, kind) in enumerate(e820):
        struct.pack_into("<QQI", bp, BP_E820_TABLE + 20 * i, base, length, kind)
    memory.write(BOOT_PARAMS_ADDR, bp)
    memory.write(CMDLINE_ADDR, raw)
    return LinuxKernel(entry=KERNEL_ADDR, segments=[(KERNEL_ADDR, need)], info_addr=BOOT_PARAMS_ADDR,
                       cmdline=append, protocol=version, initrd=placed_initrd)


def linux_gdt() -> bytes:
    """GDT with __BOOT_CS at 0x10 and __BOOT_DS at 0x18 (flat 4 GiB, boot.rst)."""
    return struct.pack("<QQQQ", 0, 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF)
