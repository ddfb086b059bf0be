"""BlockBackend: the one object a device talks to (QEMU's block/block-backend.c).

Devices use **only** this class.  It owns everything between a guest request
and the driver graph:

- the cache mode (:class:`CacheMode`) and the live guest-visible write cache
  (WCE): ``write_cache_enabled`` / ``set_write_cache(on)``;
- FUA: while WCE is off every write (and write-zeroes) is sent FUA; a FUA the
  root node cannot do natively is emulated by write-then-flush; under
  ``cache=unsafe`` flushes *and* FUA are dropped (nothing reaches fdatasync);
- ``discard=ignore|unmap``, ``detect-zeroes=off|on|unmap``, read-only;
- the error policy ``werror=``/``rerror=`` (``report|ignore|stop|enospc``);
- statistics and the request log the durability oracle reads.

How results reach a device
--------------------------
Every request method returns an ``int``, **never raises** for I/O errors:

``0`` (:data:`OK`)
    the request completed successfully (or its error was ``ignore``d).
``-errno`` (negative)
    the request failed and the policy is ``report``: complete it to the guest
    with an error status (virtio ``IOERR``, ATA ABRT/UNC, SCSI MEDIUM ERROR).
    Range errors (a request past the end) and writes to a read-only backend
    return ``-EIO`` / ``-EROFS`` without consulting the policy: devices should
    have checked those themselves and map them to their own status.
:data:`STOPPED` (``1``, positive)
    the policy is ``stop``: the backend called ``on_stop(reason)`` (the
    machine installs it and pauses).  The request is *not completed*: the
    device must keep it pending, complete nothing to the guest, and submit it
    again after the machine resumes (QEMU's rerror/werror=stop retry).  If no
    ``on_stop`` is installed, ``stop`` behaves as ``report``.

Reads are ``readv(offset, bufs)`` into the caller's memoryviews (guest memory,
no copies); writes take memoryviews too.  Offsets and lengths are bytes.

Capacity changes: ``resize(length)`` grows/shrinks the image and calls every
function in ``resize_callbacks`` with the new length (virtio config-change
interrupt, SCSI unit attention …).
"""

from __future__ import annotations

import enum
import errno
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .. import trace
from .cachemode import CacheMode
from .driver import BlockDriver, Buffer

__all__ = ["BlockBackend", "CacheMode", "ErrorAction", "DiscardMode", "DetectZeroes",
           "StopReason", "RequestLogEntry", "RequestLog", "BlockStats", "KindStats",
           "OK", "STOPPED"]

OK = 0
STOPPED = 1
"""Returned when the error policy stopped the machine: the request is not completed."""

_perf_ns = time.perf_counter_ns


class ErrorAction(enum.Enum):
    """``werror=`` / ``rerror=`` (QEMU's BlockdevOnError; ``enospc`` = stop on ENOSPC, else report)."""
    REPORT = "report"
    IGNORE = "ignore"
    STOP = "stop"
    ENOSPC = "enospc"


class DiscardMode(enum.Enum):
    """``discard=``: ``ignore`` drops guest discards (QEMU's default), ``unmap`` passes them down."""
    IGNORE = "ignore"
    UNMAP = "unmap"


class DetectZeroes(enum.Enum):
    """``detect-zeroes=``: turn all-zero writes into write-zeroes (``unmap``: may deallocate)."""
    OFF = "off"
    ON = "on"
    UNMAP = "unmap"


def _parse_enum(cls: type[enum.Enum], value: object, key: str) -> enum.Enum:
    if isinstance(value, cls):
        return value
    for m in cls:
        if m.value == value:
            return m
    allowed = ", ".join(m.value for m in cls)
    raise ValueError(f"{key}={value}: invalid value; allowed: {allowed}")


@dataclass(frozen=True)
class StopReason:
    """Why the error policy stopped the machine (what ``on_stop`` receives)."""
    backend: str
    operation: str          # read | write | flush | discard | write_zeroes
    errno: int
    offset: int
    length: int

    def message(self) -> str:
        return (f"{self.backend}: {self.operation} at offset {self.offset} length {self.length} "
                f"failed: {errno.errorcode.get(self.errno, self.errno)} "
                f"({os.strerror(self.errno)}); machine stopped by the error policy")


# --- request log -------------------------------------------------------------

