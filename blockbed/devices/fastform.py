"""Fast forms derived from ``construct`` layout declarations.

Every guest-visible layout (virtio rings, AHCI command lists and FISes, ATA
IDENTIFY data, IDE bus-master registers) is declared once, with
``construct``, in its device family's ``layout`` module.  A declaration is
the readable form: ``Decl.parse(raw)`` gives a container that prints its
field names, and trace events carry it (:func:`to_dict`).  The hot paths
cannot afford ``construct`` per request, so this module derives, at import
time, the fast forms they use instead — a :class:`struct.Struct` whose format
is built from the declaration's fields (:func:`fast`), byte offsets
(:func:`offsets`) and bit positions (:func:`bits`).  No device writes an
offset, a width or a mask of its own: change the declaration and every
fast form follows.

Bit fields in little-endian registers are declared with :func:`le_bits`
(a ``ByteSwapped(BitStruct(...))``), listing fields from the most
significant bit down, as the specs' register tables do.
"""

from __future__ import annotations

import struct
from typing import Any

from construct import (Array, BitsInteger, Bytes, Construct, Container, Enum, EnumIntegerString,
                       Flag, FlagsEnum, FormatField, ListContainer, Padded, Pass, Renamed, Struct,
                       BitStruct, ByteSwapped)

__all__ = ["le_bits", "be_bits", "fast", "struct_format", "offsets", "bits", "mask", "to_dict"]


def le_bits(*fields: Any) -> Construct:
    """A little-endian register of bit fields (fields listed MSB first).

    Parsing gives a container of named fields; :func:`bits` gives each
    field's (shift, width) for the hot path."""
    inner = BitStruct(*fields)
    con = ByteSwapped(inner)
    con._bb_bits = inner          # the BitStruct, for bits()
    return con


def be_bits(*fields: Any) -> Construct:
    """A big-endian bit-field group (SCSI CDBs and pages), fields listed MSB first;
    ``fast(..., big=True)`` reads it as one big-endian integer."""
    con = BitStruct(*fields)
    con._bb_bits = con
    return con


def _unwrap(sc: Construct) -> Construct:
    while isinstance(sc, Renamed):
        sc = sc.subcon
    return sc


def _int_code(n: int) -> str:
    try:
        return {1: "B", 2: "H", 4: "I", 8: "Q"}[n]
    except KeyError:
        raise TypeError(f"no integer struct code for {n} bytes") from None


def _fmt(sc: Construct, big: bool = False) -> str:
    sc = _unwrap(sc)
    if isinstance(sc, FormatField):
        if sc.fmtstr[0] not in (">" if big else "<=") and sc.fmtstr[1:] not in ("B", "b"):
            raise TypeError(f"{sc.fmtstr!r}: this layout is {'big' if big else 'little'}-endian")
        return sc.fmtstr[1:]
    if isinstance(sc, (Enum, FlagsEnum)):
        return _fmt(sc.subcon, big)
    if getattr(sc, "_bb_bits", None) is not None:
        return _int_code(sc.sizeof())
    if isinstance(sc, Padded) and isinstance(sc.subcon, type(Pass)):
        return f"{sc.length}x"
    if isinstance(sc, Bytes) and isinstance(sc.length, int):
        return f"{sc.length}s"
    if isinstance(sc, Array) and isinstance(sc.count, int):
        return _fmt(sc.subcon, big) * sc.count
    if isinstance(sc, Struct):
        return "".join(_fmt(s, big) for s in sc.subcons)
    raise TypeError(f"no fast form for {sc!r}")


def struct_format(con: Construct, big: bool = False) -> str:
    """The :mod:`struct` format (little-endian, or big-endian with ``big``) equivalent
    of a fixed-size declaration, nested structs flattened in order; padding is skipped."""
    return (">" if big else "<") + _fmt(con, big)


def fast(con: Construct, big: bool = False) -> struct.Struct:
    """A precompiled :class:`struct.Struct` for ``con``; checked against the
    declaration's own size so the two cannot drift."""
    s = struct.Struct(struct_format(con, big))
    if s.size != con.sizeof():
        raise AssertionError(f"fast form {s.format} is {s.size} bytes, declaration {con.sizeof()}")
    return s


def offsets(con: Construct, prefix: str = "", **ctx: Any) -> dict[str, int]:
    """Byte offset of every named field (nested structs as ``outer.inner``),
    up to the first field whose size depends on the context (pass it in ``ctx``)."""
    out: dict[str, int] = {}
    off = 0
    for sc in _unwrap(con).subcons:
        name = getattr(sc, "name", None)
        if name:
            out[prefix + name] = off
            inner = _unwrap(sc)
            if isinstance(inner, Struct):
                for k, v in offsets(inner, prefix + name + ".", **ctx).items():
                    out[k] = off + v
        try:
            off += sc.sizeof(**ctx)
        except Exception:
            break
    return out


def bits(con: Construct) -> dict[str, tuple[int, int]]:
    """(shift, width) of every named field of an :func:`le_bits` register or a
    one-byte BitStruct, counted from bit 0 of the little-endian value."""
    inner = getattr(_unwrap(con), "_bb_bits", None) or _unwrap(con)
    while not isinstance(inner, Struct):          # BitStruct = Transformed(Struct)
        inner = _unwrap(inner.subcon)
    fields = inner.subcons
    total = 8 * con.sizeof()
    out: dict[str, tuple[int, int]] = {}
    pos = total
    for sc in fields:
        w = _bit_width(sc)
        pos -= w
        if getattr(sc, "name", None):
            out[sc.name] = (pos, w)
    if pos != 0:
        raise AssertionError(f"bit fields cover {total - pos} of {total} bits")
    return out


def _bit_width(sc: Construct) -> int:
    sc = _unwrap(sc)
    if isinstance(sc, (Enum, FlagsEnum)):
        return _bit_width(sc.subcon)
    if isinstance(sc, BitsInteger):
        return sc.length
    if isinstance(sc, type(Flag)):
        return 1
    if isinstance(sc, Padded):
        return sc.length
    raise TypeError(f"not a bit field: {sc!r}")


def mask(con: Construct, name: str) -> int:
    """The mask of field ``name`` of a bit-field register (in place)."""
    shift, width = bits(con)[name]
    return ((1 << width) - 1) << shift


def to_dict(value: Any) -> Any:
    """A parsed container as plain JSON-friendly data: field names to values,
    enum values by name, flag sets as the list of set flags, bytes as hex."""
    if isinstance(value, EnumIntegerString):
        return str(value)
    if isinstance(value, Container):
        items = {k: v for k, v in value.items() if not k.startswith("_")}
        if value.get("_flagsenum"):
            return [k for k, v in items.items() if v is True]
        return {k: to_dict(v) for k, v in items.items()}
    if isinstance(value, ListContainer):
        return [to_dict(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    return value

