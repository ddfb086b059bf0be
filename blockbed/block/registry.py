"""Opening images: protocol node, optional filters, format probe, format node.

``open_image`` is the one entry point every tool and the machine use::

    node = open_image("disk.qcow2", "qcow2", read_only=False, cache="none")

Graph built (top to bottom)::

    format (raw | qcow2)
      └─ blkdebug        only for "blkdebug:CONFIG:FILE" or options["blkdebug"]
          └─ logwrites   only with options["log-writes"] = LOGPATH
              └─ file    FileDriver(FILE, O_DIRECT per cache mode, QEMU locks)
                         or NbdDriver for an NBD URI (nbd+unix:///E?socket=S, nbd://H:P/E)

blkdebug sits above logwrites so an injected error never appears in the
write log (the write did not happen).

Formats are registered with :func:`register_format`.  ``raw`` is built in;
``qcow2`` lives in :mod:`blockbed.block.qcow2` and is imported on first use
(absent → a clear "format not available" error).  A format module exposes
``probe(header: bytes, filename) -> int`` (a score, 0 = not mine),
``open(file_node, *, read_only, options, opener) -> BlockDriver`` and
``create(path, size, options) -> None``.  ``opener`` is :func:`open_image`
with this image's cache mode and force-share bound, for backing files.

Probing happens only when ``format`` is None (QEMU's rule); guessing raw
prints QEMU's warning and restricts writes to sector 0 (see
:mod:`blockbed.block.raw`), so a raw image can never be probed into another
format later.
"""

from __future__ import annotations

import errno
import functools
import importlib
import sys
from dataclasses import dataclass
from typing import Any, Callable

from .cachemode import CacheMode
from .driver import BlockDriver, BlockError, ImageFormatError
from .file import FileDriver, create_file
from . import raw as _raw

PROBE_BYTES = 2048
QCOW2_MAGIC = b"QFI\xfb"

ProbeFn = Callable[[bytes, str | None], int]
OpenFn = Callable[..., BlockDriver]
CreateFn = Callable[[str, int, dict], None]


@dataclass(frozen=True)
class FormatSpec:
    name: str
    probe: ProbeFn
    open: OpenFn
    create: CreateFn


_formats: dict[str, FormatSpec] = {}
# Formats implemented in their own package, imported on first use.
_lazy: dict[str, str] = {"qcow2": "blockbed.block.qcow2"}
# Registry-level options; everything else goes to the format driver.
_REGISTRY_OPTIONS = ("locking", "log-writes", "blkdebug", "native-fua")


def _default_warn(message: str) -> None:
    print(f"blockbed: warning: {message}", file=sys.stderr)


warn_handler: Callable[[str], None] = _default_warn
"""Where probe warnings go; the CLI and tests may replace it."""


def register_format(name: str, probe: ProbeFn, open: OpenFn, create: CreateFn) -> None:
    """Make ``format=name`` available (replaces an earlier registration)."""
    _formats[name] = FormatSpec(name, probe, open, create)


def available_formats() -> list[str]:
    """Formats blockbed can open (not the ones it only recognises, see foreign.py)."""
    return sorted((set(_formats) | set(_lazy)) - _recognised_only)


_recognised_only: set[str] = set()


def get_format(name: str) -> FormatSpec:
    """The registered format, importing a lazy one on first use."""
    spec = _formats.get(name)
    if spec is not None:
        return spec
    module_name = _lazy.get(name)
    if module_name is None:
        raise BlockError(errno.EINVAL, f"format={name}: unknown format; allowed: "
                                       f"{', '.join(available_formats())}")
    try:
        mod = importlib.import_module(module_name)
        spec = FormatSpec(name, mod.probe, mod.open, mod.create)
    except (ImportError, AttributeError) as e:
        raise BlockError(errno.ENOTSUP, f"format {name} is not available in this build "
                                        f"({type(e).__name__}: {e})") from None
    _formats[name] = spec
    return spec


def _probe(header: bytes, filename: str | None, strict: bool = True) -> str:
    """The best-scoring format for ``header`` ("raw" when nothing else claims it).

    If the qcow2 driver is unavailable but the header carries the qcow2 magic,
    ``strict`` raises its "not available" error (never open it as raw) and
    otherwise answers "qcow2".
    """
    best, best_score = "raw", 1
    for name in sorted(set(_formats) | set(_lazy)):
        if name == "raw":
            continue
        try:
            spec = get_format(name)
        except BlockError:
            if name == "qcow2" and header.startswith(QCOW2_MAGIC):
                if strict:
                    raise  # never fall back to raw for an image that is visibly qcow2
                return "qcow2"
            continue
        score = spec.probe(header, filename)
        if score > best_score:
            best, best_score = name, score
    return best


def probe_other_format(header: bytes) -> str | None:
    """Name of a non-raw format that claims ``header``, else None (raw's sector-0 guard)."""
    fmt = _probe(header, None, strict=False)
    return None if fmt == "raw" else fmt


def _raw_open(file_node: BlockDriver, *, read_only: bool, options: dict,
              opener: Callable[..., BlockDriver] | None = None) -> BlockDriver:
    opts = dict(options)
    offset = _int_option(opts.pop("offset", 0), "offset")
    size = opts.pop("size", None)
    size = None if size is None else _int_option(size, "size")
    if opts:
        raise BlockError(errno.EINVAL, f"raw: unknown option '{next(iter(opts))}'; "
                                       "allowed: offset, size")
    return _raw.RawDriver(file_node, offset=offset, size=size, read_only=read_only)


