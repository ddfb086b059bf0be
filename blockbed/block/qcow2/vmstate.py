"""The VM state area of a qcow2 image (QEMU qcow2_vm_state_offset,
qcow2_co_save_vmstate, qcow2_co_load_vmstate).

``savevm`` stores a guest's RAM and device state in the image itself, at guest
offsets starting at the first L1 entry past the virtual size: the area is mapped
through the same L1/L2 tables as guest data (the L1 table grows to reach it), so
its clusters are counted by ``check``, freed by a shrink that drops their L1
entries (leaked, as QEMU 7.2 leaves them) and never copied by ``convert``.
``blockbed io``'s ``write -b``/``read -b`` reach it.

These functions use the driver's own cluster paths (its write into one L2 table,
its run lookup, its readers), so the area behaves exactly as guest data does:
COPIED flags, copy-on-write of shared clusters, subclusters with extended L2.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ..driver import BlockError

if TYPE_CHECKING:
    from .driver import Qcow2Driver


def vm_state_offset(drv: "Qcow2Driver") -> int:
    """The guest offset of the first L1 entry past the virtual size."""
    per_l1 = drv.cluster_size << drv.l2_bits
    return -(-drv.length() // per_l1) * per_l1


class VmStateUnsupported(BlockError):
    """This image's VM state area is not implemented here (refused, never guessed)."""


def _supported(drv: "Qcow2Driver") -> None:
    if drv.crypto is not None or drv.has_data_file:
        raise VmStateUnsupported(errno.ENOTSUP, "the VM state area is supported on qcow2 "
                                 "images without encryption or an external data file")


def save_vmstate(drv: "Qcow2Driver", pos: int, data: bytes | memoryview) -> None:
    """Write ``data`` at ``pos`` of the VM state area (OSError on I/O failure)."""
    _supported(drv)
    start = vm_state_offset(drv) + pos
    span = drv.cluster_size << drv.l2_bits          # guest bytes one L2 table maps
    mv = memoryview(data)
    drv._check_writable()
    drv._host_hint = None          # the extended-L2 write path's allocation hint
    p, end = start, start + len(mv)
    while p < end:
        stop = min(end, (p // span + 1) * span)
        drv._write_in_l2(p, mv[p - start:stop - start])   # grows L1 as needed
        p = stop


def load_vmstate(drv: "Qcow2Driver", pos: int, buf: bytearray | memoryview) -> None:
    """Fill ``buf`` from ``pos`` of the VM state area (OSError on I/O failure)."""
    _supported(drv)
    start = vm_state_offset(drv) + pos
    mv = memoryview(buf)
    extent = drv._sc_extent if drv.header.extended_l2 else drv._extent
    p, end = start, start + len(mv)
    while p < end:
        # the driver's run lookup: clusters, or subclusters with extended L2 entries
        run, kind, host = extent(p, end)
        dst = mv[p - start:p - start + run]
        if kind.name == "NORMAL":
            drv._read_host(host, dst, p)
        elif kind.name.startswith("UNALLOCATED"):
            drv._read_backing(p, dst)
        elif kind.name == "COMPRESSED":
            drv._read_compressed(p, host, dst)
        else:
            dst[:] = bytes(run)
        p += run
