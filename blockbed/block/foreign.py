"""Foreign image formats: recognised (never mistaken for raw), some of them read.

vmdk, vpc, vhdx, qed and vdi have read-only drivers (:mod:`blockbed.block.vmdk` …,
listed in ``IMPLEMENTED``, see docs/foreign-formats.md); the others are only
recognised and refused with a clear error.

Opening a VMDK or VHDX as raw shows the guest the container's metadata as disk
data, and the first write destroys the image.  QEMU avoids that by probing every
format it has a driver for; blockbed probes the same magic numbers (each format's
specification, as QEMU's ``*_probe`` functions read them), so ``img info x.vmdk``
says what the file is and refuses, instead of printing "file format: raw".  The
raw driver's sector-0 guard uses these probes too: a write through a probed raw
image can never make it look like one of these formats.

An explicit ``-f raw`` still opens any file as raw, as in QEMU.

Formats and the bytes that identify them:

========== =================================================================
vmdk       ``KDMV`` (hosted sparse extent) or ``COWD`` (ESX) at 0, or a text
           descriptor with a ``createType=`` line (VMware Virtual Disk Format 1.1)
vpc        ``conectix`` at 0 (dynamic/differencing VHD; a *fixed* VHD only has
           its footer at the end and probes as raw, in QEMU too)
vhdx       ``vhdxfile`` at 0 (MS-VHDX 2.2.1)
vdi        signature 0xBEDA107F at byte 64 (VirtualBox VDI header)
qed        ``QED\\0`` at 0 (QED specification)
qcow       ``QFI\\xfb`` with version 1 (qcow version 1)
parallels  ``WithoutFreeSpace`` or ``WithouFreSpacExt`` at 0
luks       ``LUKS\\xba\\xbe`` with version 1 or 2 (LUKS on-disk format)
bochs      ``Bochs Virtual HD Image`` at 0 with type ``Redolog``
cloop      the ``#!/bin/sh`` + ``#V2.0 Format`` preamble
========== =================================================================
"""

from __future__ import annotations

import errno
import struct

from .driver import BlockDriver, BlockError

SCORE = 100


def _vmdk(h: bytes, filename: str | None) -> int:
    if h[:4] in (b"KDMV", b"COWD"):
        return SCORE
    # a text descriptor: printable lines, one of them createType=...
    text = h[:2048]
    if b"\0" in text.rstrip(b"\0")[:2048]:
        return 0
    for line in text.split(b"\n"):
        line = line.strip()
        if line.startswith(b"createType") and b"=" in line:
            return SCORE
    return 0


def _vpc(h: bytes, filename: str | None) -> int:
    return SCORE if h[:8] == b"conectix" else 0


def _vhdx(h: bytes, filename: str | None) -> int:
    return SCORE if h[:8] == b"vhdxfile" else 0


def _vdi(h: bytes, filename: str | None) -> int:
    if len(h) < 68:
        return 0
    return SCORE if struct.unpack_from("<I", h, 64)[0] == 0xBEDA107F else 0


def _qed(h: bytes, filename: str | None) -> int:
    return SCORE if h[:4] == b"QED\0" else 0


def _qcow1(h: bytes, filename: str | None) -> int:
    return SCORE if h[:4] == b"QFI\xfb" and h[4:8] == b"\0\0\0\1" else 0


def _parallels(h: bytes, filename: str | None) -> int:
    return SCORE if h[:16] in (b"WithoutFreeSpace", b"WithouFreSpacExt") else 0


def _luks(h: bytes, filename: str | None) -> int:
    return SCORE if h[:6] == b"LUKS\xba\xbe" and h[6:8] in (b"\0\1", b"\0\2") else 0


def _bochs(h: bytes, filename: str | None) -> int:
    if h[:22] == b"Bochs Virtual HD Image" and h[32:39] == b"Redolog":
        return SCORE
    return 0


def _cloop(h: bytes, filename: str | None) -> int:
    return 2 if h.startswith(b"#!/bin/sh\n") and b"#V2.0 Format\n" in h[:256] else 0


PROBES = {"vmdk": _vmdk, "vpc": _vpc, "vhdx": _vhdx, "vdi": _vdi, "qed": _qed,
          "qcow": _qcow1, "parallels": _parallels, "luks": _luks, "bochs": _bochs,
          "cloop": _cloop}


def _refuse_open(name: str):
    def open_(file_node: BlockDriver, *, read_only: bool, options: dict, opener=None):
        path = getattr(file_node, "path", None) or file_node.describe()
        raise BlockError(errno.ENOTSUP, f"image format '{name}' is not supported by blockbed "
                                        f"(detected in '{path}'); convert it first: qemu-img "
                                        f"convert -f {name} -O qcow2 {path} OUT.qcow2")
    return open_


def _refuse_create(name: str):
    def create(path: str, size: int, options: dict) -> None:
        raise BlockError(errno.ENOTSUP, f"image format '{name}' cannot be created by "
                                        "blockbed (raw and qcow2 can)")
    return create


# Formats read by their own read-only driver (imported on first use by the registry).
IMPLEMENTED = {"vmdk": "blockbed.block.vmdk", "vpc": "blockbed.block.vpc",
               "qed": "blockbed.block.qed", "vdi": "blockbed.block.vdi",
               "vhdx": "blockbed.block.vhdx"}
RECOGNISED_ONLY = frozenset(PROBES) - frozenset(IMPLEMENTED)


def register(register_format) -> None:
    for name in sorted(RECOGNISED_ONLY):
        register_format(name, PROBES[name], _refuse_open(name), _refuse_create(name))
