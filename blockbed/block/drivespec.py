"""``-drive`` style specifications: ``file=PATH,format=qcow2,if=virtio,cache=none,…``.

Syntax as QEMU's QemuOpts: comma-separated ``key=value`` items, ``,,`` for a
literal comma inside a value, a bare ``key`` meaning ``key=on``.  Every
mistake — an unknown key, a bad value, a duplicate, a missing file, a format
mismatch — is one :class:`DriveSpecError` line that names the key and the
allowed values (tests assert the exact text).

Block options (QEMU ``-drive``): ``file`` (required), ``format`` (probed
when omitted, with QEMU's warning), ``if``, ``cache``, ``cache.writeback``,
``cache.direct``, ``cache.no-flush``, ``discard``, ``detect-zeroes``,
``readonly``, ``werror``, ``rerror``, ``serial``, ``force-share``,
``locking``, ``offset``/``size`` (raw window), ``id``.
Encrypted qcow2: ``encrypt.key-secret=ID`` names a secret registered with
``--object secret,id=ID,…`` (:mod:`blockbed.block.secrets`).
blockbed extras: ``native-fua=on`` (a FUA write as ``pwritev2(RWF_DSYNC)`` instead of
QEMU 7.2's write + ``fdatasync``), ``log-writes=PATH`` (record host writes, see
:mod:`blockbed.block.logwrites`).
Device options (for the controller models; kept in ``device_options``):
``write-cache`` (on|off|auto: overrides the WCE default of the cache mode),
``logical_block_size``, ``physical_block_size``, ``discard_granularity``,
``num-queues``, ``queue-size``, ``disable-legacy`` (on|off|auto) and
``disable-modern`` (virtio: QEMU's interface switches), ``ncq``, ``model``, ``wwn``, ``bus``,
``unit``.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Callable

from .backend import BlockBackend, DetectZeroes, DiscardMode, ErrorAction, RequestLog
from .cachemode import CacheMode
from .driver import BlockError

INTERFACES = ("virtio", "ahci", "ide", "lsi")
FORMATS = ("raw", "qcow2")
ON_OFF = ("on", "off")


class DriveSpecError(ValueError):
    """A bad drive specification; ``str()`` is the one-line message."""


def _choice(*allowed: str, aliases: dict[str, str] | None = None) -> Callable[[str, str], str]:
    def check(key: str, value: str) -> str:
        value = (aliases or {}).get(value, value)
        if value not in allowed:
            raise DriveSpecError(f"drive option '{key}': invalid value '{value}'; "
                                 f"allowed: {', '.join(allowed)}")
        return value
    return check


def _bool(key: str, value: str) -> bool:
    v = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}.get(value)
    if v is None:
        raise DriveSpecError(f"drive option '{key}': invalid value '{value}'; allowed: on, off")
    return v


def _int(lo: int = 0, hi: int | None = None, power_of_two: bool = False,
         multiple_of: int = 1) -> Callable[[str, str], int]:
    def check(key: str, value: str) -> int:
        try:
            n = int(value, 0)
        except ValueError:
            n = None
        ok = n is not None and n >= lo and (hi is None or n <= hi) \
            and (not power_of_two or (n & (n - 1)) == 0) and n % multiple_of == 0
        if not ok:
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            extra = ", a power of two" if power_of_two else ""
            extra += f", a multiple of {multiple_of}" if multiple_of > 1 else ""
            raise DriveSpecError(f"drive option '{key}': invalid value '{value}'; "
                                 f"allowed: an integer {rng}{extra}")
        return n  # type: ignore[return-value]
    return check


def _text(max_len: int) -> Callable[[str, str], str]:
    def check(key: str, value: str) -> str:
        if not value or len(value) > max_len or not value.isprintable() or not value.isascii():
            raise DriveSpecError(f"drive option '{key}': invalid value '{value}'; allowed: "
                                 f"1 to {max_len} printable ASCII characters")
        return value
    return check


def _any(key: str, value: str) -> str:
    if not value:
        raise DriveSpecError(f"drive option '{key}': empty value")
    return value


BLOCK_OPTIONS: dict[str, Callable[[str, str], object]] = {
    "file": _any,
    "format": _choice(*FORMATS),
    "if": _choice(*INTERFACES),
    "cache": _choice(*CacheMode.names()),
    "cache.writeback": _bool,
    "cache.direct": _bool,
    "cache.no-flush": _bool,
    "discard": _choice("ignore", "unmap", aliases={"off": "ignore", "on": "unmap"}),
    "detect-zeroes": _choice("off", "on", "unmap"),
    "readonly": _bool,
    "werror": _choice("enospc", "report", "ignore", "stop"),
    "rerror": _choice("report", "ignore", "stop"),
    "serial": _text(20),
    "force-share": _bool,
    "locking": _choice("auto", "on", "off"),
    "offset": _int(0, multiple_of=512),
    "size": _int(0, multiple_of=512),
    "id": _text(64),
    "log-writes": _any,
    "native-fua": _bool,
    "encrypt.key-secret": _any,
}
DEVICE_OPTIONS: dict[str, Callable[[str, str], object]] = {
    "write-cache": _choice("on", "off", "auto"),
    "logical_block_size": _choice("512", "4096"),
    "physical_block_size": _choice("512", "4096"),
    "discard_granularity": _int(0, power_of_two=True),
    "num-queues": _int(1, 16),
    "disable-legacy": _choice("on", "off", "auto"),
    "disable-modern": _bool,
    "queue-size": _int(2, 1024, power_of_two=True),
    "ncq": _bool,
    "model": _text(40),
    "wwn": _int(0, (1 << 64) - 1),
    "bus": _int(0, 7),
    "unit": _int(0, 15),
}
ALIASES = {"read-only": "readonly", "read_only": "readonly", "detect_zeroes": "detect-zeroes",
           "force_share": "force-share", "interface": "if"}


@dataclass
class DriveSpec:
    """A parsed drive specification (values validated, defaults as QEMU's)."""
    file: str
    format: str | None = None
    interface: str = "ide"
    cache: CacheMode = CacheMode.WRITEBACK
    discard: DiscardMode = DiscardMode.IGNORE
    detect_zeroes: DetectZeroes = DetectZeroes.OFF
    read_only: bool = False
    werror: ErrorAction = ErrorAction.ENOSPC
    rerror: ErrorAction = ErrorAction.REPORT
    serial: str | None = None
    force_share: bool = False
    locking: str = "auto"
    native_fua: bool = False      # FUA as pwritev2(RWF_DSYNC) instead of write + fdatasync
    offset: int | None = None
    size: int | None = None
    id: str | None = None
    log_writes: str | None = None
    key_secret: str | None = None
    device_options: dict[str, object] = field(default_factory=dict)
    text: str = ""

    @property
    def write_cache_default(self) -> bool:
        """Initial WCE: the device option ``write-cache`` if on/off, else the cache mode's."""
        wc = self.device_options.get("write-cache", "auto")
        return self.cache.writeback if wc == "auto" else wc == "on"


def split_options(text: str) -> list[tuple[str, str]]:
    """QemuOpts splitting: ``a=b,c=d,,e`` → [("a","b"), ("c","d,e")]; bare ``k`` → ("k","on")."""
    items: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if i + 1 < len(text) and text[i + 1] == ",":
                cur.append(",")
                i += 2
                continue
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    items.append("".join(cur))
    out = []
    for item in items:
        if not item:
            raise DriveSpecError(f"drive: empty option in '{text}' (stray comma?)")
        key, sep, value = item.partition("=")
        out.append((key.strip(), value if sep else "on"))
    return out


def _unknown(key: str) -> DriveSpecError:
    known = sorted(BLOCK_OPTIONS) + sorted(DEVICE_OPTIONS)
    near = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    return DriveSpecError(f"drive: unknown option '{key}'{hint}; allowed: {', '.join(known)}")


def parse_drive_spec(text: str) -> DriveSpec:
    """Parse and validate; raises :class:`DriveSpecError` with a one-line message."""
    values: dict[str, object] = {}
    device: dict[str, object] = {}
    for key, value in split_options(text):
        key = ALIASES.get(key, key)
        if key in BLOCK_OPTIONS:
            target = values
            check = BLOCK_OPTIONS[key]
        elif key in DEVICE_OPTIONS:
            target = device
            check = DEVICE_OPTIONS[key]
        else:
            raise _unknown(key)
        if key in values or key in device:
            raise DriveSpecError(f"drive option '{key}' given twice")
        target[key] = check(key, value)
    if "file" not in values:
        raise DriveSpecError("drive: option 'file' is required (file=PATH)")
    spec = DriveSpec(file=str(values["file"]), text=text, device_options=device)
    spec.format = values.get("format")  # type: ignore[assignment]
    spec.interface = values.get("if", "ide")  # type: ignore[assignment]
    cache = CacheMode.parse(values.get("cache", "writeback"))  # type: ignore[arg-type]
    switches = [k for k in ("cache.writeback", "cache.direct", "cache.no-flush") if k in values]
    if switches:
        try:
            cache = CacheMode.from_switches(values.get("cache.writeback", cache.writeback),
                                            values.get("cache.direct", cache.direct),
                                            values.get("cache.no-flush", cache.no_flush))
        except ValueError as e:
            raise DriveSpecError(f"drive options {', '.join(switches)}: {e}") from None
    spec.cache = cache
    spec.discard = DiscardMode(values.get("discard", "ignore"))
    spec.detect_zeroes = DetectZeroes(values.get("detect-zeroes", "off"))
    if spec.detect_zeroes is DetectZeroes.UNMAP and spec.discard is not DiscardMode.UNMAP:
        raise DriveSpecError("drive option 'detect-zeroes': value 'unmap' needs discard=unmap")
    spec.read_only = bool(values.get("readonly", False))
    spec.werror = ErrorAction(values.get("werror", "enospc"))
    spec.rerror = ErrorAction(values.get("rerror", "report"))
    spec.serial = values.get("serial")  # type: ignore[assignment]
    spec.force_share = bool(values.get("force-share", False))
    if spec.force_share and not spec.read_only:
        raise DriveSpecError("drive option 'force-share': value 'on' needs readonly=on")
    spec.locking = values.get("locking", "auto")  # type: ignore[assignment]
    spec.offset = values.get("offset")  # type: ignore[assignment]
    spec.size = values.get("size")  # type: ignore[assignment]
    if (spec.offset is not None or spec.size is not None) and spec.format == "qcow2":
        raise DriveSpecError("drive options 'offset'/'size': only allowed with format=raw")
    spec.id = values.get("id")  # type: ignore[assignment]
    spec.log_writes = values.get("log-writes")  # type: ignore[assignment]
    spec.native_fua = bool(values.get("native-fua", False))
    spec.key_secret = values.get("encrypt.key-secret")  # type: ignore[assignment]
    return spec


def open_drive(spec: DriveSpec | str, *, request_log: bool | RequestLog = False,
               name: str | None = None) -> BlockBackend:
    """Open the image a spec names and wrap it in a :class:`BlockBackend`.

    Errors (missing file, locked image, format mismatch …) become one
    :class:`DriveSpecError` line: ``drive file=PATH: <reason>``.
    """
    from .registry import open_image
    if isinstance(spec, str):
        spec = parse_drive_spec(spec)
    if not os.path.exists(spec.file) and not spec.file.startswith("blkdebug:"):
        raise DriveSpecError(f"drive file={spec.file}: No such file or directory")
    options: dict[str, object] = {"locking": spec.locking, "native-fua": spec.native_fua}
    if spec.log_writes:
        options["log-writes"] = spec.log_writes
    if spec.offset is not None:
        options["offset"] = spec.offset
    if spec.size is not None:
        options["size"] = spec.size
    if spec.key_secret is not None:
        options["encrypt.key-secret"] = spec.key_secret
    if (spec.offset is not None or spec.size is not None) and spec.format is None:
        spec.format = "raw"
    try:
        root = open_image(spec.file, spec.format, read_only=spec.read_only, cache=spec.cache,
                          force_share=spec.force_share, options=options)
    except BlockError as e:
        raise DriveSpecError(f"drive file={spec.file}: {e}") from None
    if getattr(getattr(root, "crypto", None), "method", 0) == 1:
        root.close()          # QEMU's system emulators refuse legacy AES (qemu-img still reads it)
        raise DriveSpecError(f"drive file={spec.file}: Use of AES-CBC encrypted qcow2 images "
                             "is no longer supported in system emulators")
    try:
        backend = BlockBackend(root, spec.cache, werror=spec.werror, rerror=spec.rerror,
                               discard=spec.discard, detect_zeroes=spec.detect_zeroes,
                               read_only=spec.read_only, request_log=request_log,
                               name=name or spec.id or os.path.basename(spec.file))
    except ValueError as e:
        root.close()
        raise DriveSpecError(f"drive: {e}") from None
    if spec.write_cache_default != backend.write_cache_enabled:
        backend.set_write_cache(spec.write_cache_default)
    return backend
