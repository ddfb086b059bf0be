"""``file`` protocol driver: a host file (or block device) through POSIX calls.

Data moves with ``os.preadv``/``os.pwritev`` straight between the caller's
memoryviews and the kernel — no intermediate copies.  The mapping to system
calls follows QEMU's block/file-posix.c:

=================  ==========================================================
operation          system call
=================  ==========================================================
read / write       ``preadv`` / ``pwritev``; a FUA write is ``pwritev`` then
                   ``fdatasync`` (QEMU 7.2's file-posix), or ``pwritev2(RWF_DSYNC)``
                   with ``native-fua=on``
flush              ``fdatasync``
discard            ``fallocate(PUNCH_HOLE|KEEP_SIZE)``
write_zeroes       ``fallocate(ZERO_RANGE)``, or ``PUNCH_HOLE`` with may_unmap
block_status       ``lseek(SEEK_DATA/SEEK_HOLE)``
truncate / create  ``ftruncate`` (+ ``posix_fallocate`` / zero fill for
                   preallocation=falloc/full)
=================  ==========================================================

``direct=True`` (``cache.direct=on``) opens with ``O_DIRECT``.  Requests whose
offset, length and buffer addresses are all aligned go straight to the kernel;
only unaligned ones use a page-aligned bounce buffer (read-modify-write for
writes, as QEMU's request padding in block/io.c does).

Every system call site emits a trace event (``file.open``, ``file.preadv``,
``file.pwritev``, ``file.fdatasync``, ``file.fallocate``, ``file.ftruncate``)
so tests can prove what reached the host.

Locking: see :mod:`blockbed.block.locking` (QEMU-compatible OFD lock bytes).
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from typing import Sequence

from .. import trace
from .driver import BlockDriver, BlockError, Buffer, Extent, ReadOnlyError, check_request
from .locking import ImageLock, Permissions

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

IOV_MAX = 1024
PREALLOCATION_MODES = ("off", "falloc", "full")
LOCKING_MODES = ("auto", "on", "off")

_libc_fallocate = None          # bound on first use: ctypes costs start-up time


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """``fallocate(2)`` with a mode (``os.posix_fallocate`` has none)."""
    global _libc_fallocate
    import ctypes
    if _libc_fallocate is None:
        f = ctypes.CDLL(None, use_errno=True).fallocate
        f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        f.restype = ctypes.c_int
        _libc_fallocate = f
    if _libc_fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _buffer_address(buf: memoryview) -> int | None:
    """Address of a writable buffer's first byte; None when unknown (read-only)."""
    if buf.readonly or not buf.nbytes:
        return None
    import ctypes
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def _advance(bufs: list[memoryview], n: int) -> list[memoryview]:
    """The part of ``bufs`` after the first ``n`` bytes (after a short transfer)."""
    out = []
    for b in bufs:
        if n >= len(b):
            n -= len(b)
            continue
        out.append(b[n:] if n else b)
        n = 0
    return out


def _as_views(bufs: Sequence[Buffer]) -> list[memoryview]:
    return [b if isinstance(b, memoryview) else memoryview(b) for b in bufs]


