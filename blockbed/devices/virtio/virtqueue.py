"""Split virtqueues (virtio 1.2 §2.7), device side.

One :class:`SplitQueue` per queue.  The driver owns the descriptor table
(§2.7.5) and the available ring (§2.7.6); the device owns the used ring
(§2.7.8).  Everything read from guest memory here is guest-controlled, so
every field is validated before use and every violation becomes a
:class:`QueueError` — the caller (the transport) turns it into
DEVICE_NEEDS_RESET (§2.1.2); nothing escapes as a host exception:

- ``avail.idx`` more than Queue Size ahead of the last consumed index
  (§2.7.13.3: the driver cannot have more than Queue Size buffers out);
- a ring entry or a ``next`` field that is not below Queue Size;
- a chain that loops or is longer than Queue Size, indirect table entries
  included (§2.7.5.3.1: "A driver MUST NOT create a descriptor chain longer
  than the Queue Size of the device");
- an INDIRECT descriptor when VIRTIO_F_RING_INDIRECT_DESC was not
  negotiated, combined with NEXT, nested in a table, or whose table length
  is zero or not a multiple of 16 (§2.7.5.3.1).  Normal descriptors followed
  by one INDIRECT descriptor are valid (§2.7.5.3.2: the device MUST handle
  them);
- a device-readable descriptor after a device-writable one (§2.7.4.2);
- ring or table memory outside guest RAM.

Data buffers outside RAM are *not* a queue error: :meth:`SplitQueue.pop`
reports them per chain (``Chain.bad``) so the request can complete with
IOERR, as a real DMA master abort would make a disk report.

Memory is read through memoryviews of guest RAM with precompiled structs
derived from the declarations in :mod:`.layout` (no offset is written here);
the hot path (one chain per request) allocates only the result lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ...machine.memory import DMAError, drop_no_code

from . import layout as L
from .layout import AVAIL_F_NO_INTERRUPT, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE

__all__ = ["AVAIL_F_NO_INTERRUPT", "DESC_F_INDIRECT", "DESC_F_NEXT", "DESC_F_WRITE",
           "MAX_QUEUE_SIZE", "Chain", "QueueError", "SplitQueue"]

MAX_QUEUE_SIZE = 32768

_DESC = L.DESC
_DESC_SIZE = L.DESC.size
_U16 = L.RING_U16
_USED_ELEM = L.USED_ELEM
_USED_ELEM_SIZE = L.USED_ELEM.size
_AVAIL_FLAGS, _AVAIL_IDX, _AVAIL_RING, _AVAIL_ENTRY = L.AVAIL_FLAGS, L.AVAIL_IDX, L.AVAIL_RING, L.AVAIL_ENTRY
_USED_IDX, _USED_RING = L.USED_IDX, L.USED_RING


class QueueError(Exception):
    """The driver broke the split-ring rules: the device needs a reset (§2.1.2)."""


@dataclass(slots=True)
class Chain:
    """One descriptor chain as the device sees it.

    ``readable``/``writable``: views of guest memory in chain order; None
    for a descriptor whose buffer lies outside guest RAM (or while bus
    mastering is off), and ``bad`` then says why: the request must fail,
    but its status byte may still be reachable.
    """
    head: int
    readable: list[memoryview | None] = field(default_factory=list)
    writable: list[memoryview | None] = field(default_factory=list)
    bad: str | None = None


class SplitQueue:
    """Device-side state of one split virtqueue.

    ``dma(addr, length)`` maps guest memory (the PCI function's bus-master
    view; raises DMAError).  The transport sets ``size``/addresses from the
    common configuration and calls :meth:`start` when the device may use
    the queue.
    """

    def __init__(self, index: int, max_size: int, dma: Callable[[int, int], memoryview]):
        self.index = index
        self.max_size = max_size
        self.dma = dma
        # Optional: all of guest RAM as one view; data buffers are then sliced
        # from it after an inline bound check (no call per descriptor).
        self.ram: memoryview | None = None
        # Forget the CPU's translated code of a range the device will write
        # (GuestMemory.drop_code); set with ``ram`` by the transport.
        self.drop_code: Callable[[int, int], None] = drop_no_code
        self.indirect = False
        self.event_idx = False
        self.reset()

    def reset(self) -> None:
        """Queue defaults (§4.1.4.3: after device or queue reset)."""
        # Completions scheduled before a reset carry the old epoch and are dropped.
        self.epoch = getattr(self, "epoch", 0) + 1
        self.size = self.max_size
        self.desc_addr = 0
        self.driver_addr = 0
        self.device_addr = 0
        self.enabled = False
        self.msix_vector = 0xFFFF
        self.last_avail = 0
        self.used_idx = 0
        self.signalled_used = 0
        self._desc: memoryview | None = None
        self._avail: memoryview | None = None
        self._used: memoryview | None = None

    # --- set-up ----------------------------------------------------------------
    def start(self) -> None:
        """Map the three ring areas; QueueError if they are not in RAM or misaligned (§2.7)."""
        n = self.size
        if not n or n & (n - 1) or n > MAX_QUEUE_SIZE:
            raise QueueError(f"queue {self.index}: size {n} is not a power of two <= 32768")
        if self.desc_addr % _DESC_SIZE or self.driver_addr % 2 or self.device_addr % 4:
            raise QueueError(f"queue {self.index}: misaligned ring (desc {self.desc_addr:#x}, "
                             f"avail {self.driver_addr:#x}, used {self.device_addr:#x})")
        try:
            self._desc = self.dma(self.desc_addr, _DESC_SIZE * n)
            self._avail = self.dma(self.driver_addr, L.avail_size(n))
            self._used = self.dma(self.device_addr, L.used_size(n))
        except DMAError as e:
            self._desc = self._avail = self._used = None
            raise QueueError(f"queue {self.index}: ring outside guest RAM ({e})") from None

    @property
    def ready(self) -> bool:
        return self._used is not None

    # --- available ring ---------------------------------------------------------------
    def pending(self) -> int:
        """How many chains the driver has made available; QueueError if impossible."""
        avail_idx = _U16.unpack_from(self._avail, _AVAIL_IDX)[0]
        n = (avail_idx - self.last_avail) & 0xFFFF
        if n > self.size:
            raise QueueError(f"queue {self.index}: avail.idx {avail_idx} is {n} ahead of "
                             f"{self.last_avail} (queue size {self.size})")
        return n

    def pop(self) -> Chain:
        """Take the next available chain (call only while :meth:`pending` > 0)."""
        size = self.size
        slot = self.last_avail % size
        head = _U16.unpack_from(self._avail, _AVAIL_RING + _AVAIL_ENTRY * slot)[0]
        if head >= size:
            raise QueueError(f"queue {self.index}: avail ring entry {slot} names descriptor "
                             f"{head} >= queue size {size}")
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if self.event_idx:
            # avail_event (§2.7.10): ask for a notification for the next new entry.
            _U16.pack_into(self._used, _USED_RING + _USED_ELEM_SIZE * size, self.last_avail)
        return self._walk(head)

    def _walk(self, head: int) -> Chain:
        """Collect one chain: zero or more ring descriptors, optionally ending in one
        INDIRECT descriptor whose table continues the chain (§2.7.5.3.2).  The whole
        chain, table entries included, may not be longer than Queue Size."""
        chain = Chain(head)
        table = self._desc
        size = self.size
        limit = size                # valid `next` values in the current table
        i = head
        seen = 0
        in_indirect = False
        dma = self.dma
        ram = self.ram
        ram_size = len(ram) if ram is not None else 0
        drop = self.drop_code
        readable, writable = chain.readable, chain.writable
        while True:
            seen += 1
            if seen > size:
                raise QueueError(f"queue {self.index}: descriptor chain from {head} loops or "
                                 f"is longer than the queue size {size}")
            addr, length, flags, nxt = _DESC.unpack_from(table, _DESC_SIZE * i)
            if flags & DESC_F_INDIRECT:
                if not self.indirect:
                    raise QueueError(f"queue {self.index}: INDIRECT descriptor without "
                                     "VIRTIO_F_RING_INDIRECT_DESC")
                if in_indirect or flags & DESC_F_NEXT:
                    raise QueueError(f"queue {self.index}: INDIRECT descriptor nested in a table "
                                     "or combined with NEXT")
                if length == 0 or length % _DESC_SIZE:
                    raise QueueError(f"queue {self.index}: indirect table length {length} is "
                                     f"not a positive multiple of {_DESC_SIZE}")
                if ram is not None and addr + length <= ram_size:
                    table = ram[addr:addr + length]
                else:
                    try:
                        table = dma(addr, length)
                    except DMAError as e:
                        raise QueueError(f"queue {self.index}: indirect table outside RAM "
                                         f"({e})") from None
                in_indirect = True
                limit = length // _DESC_SIZE
                seen -= 1           # the table descriptor itself carries no buffer
                i = 0
                continue
            if ram is not None:
                if addr + length <= ram_size:
                    view = ram[addr:addr + length]
                else:
                    view = None
                    chain.bad = f"DMA {addr:#x}+{length:#x} outside guest RAM"
            else:
                try:
                    view = dma(addr, length)
                except DMAError as e:
                    view = None
                    chain.bad = str(e)
            if flags & DESC_F_WRITE:
                if view is not None:
                    drop(addr, length)      # the device writes it: old code must not run
                writable.append(view)
            else:
                if writable:
                    raise QueueError(f"queue {self.index}: device-readable descriptor after a "
                                     "device-writable one")
                readable.append(view)
            if not flags & DESC_F_NEXT:
                return chain
            if nxt >= limit:
                raise QueueError(f"queue {self.index}: next {nxt} >= {limit}")
            i = nxt

    # --- used ring ----------------------------------------------------------------------
    def push(self, head: int, written: int) -> None:
        """Return a chain to the driver: element first, then the index (§2.7.8.2)."""
        used = self._used
        _USED_ELEM.pack_into(used, _USED_RING + _USED_ELEM_SIZE * (self.used_idx % self.size),
                             head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        _U16.pack_into(used, _USED_IDX, self.used_idx)

    def push_many(self, entries: list[tuple[int, int]]) -> None:
        """:meth:`push` for a batch: all elements, then the index once."""
        used, size, idx = self._used, self.size, self.used_idx
        pack = _USED_ELEM.pack_into
        for head, written in entries:
            pack(used, _USED_RING + _USED_ELEM_SIZE * (idx % size), head, written)
            idx = (idx + 1) & 0xFFFF
        self.used_idx = idx
        _U16.pack_into(used, _USED_IDX, idx)

    def drained(self) -> bool:
        """No buffer available and none in flight: VIRTIO_F_NOTIFY_ON_EMPTY's condition
        (§6.3 legacy feature; QEMU virtio_should_notify)."""
        return self.last_avail == self.used_idx and \
            _U16.unpack_from(self._avail, _AVAIL_IDX)[0] == self.last_avail

    def should_notify(self) -> bool:
        """Whether the used-buffer notification is due (§2.7.7, §2.7.10).

        With EVENT_IDX: when ``used_event`` lies in (old, new]; without: unless
        the driver set VIRTQ_AVAIL_F_NO_INTERRUPT.
        """
        new, old = self.used_idx, self.signalled_used
        if new == old:
            return False
        self.signalled_used = new
        if self.event_idx:
            event = _U16.unpack_from(self._avail, _AVAIL_RING + _AVAIL_ENTRY * self.size)[0]
            return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)
        return not _U16.unpack_from(self._avail, _AVAIL_FLAGS)[0] & AVAIL_F_NO_INTERRUPT
