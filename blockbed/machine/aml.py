"""A small ACPI Machine Language encoder: just what the DSDT in acpi.py needs.

ACPI 6.x §20 (AML grammar): package lengths (§20.2.4), name segments and
paths (§20.2.2), integers (§20.2.3: Zero/One/Byte/Word/DWord prefixes), the
Name, Scope, Device, Method, Package and Buffer operators (§20.2.5), and the
resource descriptors of §6.4 a PCI host bridge's ``_CRS`` uses (I/O port,
Word/DWord address space, end tag).  Every function returns bytes; a table is
the concatenation of its terms.
"""

from __future__ import annotations

import struct

ZERO_OP, ONE_OP, BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX = 0x00, 0x01, 0x0A, 0x0B, 0x0C
NAME_OP, SCOPE_OP, BUFFER_OP, PACKAGE_OP = 0x08, 0x10, 0x11, 0x12
EXT_OP_PREFIX, DEVICE_OP = 0x5B, 0x82
ROOT_CHAR = 0x5C


def pkg_length(body_len: int) -> bytes:
    """PkgLength (§20.2.4) for a body of ``body_len`` bytes; the encoded length
    counts its own bytes.  One byte up to 63, else 1-3 more bytes after a lead byte
    whose bits 7:6 say how many follow and bits 3:0 hold the low nibble."""
    for extra in range(4):
        total = body_len + 1 + extra
        if extra == 0 and total < 0x40:
            return bytes([total])
        if extra and total < 1 << (4 + 8 * extra):
            out = [(extra << 6) | (total & 0xF)]
            out += [(total >> (4 + 8 * i)) & 0xFF for i in range(extra)]
            return bytes(out)
    raise ValueError(f"AML package of {body_len} bytes is too long")


def name_seg(name: str) -> bytes:
    """A 4-character NameSeg, padded with '_' (§20.2.2)."""
    if not 1 <= len(name) <= 4:
        raise ValueError(f"bad AML name segment {name!r}")
    return name.ljust(4, "_").encode("ascii")


def name_string(path: str) -> bytes:
    r"""``\_SB_.PCI0`` style paths: an optional root prefix, then one segment, a
    DualNamePrefix (0x2E) pair or a MultiNamePrefix (0x2F) list."""
    root = path.startswith("\\")
    segs = [s for s in path.lstrip("\\").split(".") if s]
    body = b"".join(name_seg(s) for s in segs)
    if len(segs) == 2:
        body = b"\x2E" + body
    elif len(segs) > 2:
        body = bytes([0x2F, len(segs)]) + body
    return (bytes([ROOT_CHAR]) if root else b"") + body


def integer(v: int) -> bytes:
    if v == 0:
        return bytes([ZERO_OP])
    if v == 1:
        return bytes([ONE_OP])
    for prefix, fmt, limit in ((BYTE_PREFIX, "<B", 0xFF), (WORD_PREFIX, "<H", 0xFFFF),
                               (DWORD_PREFIX, "<I", 0xFFFFFFFF)):
        if v <= limit:
            return bytes([prefix]) + struct.pack(fmt, v)
    raise ValueError("64-bit AML integers need a revision-2 DSDT")


def eisa_id(text: str) -> bytes:
    """EisaId("PNP0A03"): three letters in 5-bit codes, then 4 hex digits, big-endian
    packed, stored as a DWord (§19.6.35)."""
    c = [ord(ch) - 0x40 for ch in text[:3]]
    v = (c[0] << 26) | (c[1] << 21) | (c[2] << 16) | int(text[3:], 16)
    return integer(int.from_bytes(v.to_bytes(4, "big"), "little"))


def name(n: str, value: bytes) -> bytes:
    return bytes([NAME_OP]) + name_string(n) + value


def _with_len(op: bytes, body: bytes) -> bytes:
    return op + pkg_length(len(body)) + body


def scope(path: str, *terms: bytes) -> bytes:
    return _with_len(bytes([SCOPE_OP]), name_string(path) + b"".join(terms))


def device(n: str, *terms: bytes) -> bytes:
    return _with_len(bytes([EXT_OP_PREFIX, DEVICE_OP]), name_string(n) + b"".join(terms))


def package(*elements: bytes) -> bytes:
    if len(elements) > 255:
        raise ValueError("a Package holds at most 255 elements (VarPackage otherwise)")
    return _with_len(bytes([PACKAGE_OP]), bytes([len(elements)]) + b"".join(elements))


def buffer(data: bytes) -> bytes:
    return _with_len(bytes([BUFFER_OP]), integer(len(data)) + data)


# --- resource descriptors (§6.4) ----------------------------------------------------------
def io_port(lo: int, hi: int, align: int, length: int) -> bytes:
    """I/O port descriptor (small, type 0x08: 0x47), 16-bit decode."""
    return struct.pack("<BBHHBB", 0x47, 1, lo, hi, align, length)


# Address space descriptor flags: a producer (bridge window), MinFixed, MaxFixed.
_GEN_FLAGS = 0x0C
RES_MEMORY, RES_IO, RES_BUS = 0, 1, 2


def word_space(kind: int, lo: int, hi: int, type_flags: int = 0) -> bytes:
    """Word Address Space descriptor (large, 0x88): granularity, min, max, translation, length."""
    return struct.pack("<BHBBBHHHHH", 0x88, 13, kind, _GEN_FLAGS, type_flags, 0, lo, hi, 0,
                       hi - lo + 1)


def dword_memory(lo: int, hi: int, type_flags: int = 0x03) -> bytes:
    """DWord Address Space descriptor (large, 0x87) for memory; type flags 0x03 =
    read-write, cacheable (QEMU's PCI windows)."""
    return struct.pack("<BHBBBIIIII", 0x87, 23, RES_MEMORY, _GEN_FLAGS, type_flags, 0, lo, hi,
                       0, hi - lo + 1)


def end_tag() -> bytes:
    return bytes([0x79, 0x00])      # checksum 0: "the template is valid"
