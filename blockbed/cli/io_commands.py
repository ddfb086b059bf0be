"""qemu-io 7.2 commands (qemu-io-cmds.c): read, readv, write, writev, aio_read,
aio_write, aio_flush, discard, flush, truncate, length, map, alloc, info, and
(blockbed/cli/io_open.py) open, close, reopen.

Output lines follow qemu-io's formats: "read N/N bytes at offset O", the
cvtstr size/speed line, "Pattern verification failed at offset O, N bytes",
"read failed: <strerror>".  Each command returns 0 or 1 (qemu-io's error).

The block layer below is synchronous, so ``aio_read``/``aio_write`` complete (and
print) before the next command, where qemu-io prints at completion -- at the next
``aio_flush`` or at exit.  Scripts that ``aio_flush`` after their aio commands, as
qemu-iotests do, print the same lines in the same order.
"""

from __future__ import annotations

import os
import shlex
import sys
import time

from ..block.backend import BlockBackend
from .io_open import IoSession, OpenFailed, cmd_close, cmd_open, cmd_reopen

_UNITS = "KMGTPE"


def parse_size(text: str) -> int:
    """qemu-io's cvtnum: a number with an optional k/M/G/T/P/E suffix (binary)."""
    t = text.strip()
    mult = 1
    if t and t[-1].upper() in _UNITS or (t and t[-1] in "bB"):
        if t[-1] in "bB":
            t = t[:-1]
        else:
            mult = 1 << (10 * (_UNITS.index(t[-1].upper()) + 1))
            t = t[:-1]
    try:
        v = int(t, 0)
    except ValueError:
        raise ValueError(text) from None
    if v < 0:
        raise ValueError(text)
    return v * mult


def cvtstr(value: float) -> str:
    """qemu-io's cvtstr: %.3f with the unit, a trailing '.000' dropped."""
    units = [(1 << 60, "EiB"), (1 << 50, "PiB"), (1 << 40, "TiB"), (1 << 30, "GiB"),
             (1 << 20, "MiB"), (1 << 10, "KiB")]
    for size, name in units:
        if value >= size:
            s = f"{value / size:.3f}"
            return (s[:-4] if s.endswith(".000") else s) + " " + name
    s = f"{value:.3f}"
    return (s[:-4] if s.endswith(".000") else s) + " bytes"


def print_report(op: str, t: float, offset: int, count: int, total: int, cnt: int,
                 compact: bool = False) -> None:
    t = max(t, 1e-9)
    if compact:                          # -C: "bytes,ops,h:mm:ss.ss,bytes/sec,ops/sec"
        h, rem = divmod(t, 3600)
        m, sec = divmod(rem, 60)
        print(f"{total},{cnt},{int(h)}:{int(m):02d}:{sec:05.2f},{total / t:.3f},{cnt / t:.3f}")
        return
    print(f"{op} {count}/{total} bytes at offset {offset}")
    mins, secs = divmod(t, 60)
    ts = f"{secs:05.2f} sec" if mins == 0 else f"{int(mins)}:{secs:05.2f}"
    print(f"{cvtstr(total)}, {cnt} ops; {ts} ({cvtstr(total / t)}/sec and {cnt / t:.4f} ops/sec)")


def dump_buffer(buf: bytes, offset: int) -> None:
    """qemu-io -v: 16 bytes a line, hex then printable ASCII."""
    for i in range(0, len(buf), 16):
        chunk = buf[i:i + 16]
        hexs = " ".join(f"{b:02x}" for b in chunk)
        asc = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        print(f"{offset + i:08x}:  {hexs}  {asc}")


class IoError(Exception):
    """A command-line error of one command (printed, status 1)."""


class ArgCountError(IoError):
    """What qemu-io reports on stderr: the argument-count check, error_report()."""


class UsageError(IoError):
    """Arguments that do not fit the command: its usage line on stdout."""


def usage_error(name: str) -> UsageError:
    return UsageError(USAGE[name])


class BadOptionError(IoError):
    """getopt's complaint (stderr, prefixed with the command), then the command's
    usage line on stdout, as qemu-io's qemuio_command_usage."""


