"""``blockbed img convert`` and ``img info`` of an OVA (see blockbed/block/ova.py).

qemu-img has no OVA support (it opens the tar as raw); blockbed recognises one by its
first tar member, ``*.ovf`` (or by ``-f ova``), and converts its disks in place.
Output names (docs/img-tools.md): one disk, or ``--disk N``, goes to the output path
as given; with several disks, disk N goes to the output path with ``-N`` before its
extension (``out.qcow2`` -> ``out-1.qcow2``, ``out-2.qcow2``).  Every disk is opened
and checked (manifest, OVF capacity) before the first output is created.
"""

from __future__ import annotations

import argparse
import os
from typing import Callable

from ..block.driver import BlockDriver


def is_ova(path: str, fmt: str | None) -> bool:
    """``-f ova``, or no ``-f`` and a host file that starts as an OVA does."""
    if fmt is not None:
        return fmt == "ova"
    from ..block.ova import is_ova_header
    try:
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as f:
            return is_ova_header(f.read(512))
    except OSError:
        return False


def _open(path: str, force_share: bool):
    from ..block.file import FileDriver
    from ..block.ova import OvaArchive
    return OvaArchive(FileDriver(path, read_only=True, force_share=force_share), path)


def output_names(dst: str, numbers: list[int], several: bool) -> list[str]:
    """``dst`` for one disk; ``STEM-N.EXT`` in ``dst``'s directory for disk N of several."""
    if not several:
        return [dst]
    stem, ext = os.path.splitext(dst)
    return [f"{stem}-{n}{ext}" for n in numbers]


def add_convert_arguments(v: argparse.ArgumentParser) -> None:
    v.add_argument("--disk", type=int, metavar="N",
                   help="OVA source: convert only disk N (1 = the first of the OVF "
                        "DiskSection); without it every disk, see docs/img-tools.md")


def dispatch_convert(a: argparse.Namespace, out_fmt: str,
                     convert_into: Callable[[BlockDriver, str], int]) -> int | None:
    """``img convert`` of an OVA source (its status), else None (and ``--disk`` refused)."""
    if is_ova(a.src, a.f):
        return convert(a, out_fmt, convert_into)
    if a.disk is not None:
        from .img import _fail
        return _fail("--disk selects a disk of an OVA source; the source is not an OVA")
    return None


def convert(a: argparse.Namespace, out_fmt: str,
            convert_into: Callable[[BlockDriver, str], int]) -> int:
    """Convert the OVA's disks (or disk ``--disk``) with ``convert_into(src, dst)``."""
    from .img import _fail, unknown_format
    if unknown_format(out_fmt):
        return _fail(f"Unknown file format '{out_fmt}'")
    if a.bitmaps:
        return _fail("--bitmaps: an OVA's disks have no bitmaps")
    ova = _open(a.src, a.U)
    nodes: list[BlockDriver] = []
    try:
        disks = ova.disks
        if a.disk is not None:
            if not 1 <= a.disk <= len(disks):
                return _fail(f"--disk {a.disk}: '{a.src}' has {len(disks)} disk(s), "
                             f"numbered 1 to {len(disks)}")
            disks = [disks[a.disk - 1]]
        for d in disks:
            nodes.append(ova.open_disk(d))
        names = output_names(a.dst, [d.number for d in disks], len(disks) > 1)
        for node, name in zip(nodes, names):
            rc = convert_into(node, name)
            if rc:
                return rc
        return 0
    finally:
        for n in nodes:
            n.close()
        ova.close()


def info(a: argparse.Namespace) -> int:
    """The package: descriptor, manifest (verified), and each disk with its size."""
    from .img import qemu_json, size_to_str, _actual_size
    ova = _open(a.filename, a.U)
    try:
        disks = []
        for d in ova.disks:
            node = ova.open_disk(d)
            try:
                disks.append({"disk": d.number, "disk-id": d.disk_id, "filename": d.href,
                              "format": node.driver_name, "virtual-size": node.length(),
                              "member-size": ova.members[d.href][1]})
            finally:
                node.close()
        out = {"filename": a.filename, "format": "ova",
               "actual-size": _actual_size(a.filename), "ovf": ova.ovf_name,
               **({"manifest": ova.manifest} if ova.manifest else {}), "disks": disks}
    finally:
        ova.close()
    if a.output == "json":
        print(qemu_json(out))
        return 0
    lines = [f"image: {out['filename']}", "file format: ova",
             f"disk size: {size_to_str(out['actual-size'])}", f"OVF descriptor: {out['ovf']}"]
    if "manifest" in out:
        lines.append(f"manifest: {out['manifest']} (checksums verified)")
    lines.append("disks:")
    for d in disks:
        lines.append(f"    [{d['disk']}]: {d['filename']} ({d['format']}, disk id "
                     f"{d['disk-id']}): virtual size {size_to_str(d['virtual-size'])} "
                     f"({d['virtual-size']} bytes), {d['member-size']} bytes in the archive")
    print("\n".join(lines))
    return 0
