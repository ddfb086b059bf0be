"""qemu-io 7.2's ``open``, ``close`` and ``reopen``, and the VM state area behind
``read -b``/``write -b``, for ``blockbed io``.

The session holds at most one image (qemu-io's ``qemuio_blk``).  ``open`` takes
qemu-io's options: ``-r``, ``-s`` (a temporary qcow2 overlay, here in memory),
``-C`` (copy-on-read), ``-n``/``-t CACHE``, ``-d DISCARD``, ``-k``/``-i AIO``,
``-U``, ``-o OPTIONS`` and a file name.  ``-o`` keys blockbed cannot honour are
refused by name, never ignored.  ``reopen`` closes the image and opens it again
with the changed settings (the old ones come back if that fails): what the
commands see afterwards is what qemu-io's in-place reopen gives.

The VM state area of a qcow2 image (``write -b``/``read -b``) is QEMU's
``qcow2_vm_state_offset``: guest offsets from the first L1 entry past the virtual
size, read and written through the normal L1/L2 path (growing the L1 table), as
qcow2_co_save_vmstate/qcow2_co_load_vmstate do.  Other formats have none
(ENOTSUP, as QEMU's raw on a file).
"""

from __future__ import annotations

import dataclasses
import errno
import sys
from dataclasses import dataclass, field

from ..block.backend import BlockBackend
from ..block.driver import BlockDriver, BlockError

#: -o keys blockbed honours besides driver and file.filename / file.driver, by format
_FORMAT_KEYS = {"qcow2": ("l2-cache-size", "refcount-cache-size", "encrypt.key-secret"),
                "raw": ("offset", "size")}
_DISCARD = {"ignore": "ignore", "off": "ignore", "unmap": "unmap", "on": "unmap"}
_AIO = ("threads", "native", "io_uring")
_INT64_MAX = (1 << 63) - 1
_PROBE_WARNING = ("WARNING: Image format was not specified for '{0}' and probing guessed raw.\n"
                  "         Automatically detecting the format is dangerous for raw images, "
                  "write operations on block 0 will be restricted.\n"
                  "         Specify the 'raw' format explicitly to remove the restrictions.")


class OpenFailed(Exception):
    """A message qemu-io prints on stderr as it is (prefix included)."""


@dataclass
class OpenParams:
    """How an image is opened; ``reopen`` changes a copy."""
    filename: str | None
    options: dict[str, str] = field(default_factory=dict)
    read_only: bool = False
    cache: str = "writeback"
    discard: str = "ignore"             # qemu-io's open: no BDRV_O_UNMAP unless -d
    force_share: bool = False
    snapshot: bool = False
    copy_on_read: bool = False
    aio: str = "threads"
    image_opts: bool = False            # the command line's --image-opts argument


class _CorBackend(BlockBackend):
    """copy-on-read (QEMU BDRV_REQ_COPY_ON_READ): before a read, the clusters of the
    range the top node does not allocate are read and written into it (zeroes as
    write_zeroes), as bdrv_co_do_copy_on_readv."""

    def readv(self, offset: int, bufs: list[memoryview]) -> int:
        n = sum(len(b) for b in bufs)
        node = self.root
        cs = getattr(node, "cluster_size", 0)
        if cs and n and 0 <= offset and offset + n <= node.length():
            start, end = offset // cs * cs, min(-(-(offset + n) // cs) * cs, node.length())
            try:
                _copy_unallocated(node, start, end)
            except OSError as e:
                return -(e.errno or errno.EIO)
        return super().readv(offset, bufs)


def _copy_unallocated(node: BlockDriver, pos: int, end: int) -> None:
    for e in node.block_status(pos, end - pos):
        if e.allocated:
            continue
        buf = bytearray(e.length)
        node.read(e.offset, memoryview(buf))
        if buf.count(0) == len(buf):
            node.write_zeroes(e.offset, e.length, False)
        else:
            node.write(e.offset, buf)