#: qemu-io 7.2's usage lines ("help"), printed after a bad option
USAGE = {
    "aio_flush": "aio_flush -- completes all outstanding aio requests",
    "aio_read": "aio_read [-Ciqv] [-P pattern] off len [len..] -- asynchronously reads a number of bytes",
    "aio_write": "aio_write [-Cfiquz] [-P pattern] off len [len..] -- asynchronously writes a number of bytes",
    "alloc": "alloc offset [count] -- checks if offset is allocated in the file",
    "discard": "discard [-Cq] off len -- discards a number of bytes at a specified offset",
    "open": "open [-rsCnkU] [-t cache] [-d discard] [-o options] [path] -- open the file "
            "specified by path",
    "read": "read [-abCqv] [-P pattern [-s off] [-l len]] off len -- reads a number of bytes at a specified offset",
    "reopen": "reopen [(-r|-w)] [-c cache] [-o options] -- reopens an image with new options",
    "readv": "readv [-Cqv] [-P pattern] off len [len..] -- reads a number of bytes at a specified offset",
    "truncate": "truncate [-m prealloc_mode] off -- truncates the current file at the given offset",
    "write": "write [-bcCfnquz] [-P pattern | -s source_file] off len -- writes a number of bytes at a specified offset",
    "writev": "writev [-Cfq] [-P pattern] off len [len..] -- writes a number of bytes at a specified offset",
}


def _getopt(args: list[str], flags: str, repeat: list | None = None
            ) -> tuple[dict[str, str | bool], list[str]]:
    """POSIX getopt (letters followed by ':' take a value); ``repeat`` collects every
    (option, value) in order, for options that may be given more than once."""
    opts: dict[str, str | bool] = {}
    i = 0
    while i < len(args) and args[i].startswith("-") and len(args[i]) > 1:
        a = args[i]
        if a == "--":
            i += 1
            break
        j = 1
        while j < len(a):
            c = a[j]
            k = flags.find(c)
            if k < 0 or c == ":":
                raise BadOptionError(f"invalid option -- '{c}'")
            if k + 1 < len(flags) and flags[k + 1] == ":":
                val = a[j + 1:]
                if not val:
                    i += 1
                    if i >= len(args):
                        raise IoError(f"option requires an argument -- '{c}'")
                    val = args[i]
                opts[c] = val
                if repeat is not None:
                    repeat.append((c, val))
                break
            opts[c] = True
            if repeat is not None:
                repeat.append((c, True))
            j += 1
        i += 1
    return opts, args[i:]


def _pattern(text: str) -> int:
    v = int(text, 0)
    if not 0 <= v <= 255:
        raise IoError(f"{text} is not a valid pattern byte")
    return v


def _sizes(words: list[str]) -> list[int]:
    """Numbers as qemu-io's cvtnum reads them; its parsing error otherwise."""
    vals = []
    for t in words:
        try:
            vals.append(parse_size(t))
        except ValueError:
            raise IoError("Parsing error: non-numeric argument, or extraneous/unrecognized "
                          f"suffix -- {t}") from None
    return vals


def _offset_lens(name: str, rest: list[str], vector: bool = False) -> tuple[int, list[int]]:
    """``off len`` (``off len [len ...]`` for the vector commands); other counts after
    the options print the usage line (too few words in all: see :data:`ARGS`)."""
    if len(rest) < 2 or (len(rest) > 2 and not vector):
        raise usage_error(name)
    vals = _sizes(rest)
    return vals[0], vals[1:]


def _offset_len(name: str, rest: list[str]) -> tuple[int, int]:
    offset, (count,) = _offset_lens(name, rest)
    return offset, count


def _timed(name: str, report: str, call, offset: int, total: int, opts: dict) -> int:
    """Run one request, then qemu-io's report: "<name> failed: <strerror>" or, unless
    -q, the "<report> N/N bytes at offset O" and speed lines (-C: the CSV line)."""
    t0 = time.perf_counter()
    r = call()
    t = time.perf_counter() - t0
    if r < 0:
        print(f"{name} failed: {os.strerror(-r)}")
        return 1
    if not opts.get("q"):
        print_report(report, t, offset, total, total, 1, bool(opts.get("C")))
    return 0


