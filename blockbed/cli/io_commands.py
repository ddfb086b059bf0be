"""qemu-io 7.2 commands (qemu-io-cmds.c): read, write, discard, flush, length.

Output lines follow qemu-io's formats: "read N/N bytes at offset O", the
cvtstr size/speed line, "Pattern verification failed at offset O, N bytes",
"read failed: <strerror>".  Each command returns 0 or 1 (qemu-io's error).
"""

from __future__ import annotations

import os
import shlex
import sys
import time

from ..block.backend import BlockBackend

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


def print_report(op: str, t: float, offset: int, count: int, total: int, cnt: int) -> None:
    print(f"{op} {count}/{total} bytes at offset {offset}")
    t = max(t, 1e-9)
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
    """qemu-io's argument-count check: reported on stderr."""


def _getopt(args: list[str], flags: str) -> tuple[dict[str, str | bool], list[str]]:
    """POSIX getopt (letters followed by ':' take a value)."""
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
            if k < 0:
                raise IoError(f"invalid option -- '{c}'")
            if k + 1 < len(flags) and flags[k + 1] == ":":
                val = a[j + 1:]
                if not val:
                    i += 1
                    if i >= len(args):
                        raise IoError(f"option requires an argument -- '{c}'")
                    val = args[i]
                opts[c] = val
                break
            opts[c] = True
            j += 1
        i += 1
    return opts, args[i:]


def _pattern(text: str) -> int:
    v = int(text, 0)
    if not 0 <= v <= 255:
        raise IoError(f"{text} is not a valid pattern byte")
    return v


def _offset_len(name: str, rest: list[str]) -> tuple[int, int]:
    if len(rest) < 2:
        raise ArgCountError(f"bad argument count {len(rest)} to {name}, "
                            "expected at least 2 arguments")
    vals = []
    for t in rest[:2]:
        try:
            vals.append(parse_size(t))
        except ValueError:
            raise IoError("Parsing error: non-numeric argument, or extraneous/unrecognized "
                          f"suffix -- {t}") from None
    return vals[0], vals[1]


def cmd_read(blk: BlockBackend, args: list[str]) -> int:
    opts, rest = _getopt(args, "P:qv")
    offset, count = _offset_len("read", rest)
    buf = bytearray(count)
    t0 = time.perf_counter()
    r = blk.read(offset, memoryview(buf))
    t = time.perf_counter() - t0
    if r < 0:
        print(f"read failed: {os.strerror(-r)}")
        return 1
    ret = 0
    if "P" in opts:
        pat = _pattern(str(opts["P"]))
        if buf != bytes([pat]) * count:
            print(f"Pattern verification failed at offset {offset}, {count} bytes")
            ret = 1
    if opts.get("q"):
        return ret
    if opts.get("v"):
        dump_buffer(bytes(buf), offset)
    print_report("read", t, offset, count, count, 1)
    return ret


def cmd_write(blk: BlockBackend, args: list[str]) -> int:
    opts, rest = _getopt(args, "P:qzuF")
    if "P" in opts and opts.get("z"):
        raise IoError("Only one of -z, -P, and -s can be specified at the same time")
    if opts.get("u") and not opts.get("z"):
        raise IoError("-u requires -z to be specified")
    offset, count = _offset_len("write", rest)
    t0 = time.perf_counter()
    if opts.get("z"):
        r = blk.write_zeroes(offset, count, may_unmap=bool(opts.get("u")))
    else:
        pat = _pattern(str(opts["P"])) if "P" in opts else 0xcd
        r = blk.write(offset, bytes([pat]) * count, fua=bool(opts.get("F")))
    t = time.perf_counter() - t0
    if r < 0:
        print(f"write failed: {os.strerror(-r)}")
        return 1
    if not opts.get("q"):
        print_report("wrote", t, offset, count, count, 1)
    return 0


def cmd_flush(blk: BlockBackend, args: list[str]) -> int:
    r = blk.flush()
    if r < 0:
        print(f"flush failed: {os.strerror(-r)}")
        return 1
    return 0


def cmd_discard(blk: BlockBackend, args: list[str]) -> int:
    opts, rest = _getopt(args, "q")
    offset, count = _offset_len("discard", rest)
    t0 = time.perf_counter()
    r = blk.discard(offset, count)
    t = time.perf_counter() - t0
    if r < 0:
        print(f"discard failed: {os.strerror(-r)}")
        return 1
    if not opts.get("q"):
        print_report("discard", t, offset, count, count, 1)
    return 0


def cmd_length(blk: BlockBackend, args: list[str]) -> int:
    print(cvtstr(blk.length()))
    return 0


COMMANDS = {"read": cmd_read, "r": cmd_read, "write": cmd_write, "w": cmd_write,
            "flush": cmd_flush, "discard": cmd_discard, "d": cmd_discard, "f": cmd_flush, "length": cmd_length, "len": cmd_length}


def run_line(blk: BlockBackend, line: str) -> int:
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
    try:
        return fn(blk, words[1:])
    except IoError as e:
        print(e, file=sys.stderr if isinstance(e, ArgCountError) else sys.stdout)
        return 1
    except ValueError as e:
        print(f"invalid argument: {e}")
        return 1