@dataclass
class IoSession:
    """The open image (``blk`` None after ``close``), its format name and file name
    (for ``info``), and how it was opened (for ``reopen``)."""
    fmt: str = ""
    filename: str = ""
    blk: BlockBackend | None = None
    params: OpenParams | None = None

    def open(self, p: OpenParams, reopen: bool = False) -> None:
        """Open ``p`` (raises OpenFailed with qemu-io's message); ``reopen``: the
        probing warning (QEMU raw_open's, read-write opens only) was printed when
        the image was first opened."""
        node, self.fmt, self.filename = _open_node(p, reopen or p.read_only or p.snapshot)
        cls = _CorBackend if p.copy_on_read else BlockBackend
        self.blk = cls(node, p.cache, discard=p.discard)
        self.params = p

    def close(self) -> None:
        if self.blk is not None:
            self.blk.close()
        self.blk = None


def _fail(p: OpenParams, msg: str) -> OpenFailed:
    name = f" device {p.filename}" if p.filename else ""
    return OpenFailed(f"qemu-io: can't open{name}: {msg}")


def _open_node(p: OpenParams, quiet: bool = False) -> tuple[BlockDriver, str, str]:
    from ..block import registry
    from .img import _probe_format, open_img, unknown_format
    opts = dict(p.options)
    fmt = opts.pop("driver", None)
    path = opts.pop("file.filename", None)
    if opts.get("file.driver", "file") != "file":
        raise _fail(p, f"blockbed io: file.driver={opts['file.driver']}: only 'file' "
                       "is supported")
    opts.pop("file.driver", None)
    if path is not None and p.filename:
        raise _fail(p, "Can't specify 'file' and 'filename' options at the same time")
    path = path or p.filename
    if not path:
        raise _fail(p, "A block device must be specified for \"file\"" if fmt else
                    "Must specify either driver or file")
    if p.force_share and not p.read_only:
        raise _fail(p, "force-share=on can only be used with read-only images")
    if p.copy_on_read and p.read_only:
        raise _fail(p, "Can't use copy-on-read on read-only device")
    if unknown_format(fmt):
        raise _fail(p, f"Unknown driver '{fmt}'")
    ro = p.read_only or p.snapshot
    try:
        if p.image_opts:
            if opts:
                raise _fail(p, f"blockbed io: option '{next(iter(opts))}' is not supported "
                               "on an --image-opts image")
            node, fmt = open_img(path, fmt, read_only=ro, force_share=p.force_share,
                                 cache=p.cache)
        else:
            probed = fmt is None
            known = _probe_format(path) if probed else fmt
            allowed = _FORMAT_KEYS.get(known, ())
            for k in opts:
                if k not in allowed:
                    raise _fail(p, f"blockbed io: option '{k}' is not supported for "
                                   f"{known} (blockbed honours: driver, file.filename, "
                                   f"file.driver{''.join(', ' + a for a in allowed)})")
            saved = registry.warn_handler
            registry.warn_handler = lambda _m: quiet or print(_PROBE_WARNING.format(path),
                                                              file=sys.stderr)
            try:
                node = registry.open_image(path, fmt, read_only=ro, cache=p.cache,
                                           force_share=p.force_share and ro, options=opts)
            finally:
                registry.warn_handler = saved
            fmt = known
    except BlockError as e:
        raise _fail(p, str(e)) from None
    if p.snapshot:
        return _temp_overlay(node, p.read_only), "qcow2", path
    return node, fmt, path


def _temp_overlay(base: BlockDriver, read_only: bool) -> BlockDriver:
    """qemu-io -s (BDRV_O_SNAPSHOT): a new qcow2 image of the same size on top of
    ``base``, which stays untouched; here the overlay lives in memory."""
    from ..block.memory import MemoryDriver
    from ..block.qcow2 import open as qcow2_open
    from ..block.qcow2.imagecreate import create_on_node
    mem = MemoryDriver()
    create_on_node(mem, base.length(), {})
    return qcow2_open(mem, read_only=read_only, options={"backing": base})