def _raw_create(path: str, size: int, options: dict) -> None:
    opts = dict(options)
    prealloc = opts.pop("preallocation", "off")
    if opts:
        raise BlockError(errno.EINVAL, f"raw: unknown create option '{next(iter(opts))}'; "
                                       "allowed: preallocation")
    create_file(path, size, prealloc)


def _int_option(value: Any, key: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BlockError(errno.EINVAL, f"{key}={value}: not an integer") from None


register_format("raw", _raw.probe, _raw_open, _raw_create)
# formats recognised (never opened as raw by mistake) but not read: see foreign.py
from . import foreign as _foreign  # noqa: E402
_foreign.register(register_format)
_recognised_only.update(_foreign.RECOGNISED_ONLY)
_lazy.update(_foreign.IMPLEMENTED)          # read-only drivers of foreign formats


def is_nbd_filename(name: str) -> bool:
    """``nbd://…``, ``nbd+unix://…``, ``nbd:…``: the nbd protocol driver, not a file."""
    return name.startswith(("nbd:", "nbd+unix:", "nbd+tcp:"))


def split_filename(filename: str) -> tuple[str | None, str]:
    """``blkdebug:CONFIG:FILE`` → (CONFIG, FILE); a plain name → (None, name).

    CONFIG may be empty (``blkdebug::FILE``: the filter with no rules).
    """
    if filename.startswith("blkdebug:"):
        rest = filename[len("blkdebug:"):]
        config, sep, path = rest.partition(":")
        if not sep or not path:
            raise BlockError(errno.EINVAL, f"'{filename}': expected blkdebug:CONFIG:FILE")
        return config, path
    return None, filename


def open_image(filename: str, format: str | None = None, *, read_only: bool = False,
               cache: CacheMode | str = CacheMode.WRITEBACK, force_share: bool = False,
               options: dict | None = None) -> BlockDriver:
    """Open ``filename`` and return the format node (the root of the graph).

    ``format``: "raw", "qcow2", or None to probe (with QEMU's warning when
    the guess is raw).  ``cache``: only ``cache.direct`` matters here (the
    file is opened with O_DIRECT); the rest is the BlockBackend's job.
    ``force_share``: QEMU's ``force-share=on`` (requires ``read_only``).
    ``options``: ``locking`` (auto|on|off), ``log-writes`` (log path),
    ``blkdebug`` (config path), ``native-fua`` (bool); anything else goes to
    the format driver (raw: ``offset``, ``size``).

    Raises :class:`BlockError` (errno set) with a one-line message.
    """
    cache = CacheMode.parse(cache)
    opts = dict(options or {})
    blkdebug_config, path = split_filename(filename)
    if "blkdebug" in opts:
        blkdebug_config = opts.pop("blkdebug")
    log_path = opts.pop("log-writes", None)
    locking = opts.pop("locking", "auto")
    native_fua = opts.pop("native-fua", False)     # QEMU 7.2: write, then fdatasync

    if format is not None and format not in available_formats() and \
            format not in _recognised_only:
        raise BlockError(errno.EINVAL, f"format={format}: unknown format; allowed: "
                                       f"{', '.join(available_formats())}")
    file_node: BlockDriver
    if is_nbd_filename(path):
        from .nbd import NbdDriver       # an NBD server instead of a host file
        file_node = NbdDriver(path, read_only=read_only)
    else:
        file_node = FileDriver(path, read_only=read_only, direct=cache.direct, locking=locking,
                               force_share=force_share, native_fua=native_fua)
    proto: BlockDriver = file_node
    try:
        header = bytearray(min(PROBE_BYTES, file_node.length()))
        if header:
            file_node.read(0, memoryview(header))
        probed = False
        if format is None:
            format = _probe(bytes(header), path)
            probed = True
            if format == "raw":
                warn_handler(f"image format was not specified for '{path}' and probing "
                             "guessed raw; writes to sector 0 are restricted "
                             "(specify format=raw explicitly to remove the restriction)")
        spec = get_format(format)
        if format != "raw" and spec.probe(bytes(header), path) <= 0:
            actual = _probe(bytes(header), path)
            raise ImageFormatError(f"'{path}' is not a {format} image (it looks like {actual}); "
                                   f"use format={actual}")
        if log_path is not None:
            from .logwrites import LogWritesDriver
            proto = LogWritesDriver(proto, log_path)
        if blkdebug_config is not None:
            from .blkdebug import BlkdebugDriver
            proto = BlkdebugDriver(proto, blkdebug_config or None)
        opener = functools.partial(open_image, cache=cache, force_share=force_share)
        node = spec.open(proto, read_only=read_only, options=opts, opener=opener)
        if probed and isinstance(node, _raw.RawDriver):
            node.probed = True
            node._other_format_probe = probe_other_format
        return node
    except BaseException:
        proto.close()
        raise


def create_image(filename: str, format: str, size: int, options: dict | None = None) -> None:
    """Create an image (``qemu-img create``); ``options`` go to the format's create."""
    get_format(format).create(filename, size, dict(options or {}))