def _readv(blk: BlockBackend, name: str, opts: dict, offset: int, lens: list[int]) -> int:
    """read/readv/aio_read: read, verify -P, then -q, -v (hexdump) and the report."""
    bufs = [bytearray(n) for n in lens]
    total = sum(lens)
    t0 = time.perf_counter()
    if opts.get("b"):
        from .io_open import load_vmstate
        r = load_vmstate(blk, offset, bufs[0])
    else:
        r = blk.readv(offset, [memoryview(b) for b in bufs])
    t = time.perf_counter() - t0
    if r < 0:
        print(f"{name} failed: {os.strerror(-r)}")
        return 1
    data = bufs[0] if len(bufs) == 1 else b"".join(bufs)
    ret = 0
    if "P" in opts:
        # read's -s/-l narrow the check to [start, start+length) of what was read
        start, length = opts.get("_pattern_range", (0, total))
        if memoryview(data)[start:start + length] != bytes([_pattern(str(opts["P"]))]) * length:
            print(f"Pattern verification failed at offset {offset + start}, {length} bytes")
            ret = 1
    if opts.get("q"):
        return ret
    if opts.get("v"):
        dump_buffer(bytes(data), offset)
    print_report("read", t, offset, total, total, 1, bool(opts.get("C")))
    return ret


def cmd_read(blk: BlockBackend, args: list[str]) -> int:
    opts, rest = _getopt(args, "bCl:pP:qs:v")       # -p: ignored, as qemu-io 7.2
    offset, lens = _offset_lens("read", rest)
    if ("l" in opts or "s" in opts) and "P" not in opts:
        raise usage_error("read")                   # -s/-l only with -P
    count = lens[0]
    start = _sizes([str(opts["s"])])[0] if "s" in opts else 0
    length = _sizes([str(opts["l"])])[0] if "l" in opts else count - start
    if length < 0 or start + length > count:
        raise IoError("pattern verification range exceeds end of read data")
    opts["_pattern_range"] = (start, length)
    if opts.get("b"):
        _sector_aligned(offset, count)
    return _readv(blk, "read", opts, offset, lens)


def _sector_aligned(offset: int, count: int) -> None:
    """-b (VM state) requests are in whole sectors."""
    for v, what in ((offset, "offset"), (count, "count")):
        if v & 511:
            raise IoError(f"{v} is not a sector-aligned value for '{what}'")


def cmd_write(blk: BlockBackend, args: list[str]) -> int:
    opts, rest = _getopt(args, "bcCfnpquzP:s:")       # -p: ignored, as qemu-io 7.2
    # the checks in qemu-io 7.2's order (measured); -z wins over -c, -b over both
    if opts.get("f") and (opts.get("b") or opts.get("c")):
        raise IoError("-f and -b or -c cannot be specified at the same time")
    for k in "nu":
        if opts.get(k) and not opts.get("z"):
            raise IoError(f"-{k} requires -z to be specified")
    if opts.get("b") and opts.get("z"):
        raise IoError("-b and -z cannot be specified at the same time")
    if sum(k in opts for k in "zPs") > 1:
        raise IoError("Only one of -z, -P, and -s can be specified at the same time")
    offset, count = _offset_len("write", rest)
    if opts.get("b"):
        _sector_aligned(offset, count)
    if opts.get("z"):
        return _write_zeroes(blk, opts, offset, count)
    if "s" in opts:
        data = _pattern_file(str(opts["s"]), count)
        if data is None:
            return 1
    else:
        data = bytes([_pattern(str(opts["P"])) if "P" in opts else 0xcd]) * count
    if opts.get("b"):
        from .io_open import save_vmstate
        def call(): return save_vmstate(blk, offset, data)
    elif opts.get("c"):
        def call(): return _write_compressed(blk, offset, data)
    else:
        def call(): return blk.write(offset, data, fua=bool(opts.get("f")))
    return _timed("write", "wrote", call, offset, count, opts)