# --- option parsing -------------------------------------------------------------------------
def parse_o(text: str, into: dict[str, str]) -> None:
    """QemuOpts syntax: key=value pairs separated by ',' (',,' is a literal comma);
    later keys replace earlier ones (qemu-io merges its -o lists)."""
    items, cur, i = [], "", 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                cur += ","
                i += 2
                continue
            items.append(cur)
            cur = ""
        else:
            cur += text[i]
        i += 1
    items.append(cur)
    for item in items:
        if not item:
            continue
        k, sep, v = item.partition("=")
        if not sep:
            print(f"qemu-io: warning: short-form boolean option '{k}' deprecated\n"
                  f"Please use {k}=on instead", file=sys.stderr)
            v = "on"
        into[k] = v


def _cache_mode(text: str) -> str:
    from ..block.cachemode import CacheMode
    try:
        CacheMode.parse(text)
    except ValueError:
        raise OpenFailed(f"qemu-io: Invalid cache option: {text}") from None
    return text


# --- the commands ---------------------------------------------------------------------------
#: open's options without a value: the setting each one makes
_OPEN_FLAGS = {"r": ("read_only", True), "s": ("snapshot", True), "C": ("copy_on_read", True),
               "n": ("cache", "none"), "k": ("aio", "native"), "U": ("force_share", True)}


def cmd_open(session: IoSession, args: list[str]) -> int:
    from .io_commands import _getopt, usage_error
    opts_list: list[tuple[str, str | bool]] = []
    o_args: dict[str, str] = {}
    _, rest = _getopt(args, "rsCnkUt:d:i:o:", repeat=opts_list)
    p = OpenParams(None)
    for c, v in opts_list:
        if c in _OPEN_FLAGS:
            setattr(p, *_OPEN_FLAGS[c])
        elif c == "t":
            p.cache = _cache_mode(str(v))
        elif c == "d":
            p.discard = parse_discard(str(v))
        elif c == "i":
            p.aio = parse_aio(str(v))
        elif c == "o":
            parse_o(str(v), o_args)
    if len(rest) > 1:
        raise usage_error("open")
    if session.blk is not None:
        raise OpenFailed("qemu-io: file open already, try 'help close'")
    p.filename = rest[0] if rest else None
    p.options = o_args
    check_aio(p)
    session.open(p)
    return 0


def parse_discard(v: str) -> str:
    """-d MODE (open and the command line): the discard setting, or qemu-io's error."""
    if v not in _DISCARD:
        raise OpenFailed(f"qemu-io: Invalid discard option: {v}")
    return _DISCARD[v]


def parse_aio(v: str) -> str:
    """-i MODE (open and the command line), or qemu-io's error."""
    if v not in _AIO:
        raise OpenFailed(f"qemu-io: Invalid aio option: {v}")
    return v


def check_aio(p: OpenParams) -> None:
    """aio=native needs O_DIRECT (checked at open only: qemu-io's reopen -c keeps
    aio=native with any cache)."""
    from ..block.cachemode import CacheMode
    if p.aio == "native" and not CacheMode.parse(p.cache).direct:
        raise _fail(p, "aio=native was specified, but it requires cache.direct=on, "
                       "which was not specified.")


def cmd_close(session: IoSession, args: list[str]) -> int:
    session.close()
    return 0


#: -o keys reopen may not change (qemu-io names them so); a format's own keys it may
_FIXED = {"driver": "driver", "file.filename": "filename", "file.driver": "driver"}


