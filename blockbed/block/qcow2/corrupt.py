"""Shared helpers for validating offsets read from qcow2 metadata.

QEMU formats corruption messages with C's ``%#x``/``%#llx``, which prints a bare
``0`` for zero (not ``0x0``); messages here match QEMU's text exactly so logs and
tests can be compared with qemu-io/qemu-img output.
"""

from __future__ import annotations


def c_hex(v: int) -> str:
    """C ``printf("%#x", v)``: ``0`` for zero, else ``0x…``."""
    return "0" if v == 0 else f"{v:#x}"


def offset_into_cluster(offset: int, cluster_size: int) -> int:
    """QEMU offset_into_cluster(): non-zero when ``offset`` is not cluster aligned."""
    return offset & (cluster_size - 1)
