"""virtio-blk (virtio 1.2 §5.2) on the PCI transport (modern-only by default;
transitional or legacy-only with QEMU's ``disable-legacy=off``/``disable-modern=on``).

Two separate steps per request, in the style of Firecracker's block device:

1. :func:`parse_request` — the *one* place that validates what the guest put
   in a descriptor chain: the status byte, the 16-byte header (which may be
   split across descriptors), the data direction for the request type, the
   length (a multiple of 512), the sector range against the capacity, the
   discard/write-zeroes segments (count, flags, size, range), negotiated
   features, read-only.  It returns a :class:`BlkRequest` that is either
   ready to execute or carries the status to report (IOERR or UNSUPP).  A
   chain without a usable status byte cannot be answered at all and raises
   :class:`~.virtqueue.QueueError` (the transport then sets
   DEVICE_NEEDS_RESET).
2. :meth:`VirtioBlk.execute` — the I/O, against the BlockBackend only, with
   guest memory views passed straight to ``readv``/``writev`` (no copies).

Requests are executed when the doorbell rings.  How they complete depends on
the queue (``completion="auto"``): a queue without an MSI-X vector belongs to
a polling driver, and its requests are returned in the used ring before the
doorbell write returns — which lets the guest poll ``used.idx`` in RAM with
no exits (virtual time advances only on exits, so a completion scheduled for
later would never arrive).  A queue with an MSI-X vector gets each
completion from the machine's event queue a seeded 2–40 ticks later, with
its interrupt; the guest halts meanwhile and time jumps ahead.  Either way
completions come in a seeded, shuffled order (the machine's event RNG), so
drivers that assume in-order completion break here as they would on real
devices.  ``completion="sync"|"async"`` forces one model.  When the
backend's error policy stops the machine (``STOPPED``), the request stays
pending and later ones wait behind it; :meth:`VirtioBlk.resume` retries.

Offered features and configuration follow QEMU 7.2's ``virtio-blk-pci``
(``disable-legacy=on``): SEG_MAX (queue size − 2), GEOMETRY, BLK_SIZE,
FLUSH, TOPOLOGY, CONFIG_WCE, DISCARD, WRITE_ZEROES, RO for read-only
backends, MQ when num-queues > 1, plus the transport's INDIRECT_DESC,
EVENT_IDX, VERSION_1 and RING_RESET.  The ``writeback`` field switches the
backend's write cache live (semantics.md, virtio-blk); a driver that
negotiates FLUSH but not CONFIG_WCE gets a writeback cache, one that
negotiates neither gets writethrough (every write durable on completion),
and reset restores the cache mode's setting — all as QEMU does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ... import trace
from ...block.backend import STOPPED, BlockBackend
from ..geometry import guess_geometry
from .pci import NO_VECTOR, VirtioPCIDevice
from . import layout as L
from .virtqueue import Chain, QueueError, SplitQueue

# Feature bits (§5.2.3)
F_SIZE_MAX, F_SEG_MAX, F_GEOMETRY, F_RO, F_BLK_SIZE = 1, 2, 4, 5, 6
F_FLUSH, F_TOPOLOGY, F_CONFIG_WCE, F_MQ, F_DISCARD, F_WRITE_ZEROES = 9, 10, 11, 12, 13, 14

# Request types and status values (§5.2.6)
_T, _S = L.ReqType.encmapping, L.BlkStatus.encmapping
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_GET_LIFETIME = (
    _T["IN"], _T["OUT"], _T["FLUSH"], _T["GET_ID"], _T["GET_LIFETIME"])
T_DISCARD, T_WRITE_ZEROES, T_SECURE_ERASE = _T["DISCARD"], _T["WRITE_ZEROES"], _T["SECURE_ERASE"]
S_OK, S_IOERR, S_UNSUPP = _S["OK"], _S["IOERR"], _S["UNSUPP"]
TYPE_NAMES = {T_IN: "in", T_OUT: "out", T_FLUSH: "flush", T_GET_ID: "get_id",
              T_DISCARD: "discard", T_WRITE_ZEROES: "write_zeroes"}

SECTOR = 512
ID_BYTES = 20
DWZ_FLAG_UNMAP = L.DWZ_FLAG_UNMAP
MAX_DWZ_SECTORS = 0x3FFFFF          # QEMU's BDRV_REQUEST_MAX_SECTORS default
DEFAULT_QUEUE_SIZE = 256            # QEMU 7.2 queue-size default
MERGE_MAX_IOV = 1024                # IOV_MAX
ASYNC_DELAY = (2, 40)               # ticks from execution to completion, interrupt-driven queues
MERGE_MAX_BYTES = 32 << 20

# Fast forms of the declarations in .layout (request header, discard/write-zeroes
# segment, struct virtio_blk_config up to write_zeroes_may_unmap: 57 bytes).
_HDR = L.BLK_HDR
_DWZ = L.BLK_DWZ
_CONFIG = L.BLK_CONFIG
WRITEBACK_OFFSET = L.BLK_WRITEBACK_OFFSET


@dataclass(slots=True)
class Limits:
    """What parse_request checks against (the device's current view)."""
    features: int
    capacity: int               # sectors of 512 bytes
    read_only: bool
    max_discard_seg: int = 1
    max_write_zeroes_seg: int = 1
    max_dwz_sectors: int = MAX_DWZ_SECTORS


@dataclass(slots=True)
class BlkRequest:
    """A validated request.  ``status`` is None when it should be executed,
    else the status to report without doing any I/O."""
    head: int
    type: int
    sector: int
    status_buf: memoryview
    reserved: int = 0           # the header's second field (legacy ioprio), for the trace
    data: list[memoryview] = field(default_factory=list)
    nbytes: int = 0
    ranges: list[tuple[int, int, bool]] = field(default_factory=list)  # (sector, count, unmap)
    status: int | None = None
    why: str = ""
    written: int = 0            # used.len on success


def _fail(req: BlkRequest, status: int, why: str) -> BlkRequest:
    req.status = status
    req.why = why
    return req


def _take(bufs: list[memoryview], n: int) -> tuple[bytes, list[memoryview]]:
    """Split the first ``n`` bytes off a scatter list: (those bytes, the rest as views)."""
    first = bufs[0]
    if len(first) >= n:
        rest = [first[n:]] if len(first) > n else []
        rest.extend(bufs[1:])
        return bytes(first[:n]), rest
    out = bytearray()
    rest: list[memoryview] = []
    for b in bufs:
        need = n - len(out)
        if need <= 0:
            rest.append(b)
        elif len(b) <= need:
            out += b
        else:
            out += b[:need]
            rest.append(b[need:])
    return bytes(out), rest


def parse_request(chain: Chain, lim: Limits) -> BlkRequest:
    """Validate one chain (§5.2.6).  Every guest-controlled field is checked here.

    Raises QueueError only when no status byte can be written (no writable
    descriptor, or the last one empty or outside RAM).
    """
    writable = chain.writable
    last = writable[-1] if writable else None
    if last is None or len(last) == 0:
        raise QueueError(f"virtio-blk: chain {chain.head} has no writable status byte")
    n_last = len(last)
    # The status byte is the last writable byte; the writable data is all before it.
    if n_last == 1:
        req = BlkRequest(chain.head, -1, 0, last)
        in_data = writable[:-1]
    else:
        req = BlkRequest(chain.head, -1, 0, last[n_last - 1:])
        in_data = writable[:-1]
        in_data.append(last[:n_last - 1])
    if chain.bad is not None:       # set whenever a descriptor's buffer was unreachable
        return _fail(req, S_IOERR, f"buffer outside guest RAM ({chain.bad})")
    readable = chain.readable
    if readable and len(readable[0]) == _HDR.size:     # the usual layout: header alone
        hdr_view, out_data = readable[0], readable[1:]
        out_n = sum(len(b) for b in out_data) if out_data else 0
    else:
        total_readable = sum(len(b) for b in readable)
        if total_readable < _HDR.size:
            return _fail(req, S_IOERR, f"header is {total_readable} bytes, not 16")
        hdr_view, out_data = _take(readable, _HDR.size)
        out_n = total_readable - _HDR.size
    rtype, req.reserved, sector = _HDR.unpack(hdr_view)
    req.type = rtype
    req.sector = sector
    in_n = len(in_data[0]) if len(in_data) == 1 else sum(len(b) for b in in_data)
    features = lim.features

    if rtype == T_IN or rtype == T_OUT:
        if rtype == T_IN:
            if out_n:
                return _fail(req, S_IOERR, "IN request with device-readable data")
            data, n = in_data, in_n
        else:
            if in_n:
                return _fail(req, S_IOERR, "OUT request with device-writable data")
            if lim.read_only:
                return _fail(req, S_IOERR, "write to a read-only device")
            data, n = out_data, out_n
        if n % SECTOR:
            return _fail(req, S_IOERR, f"length {n} is not a multiple of 512")
        if sector > lim.capacity or n // SECTOR > lim.capacity - sector:
            return _fail(req, S_IOERR, f"sectors {sector}+{n // SECTOR} beyond capacity {lim.capacity}")
        req.data = data
        req.nbytes = n
        req.written = n + 1 if rtype == T_IN else 1
        return req
    if rtype == T_FLUSH:
        if not features >> F_FLUSH & 1:
            return _fail(req, S_UNSUPP, "FLUSH not negotiated")
        req.written = 1
        return req
    if rtype == T_GET_ID:
        if out_n:
            return _fail(req, S_IOERR, "GET_ID with device-readable data")
        req.data = in_data
        n = in_n
        req.nbytes = n
        req.written = n + 1 if n <= ID_BYTES else ID_BYTES
        return req
    if rtype == T_DISCARD or rtype == T_WRITE_ZEROES:
        bit, max_seg = (F_DISCARD, lim.max_discard_seg) if rtype == T_DISCARD \
            else (F_WRITE_ZEROES, lim.max_write_zeroes_seg)
        if not features >> bit & 1:
            return _fail(req, S_UNSUPP, f"{TYPE_NAMES[rtype]} not negotiated")
        if in_n:
            return _fail(req, S_IOERR, f"{TYPE_NAMES[rtype]} with device-writable data")
        n = out_n
        if n == 0 or n % _DWZ.size:
            return _fail(req, S_IOERR, f"{TYPE_NAMES[rtype]} payload of {n} bytes")
        if n // _DWZ.size > max_seg:
            return _fail(req, S_UNSUPP, f"{n // _DWZ.size} segments > max {max_seg}")
        payload = b"".join(bytes(b) for b in out_data)
        for off in range(0, n, _DWZ.size):
            s, count, flags = _DWZ.unpack_from(payload, off)
            if flags & ~DWZ_FLAG_UNMAP or (rtype == T_DISCARD and flags & DWZ_FLAG_UNMAP):
                # §5.2.6.2: unknown flags, or unmap on a discard: UNSUPP
                return _fail(req, S_UNSUPP, f"flags {flags:#x}")
            if count > lim.max_dwz_sectors:
                return _fail(req, S_IOERR, f"{count} sectors > max {lim.max_dwz_sectors}")
            if s > lim.capacity or count > lim.capacity - s:
                return _fail(req, S_IOERR, f"sectors {s}+{count} beyond capacity {lim.capacity}")
            req.ranges.append((s, count, bool(flags & DWZ_FLAG_UNMAP)))
        if lim.read_only:
            return _fail(req, S_IOERR, "write to a read-only device")
        req.written = 1
        return req
    return _fail(req, S_UNSUPP, f"request type {rtype}")


class VirtioBlk(VirtioPCIDevice):
    """A virtio block device on a BlockBackend, class 01.00.00: 1AF4:1042
    (``transport="modern"``) or 1AF4:1001 (``"transitional"``, ``"legacy"``)."""

    virtio_device_id = 2
    device_config_size = _CONFIG.size
    class_code = 0x010000
    name = "virtio-blk"

    def __init__(self, backend: BlockBackend, serial: str = "", num_queues: int = 1,
                 queue_size: int = DEFAULT_QUEUE_SIZE, name: str = "virtio-blk",
                 reorder: bool = True, merge: bool = True, completion: str = "auto",
                 transport: str = "modern"):
        if not 1 <= num_queues <= 64:
            raise ValueError(f"num-queues={num_queues}: must be 1..64")
        if queue_size < 4 or queue_size > 1024 or queue_size & (queue_size - 1):
            raise ValueError(f"queue-size={queue_size}: must be a power of two in 4..1024")
        if len(serial.encode()) > ID_BYTES:
            raise ValueError(f"serial '{serial}' is longer than {ID_BYTES} bytes")
        self.name = name
        super().__init__(num_queues, queue_size, transport)
        self.backend = backend
        self.serial = serial.encode()
        self.reorder = reorder
        self.merge = merge
        if completion not in ("auto", "sync", "async"):
            raise ValueError(f"completion={completion}: expected auto, sync or async")
        self.completion = completion
        self.capacity = backend.length() // SECTOR
        self.geometry = guess_geometry(backend, self.capacity)
        self.original_wce = backend.write_cache_enabled
        self.stalled: list[tuple[SplitQueue, BlkRequest]] = []
        self.requests = 0
        self.errors = 0
        backend.resize_callbacks.append(self._resized)

    # --- features and configuration ------------------------------------------------------
    def device_features(self) -> int:
        f = (1 << F_SEG_MAX) | (1 << F_GEOMETRY) | (1 << F_BLK_SIZE) | (1 << F_FLUSH) | \
            (1 << F_TOPOLOGY) | (1 << F_CONFIG_WCE) | (1 << F_DISCARD) | (1 << F_WRITE_ZEROES)
        if self.backend.read_only:
            f |= 1 << F_RO
        if self.num_queues > 1:
            f |= 1 << F_MQ
        return f

    def limits(self) -> Limits:
        return Limits(self.features, self.capacity, self.backend.read_only)

    def device_config(self) -> bytes:
        cyl, heads, secs = self.geometry
        # field order: BlkConfig in .layout
        return _CONFIG.pack(
            self.capacity, 0, self.queues[0].max_size - 2, cyl, heads, secs, SECTOR,
            0, 0, 0, 0,                                         # topology
            int(self.backend.write_cache_enabled), 0, self.num_queues,
            MAX_DWZ_SECTORS, 1, 1,                              # discard
            MAX_DWZ_SECTORS, 1, 1)                              # write zeroes, may unmap

    def device_config_write(self, offset: int, size: int, value: int) -> None:
        """Only ``writeback`` is writable, and only with CONFIG_WCE (§5.2.4, §5.2.5)."""
        if not offset <= WRITEBACK_OFFSET < offset + size:
            return
        if not self.has(F_CONFIG_WCE):
            return
        on = bool((value >> (8 * (WRITEBACK_OFFSET - offset))) & 0xFF)
        r = self.backend.set_write_cache(on)
        if trace.enabled:
            trace.emit("virtio_blk.writeback", dev=self.name, on=on, result=r)

    def device_features_ok(self, features: int) -> None:
        # QEMU's virtio_blk_set_features: without CONFIG_WCE the cache follows FLUSH
        # (a driver that cannot flush must get writethrough; semantics.md).
        if not features >> F_CONFIG_WCE & 1:
            self.backend.set_write_cache(bool(features >> F_FLUSH & 1))

    def device_reset(self) -> None:
        self.stalled.clear()
        if self.backend.write_cache_enabled != self.original_wce:
            self.backend.set_write_cache(self.original_wce)

    def _resized(self, length: int) -> None:
        """Capacity change: new config, then a configuration-change interrupt (§5.2.4)."""
        self.capacity = length // SECTOR
        if trace.enabled:
            trace.emit("virtio_blk.resize", dev=self.name, capacity=self.capacity)
        self.config_changed()

    # --- requests ---------------------------------------------------------------------------
    def device_queue_notified(self, q: SplitQueue) -> None:
        if self.stalled:
            return          # a stopped request is pending: later ones wait (resume())
        lim = self.limits()
        batch: list[BlkRequest] = []
        try:
            while q.pending():
                batch.append(parse_request(q.pop(), lim))
                if trace.enabled:
                    self._trace_submit(q, batch[-1])
        finally:
            self._process(q, batch)

    def _process(self, q: SplitQueue, batch: list[BlkRequest]) -> None:
        """Run a batch in ring order, merging runs of contiguous reads or writes
        into one backend call (QEMU's request merging), then complete it."""
        done: list[tuple[int, int]] = []
        i, n = 0, len(batch)
        while i < n:
            j = self._merge_end(batch, i) if self.merge else i + 1
            if trace.enabled and j - i > 1:
                trace.enter((self.name, q.index, batch[i].head))
                trace.emit("virtio_blk.merge", heads=[r.head for r in batch[i:j]])
            if j - i > 1:
                if self._run_merged(batch[i:j]):
                    self.stalled.extend((q, r) for r in batch[i:])
                    break
                done.extend((r.head, self._written(r)) for r in batch[i:j])
                i = j
                continue
            req = batch[i]
            if trace.enabled:
                trace.enter((self.name, q.index, req.head))
            if self._run(req):
                self.stalled.extend((q, r) for r in batch[i:])
                break
            done.append((req.head, self._written(req)))
            i += 1
        self._complete(q, done)

    def _trace_submit(self, q: SplitQueue, req: BlkRequest) -> None:
        from ... import trace_decode as d
        trace.begin("virtio", (self.name, q.index, req.head), dev=self.name, queue=q.index,
                    head=req.head, header=d.virtio_blk_header(_HDR.pack(req.type, req.reserved, req.sector)),
                    bytes=req.nbytes, op=d.op_kind(str(d.VIRTIO_BLK_TYPES.get(req.type, ""))))
        trace.leave()

    @staticmethod
    def _merge_end(batch: list[BlkRequest], i: int) -> int:
        first = batch[i]
        if first.status is not None or first.type not in (T_IN, T_OUT) or not first.nbytes:
            return i + 1
        end_sector = first.sector + first.nbytes // SECTOR
        iovs, total = len(first.data), first.nbytes
        j = i + 1
        while j < len(batch):
            r = batch[j]
            if r.status is not None or r.type != first.type or r.sector != end_sector \
                    or not r.nbytes or iovs + len(r.data) > MERGE_MAX_IOV \
                    or total + r.nbytes > MERGE_MAX_BYTES:
                break
            end_sector += r.nbytes // SECTOR
            iovs += len(r.data)
            total += r.nbytes
            j += 1
        return j

    def _run_merged(self, reqs: list[BlkRequest]) -> bool:
        """One readv/writev for contiguous requests (QEMU virtio_blk_submit_multireq).

        The merged request succeeds or fails as a whole, as in QEMU 7.2
        (virtio_blk_rw_complete walks the whole chain with the one result): on an
        error every request of the merge gets VIRTIO_BLK_S_IOERR — a one-shot EIO
        reaches the guest — and under ``werror/rerror=stop`` the machine stops with
        all of them pending (each is retried on resume).  Returns True when stopped.
        """
        bufs = [b for r in reqs for b in r.data]
        off = reqs[0].sector * SECTOR
        b = self.backend
        r = b.readv(off, bufs) if reqs[0].type == T_IN else b.writev(off, bufs)
        if r == STOPPED:
            return True
        self.requests += len(reqs)
        status = S_OK if r == 0 else S_IOERR
        if status != S_OK:
            self.errors += len(reqs)
        for req in reqs:
            req.status = status
            req.status_buf[0] = status
            if r:
                req.why = f"backend error {r} (merged request)"
            if trace.enabled:
                trace.emit("virtio_blk.req", dev=self.name, type=TYPE_NAMES[req.type],
                           sector=req.sector, bytes=req.nbytes, status=status,
                           why=req.why if r else "merged")
        return False

    def _completes_later(self, q: SplitQueue) -> bool:
        """Whether completions go through the event queue (see the module docstring)."""
        if self.completion != "auto":
            return self.completion == "async"
        return self.msix is not None and self.msix.enabled and q.msix_vector != NO_VECTOR

    def _complete(self, q: SplitQueue, done: list[tuple[int, int]]) -> None:
        if not done:
            return
        m = self.machine
        if m is not None and self._completes_later(q):
            ev = m.events
            for entry in done:      # each its own seeded delay: order varies across batches
                ev.schedule(ev.jitter(*ASYNC_DELAY), self._complete_later, q, q.epoch, entry,
                            name="virtio_blk.complete")
            return
        if self.reorder and len(done) > 1 and m is not None:
            m.events.rng.shuffle(done)
        q.push_many(done)
        if trace.enabled:
            for head, n in done:
                trace.end((self.name, q.index, head), used_len=n, used_idx=q.used_idx)
        self.queue_interrupt(q)

    def _complete_later(self, q: SplitQueue, epoch: int, entry: tuple[int, int]) -> None:
        if q.epoch != epoch or not q.ready:
            return                  # the device or the queue was reset meanwhile
        q.push(*entry)
        if trace.enabled:
            trace.end((self.name, q.index, entry[0]), used_len=entry[1], used_idx=q.used_idx)
        self.queue_interrupt(q)

    @staticmethod
    def _written(req: BlkRequest) -> int:
        if req.status == S_OK:
            return req.written
        # §2.7.8.1: len must not exceed what was written from the first writable
        # byte on; a failed request wrote only the status byte at the end.
        return 1 if req.written == 1 else 0

    def _run(self, req: BlkRequest) -> bool:
        """Execute (or just answer) a parsed request and write its status byte.
        Returns True when the error policy stopped the machine (nothing written)."""
        self.requests += 1
        if req.status is None:
            r = self.execute(req)
            if r == STOPPED:
                self.requests -= 1
                return True
            req.status = S_OK if r == 0 else S_IOERR
            if r:
                req.why = f"backend error {r}"
        if req.status != S_OK:
            self.errors += 1
        if trace.enabled:
            trace.emit("virtio_blk.req", dev=self.name, type=TYPE_NAMES.get(req.type, req.type),
                       sector=req.sector, bytes=req.nbytes, status=req.status, why=req.why)
        req.status_buf[0] = req.status
        return False

    def execute(self, req: BlkRequest) -> int:
        """The I/O of a valid request: 0, -errno or STOPPED (backend convention)."""
        b = self.backend
        t = req.type
        if t == T_IN:
            return b.readv(req.sector * SECTOR, req.data) if req.nbytes else 0
        if t == T_OUT:
            return b.writev(req.sector * SECTOR, req.data) if req.nbytes else 0
        if t == T_FLUSH:
            return b.flush()
        if t == T_GET_ID:
            ident = self.serial.ljust(ID_BYTES, b"\0")
            pos = 0
            for buf in req.data:
                n = min(len(buf), ID_BYTES - pos)
                if n <= 0:
                    break
                buf[:n] = ident[pos:pos + n]
                pos += n
            return 0
        for sector, count, unmap in req.ranges:
            if t == T_DISCARD:
                r = b.discard(sector * SECTOR, count * SECTOR)
            else:
                r = b.write_zeroes(sector * SECTOR, count * SECTOR, may_unmap=unmap)
            if r:
                return r
        return 0

    def resume(self) -> None:
        """The machine resumed after a stop: retry the stalled requests, then the rings."""
        self.backend.resume()
        while self.stalled:
            q, req = self.stalled[0]
            if self._run(req):
                return
            self.stalled.pop(0)
            self._complete(q, [(req.head, self._written(req))])
        if self.live:
            for q in self.queues:
                if q.enabled and q.ready:
                    try:
                        self.device_queue_notified(q)
                    except QueueError as e:
                        self.fail(str(e))


def transport_of(spec: Any) -> str:
    """QEMU's ``disable-legacy``/``disable-modern`` pair -> the transport variant."""
    on = ("on", "yes", "true", True)
    legacy_off = _option(spec, "disable-legacy", "auto")
    modern_off = _option(spec, "disable-modern", False) in on
    if modern_off:
        if legacy_off in on:
            raise ValueError("virtio-blk: disable-legacy=on and disable-modern=on leave "
                             "the device with no interface")
        return "legacy"
    return "modern" if legacy_off in on or legacy_off == "auto" else "transitional"


def _option(spec: Any, name: str, default: Any = None) -> Any:
    """A device option from a parsed drive spec (attribute, ``options`` mapping or dict)."""
    for key in (name, name.replace("-", "_")):
        if isinstance(spec, dict) and key in spec:
            return spec[key]
        if hasattr(spec, key) and getattr(spec, key) is not None:
            return getattr(spec, key)
        opts = getattr(spec, "options", None) or getattr(spec, "device_options", None)
        if isinstance(opts, dict) and key in opts:
            return opts[key]
    return default


def attach(machine, backend: BlockBackend, spec: Any = None) -> VirtioBlk:
    """``--drive …,if=virtio``: one virtio-blk PCI function per drive.

    Device options from the spec: ``serial``, ``num-queues`` (default 1),
    ``queue-size`` (default 256), and the interfaces as QEMU spells them:
    ``disable-legacy`` (on|off|auto) and ``disable-modern`` (on|off).  blockbed's
    default is the modern-only device (``auto`` means on unless
    ``disable-modern=on``; QEMU's pc ``auto`` gives a transitional device):
    ``disable-legacy=off`` builds the transitional device, ``disable-modern=on``
    the legacy-only one.  Raises ValueError on a bad option.
    """
    existing = sum(1 for d in machine.pci.functions.values() if isinstance(d, VirtioBlk))
    try:
        num_queues = int(_option(spec, "num-queues", 1))
        queue_size = int(_option(spec, "queue-size", DEFAULT_QUEUE_SIZE))
    except (TypeError, ValueError):
        raise ValueError("virtio-blk: num-queues and queue-size must be integers") from None
    serial = str(_option(spec, "serial", "") or "")
    dev = VirtioBlk(backend, serial=serial, num_queues=num_queues, queue_size=queue_size,
                    name=f"virtio-blk{existing}", transport=transport_of(spec))
    slot = _option(spec, "addr", None)
    machine.add_pci(dev, int(slot, 0) if isinstance(slot, str) else slot)
    if backend.on_stop is None:
        backend.on_stop = lambda reason: machine.stop(reason.message())
    return dev