def cmd_reopen(session: IoSession, args: list[str]) -> int:
    from .io_commands import _getopt, usage_error
    opts_list: list[tuple[str, str | bool]] = []
    opts, rest = _getopt(args, "rwc:o:", repeat=opts_list)
    if rest:
        raise usage_error("reopen")
    old = session.params
    assert old is not None and session.blk is not None
    p = dataclasses.replace(old, options=dict(old.options))
    new_opts: dict[str, str] = {}
    rw = None
    for c, v in opts_list:
        if c in "rw":
            if rw is not None:
                raise OpenFailed("qemu-io: Only one -r/-w option may be given")
            rw = c
        elif c == "c":
            p.cache = _cache_mode(str(v))
        elif c == "o":
            parse_o(str(v), new_opts)
    if "read-only" in new_opts and rw is not None:
        raise OpenFailed("qemu-io: Cannot set both -r/-w and 'read-only'")
    if "c" in opts and any(k.startswith("cache.") for k in new_opts):
        raise OpenFailed("qemu-io: Cannot set both -c and the cache options")
    now = {"driver": session.fmt, "file.filename": session.filename, "file.driver": "file"}
    for k, v in new_opts.items():
        if k in _FIXED and v != now[k]:
            raise OpenFailed(f"qemu-io: Cannot change the option '{_FIXED[k]}'")
        if k in _FIXED:
            continue
        if k not in _FIXED and k not in _FORMAT_KEYS.get(session.fmt, ()):
            raise OpenFailed(f"blockbed io: reopen: option '{k}' is not supported "
                             f"(blockbed can change: "
                             f"{', '.join(_FORMAT_KEYS.get(session.fmt, ())) or 'none'})")
    if old.snapshot:
        raise OpenFailed("blockbed io: reopen of an image opened with -s is not supported "
                         "(its temporary overlay would be lost)")
    if rw == "r" and p.copy_on_read:
        # QEMU names its node (an internal "#blockN"); blockbed names its backend
        raise OpenFailed(f"qemu-io: Can't set node '{session.blk.name}' to r/o with "
                         "copy-on-read enabled")
    if rw is not None:
        p.read_only = rw == "r"
        p.force_share = p.force_share and p.read_only
    p.options.update({k: v for k, v in new_opts.items() if k not in _FIXED})
    session.close()
    try:
        session.open(p, reopen=True)
    except OpenFailed as e:
        session.open(old, reopen=True)
        msg = str(e).split(": ", 2)[-1]
        raise OpenFailed(f"qemu-io: {msg}") from None
    return 0


# --- the VM state area ----------------------------------------------------------------------
def vm_state_offset(node: BlockDriver) -> int:
    """The VM state area's first guest offset (qcow2_vm_state_offset); 0 for a
    format without a VM state area."""
    if getattr(node, "driver_name", "") != "qcow2":
        return 0
    from ..block.qcow2 import vmstate
    return vmstate.vm_state_offset(node)


def _vmstate_node(blk: BlockBackend, pos: int, n: int) -> BlockDriver | int:
    """The qcow2 node whose VM state area ``pos``+``n`` is, or -errno: EIO past any
    int64 offset (bdrv_check_qiov_request, before the format is asked; again for
    the area's own offset), ENOTSUP for a format without a VM state area."""
    node = blk.root
    if pos + n > _INT64_MAX:
        return -errno.EIO
    if getattr(node, "driver_name", "") != "qcow2":
        return -errno.ENOTSUP
    if vm_state_offset(node) + pos + n > _INT64_MAX:
        return -errno.EIO
    return node


def _vmstate_io(blk: BlockBackend, pos: int, buf, write: bool) -> int:
    """write -b / read -b through block/qcow2/vmstate.py; 0 or -errno."""
    node = _vmstate_node(blk, pos, len(buf))
    if not isinstance(node, BlockDriver):
        return node
    from ..block.qcow2 import vmstate
    try:
        if write:
            vmstate.save_vmstate(node, pos, buf)
        else:
            vmstate.load_vmstate(node, pos, buf)
    except vmstate.VmStateUnsupported as e:
        from .io_commands import IoError
        raise IoError(f"blockbed io: -b (VM state): {e}") from None
    except OSError as e:
        return -(e.errno or errno.EIO)
    return 0


def save_vmstate(blk: BlockBackend, pos: int, data: bytes) -> int:
    """write -b: ``data`` at ``pos`` of the VM state area; 0 or -errno."""
    return _vmstate_io(blk, pos, data, write=True)


def load_vmstate(blk: BlockBackend, pos: int, buf: bytearray) -> int:
    """read -b: fill ``buf`` from ``pos`` of the VM state area; 0 or -errno."""
    return _vmstate_io(blk, pos, buf, write=False)