class FileDriver(BlockDriver):
    """A host file.  See the module docstring for the system-call mapping.

    ``read_only``: ``O_RDONLY`` and read-only lock permissions.
    ``direct``: ``O_DIRECT`` (``cache.direct=on``).
    ``locking``: ``auto``/``on`` take QEMU-compatible locks, ``off`` takes none.
    ``force_share``: share every permission (only with ``read_only``), as
    QEMU's ``force-share=on`` / ``qemu-img -U``.
    ``native_fua``: False (the default, QEMU 7.2's file-posix): the driver reports
    ``supports_fua = False`` and a FUA write is the write then ``fdatasync``; True
    (``native-fua=on``, a blockbed option): ``pwritev2(…, RWF_DSYNC)``, one system
    call, as newer kernels and QEMU's io_uring path can do.
    """

    driver_name = "file"

    def __init__(self, path: str, *, read_only: bool = False, direct: bool = False,
                 locking: str | bool = "auto", force_share: bool = False,
                 native_fua: bool = False):
        self.path = path
        self.read_only = read_only
        self.direct = direct
        self.supports_fua = bool(native_fua and hasattr(os, "RWF_DSYNC"))
        self.fd = -1
        self._lock: ImageLock | None = None
        self._flush_error = 0     # errno of a failed fdatasync: later flushes fail too
        self.fdatasync_count = 0
        if isinstance(locking, bool):
            locking = "on" if locking else "off"
        if locking not in LOCKING_MODES:
            raise BlockError(errno.EINVAL, f"locking={locking}: invalid value; allowed: "
                                           f"{', '.join(LOCKING_MODES)}")
        if force_share and not read_only:
            raise BlockError(errno.EINVAL, "force-share=on can only be used with read-only images")
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        if direct:
            flags |= os.O_DIRECT
        try:
            self.fd = os.open(path, flags)
        except OSError as e:
            hint = " (the file system may not support O_DIRECT; try cache=writeback)" \
                if direct and e.errno == errno.EINVAL else ""
            raise BlockError(e.errno, f"Could not open '{path}': {e.strerror}{hint}") from None
        if trace.enabled:
            trace.emit("file.open", path=path, flags=flags, read_only=read_only,
                       o_direct=direct)
        try:
            st = os.fstat(self.fd)
            if stat.S_ISDIR(st.st_mode):
                raise BlockError(errno.EISDIR, f"Could not open '{path}': Is a directory")
            self._is_blockdev = stat.S_ISBLK(st.st_mode)
            self._size = self._query_size()
            if locking != "off":
                self._lock = ImageLock(self.fd, path, Permissions.for_open(read_only, force_share))
            self.align, self.mem_align = self._probe_alignment() if direct else (1, 1)
        except BaseException:
            os.close(self.fd)
            self.fd = -1
            raise

    # --- helpers --------------------------------------------------------
    def _query_size(self) -> int:
        if self._is_blockdev:
            return os.lseek(self.fd, 0, os.SEEK_END)
        return os.fstat(self.fd).st_size

    def _probe_alignment(self) -> tuple[int, int]:
        """Request and memory alignment for O_DIRECT, found as QEMU does by trying reads."""
        buf = mmap.mmap(-1, 2 * mmap.PAGESIZE)
        try:
            view = memoryview(buf)
            req = 0
            for a in (512, 1024, 2048, 4096):
                try:
                    os.preadv(self.fd, [view[:a]], 0)
                    req = a
                    break
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        break
            if not req or self._size == 0:
                req = 4096  # empty files cannot be probed: be safe
            mem = 0
            for a in (512, 1024, 2048, 4096):
                try:
                    os.preadv(self.fd, [view[a:a + req]], 0)
                    mem = a
                    break
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        break
            if not mem or self._size == 0:
                mem = 4096
            return req, mem
        finally:
            del view
            buf.close()

    def _aligned(self, offset: int, bufs: Sequence[memoryview]) -> bool:
        a = self.align - 1
        if offset & a:
            return False
        m = self.mem_align - 1
        for b in bufs:
            if len(b) & a:
                return False
            addr = _buffer_address(b)
            if addr is None or addr & m:
                return False
        return True

    def _bounce(self, start: int, end: int) -> memoryview:
        # A fresh page-aligned anonymous mapping; only unaligned O_DIRECT requests get here.
        return memoryview(mmap.mmap(-1, end - start))

    def _err(self, e: OSError, what: str) -> BlockError:
        return BlockError(e.errno or errno.EIO, f"{self.path}: {what}: {e.strerror}")

    # --- data path ---------------------------------------------------------
    def read(self, offset: int, buf: memoryview) -> None:
        self.readv(offset, [buf])

    def readv(self, offset: int, bufs: Sequence[memoryview]) -> None:
        """Fill ``bufs``; bytes past the end of the file read as zeros (as QEMU)."""
        if offset < 0:
            check_request(self, offset, 0)
        if self.direct and not self._aligned(offset, bufs):
            if not sum(len(b) for b in bufs):
                return
            return self._bounce_read(offset, bufs)
        if trace.enabled:
            trace.emit("file.preadv", offset=offset, length=sum(len(b) for b in bufs),
                       iovcnt=len(bufs), bounce=False)
        if len(bufs) > IOV_MAX:
            for i in range(0, len(bufs), IOV_MAX):
                part = bufs[i:i + IOV_MAX]
                self.readv(offset, part)
                offset += sum(len(b) for b in part)
            return
        try:
            n = os.preadv(self.fd, bufs, offset)
            if len(bufs) == 1:
                if n == len(bufs[0]):
                    return
            elif n == sum(len(b) for b in bufs):
                return
            rest = _advance(_as_views(bufs), n)
            while rest:
                offset += n
                n = os.preadv(self.fd, rest, offset)
                if n == 0:  # end of file: the rest reads as zeros
                    for b in rest:
                        b[:] = bytes(len(b))
                    return
                rest = _advance(rest, n)
        except OSError as e:
            raise self._err(e, f"read at {offset}") from None

    def _bounce_read(self, offset: int, bufs: Sequence[memoryview]) -> None:
        total = sum(len(b) for b in bufs)
        a = self.align
        start = offset - offset % a
        end = -(-(offset + total) // a) * a
        bounce = self._bounce(start, end)
        if trace.enabled:
            trace.emit("file.preadv", offset=start, length=end - start, iovcnt=1, bounce=True)
        try:
            n = os.preadv(self.fd, [bounce], start)
        except OSError as e:
            raise self._err(e, f"read at {offset}") from None
        if n < end - start:
            bounce[n:] = bytes(end - start - n)
        pos = offset - start
        for b in bufs:
            b[:] = bounce[pos:pos + len(b)]
            pos += len(b)

    def write(self, offset: int, data: Buffer, fua: bool = False) -> None:
        self.writev(offset, [data], fua)

    def writev(self, offset: int, bufs: Sequence[Buffer], fua: bool = False) -> None:
        """Write ``bufs`` at ``offset``; past the end the file grows, as files do."""
        if self.read_only:
            raise ReadOnlyError(f"{self.path}: the image is open read-only")
        if offset < 0:
            check_request(self, offset, 0)
        views = _as_views(bufs)
        total = len(views[0]) if len(views) == 1 else sum(len(b) for b in views)
        if not total:
            return  # nothing to write (O_DIRECT could not even bounce zero bytes)
        if self.direct and not self._aligned(offset, views):
            return self._bounce_write(offset, views, fua)
        native_fua = fua and self.supports_fua
        if trace.enabled:
            trace.emit("file.pwritev", offset=offset, length=total, iovcnt=len(views),
                       fua=native_fua, bounce=False)
        self._pwritev(offset, views, total, os.RWF_DSYNC if native_fua else 0)
        if fua and not native_fua:
            self.flush()

    def _pwritev(self, offset: int, views: list[memoryview], total: int, flags: int) -> None:
        start = offset
        try:
            if len(views) > IOV_MAX:
                for i in range(0, len(views), IOV_MAX):
                    part = views[i:i + IOV_MAX]
                    plen = sum(len(b) for b in part)
                    self._pwritev(offset, part, plen, flags)
                    offset += plen
                return
            n = os.pwritev(self.fd, views, offset, flags) if flags else \
                os.pwritev(self.fd, views, offset)
            if n != total:
                rest = _advance(views, n)
                while rest:
                    offset += n
                    n = os.pwritev(self.fd, rest, offset, flags)
                    if n == 0:
                        raise OSError(errno.EIO, "short write")
                    rest = _advance(rest, n)
        except OSError as e:
            self._size = self._query_size()  # a partial write may have grown the file
            raise self._err(e, f"write at {offset}") from None
        if start + total > self._size:
            self._size = start + total

    def _bounce_write(self, offset: int, views: list[memoryview], fua: bool) -> None:
        """Unaligned O_DIRECT write: read the partial head/tail blocks, merge, write aligned."""
        total = sum(len(b) for b in views)
        a = self.align
        old_size = self._size
        start = offset - offset % a
        end = -(-(offset + total) // a) * a
        bounce = self._bounce(start, end)
        if start < offset or end > offset + total:
            try:
                if start < old_size:
                    n = os.preadv(self.fd, [bounce], start)
                    if n < end - start:
                        bounce[n:] = bytes(end - start - n)
            except OSError as e:
                raise self._err(e, f"read-modify-write at {offset}") from None
        pos = offset - start
        for b in views:
            bounce[pos:pos + len(b)] = b
            pos += len(b)
        native_fua = fua and self.supports_fua
        if trace.enabled:
            trace.emit("file.pwritev", offset=start, length=end - start, iovcnt=1,
                       fua=native_fua, bounce=True)
        self._pwritev(start, [bounce], end - start, os.RWF_DSYNC if native_fua else 0)
        if end > old_size and end > offset + total:
            # The aligned write ran past the requested end: give the file its true size.
            new_size = max(old_size, offset + total)
            self._ftruncate(new_size)
        if fua and not native_fua:
            self.flush()

    def flush(self) -> None:
        """``fdatasync``.  After one fails, every later flush fails with the same
        errno: the kernel may already have dropped the dirty pages, so a later
        "success" would be a lie (QEMU's ``page_cache_inconsistent``)."""
        if trace.enabled:
            trace.emit("file.fdatasync", path=self.path)
        if self._flush_error:
            raise BlockError(self._flush_error,
                             f"{self.path}: an earlier flush failed; the page cache is inconsistent")
        self.fdatasync_count += 1
        try:
            os.fdatasync(self.fd)
        except OSError as e:
            self._flush_error = e.errno or errno.EIO
            raise self._err(e, "fdatasync") from None

    def _fallocate(self, mode: int, offset: int, length: int) -> None:
        if trace.enabled:
            trace.emit("file.fallocate", mode=mode, offset=offset, length=length)
        fallocate(self.fd, mode, offset, length)

    def discard(self, offset: int, length: int) -> None:
        """Punch a hole; the size stays.  Unsupported file systems ignore it (a hint)."""
        if self.read_only:
            raise ReadOnlyError(f"{self.path}: the image is open read-only")
        if offset < 0 or length < 0:
            check_request(self, offset, length)
        length = min(length, max(0, self._size - offset))
        if not length:
            return
        try:
            self._fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise self._err(e, f"discard at {offset}") from None

    def write_zeroes(self, offset: int, length: int, may_unmap: bool = False) -> None:
        """ZERO_RANGE, or PUNCH_HOLE when ``may_unmap``; writes zeros where neither works."""
        if self.read_only:
            raise ReadOnlyError(f"{self.path}: the image is open read-only")
        if offset < 0 or length < 0:
            check_request(self, offset, length)
        if not length:
            return
        end = offset + length
        try:
            if may_unmap and not self._is_blockdev:
                inside = min(end, self._size) - offset
                if inside > 0:
                    self._fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, inside)
                if end > self._size:
                    self._ftruncate(end)
                return
            self._fallocate(FALLOC_FL_ZERO_RANGE, offset, length)
            if end > self._size:
                self._size = end
            return
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise self._err(e, f"write_zeroes at {offset}") from None
        chunk = memoryview(bytes(min(length, 1 << 20)))
        while offset < end:
            n = min(end - offset, len(chunk))
            self.writev(offset, [chunk[:n]])
            offset += n

    def block_status(self, offset: int, length: int) -> list[Extent]:
        """Data and holes from ``SEEK_DATA``/``SEEK_HOLE``; holes read as zeros."""
        check_request(self, offset, length)
        end = offset + length
        out: list[Extent] = []
        pos = offset
        while pos < end:
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    data = end  # only a hole up to the end of the file
                elif e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                    out.append(Extent(pos, end - pos, data=True, zero=False,
                                      host_offset=pos, host_node=self))
                    break
                else:
                    raise self._err(e, "SEEK_DATA") from None
            if data > pos:
                stop = min(data, end)
                out.append(Extent(pos, stop - pos, data=False, zero=True,
                                  host_offset=pos, host_node=self))
                pos = stop
                continue
            try:
                hole = os.lseek(self.fd, pos, os.SEEK_HOLE)
            except OSError as e:
                raise self._err(e, "SEEK_HOLE") from None
            stop = min(max(hole, pos + 1), end)
            out.append(Extent(pos, stop - pos, data=True, zero=False,
                              host_offset=pos, host_node=self))
            pos = stop
        return out

    # --- size and lifetime -------------------------------------------------
    def length(self) -> int:
        return self._size

    def refresh_length(self) -> int:
        """Re-read the size from the kernel (another process may have resized it)."""
        self._size = self._query_size()
        return self._size

    def _ftruncate(self, length: int) -> None:
        if trace.enabled:
            trace.emit("file.ftruncate", length=length)
        os.ftruncate(self.fd, length)
        self._size = length

    def truncate(self, length: int, preallocation: str = "off") -> None:
        """Resize; growing with ``falloc``/``full`` allocates the new range."""
        if self.read_only:
            raise ReadOnlyError(f"{self.path}: the image is open read-only")
        if length < 0:
            raise BlockError(errno.EINVAL, f"{self.path}: negative size {length}")
        if preallocation not in PREALLOCATION_MODES:
            raise BlockError(errno.EINVAL, f"preallocation={preallocation}: invalid value; "
                                           f"allowed: {', '.join(PREALLOCATION_MODES)}")
        if self._is_blockdev:
            if length > self._size:
                raise BlockError(errno.ENOTSUP, f"{self.path}: cannot grow a block device")
            return
        old = self._size
        try:
            self._ftruncate(length)
            if length > old and preallocation != "off":
                _preallocate(self.fd, old, length, preallocation)
        except OSError as e:
            raise self._err(e, f"truncate to {length}") from None

    def close(self) -> None:
        if self.fd < 0:
            return
        if self._lock:
            self._lock.release()
            self._lock = None
        os.close(self.fd)
        self.fd = -1

    def reopen_rw(self) -> None:
        """Make a read-only node writable (QEMU bdrv_reopen_set_read_only, as ``qemu-img
        commit`` does to its base): a new ``O_RDWR`` descriptor with writer locks; if
        another process holds the image the node stays read-only and this raises."""
        if not self.read_only:
            return
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_DIRECT if self.direct else 0)
        try:
            fd = os.open(self.path, flags)
        except OSError as e:
            raise BlockError(e.errno, f"Could not reopen '{self.path}' for writing: "
                                      f"{e.strerror}") from None
        old_lock = self._lock
        if old_lock:
            old_lock.release()
        try:
            lock = ImageLock(fd, self.path, Permissions.for_open(False, False)) \
                if old_lock else None
        except BaseException:
            os.close(fd)
            if old_lock:
                self._lock = ImageLock(self.fd, self.path, Permissions.for_open(True, False))
            raise
        os.close(self.fd)
        self.fd, self._lock, self.read_only = fd, lock, False

    def describe(self) -> str:
        return f"file({self.path})"

    def __del__(self) -> None:  # a forgotten close must not leak the lock
        try:
            self.close()
        except Exception:
            pass