@dataclass(slots=True)
class RequestLogEntry:
    """One guest request as the durability oracle needs it.

    ``fua``: the device asked for FUA.  ``host_fua``: the backend sent the
    request down as durable-on-completion (``fua`` or WCE off), before the
    cache mode could drop it (``unsafe`` drops it; see ``dropped``).
    ``submit_seq``/``complete_seq`` share one counter, so submit and
    completion order interleave exactly as they happened.  ``error`` is 0 or
    the errno the lower layer returned; ``result`` is what the device got
    (0, -errno or STOPPED).  ``data`` is a copy of the written bytes when the
    log keeps data (writes only).
    """
    id: int
    kind: str
    offset: int
    length: int
    fua: bool
    wce_at_submit: bool
    submit_seq: int
    host_fua: bool = False
    may_unmap: bool = False
    dropped: bool = False
    wce_at_complete: bool | None = None
    complete_seq: int | None = None
    error: int = 0
    result: int | None = None
    data: bytes | None = None


class RequestLog:
    """Append-only list of :class:`RequestLogEntry`, off unless enabled.

    ``keep_data`` stores a copy of every written buffer (costly; the crash
    engine wants it to check read-back).
    """

    def __init__(self, enabled: bool = False, keep_data: bool = False):
        self.enabled = enabled
        self.keep_data = keep_data
        self.entries: list[RequestLogEntry] = []
        self._seq = 0

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def clear(self) -> None:
        self.entries.clear()

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


# --- statistics ----------------------------------------------------------------

HISTOGRAM_BUCKETS = 24


@dataclass
class KindStats:
    """Counters for one request kind.

    ``histogram[i]`` counts requests whose latency was below ``2**i`` µs
    (bucket 0: under 1 µs; the last bucket collects everything slower).
    """
    ops: int = 0
    bytes: int = 0
    errors: int = 0
    invalid: int = 0
    total_ns: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * HISTOGRAM_BUCKETS)

    def record(self, nbytes: int, ns: int) -> None:
        self.ops += 1
        self.bytes += nbytes
        self.total_ns += ns
        i = (ns >> 10).bit_length()
        self.histogram[i if i < HISTOGRAM_BUCKETS else HISTOGRAM_BUCKETS - 1] += 1

    @staticmethod
    def bucket_upper_bound_us(i: int) -> float:
        return float("inf") if i == HISTOGRAM_BUCKETS - 1 else (1 << i) * 1.024


@dataclass
class BlockStats:
    read: KindStats = field(default_factory=KindStats)
    write: KindStats = field(default_factory=KindStats)
    flush: KindStats = field(default_factory=KindStats)
    discard: KindStats = field(default_factory=KindStats)
    write_zeroes: KindStats = field(default_factory=KindStats)
    flushes_dropped: int = 0      # cache=unsafe
    fua_dropped: int = 0          # cache=unsafe
    fua_emulated: int = 0         # FUA done as write + flush
    zero_writes_detected: int = 0  # detect-zeroes conversions
    discards_ignored: int = 0     # discard=ignore

    def kind(self, name: str) -> KindStats:
        return getattr(self, name)

    KINDS = ("read", "write", "flush", "discard", "write_zeroes")

    def as_dict(self) -> dict:
        """Plain data for JSON output (``blockbed run --stats`` and the like)."""
        out: dict = {}
        for k in self.KINDS:
            ks = self.kind(k)
            out[k] = {"ops": ks.ops, "bytes": ks.bytes, "errors": ks.errors,
                      "invalid": ks.invalid, "total_ns": ks.total_ns,
                      "histogram_us": {("inf" if i == HISTOGRAM_BUCKETS - 1 else str(1 << i)): n
                                       for i, n in enumerate(ks.histogram) if n}}
        for k in ("flushes_dropped", "fua_dropped", "fua_emulated", "zero_writes_detected",
                  "discards_ignored"):
            out[k] = getattr(self, k)
        return out


# --- the backend -------------------------------------------------------------------