def _pattern_file(name: str, count: int) -> bytes | None:
    """write -s: the file's bytes, repeated to fill ``count`` (qemu-io's
    qemu_io_alloc_from_file); None after perror's line if it cannot be read."""
    try:
        with open(name, "rb") as f:
            data = f.read(count)
    except OSError as e:
        print(f"{name}: {e.strerror}", file=sys.stderr)
        return None
    if not data:
        print(f"{name}: the file is empty", file=sys.stderr)
        return None
    return (data * -(-count // len(data)))[:count]


def _write_zeroes(blk: BlockBackend, opts: dict, offset: int, count: int) -> int:
    """write -z / aio_write -z (-u: may unmap; -n: no slow fallback)."""
    def call():
        if opts.get("n"):
            r = _no_fallback_check(blk, offset, count)
            if r:
                return r
        return blk.write_zeroes(offset, count, may_unmap=bool(opts.get("u")))
    return _timed("write", "wrote", call, offset, count, opts)


def _no_fallback_check(blk: BlockBackend, offset: int, count: int) -> int:
    """write -z -n (BDRV_REQ_NO_FALLBACK): QEMU splits the request at the format's
    zeroing granularity (qcow2: a cluster) and a piece that is not whole fails with
    ENOTSUP unless the rest of its cluster already reads as zeroes and holds no data
    (qcow2_co_pwrite_zeroes); whole pieces before it are zeroed first, as there.
    Formats without such a granularity (raw on a file) zero any range natively."""
    import errno
    node = blk.root
    cs = getattr(node, "cluster_size", 0)
    if not cs or count <= 0 or getattr(node, "driver_name", "") != "qcow2":
        return 0
    if node.header.extended_l2:
        cs //= 32
    size, end = node.length(), offset + count
    pieces = []
    if offset % cs:
        pieces.append(offset)
    if end % cs and end != size and (not pieces or end // cs != offset // cs):
        pieces.append(end)
    for edge in pieces:
        c0 = edge // cs * cs
        c1 = min(c0 + cs, size)
        rest = [(c0, max(c0, offset)), (min(max(end, c0), c1), c1)]
        if any(e.data for e in node.block_status(c0, c1 - c0)) or any(
                not e.zero for a, b in rest if b > a for e in node.block_status(a, b - a)):
            done = c0 if edge == end else offset
            if done > offset:
                r = blk.write_zeroes(offset, done - offset)
                if r:
                    return r
            return -errno.ENOTSUP
    return 0


def _write_compressed(blk: BlockBackend, offset: int, data: bytes) -> int:
    """write -c: whole clusters, compressed by the format (qcow2), as QEMU's
    BDRV_REQ_WRITE_COMPRESSED: EINVAL off cluster boundaries (the image's last
    cluster may be short), ENOTSUP for a format without compression."""
    import errno
    node = blk.root
    if not hasattr(node, "write_compressed"):
        return -errno.ENOTSUP
    cs, end = node.cluster_size, offset + len(data)
    if offset % cs or (len(data) % cs and end != node.length()) or end > node.length():
        return -errno.EINVAL
    try:
        for pos in range(0, len(data), cs):
            # QEMU's qcow2_alloc_compressed_cluster_offset: compression never overwrites;
            # a cluster that already has a host cluster fails the write with EIO
            for e in node.block_status(offset + pos, min(cs, len(data) - pos)):
                if e.allocated and (e.data or e.host_offset is not None):
                    return -errno.EIO
            node.write_compressed(offset + pos, data[pos:pos + cs])
    except OSError as e:
        return -(e.errno or errno.EIO)
    return 0


def cmd_flush(blk: BlockBackend, args: list[str]) -> int:
    r = blk.flush()
    if r < 0:
        print(f"flush failed: {os.strerror(-r)}")
        return 1
    return 0


def cmd_discard(blk: BlockBackend, args: list[str]) -> int:
    opts, rest = _getopt(args, "Cq")
    offset, count = _offset_len("discard", rest)
    return _timed("discard", "discard", lambda: blk.discard(offset, count), offset, count, opts)


def cmd_length(blk: BlockBackend, args: list[str]) -> int:
    print(cvtstr(blk.length()))
    return 0


def cmd_readv(blk: BlockBackend, args: list[str]) -> int:
    opts, rest = _getopt(args, "CP:qv")
    offset, lens = _offset_lens("readv", rest, vector=True)
    return _readv(blk, "readv", opts, offset, lens)


def _writev(blk: BlockBackend, opts: dict, offset: int, lens: list[int]) -> int:
    """writev/aio_write: the -P pattern (default 0xcd) in each buffer, -f for FUA."""
    pat = _pattern(str(opts["P"])) if "P" in opts else 0xcd
    bufs = [bytes([pat]) * n for n in lens]
    return _timed("writev", "wrote", lambda: blk.writev(offset, bufs, fua=bool(opts.get("f"))),
                  offset, sum(lens), opts)


def cmd_writev(blk: BlockBackend, args: list[str]) -> int:
    opts, rest = _getopt(args, "CfqP:")
    offset, lens = _offset_lens("writev", rest, vector=True)
    return _writev(blk, opts, offset, lens)


def cmd_aio_read(blk: BlockBackend, args: list[str]) -> int:
    opts, rest = _getopt(args, "CP:qvi:")
    offset, lens = _offset_lens("aio_read", rest, vector=True)
    return _readv(blk, "readv", opts, offset, lens)


def cmd_aio_write(blk: BlockBackend, args: list[str]) -> int:
    opts, rest = _getopt(args, "CfiquzP:")
    if "P" in opts and opts.get("z"):
        raise IoError("-z and -P cannot be specified at the same time")
    if opts.get("u") and not opts.get("z"):
        raise IoError("-u requires -z to be specified")
    offset, lens = _offset_lens("aio_write", rest, vector=True)
    if opts.get("z"):
        if len(lens) != 1:
            raise IoError("-z supports only a single length parameter")
        return _write_zeroes(blk, opts, offset, lens[0])
    return _writev(blk, opts, offset, lens)


def cmd_aio_flush(blk: BlockBackend, args: list[str]) -> int:
    """Wait for every aio request: all completed already (see the module docstring)."""
    return 0


def cmd_truncate(blk: BlockBackend, args: list[str]) -> int:
    opts, rest = _getopt(args, "m:")
    if "m" in opts and opts["m"] not in ("off", "metadata", "falloc", "full"):
        raise ArgCountError(f"qemu-io: Invalid preallocation mode '{opts['m']}'")
    if len(rest) != 1:
        raise ArgCountError(f"bad argument count {len(rest)} to truncate, expected 1 arguments")
    r = blk.resize(_sizes(rest)[0])
    if r < 0:
        print(f"truncate: {os.strerror(-r)}")
        return 1
    return 0


def _allocated_run(blk: BlockBackend, offset: int, length: int) -> tuple[bool, int]:
    """bdrv_is_allocated on the top node: (this node decides the content, run length)."""
    ext = blk.root.block_status(offset, length)
    if not ext:
        return False, 0
    first = bool(ext[0].allocated)
    n = 0
    for e in ext:
        if bool(e.allocated) != first:
            break
        n += e.length
    return first, min(n, length)


def cmd_map(blk: BlockBackend, args: list[str]) -> int:
    """Runs of allocated / not allocated in the top node, merged (qemu-io's map_f)."""
    offset, left = 0, blk.length()
    while left > 0:
        alloc, n = _allocated_run(blk, offset, left)
        if n <= 0:
            break
        state = "    allocated" if alloc else "not allocated"
        print(f"{cvtstr(n)} ({n:#x}) bytes {state} at offset {cvtstr(offset)} ({offset:#x})")
        offset += n
        left -= n
    return 0


def cmd_alloc(blk: BlockBackend, args: list[str]) -> int:
    opts, rest = _getopt(args, "")
    if not 1 <= len(rest) <= 2:
        raise ArgCountError(f"bad argument count {len(rest)} to alloc, expected between 1 "
                            "and 2 arguments")
    vals = _sizes(rest)
    start = offset = vals[0]
    count = vals[1] if len(vals) > 1 else 512      # BDRV_SECTOR_SIZE
    count = max(0, min(count, blk.length() - offset))   # a run past the end counts 0
    total, allocated = count, 0
    left = count
    while left > 0:
        alloc, n = _allocated_run(blk, offset, left)
        if n <= 0:
            total -= left
            break
        if alloc:
            allocated += n
        offset += n
        left -= n
    print(f"{allocated}/{total} bytes allocated at offset {cvtstr(start)}")
    return 0


def cmd_info(session: IoSession, args: list[str]) -> int:
    """qemu-io's info_f: format name, cluster size, VM state offset, then the
    format-specific information as ``qemu-img info`` prints it."""
    from .io_open import vm_state_offset
    node = session.blk.root
    fmt = session.fmt
    print(f"format name: {fmt}")
    cluster = getattr(node, "cluster_size", 0) if fmt == "qcow2" else 0
    print(f"cluster size: {cvtstr(cluster)}")
    print(f"vm state offset: {cvtstr(vm_state_offset(node))}")
    if fmt == "qcow2":
        from .img import _dump_qobject, image_info
        spec = image_info(node, fmt, session.filename).get("format-specific")
        if spec:
            lines: list[str] = []
            _dump_qobject(spec["data"], 1, lines)
            print("Format specific information:")
            print("\n".join(lines))
    return 0


COMMANDS = {"read": cmd_read, "r": cmd_read, "readv": cmd_readv, "write": cmd_write,
            "w": cmd_write, "writev": cmd_writev, "aio_read": cmd_aio_read,
            "aio_write": cmd_aio_write, "aio_flush": cmd_aio_flush, "flush": cmd_flush,
            "f": cmd_flush, "discard": cmd_discard, "d": cmd_discard, "truncate": cmd_truncate,
            "t": cmd_truncate, "length": cmd_length, "len": cmd_length, "map": cmd_map,
            "alloc": cmd_alloc, "a": cmd_alloc, "info": cmd_info, "i": cmd_info,
            "open": cmd_open, "o": cmd_open, "close": cmd_close, "c": cmd_close,
            "reopen": cmd_reopen}
#: commands given the session rather than the backend
_SESSION = {cmd_info, cmd_open, cmd_close, cmd_reopen}
#: commands that need write permission: qemu-io refuses them on a read-only node
_WRITES = {cmd_write, cmd_writev, cmd_aio_write, cmd_discard, cmd_truncate}
#: (argmin, argmax) of qemu-io 7.2's commands (-1: no limit); options count
ARGS = {cmd_read: (2, -1), cmd_readv: (2, -1), cmd_write: (2, -1), cmd_writev: (2, -1),
        cmd_aio_read: (2, -1), cmd_aio_write: (2, -1), cmd_discard: (2, -1),
        cmd_aio_flush: (0, 0), cmd_flush: (0, 0), cmd_length: (0, 0), cmd_map: (0, 0),
        cmd_info: (0, 0), cmd_close: (0, 0), cmd_open: (1, -1), cmd_reopen: (0, -1)}
_NAMES = {"r": "read", "w": "write", "d": "discard", "t": "truncate", "a": "alloc",
          "f": "flush", "len": "length", "i": "info", "o": "open", "c": "close"}


def _arg_count_error(fn, name: str, n: int) -> str | None:
    lo, hi = ARGS.get(fn, (0, -1))
    if n >= lo and (hi < 0 or n <= hi):
        return None
    want = (f"at least {lo}" if hi < 0 else f"{lo}" if lo == hi else f"between {lo} and {hi}")
    return f"bad argument count {n} to {name}, expected {want} arguments"


def run_line(session: IoSession, line: str) -> int:
    """Run one command line; returns 0 or 1."""
    try:
        words = shlex.split(line)
    except ValueError as e:
        print(f"{e}")
        return 1
    if not words:
        return 0
    fn = COMMANDS.get(words[0])
    if fn is None:
        print(f"command \"{words[0]}\" not found", file=sys.stderr)
        return 1
    name = _NAMES.get(words[0], words[0])
    blk = session.blk
    if blk is None and fn is not cmd_open:
        print("no file open, try 'help open'", file=sys.stderr)
        return 1
    msg = _arg_count_error(fn, name, len(words) - 1)
    if msg:
        print(msg, file=sys.stderr)
        return 1
    if fn in _WRITES and blk.read_only:
        print("qemu-io: Block node is read-only", file=sys.stderr)
        return 1
    try:
        return fn(session if fn in _SESSION else blk, words[1:])
    except BadOptionError as e:
        sys.stdout.flush()
        print(f"{name}: {e}", file=sys.stderr)
        sys.stderr.flush()
        if name in USAGE:
            print(USAGE[name])
        return 1
    except OpenFailed as e:
        print(e, file=sys.stderr)
        return 1
    except IoError as e:
        print(e, file=sys.stderr if isinstance(e, ArgCountError) else sys.stdout)
        return 1
    except ValueError as e:
        print(f"invalid argument: {e}")
        return 1
