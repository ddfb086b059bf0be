"""qcow2 format driver (QEMU docs/interop/qcow2.txt, behaving as QEMU 7.2).

The format registry imports this package lazily and calls exactly three
functions: :func:`probe`, :func:`open` and :func:`create`.

Modules, one concern each: ``header`` (header and extensions, construct
declarations), ``cluster`` (L1/L2 mapping), ``cache`` (write-back metadata
caches with ordering dependencies), ``refcount`` (refcounts and allocation),
``snapshot`` (snapshot table), ``compress`` (deflate/zstd), ``overlap``
(metadata overlap checks), ``check`` (check and repair), ``create`` (creation
and preallocation), ``driver`` (the BlockDriver: open, header, flush, close)
with its I/O paths as mixins, ``read_path``, ``write_path``, ``zero``
(write_zeroes, discard) and ``status`` (block status), and what those share,
``state`` and ``helpers``; ``subcluster`` (extended L2 entries: the driver of
images with subcluster allocation).
"""

from __future__ import annotations

from typing import Callable

from ..driver import BlockDriver
from .header import MAGIC

__all__ = ["probe", "open", "create"]


def probe(header: bytes, filename: str | None = None) -> int:
    """100 for a qcow2 magic with version >= 2 (QEMU qcow2_probe), else 0."""
    if len(header) >= 8 and header[:4] == MAGIC and int.from_bytes(header[4:8], "big") >= 2:
        return 100
    return 0


def open(file_node: BlockDriver, *, read_only: bool = False, options: dict | None = None,
         opener: Callable[..., BlockDriver] | None = None) -> BlockDriver:  # noqa: A001
    """Open a qcow2 image on ``file_node``; ``opener(name, format=…, read_only=True)``
    opens backing files (names relative to the image's directory)."""
    from .driver import Qcow2Driver
    return Qcow2Driver(file_node, read_only=read_only, options=options, opener=opener)


def create(path: str, size: int, options: dict) -> None:
    """Create a qcow2 image file; ``options`` are qemu-img's ``-o`` keys."""
    from .imagecreate import create as _create
    _create(path, size, options or {})