class BlockBackend:
    """The device-facing block API.  See the module docstring for the contract.

    ``root``: the top node (from :func:`blockbed.block.registry.open_image`).
    ``cache``: a :class:`CacheMode` or its name; it sets the initial WCE and
    whether flushes are dropped (``O_DIRECT`` was applied when the file was
    opened).  ``werror`` (default ``enospc``) and ``rerror`` (default
    ``report``) as QEMU.  ``read_only`` defaults to the root's.
    ``request_log``: True (or a :class:`RequestLog`) records every request.
    """

    def __init__(self, root: BlockDriver, cache: CacheMode | str = CacheMode.WRITEBACK, *,
                 werror: ErrorAction | str = ErrorAction.ENOSPC,
                 rerror: ErrorAction | str = ErrorAction.REPORT,
                 discard: DiscardMode | str = DiscardMode.IGNORE,
                 detect_zeroes: DetectZeroes | str = DetectZeroes.OFF,
                 read_only: bool | None = None,
                 request_log: bool | RequestLog = False,
                 name: str = "drive0"):
        self.root = root
        self.cache = CacheMode.parse(cache)
        self.werror = _parse_enum(ErrorAction, werror, "werror")
        self.rerror = _parse_enum(ErrorAction, rerror, "rerror")
        if self.rerror is ErrorAction.ENOSPC:
            raise ValueError("rerror=enospc: invalid value; allowed: report, ignore, stop")
        self.discard_mode = _parse_enum(DiscardMode, discard, "discard")
        self.detect_zeroes = _parse_enum(DetectZeroes, detect_zeroes, "detect-zeroes")
        if self.detect_zeroes is DetectZeroes.UNMAP and self.discard_mode is not DiscardMode.UNMAP:
            raise ValueError("detect-zeroes=unmap: not allowed without discard=unmap")
        self.read_only = root.read_only if read_only is None else (read_only or root.read_only)
        self.name = name
        self._wce = self.cache.writeback
        self._no_flush = self.cache.no_flush
        self._fua_native = root.supports_fua
        self.stats = BlockStats()
        self.request_log = request_log if isinstance(request_log, RequestLog) \
            else RequestLog(enabled=bool(request_log))
        self.on_stop: Callable[[StopReason], None] | None = None
        self.stop_reason: StopReason | None = None
        self.resize_callbacks: list[Callable[[int], None]] = []
        self._next_id = 0
        self.internal_errors = 0

    # --- write cache -------------------------------------------------------------
    @property
    def write_cache_enabled(self) -> bool:
        """The guest-visible volatile write cache (WCE) state, live."""
        return self._wce

    def set_write_cache(self, on: bool) -> int:
        """Set WCE.  Turning it off flushes first; returns that flush's result
        (a failed flush leaves WCE on and returns -errno or STOPPED)."""
        on = bool(on)
        if not on and self._wce:
            r = self.flush()
            if r != 0:
                return r
        if trace.enabled:
            trace.emit("backend.set_write_cache", drive=self.name, old=self._wce, new=on)
        self._wce = on
        return OK

    # --- size ---------------------------------------------------------------------
    def length(self) -> int:
        return self.root.length()

    def resize(self, length: int) -> int:
        """Resize the image (host side, like QEMU's ``block_resize``) and notify devices."""
        if self.read_only:
            return -errno.EROFS
        try:
            self.root.truncate(length)
        except OSError as e:
            return -(e.errno or errno.EIO)
        self.notify_resized()
        return OK

    def notify_resized(self) -> None:
        """Tell every ``resize_callbacks`` entry the current length."""
        n = self.length()
        if trace.enabled:
            trace.emit("backend.resize", drive=self.name, length=n)
        for cb in list(self.resize_callbacks):
            cb(n)

    # --- request bookkeeping ---------------------------------------------------------
    def _submit(self, kind: str, offset: int, length: int, fua: bool, host_fua: bool,
                may_unmap: bool = False, dropped: bool = False,
                data: Sequence[Buffer] | None = None) -> RequestLogEntry:
        log = self.request_log
        self._next_id += 1
        e = RequestLogEntry(self._next_id, kind, offset, length, fua, self._wce, log.next_seq(),
                            host_fua=host_fua, may_unmap=may_unmap, dropped=dropped)
        if data is not None and log.keep_data:
            e.data = b"".join(data)
        log.entries.append(e)
        return e

    def _complete(self, e: RequestLogEntry, err: int, result: int) -> None:
        e.wce_at_complete = self._wce
        e.complete_seq = self.request_log.next_seq()
        e.error = err
        e.result = result

    def _failed(self, kind: str, is_read: bool, exc: OSError, offset: int, length: int,
                entry: RequestLogEntry | None) -> int:
        err = exc.errno or errno.EIO
        self.stats.kind(kind).errors += 1
        action = self.rerror if is_read else self.werror
        if action is ErrorAction.ENOSPC:
            action = ErrorAction.STOP if err == errno.ENOSPC else ErrorAction.REPORT
        if action is ErrorAction.STOP and self.on_stop is None:
            action = ErrorAction.REPORT
        if trace.enabled:
            trace.emit("backend.io_error", drive=self.name, op=kind, errno=err,
                       action=action.value, offset=offset, length=length, message=str(exc))
        if action is ErrorAction.IGNORE:
            result = OK
        elif action is ErrorAction.REPORT:
            result = -err
        else:
            result = STOPPED
            self.stop_reason = StopReason(self.name, kind, err, offset, length)
        if entry is not None:
            self._complete(entry, err, result)
        if result == STOPPED:
            self.on_stop(self.stop_reason)  # type: ignore[misc]
        return result

    def _internal_error(self, exc: Exception) -> OSError:
        """An exception that is not an OSError is a bug in a driver: report it once on
        stderr and to the trace, then treat it as EIO so the guest sees an I/O error
        and the host process survives."""
        self.internal_errors += 1
        msg = f"internal error in {self.root.describe()}: {type(exc).__name__}: {exc}"
        if trace.enabled:
            trace.emit("backend.internal_error", drive=self.name, message=msg)
        if self.internal_errors == 1:
            print(f"blockbed: {self.name}: {msg} (reported to the guest as EIO)", file=sys.stderr)
        return OSError(errno.EIO, msg)

    def _bad_range(self, kind: str, offset: int, length: int) -> bool:
        if offset < 0 or length < 0 or offset + length > self.root.length():
            self.stats.kind(kind).invalid += 1
            if trace.enabled:
                trace.emit("backend.invalid", drive=self.name, op=kind, offset=offset,
                           length=length)
            return True
        return False

    # --- requests -------------------------------------------------------------------------
    def readv(self, offset: int, bufs: list[memoryview]) -> int:
        """Read into ``bufs`` (filled in order).  Returns 0, -errno or STOPPED."""
        n = len(bufs[0]) if len(bufs) == 1 else sum(len(b) for b in bufs)
        if offset < 0 or offset + n > self.root.length():
            self._bad_range("read", offset, n)
            return -errno.EIO
        entry = self._submit("read", offset, n, False, False) if self.request_log.enabled else None
        if trace.enabled:
            trace.emit("backend.read", drive=self.name, offset=offset, length=n)
        t0 = _perf_ns()
        try:
            self.root.readv(offset, bufs)
        except OSError as exc:
            return self._failed("read", True, exc, offset, n, entry)
        except Exception as exc:  # a driver bug must not kill the machine
            return self._failed("read", True, self._internal_error(exc), offset, n, entry)
        self.stats.read.record(n, _perf_ns() - t0)
        if entry is not None:
            self._complete(entry, 0, OK)
        return OK

    def read(self, offset: int, buf: memoryview) -> int:
        return self.readv(offset, [buf])

    def writev(self, offset: int, bufs: Sequence[Buffer], fua: bool = False) -> int:
        """Write ``bufs`` at ``offset``; ``fua``: durable on completion.

        While WCE is off the write is sent FUA regardless.  Returns 0, -errno
        or STOPPED.
        """
        if self.read_only:
            return -errno.EROFS
        n = len(bufs[0]) if len(bufs) == 1 else sum(len(b) for b in bufs)
        if offset < 0 or offset + n > self.root.length():
            self._bad_range("write", offset, n)
            return -errno.EIO
        host_fua = fua or not self._wce
        dropped = host_fua and self._no_flush
        entry = self._submit("write", offset, n, fua, host_fua, dropped=dropped, data=bufs) \
            if self.request_log.enabled else None
        if trace.enabled:
            trace.emit("backend.write", drive=self.name, offset=offset, length=n, fua=fua,
                       host_fua=host_fua, wce=self._wce)
        if dropped:
            host_fua = False
            self.stats.fua_dropped += 1
        t0 = _perf_ns()
        try:
            if self.detect_zeroes is not DetectZeroes.OFF and _all_zero(bufs):
                self.stats.zero_writes_detected += 1
                self.root.write_zeroes(offset, n, self.detect_zeroes is DetectZeroes.UNMAP)
                if host_fua:
                    self._emulated_fua()
            elif host_fua and not self._fua_native:
                self.root.writev(offset, bufs, False)
                self._emulated_fua()
            else:
                self.root.writev(offset, bufs, host_fua)
        except OSError as exc:
            return self._failed("write", False, exc, offset, n, entry)
        except Exception as exc:  # a driver bug must not kill the machine
            return self._failed("write", False, self._internal_error(exc), offset, n, entry)
        self.stats.write.record(n, _perf_ns() - t0)
        if entry is not None:
            self._complete(entry, 0, OK)
        return OK

    def write(self, offset: int, data: Buffer, fua: bool = False) -> int:
        return self.writev(offset, [data], fua)

    def _emulated_fua(self) -> None:
        self.stats.fua_emulated += 1
        if trace.enabled:
            trace.emit("backend.fua_flush", drive=self.name)
        self.root.flush()

    def flush(self) -> int:
        """Make every completed write durable.  Under ``cache=unsafe`` it is
        dropped (counted in ``stats.flushes_dropped``) and returns 0."""
        entry = self._submit("flush", 0, 0, False, False, dropped=self._no_flush) \
            if self.request_log.enabled else None
        if trace.enabled:
            trace.emit("backend.flush", drive=self.name, dropped=self._no_flush)
        if self._no_flush:
            self.stats.flushes_dropped += 1
            self.stats.flush.record(0, 0)
            if entry is not None:
                self._complete(entry, 0, OK)
            return OK
        t0 = _perf_ns()
        try:
            self.root.flush()
        except OSError as exc:
            return self._failed("flush", False, exc, 0, 0, entry)
        except Exception as exc:  # a driver bug must not kill the machine
            return self._failed("flush", False, self._internal_error(exc), 0, 0, entry)
        self.stats.flush.record(0, _perf_ns() - t0)
        if entry is not None:
            self._complete(entry, 0, OK)
        return OK

    def discard(self, offset: int, length: int) -> int:
        """Discard (TRIM/UNMAP).  With ``discard=ignore`` nothing happens and 0 is returned."""
        if self.read_only:
            return -errno.EROFS
        if self._bad_range("discard", offset, length):
            return -errno.EIO
        ignored = self.discard_mode is DiscardMode.IGNORE
        entry = self._submit("discard", offset, length, False, False, dropped=ignored) \
            if self.request_log.enabled else None
        if trace.enabled:
            trace.emit("backend.discard", drive=self.name, offset=offset, length=length,
                       ignored=ignored)
        t0 = _perf_ns()
        if ignored:
            self.stats.discards_ignored += 1
        else:
            try:
                self.root.discard(offset, length)
            except OSError as exc:
                return self._failed("discard", False, exc, offset, length, entry)
            except Exception as exc:  # a driver bug must not kill the machine
                return self._failed("discard", False, self._internal_error(exc), offset, length,
                                    entry)
        self.stats.discard.record(length, _perf_ns() - t0)
        if entry is not None:
            self._complete(entry, 0, OK)
        return OK

    def write_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> int:
        """Make the range read as zeros.  ``may_unmap`` is honoured only with
        ``discard=unmap``; WCE off makes it durable on completion like a write."""
        if self.read_only:
            return -errno.EROFS
        if self._bad_range("write_zeroes", offset, length):
            return -errno.EIO
        may_unmap = may_unmap and self.discard_mode is DiscardMode.UNMAP
        host_fua = not self._wce
        dropped = host_fua and self._no_flush
        entry = self._submit("write_zeroes", offset, length, False, host_fua, may_unmap,
                             dropped=dropped) if self.request_log.enabled else None
        if trace.enabled:
            trace.emit("backend.write_zeroes", drive=self.name, offset=offset, length=length,
                       may_unmap=may_unmap, host_fua=host_fua)
        t0 = _perf_ns()
        try:
            self.root.write_zeroes(offset, length, may_unmap)
            if host_fua and not dropped:
                self._emulated_fua()
        except OSError as exc:
            return self._failed("write_zeroes", False, exc, offset, length, entry)
        except Exception as exc:  # a driver bug must not kill the machine
            return self._failed("write_zeroes", False, self._internal_error(exc), offset, length, entry)
        self.stats.write_zeroes.record(length, _perf_ns() - t0)
        if entry is not None:
            self._complete(entry, 0, OK)
        return OK

    # --- machine control --------------------------------------------------------------
    def resume(self) -> None:
        """The machine resumed after a stop: forget the stop reason (devices resubmit)."""
        self.stop_reason = None

    def find_node(self, cls: type) -> BlockDriver | None:
        """The first node of type ``cls`` in the graph (e.g. the logwrites filter)."""
        todo = [self.root]
        while todo:
            n = todo.pop(0)
            if isinstance(n, cls):
                return n
            todo.extend(n.children())
        return None

    def close(self) -> int:
        """Close the graph (format drivers flush their metadata first).

        Returns 0, or -errno if closing failed — then one warning line goes to
        stderr, since the image may miss its last metadata updates; it never
        raises, so a machine can always shut down.
        """
        try:
            self.root.close()
        except OSError as e:
            if trace.enabled:
                trace.emit("backend.close_error", drive=self.name, errno=e.errno, message=str(e))
            print(f"blockbed: warning: {self.name}: closing the image failed: {e}",
                  file=sys.stderr)
            return -(e.errno or errno.EIO)
        return OK


def _all_zero(bufs: Sequence[Buffer]) -> bool:
    """True if every byte is zero; C-speed (count of a bytes-like, no Python loop per byte)."""
    for b in bufs:
        mv = b if isinstance(b, memoryview) else memoryview(b)
        if mv.nbytes and mv.cast("B").tobytes().count(0) != mv.nbytes:
            return False
    return True
