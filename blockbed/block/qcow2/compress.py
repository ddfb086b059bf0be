"""Compressed clusters (spec "Compressed Clusters Descriptor", "compression_type").

compression_type 0 is raw deflate (zlib with a 4096-byte window, no header:
wbits=-12); 1 is zstd (one or more frames).  A compressed cluster must
decompress to exactly one cluster.
"""

from __future__ import annotations

import zlib

from ..driver import CorruptImageError
from .header import COMPRESSION_ZLIB, COMPRESSION_ZSTD

SECTOR = 512


def _zstandard():
    """The zstandard module, imported on the first zstd cluster (not at start-up of
    every tool that opens a qcow2 image); None if it is missing."""
    try:
        import zstandard
    except ImportError:  # pragma: no cover - zstandard is a declared dependency
        return None
    return zstandard


def decompress(data: bytes | memoryview, cluster_size: int, ctype: int) -> bytes:
    """Decompress one cluster; raise CorruptImageError unless it yields cluster_size bytes."""
    if ctype == COMPRESSION_ZLIB:
        d = zlib.decompressobj(-12)
        try:
            out = d.decompress(data, cluster_size)
        except zlib.error as e:
            raise CorruptImageError(f"qcow2: compressed cluster does not inflate: {e}") from None
    elif ctype == COMPRESSION_ZSTD:
        _zstd = _zstandard()
        if _zstd is None:
            raise CorruptImageError("qcow2: zstd compression needs the zstandard module")
        d = _zstd.ZstdDecompressor().decompressobj()
        out = b""
        try:
            buf = bytes(data)
            while len(out) < cluster_size and buf:
                out += d.decompress(buf)
                buf = d.unused_data
                if buf:
                    d = _zstd.ZstdDecompressor().decompressobj()
                elif d.eof:
                    break
                else:
                    break
        except _zstd.ZstdError as e:
            raise CorruptImageError(f"qcow2: compressed cluster does not decompress: {e}") from None
        out = out[:cluster_size] if len(out) >= cluster_size else out
    else:
        raise CorruptImageError(f"qcow2: unknown compression type {ctype}")
    if len(out) != cluster_size:
        raise CorruptImageError(f"qcow2: compressed cluster decompresses to {len(out)} bytes, "
                                f"expected {cluster_size}")
    return out


def compress(data: bytes | memoryview, ctype: int) -> bytes:
    if ctype == COMPRESSION_ZLIB:
        c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -12, 9)
        return c.compress(data) + c.flush()
    if ctype == COMPRESSION_ZSTD and (_zstd := _zstandard()) is not None:
        return _zstd.ZstdCompressor().compress(bytes(data))
    raise CorruptImageError(f"qcow2: unknown compression type {ctype}")
