"""Multiboot v1 loader (Multiboot Specification 0.6.96).

Loads a multiboot ELF the way QEMU's ``-kernel`` does: finds the multiboot
header in the first 8 KiB (§3.1.1: magic 0x1BADB002, flags, checksum),
copies each ELF PT_LOAD segment to its physical address and zero-fills the
rest of its memory size, builds the multiboot information structure (§3.3:
memory sizes, memory map, command line, boot loader name) below 640 KiB, and
leaves the CPU as §3.2 says: 32-bit protected mode with flat segments, paging
off, EAX=0x2BADB002, EBX=the information structure.

Like QEMU, the command line the guest sees starts with the kernel's file name,
then the ``-append`` string.  Both 32- and 64-bit ELF files are accepted
(QEMU itself only takes ELF32).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from .memory import GuestMemory

MB_HEADER_MAGIC = 0x1BADB002
MB_BOOT_MAGIC = 0x2BADB002
MB_SEARCH = 8192
# Where the loader puts its own structures (all below 640 KiB, above the IVT/BDA).
GDT_ADDR = 0x7000
MMAP_ADDR = 0x8000
INFO_ADDR = 0x9000
CMDLINE_ADDR = 0x9200
CMDLINE_MAX = 0x5000
LOADER_NAME_ADDR = 0x9100
LOADER_END = CMDLINE_ADDR + CMDLINE_MAX
LOW_MEM_END = 0x9FC00  # conventional memory ends where the EBDA starts


class BootError(Exception):
    """The kernel file cannot be booted; the message says why."""


@dataclass
class LoadedKernel:
    entry: int
    segments: list[tuple[int, int]]  # (physical address, memory size)
    info_addr: int
    cmdline: str


def _find_multiboot_header(data: bytes) -> tuple[int, int]:
    for off in range(0, min(len(data), MB_SEARCH) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic == MB_HEADER_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return off, flags
    raise BootError("no multiboot header (magic 0x1BADB002 with a valid checksum) in the first 8 KiB")


def _elf_segments(data: bytes) -> tuple[int, list[tuple[int, int, int]]]:
    """(entry, [(paddr, file_bytes_offset, filesz, memsz)]) for PT_LOAD segments."""
    if data[:4] != b"\x7fELF":
        raise BootError("not an ELF file")
    ei_class, ei_data = data[4], data[5]
    if ei_data != 1:
        raise BootError("big-endian ELF files are not x86 kernels")
    segs = []
    if ei_class == 1:
        (_t, machine, _v, entry, phoff, _sh, _f, _eh, phentsize, phnum) = struct.unpack_from("<HHIIIIIHHH", data, 16)
        for i in range(phnum):
            off = phoff + i * phentsize
            if off + 32 > len(data):
                raise BootError("ELF program header table runs past the end of the file")
            p_type, p_off, _va, paddr, filesz, memsz = struct.unpack_from("<IIIIII", data, off)
            if p_type == 1:
                segs.append((paddr, p_off, filesz, memsz))
    elif ei_class == 2:
        (_t, machine, _v, entry, phoff, _sh, _f, _eh, phentsize, phnum) = struct.unpack_from("<HHIQQQIHHH", data, 16)
        for i in range(phnum):
            off = phoff + i * phentsize
            if off + 56 > len(data):
                raise BootError("ELF program header table runs past the end of the file")
            p_type, _fl, p_off, _va, paddr, filesz, memsz = struct.unpack_from("<IIQQQQQ", data, off)
            if p_type == 1:
                segs.append((paddr, p_off, filesz, memsz))
    else:
        raise BootError(f"unknown ELF class {ei_class}")
    if machine not in (3, 62):
        raise BootError(f"ELF machine {machine} is not x86")
    if not segs:
        raise BootError("the ELF file has no loadable segments")
    return entry, segs


def e820_map(ram: int) -> list[tuple[int, int, int]]:
    """The BIOS int 15h E820 map of the machine: (base, length, type 1 usable / 2 reserved).

    Shared by the multiboot and the Linux loader so both kinds of guest see
    the same RAM: conventional memory, the EBDA and BIOS ROM holes, RAM from
    1 MiB up to the end (always below the PCI hole), the flash at 4 GiB - 256 KiB.
    """
    return [(0, LOW_MEM_END, 1), (LOW_MEM_END, 0xA0000 - LOW_MEM_END, 2),
            (0xF0000, 0x10000, 2), (0x100000, ram - 0x100000, 1), (0xFFFC0000, 0x40000, 2)]


def load_multiboot(memory: GuestMemory, path: str | Path, append: str = "") -> LoadedKernel:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BootError(f"cannot read kernel {path}: {exc.strerror}") from None
    _find_multiboot_header(data)
    entry, segs = _elf_segments(data)
    placed = []
    for paddr, off, filesz, memsz in segs:
        if filesz > memsz or off + filesz > len(data):
            raise BootError(f"ELF segment at {paddr:#x} is larger than the file holds")
        if not memory.contains(paddr, memsz):
            raise BootError(f"ELF segment {paddr:#x}+{memsz:#x} is outside the guest's RAM "
                            f"({memory.size >> 20} MiB)")
        if paddr < LOADER_END and paddr + memsz > GDT_ADDR:
            raise BootError(f"ELF segment {paddr:#x}+{memsz:#x} overlaps the loader's structures "
                            f"at {GDT_ADDR:#x}-{LOADER_END:#x}")
        view = memory.view(paddr, memsz)
        view[:filesz] = data[off:off + filesz]
        view[filesz:] = bytes(memsz - filesz)
        placed.append((paddr, memsz))
    if not any(p <= entry < p + n for p, n in placed):
        raise BootError(f"ELF entry point {entry:#x} is not inside a loaded segment")

    cmdline = f"{path} {append}".rstrip() if append else str(path)
    raw = cmdline.encode() + b"\0"
    if len(raw) > CMDLINE_MAX:
        raise BootError(f"command line longer than {CMDLINE_MAX - 1} bytes")
    memory.write(CMDLINE_ADDR, raw)
    memory.write(LOADER_NAME_ADDR, b"blockbed\0")

    # Memory map (§3.3, BIOS int 15h E820 types: 1 usable, 2 reserved).
    ram = memory.size
    entries = e820_map(ram)
    mmap = b"".join(struct.pack("<IQQI", 20, base, length, kind) for base, length, kind in entries)
    memory.write(MMAP_ADDR, mmap)

    flags = (1 << 0) | (1 << 2) | (1 << 6) | (1 << 9)  # mem_*, cmdline, mmap, boot_loader_name
    info = bytearray(88)
    struct.pack_into("<III", info, 0, flags, LOW_MEM_END >> 10, (ram - 0x100000) >> 10)
    struct.pack_into("<I", info, 16, CMDLINE_ADDR)
    struct.pack_into("<II", info, 44, len(mmap), MMAP_ADDR)
    struct.pack_into("<I", info, 64, LOADER_NAME_ADDR)
    memory.write(INFO_ADDR, info)
    return LoadedKernel(entry, placed, INFO_ADDR, cmdline)