def _preallocate(fd: int, start: int, end: int, mode: str) -> None:
    if mode == "falloc":
        os.posix_fallocate(fd, start, end - start)
    elif mode == "full":
        chunk = memoryview(bytes(1 << 20))
        pos = start
        while pos < end:
            n = min(end - pos, len(chunk))
            pos += os.pwritev(fd, [chunk[:n]], pos)
        os.fdatasync(fd)


def create_file(path: str, size: int, preallocation: str = "off") -> None:
    """Create (or truncate) ``path`` to ``size`` bytes, as ``qemu-img create -f raw``.

    The write lock is taken before truncating, so an image another process
    (QEMU or blockbed) has open cannot be destroyed by accident; QEMU's raw
    create does the same.
    """
    if preallocation not in PREALLOCATION_MODES:
        raise BlockError(errno.EINVAL, f"preallocation={preallocation}: invalid value; "
                                       f"allowed: {', '.join(PREALLOCATION_MODES)}")
    if size < 0:
        raise BlockError(errno.EINVAL, f"invalid size {size}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise BlockError(e.errno, f"Could not create '{path}': {e.strerror}") from None
    try:
        lock = ImageLock(fd, path, Permissions.for_open(read_only=False))
        try:
            if trace.enabled:
                trace.emit("file.ftruncate", length=size)
            os.ftruncate(fd, 0)
            os.ftruncate(fd, size)
            if preallocation != "off":
                _preallocate(fd, 0, size, preallocation)
        except OSError as e:
            raise BlockError(e.errno, f"Could not create '{path}': {e.strerror}") from None
        finally:
            lock.release()
    finally:
        os.close(fd)
