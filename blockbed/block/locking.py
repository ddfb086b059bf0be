"""Image locking compatible with QEMU's (block/file-posix.c).

QEMU takes open-file-description (OFD) byte-range locks on the image file
itself, one byte per block-layer permission:

- byte ``100 + i`` is read-locked (shared) while this opener *holds*
  permission bit ``i``;
- byte ``200 + i`` is read-locked while this opener does *not share* bit ``i``
  with other users.

Bits (include/block/block-common.h, QEMU 7.2): 0 ``consistent read``,
1 ``write``, 2 ``write unchanged``, 3 ``resize``.

Acquiring is "lock first, then test" (QEMU's ``raw_handle_perm_lock``):

1. read-lock our bytes;
2. for each permission we hold, test (``F_OFD_GETLK`` with a write lock)
   whether anyone else locked ``200 + i`` → ``Failed to get "write" lock``;
3. for each permission we do not share, test whether anyone else locked
   ``100 + i`` → ``Failed to get shared "write" lock``.

OFD locks belong to the open file description, so two opens in the same
process conflict exactly as two processes do, and closing any other fd of the
file does not drop them (unlike classic POSIX ``F_SETLK`` locks).

The permissions blockbed takes are those QEMU takes for a guest disk
(``-drive``/``-device`` without ``share-rw``) over a qcow2 node: a writer holds
consistent-read, write and resize and shares only consistent-read and
write-unchanged; a reader holds consistent-read and shares the same;
``force-share=on`` (read-only only) holds consistent-read and shares
everything.  So a blockbed writer excludes every other writer *and* every
other non-force-share reader, as QEMU does.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from dataclasses import dataclass

from .driver import BlockError

PERM_BASE = 100
SHARED_BASE = 200

PERM_CONSISTENT_READ = 0x01
PERM_WRITE = 0x02
PERM_WRITE_UNCHANGED = 0x04
PERM_RESIZE = 0x08
PERM_ALL = 0x0F

PERM_NAMES = {
    PERM_CONSISTENT_READ: "consistent read",
    PERM_WRITE: "write",
    PERM_WRITE_UNCHANGED: "write unchanged",
    PERM_RESIZE: "resize",
}

# struct flock on Linux/x86-64: short l_type, short l_whence, off_t l_start,
# off_t l_len, pid_t l_pid (must be 0 for OFD locks), padded to 32 bytes.
_FLOCK = struct.Struct("@hhqqi4x")


@dataclass(frozen=True)
class Permissions:
    """What an opener holds (``perm``) and what it lets others hold (``shared``)."""

    perm: int
    shared: int

    @classmethod
    def for_open(cls, read_only: bool, force_share: bool = False) -> "Permissions":
        if force_share:
            return cls(PERM_CONSISTENT_READ, PERM_ALL)
        shared = PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED
        if read_only:
            return cls(PERM_CONSISTENT_READ, shared)
        return cls(PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE, shared)


def _bits(mask: int) -> list[int]:
    return [i for i in range(4) if mask & (1 << i)]


def _fcntl_lock(fd: int, cmd: int, ltype: int, start: int) -> bytes:
    return fcntl.fcntl(fd, cmd, _FLOCK.pack(ltype, os.SEEK_SET, start, 1, 0))


def _lock_byte(fd: int, start: int) -> None:
    _fcntl_lock(fd, fcntl.F_OFD_SETLK, fcntl.F_RDLCK, start)


def _unlock_byte(fd: int, start: int) -> None:
    _fcntl_lock(fd, fcntl.F_OFD_SETLK, fcntl.F_UNLCK, start)


def _byte_locked_by_other(fd: int, start: int) -> bool:
    """True if an open file description other than ``fd``'s holds any lock on the byte."""
    res = _fcntl_lock(fd, fcntl.F_OFD_GETLK, fcntl.F_WRLCK, start)
    return _FLOCK.unpack(res)[0] != fcntl.F_UNLCK


class ImageLock:
    """The lock bytes one open image holds; ``release()`` drops them (close does too)."""

    def __init__(self, fd: int, path: str, perms: Permissions):
        self.fd = fd
        self.path = path
        self.perms = perms
        self._held: list[int] = []
        try:
            for i in _bits(perms.perm):
                _lock_byte(fd, PERM_BASE + i)
                self._held.append(PERM_BASE + i)
            for i in _bits(PERM_ALL & ~perms.shared):
                _lock_byte(fd, SHARED_BASE + i)
                self._held.append(SHARED_BASE + i)
        except OSError as e:
            self.release()
            raise self._error(e.errno, "Failed to lock byte range") from None
        try:
            self._check()
        except BlockError:
            self.release()
            raise

    def _error(self, err: int, what: str) -> BlockError:
        return BlockError(err, f"{what}; is another process using the image [{self.path}]?")

    def _check(self) -> None:
        for i in _bits(self.perms.perm):
            if _byte_locked_by_other(self.fd, SHARED_BASE + i):
                raise self._error(errno.EAGAIN, f'Failed to get "{PERM_NAMES[1 << i]}" lock')
        for i in _bits(PERM_ALL & ~self.perms.shared):
            if _byte_locked_by_other(self.fd, PERM_BASE + i):
                raise self._error(errno.EAGAIN, f'Failed to get shared "{PERM_NAMES[1 << i]}" lock')

    def release(self) -> None:
        for start in self._held:
            try:
                _unlock_byte(self.fd, start)
            except OSError:
                pass  # the fd is being closed anyway; closing drops OFD locks
        self._held.clear()


def lock_bytes_held(path: str) -> dict[int, bool]:
    """For tests and ``info``: which of bytes 100..103 and 200..203 someone holds.

    Opens its own read-only descriptor, so it sees every other opener's locks.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        return {b: _byte_locked_by_other(fd, b)
                for b in [*range(PERM_BASE, PERM_BASE + 4), *range(SHARED_BASE, SHARED_BASE + 4)]}
    finally:
        os.close(fd)
