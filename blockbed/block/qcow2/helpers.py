"""Small helpers the qcow2 driver's modules share (:mod:`.driver`,
:mod:`.read_path`, :mod:`.write_path`, :mod:`.zero`, :mod:`.status`,
:mod:`.subcluster`): the lazily created logger, a buffer of zeros and the
fill that uses it, a request buffer as flat bytes, and the host path under a node.  Nothing here knows the
qcow2 format and imports nothing from this package, so any module here may use it.
"""

from __future__ import annotations

from ..driver import BlockDriver


def _log():
    """The driver's logger; ``logging`` is imported only when there is something to say
    (it costs start-up time of every ``blockbed img`` command otherwise)."""
    import logging
    return logging.getLogger("blockbed.qcow2")


_ZEROS = memoryview(bytes(1 << 21))


def _zero_fill(buf: memoryview) -> None:
    n = len(buf)
    pos = 0
    while pos < n:
        k = min(n - pos, len(_ZEROS))
        buf[pos:pos + k] = _ZEROS[:k]
        pos += k


def _byte_view(buf) -> memoryview:
    """A request's buffer as a flat view of bytes (what the read and write paths
    slice and hand to the protocol driver), without a copy."""
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    if mv.format != "B" or mv.ndim != 1:
        mv = mv.cast("B")
    return mv


def _node_path(node: BlockDriver) -> str | None:
    """The host path under a protocol node (through filters), for relative backing names."""
    seen = 0
    while node is not None and seen < 16:
        path = getattr(node, "path", None) or getattr(node, "filename", None)
        if isinstance(path, str):
            return path
        kids = list(node.children())
        node = kids[0] if kids else None
        seen += 1
    return None
