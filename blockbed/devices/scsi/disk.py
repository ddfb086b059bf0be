"""A SCSI direct-access block device (SBC-3 / SPC-4), independent of transport.

An HBA (the LSI 53C895A here; virtio-scsi could reuse it) hands the disk a CDB
and gets a :class:`ScsiRequest` back.  The request says which way its data
phase goes (:class:`Direction`) and how many bytes it moves (``length``);
the HBA then moves the data in whatever pieces its own scatter list has::

    req = disk.request(cdb, lun)
    if req.status is None:                 # not finished at CDB time
        for view in pieces:                # guest memory views, in order
            if not (req.read(pos, view) if req.direction is Direction.IN
                    else req.write(pos, view)):
                break                      # failed: status/sense are set
            pos += len(view)
        req.finish()
    status, sense = req.status, req.sense

Reads and writes of medium data go straight between the HBA's views of guest
memory and the :class:`~blockbed.block.backend.BlockBackend` (no copy).  The
emulated commands (INQUIRY, MODE SENSE …) build their data up front.

Sense handling: a CHECK CONDITION carries fixed-format sense in ``req.sense``
(autosense, for transports that have it); the disk also keeps it as the
"current sense" that a following REQUEST SENSE returns and clears, which is
how a parallel-SCSI initiator without autosense (the LSI) learns it.
Unit attentions (SAM-5 §5.14): after a reset (and at power on), and after
a capacity change, the next command other than INQUIRY, REPORT LUNS and
REQUEST SENSE ends in CHECK CONDITION / UNIT ATTENTION and clears it; a
REQUEST SENSE while one is pending returns it (and clears it).
"""

from __future__ import annotations

import enum
import errno as _errno
from typing import Callable

from ... import trace
from ...block.backend import OK, STOPPED
from . import cdb as C
from . import pages
from .cdb import RW, allocation_length, cdb_length, parameter_list_length, rw_fields
from .constants import (CAPACITY_CHANGED, INVALID_FIELD, INVALID_OPCODE, INVALID_PARAM,
                        INVALID_PARAM_LEN, IO_ERROR, LBA_OUT_OF_RANGE, LUN_NOT_SUPPORTED,
                        MISCOMPARE_VERIFY, NO_SENSE, READ_ERROR, RESET_OCCURRED,
                        SAI_READ_CAPACITY_16, SAVING_NOT_SUPPORTED, SPACE_ALLOC_FAILED,
                        WRITE_ERROR, WRITE_PROTECTED, Op, Sense, SenseKey, Status)
from .pages import BLOCK_SIZE, DiskIdentity, PageControl
from .sense import fixed_sense

__all__ = ["ScsiDisk", "ScsiRequest", "Direction", "DiskIdentity", "BLOCK_SIZE"]

_UA_EXEMPT = {Op.INQUIRY, Op.REPORT_LUNS, Op.REQUEST_SENSE}
_WRITE_CHUNK = 1 << 20

# Flag masks and field offsets, from the CDB and parameter-list declarations (cdb.py).
_B1 = C.offsets(C.Rw10)["flags"]             # byte 1: every CDB's flags byte here
assert all(C.offsets(c).get("flags", _B1) == _B1 for c in (C.Inquiry, C.RequestSense, C.Unmap,
                                                          C.FormatUnit, C.ModeSelect6))
_DESC = C.flag_bits(C.RequestSense.subcons[1].subcon)["desc"]
_INQ = C.flag_bits(C.Inquiry.subcons[1].subcon)
_INQ_PAGE = C.offsets(C.Inquiry)["page_code"]
_RL_SELECT = C.offsets(C.ReportLuns)["select_report"]
_RL_MIN_ALLOC = C.ReportLunsHeader.sizeof() + C.Lun.sizeof()     # SPC-4 §6.33: at least one LUN
_SAI = C.ServiceActionIn16.subcons[1].subcon
_SAI_MASK = C.flag_bits(_SAI)["service_action"]
_SAI_OFF = C.offsets(C.ServiceActionIn16)["action"]
_BYTCHK_SHIFT, _BYTCHK_W = C.bits(C.VerifyFlags)["bytchk"]
_FMTDATA = C.flag_bits(C.FormatUnit.subcons[1].subcon)["fmtdata"]
_WS = C.flag_bits(C.WriteSameFlags)
_UNMAP_ANCHOR = C.flag_bits(C.Unmap.subcons[1].subcon)["anchor"]
_UNMAP_HDR = C.fast(C.UnmapHeader, big=True)
_UNMAP_DESC = C.fast(C.UnmapDescriptor, big=True)
_MS_DBD = C.flag_bits(C.ModeSense6.subcons[1].subcon)["dbd"]
assert _MS_DBD == C.flag_bits(C.ModeSense10.subcons[1].subcon)["dbd"]
_MSEL = C.flag_bits(C.ModeSelectFlags)


class Direction(enum.Enum):
    NONE = "none"
    IN = "in"        # device to initiator (data-in)
    OUT = "out"      # initiator to device (data-out)


class ScsiRequest:
    """One command.  ``status`` is None until it completes; see the module docstring."""

    def __init__(self, disk: "ScsiDisk", cdb: bytes, lun: int):
        self.disk = disk
        self.cdb = bytes(cdb)
        self.lun = lun
        self.direction = Direction.NONE
        self.length = 0
        self.status: int | None = None
        self.sense = b""
        self.cancelled = False
        self.stopped = False                          # parked by werror/rerror=stop: retry()
        self._retry: Callable[[], None] | None = None
        self._data: bytes | None = None              # prepared data-in
        self._param: bytearray | None = None         # buffered data-out (parameter lists)
        self._on_param: Callable[[bytes], None] | None = None
        self._rw: RW | None = None
        self._medium: str | None = None              # "read" | "write" | "verify"

    # --- used by the disk while parsing ------------------------------------------
    def good(self) -> None:
        self.status = Status.GOOD

    def check(self, sense: Sense, info: int | None = None) -> None:
        self.status = Status.CHECK_CONDITION
        self.sense = fixed_sense(sense, info)
        self.disk._current_sense = self.sense
        if trace.enabled:
            trace.emit("scsi.check_condition", op=self.cdb[0], sense=str(sense))

    def data_in(self, data: bytes) -> None:
        """Emulated data-in: the bytes to return (already clipped to the allocation length)."""
        self._data = data
        self.direction = Direction.IN
        self.length = len(data)
        if not data:
            self.good()

    def data_out(self, length: int, on_complete: Callable[[bytes], None]) -> None:
        """A parameter list of ``length`` bytes to collect, then ``on_complete(bytes)``."""
        self.direction = Direction.OUT
        self.length = length
        self._param = bytearray(length)
        self._on_param = on_complete
        if length == 0:
            on_complete(b"")

    # --- used by the HBA -----------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.status is not None

    @property
    def is_medium_read(self) -> bool:
        """A READ of the medium (an HBA may disconnect while it is "seeking")."""
        return self._medium == "read"

    def read(self, pos: int, view: memoryview) -> bool:
        """Fill ``view`` with data-in bytes ``pos .. pos+len(view)``; False if the command failed."""
        n = len(view)
        if trace.enabled:
            trace.enter(self)
        if self.status is not None or pos + n > self.length:
            return False
        if self._data is not None:
            view[:] = self._data[pos:pos + n]
            return True
        rw = self._rw
        assert rw is not None
        r = self.disk.backend.readv(rw.lba * BLOCK_SIZE + pos, [view])
        if r != OK:
            self._io_failed(r, READ_ERROR)
            return False
        return True

    def write(self, pos: int, view: memoryview) -> bool:
        """Take data-out bytes ``pos .. pos+len(view)`` from ``view``; False if the command failed."""
        n = len(view)
        if trace.enabled:
            trace.enter(self)
        if self.status is not None or pos + n > self.length:
            return False
        if self._param is not None:
            self._param[pos:pos + n] = view
            return True
        rw = self._rw
        assert rw is not None
        be = self.disk.backend
        off = rw.lba * BLOCK_SIZE + pos
        if self._medium == "verify":                  # BYTCHK=1: compare with the medium
            tmp = bytearray(n)
            r = be.readv(off, [memoryview(tmp)])
            if r != OK:
                self._io_failed(r, READ_ERROR)
                return False
            if tmp != view:
                bad = next(i for i in range(n) if tmp[i] != view[i])
                self.check(MISCOMPARE_VERIFY, info=rw.lba + (pos + bad) // BLOCK_SIZE)
                return False
            return True
        r = be.writev(off, [view], fua=rw.fua)
        if r != OK:
            self._io_failed(r, WRITE_ERROR)
            return False
        return True

    def finish(self) -> int | None:
        """The data phase is over (all ``length`` bytes moved): complete; returns the status,
        or None when the backend's stop policy parked the request (``stopped``)."""
        if trace.enabled:
            trace.enter(self)
        if self.status is None:
            if self._on_param is not None:
                assert self._param is not None
                self._on_param(bytes(self._param))
                if self.stopped:
                    self._retry = self.finish
                    return None
            if self.status is None:
                self.good()
        self.disk._completed(self)
        return self.status  # type: ignore[return-value]

    def retry(self) -> None:
        """After the machine resumed: run again what the stop policy parked.

        A parked data piece (``read``/``write`` returned False with ``stopped``
        set) is retried by the HBA calling ``read``/``write`` again; this runs a
        parked command-time operation (SYNCHRONIZE CACHE …) or parameter list."""
        self.stopped = False
        fn, self._retry = self._retry, None
        if fn is not None:
            fn()

    def cancel(self) -> None:
        """ABORT / CLEAR QUEUE / reset: the request ends with no further effect."""
        self.cancelled = True
        if self.status is None:
            self.status = Status.CHECK_CONDITION
            self.sense = fixed_sense(IO_ERROR)

    def _io_failed(self, r: int, sense: Sense) -> None:
        if r == STOPPED:
            # werror/rerror=stop: the machine is pausing; the request stays pending
            # (no status) and the transport retries it after resume.
            self.stopped = True
        elif r == -_errno.ENOSPC:
            self.check(SPACE_ALLOC_FAILED)
        elif r == -_errno.EROFS:
            self.check(WRITE_PROTECTED)
        else:
            self.check(sense)


class ScsiDisk:
    """LUN 0 of a target: a disk of 512-byte blocks backed by a BlockBackend."""

    def __init__(self, backend, ident: DiskIdentity | None = None, power_on_ua: bool = True):
        self.backend = backend
        self.ident = ident or DiskIdentity()
        self.default_wce = backend.write_cache_enabled
        self.unit_attention: Sense | None = RESET_OCCURRED if power_on_ua else None
        self._current_sense: bytes | None = None
        self.motor_stopped = False
        backend.resize_callbacks.append(self._resized)

    # --- state -----------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        """Number of logical blocks."""
        return self.backend.length() // BLOCK_SIZE

    def reset(self) -> None:
        """Bus reset / BUS DEVICE RESET / controller reset: report a unit attention next."""
        self.unit_attention = RESET_OCCURRED
        self._current_sense = None

    def _resized(self, length: int) -> None:
        self.unit_attention = CAPACITY_CHANGED

    def _completed(self, req: ScsiRequest) -> None:
        if trace.enabled:
            trace.emit("scsi.complete", op=req.cdb[0], status=req.status, length=req.length)
            trace.end(req, status=req.status)

    # --- command dispatch ----------------------------------------------------------------
    def request(self, cdb: bytes, lun: int = 0) -> ScsiRequest:
        """Parse and start ``cdb`` for ``lun``; never raises on guest input."""
        req = ScsiRequest(self, cdb, lun)
        if not cdb:
            req.check(INVALID_OPCODE)
            return req
        op = cdb[0]
        if trace.enabled:
            trace.emit("scsi.cdb", lun=lun, length=len(cdb))
        need = cdb_length(op)
        if need is None:
            req.check(INVALID_OPCODE)
            return req
        if len(cdb) < need:
            req.check(INVALID_FIELD)
            return req
        cdb = req.cdb = bytes(cdb[:need])
        if lun != 0:
            return self._wrong_lun(req, op)
        if self.unit_attention is not None and op not in _UA_EXEMPT:
            ua, self.unit_attention = self.unit_attention, None
            req.check(ua)
            return req
        handler = _HANDLERS.get(op)
        if handler is None:
            req.check(INVALID_OPCODE)
            return req
        handler(self, req, cdb)
        if req.stopped and req._retry is None:
            req._retry = lambda: handler(self, req, cdb)
        return req

    def _wrong_lun(self, req: ScsiRequest, op: int) -> ScsiRequest:
        """A LUN with no device (SPC-4 §4.6.8): INQUIRY says so, REPORT LUNS works,
        REQUEST SENSE reports LOGICAL UNIT NOT SUPPORTED, everything else fails with it."""
        cdb = req.cdb
        if op == Op.INQUIRY:
            req.data_in(pages.lun_not_present_inquiry(allocation_length(cdb)))
        elif op == Op.REPORT_LUNS:
            self._report_luns(req, cdb)
        elif op == Op.REQUEST_SENSE:
            req.data_in(fixed_sense(LUN_NOT_SUPPORTED)[:allocation_length(cdb)])
        else:
            req.check(LUN_NOT_SUPPORTED)
        return req

    # --- individual commands ------------------------------------------------------------
    def _test_unit_ready(self, req: ScsiRequest, cdb: bytes) -> None:
        req.good()

    def _request_sense(self, req: ScsiRequest, cdb: bytes) -> None:
        if cdb[_B1] & _DESC:           # DESC: descriptor format not offered
            req.check(INVALID_FIELD)
            return
        if self.unit_attention is not None:
            sense = fixed_sense(self.unit_attention)
            self.unit_attention = None
        elif self._current_sense is not None:
            sense = self._current_sense
        else:
            sense = fixed_sense(NO_SENSE)
        self._current_sense = None
        req.data_in(sense[:allocation_length(cdb)])

    def _inquiry(self, req: ScsiRequest, cdb: bytes) -> None:
        alloc = allocation_length(cdb)
        if cdb[_B1] & (_INQ["cmddt"] | _INQ["reserved"]):   # CMDDT (obsolete) or reserved bits
            req.check(INVALID_FIELD)
            return
        if cdb[_B1] & _INQ["evpd"]:
            page = pages.vpd_page(self.ident, cdb[_INQ_PAGE], self.capacity, True)
            if page is None:
                req.check(INVALID_FIELD)
                return
            req.data_in(page[:alloc])
        elif cdb[_INQ_PAGE] != 0:
            req.check(INVALID_FIELD)
        else:
            req.data_in(pages.standard_inquiry(self.ident, alloc))

    def _report_luns(self, req: ScsiRequest, cdb: bytes) -> None:
        alloc = allocation_length(cdb)
        if cdb[_RL_SELECT] > 2 or alloc < _RL_MIN_ALLOC:   # SELECT REPORT; SPC-4 §6.33 minimum
            req.check(INVALID_FIELD)
            return
        data = C.ReportLunsHeader.build(dict(lun_list_length=C.Lun.sizeof(), reserved=bytes(4))) \
            + C.Lun.build(dict(lun=0))                  # one LUN: 0
        req.data_in(data[:alloc])

    def _read_capacity_10(self, req: ScsiRequest, cdb: bytes) -> None:
        c = C.ReadCapacity10.parse(cdb)
        if not c.flags.pmi and c.lba:         # LBA without PMI is invalid (SBC-3 §5.16)
            req.check(INVALID_FIELD)
            return
        last = self.capacity - 1
        req.data_in(C.ReadCapacity10Data.build(dict(returned_lba=min(last, 0xFFFFFFFF),
                                                    block_length=BLOCK_SIZE)))

    def _service_action_in(self, req: ScsiRequest, cdb: bytes) -> None:
        if cdb[_SAI_OFF] & _SAI_MASK != SAI_READ_CAPACITY_16:
            req.check(INVALID_FIELD)
            return
        alloc = allocation_length(cdb)
        b = C.ReadCapacity16Data.build(dict(
            returned_lba=self.capacity - 1, block_length=BLOCK_SIZE,
            protection=dict(p_type=0, prot_en=False), exponents=dict(p_i_exponent=0, lbppbe=0),
            # LBPME: UNMAP / WRITE SAME UNMAP supported
            provisioning=dict(lbpme=True, lbprz=False, lowest_aligned_lba=0), reserved=bytes(16)))
        req.data_in(b[:alloc])

    def _check_range(self, req: ScsiRequest, rw: RW) -> bool:
        if rw.lba + rw.count > self.capacity:
            req.check(LBA_OUT_OF_RANGE)
            return False
        return True

    def _read(self, req: ScsiRequest, cdb: bytes) -> None:
        self._start_transfer(req, cdb, "read", Direction.IN)

    def _write(self, req: ScsiRequest, cdb: bytes) -> None:
        if self.backend.read_only and not rw_fields(cdb).protect:
            req.check(WRITE_PROTECTED)
            return
        self._start_transfer(req, cdb, "write", Direction.OUT)

    def _start_transfer(self, req: ScsiRequest, cdb: bytes, medium: str, direction: Direction) -> None:
        """READ/WRITE (6/10/12/16): validate the CDB, then set up the data phase."""
        rw = rw_fields(cdb)
        if rw.protect:
            req.check(INVALID_FIELD)
            return
        if not self._check_range(req, rw):
            return
        if rw.count == 0:
            req.good()
            return
        req._rw = rw
        req._medium = medium
        req.direction = direction
        req.length = rw.count * BLOCK_SIZE

    def _verify(self, req: ScsiRequest, cdb: bytes) -> None:
        rw = rw_fields(cdb)
        bytchk = (rw.byte1 >> _BYTCHK_SHIFT) & ((1 << _BYTCHK_W) - 1)
        if rw.protect or bytchk > 1:          # BYTCHK 2/3 (single-block compare) not offered
            req.check(INVALID_FIELD)
            return
        if not self._check_range(req, rw):
            return
        if bytchk == 0 or rw.count == 0:
            req.good()                        # medium verification: the image is always readable
            return
        req._rw = RW(rw.lba, rw.count)
        req._medium = "verify"
        req.direction = Direction.OUT
        req.length = rw.count * BLOCK_SIZE

    def _sync_cache(self, req: ScsiRequest, cdb: bytes) -> None:
        # IMMED (byte 1 bit 1) lets GOOD come before the flush ends; we flush
        # synchronously either way, which satisfies both readings (SBC-3 §5.22).
        rw = rw_fields(cdb)                   # LBA / NUMBER OF BLOCKS sit as in READ(10/16)
        if rw.lba + rw.count > self.capacity:
            req.check(LBA_OUT_OF_RANGE)
            return
        r = self.backend.flush()
        if r != OK:
            req._io_failed(r, WRITE_ERROR)
            return
        req.good()

    def _format_unit(self, req: ScsiRequest, cdb: bytes) -> None:
        # FORMAT UNIT with default parameters (FMTDATA=0) has nothing to do on a
        # virtual disk (QEMU answers GOOD too); a parameter list is not accepted.
        if cdb[_B1] & _FMTDATA:
            req.check(INVALID_FIELD)
            return
        req.good()

    def _start_stop(self, req: ScsiRequest, cdb: bytes) -> None:
        # Power condition or START/LOEJ: a virtual disk is always spinning.
        power = C.StartStopUnit.parse(cdb).power
        self.motor_stopped = not power.start and power.power_condition == 0
        req.good()

    def _write_same(self, req: ScsiRequest, cdb: bytes) -> None:
        rw = rw_fields(cdb)
        unmap = bool(rw.byte1 & _WS["unmap"])
        ndob = cdb[0] == Op.WRITE_SAME_16 and bool(rw.byte1 & _WS["ndob"])
        if rw.protect or (rw.byte1 & (_WS["pbdata"] | _WS["lbdata"])) or rw.count == 0:   # WSNZ=1
            req.check(INVALID_FIELD)
            return
        if rw.count > pages.MAX_WRITE_SAME_BLOCKS:
            req.check(INVALID_FIELD)
            return
        if self.backend.read_only:
            req.check(WRITE_PROTECTED)
            return
        if not self._check_range(req, rw):
            return

        def apply(block: bytes) -> None:
            off, length = rw.lba * BLOCK_SIZE, rw.count * BLOCK_SIZE
            be = self.backend
            if not any(block):
                r = be.write_zeroes(off, length, may_unmap=unmap)
            else:
                chunk = block * max(1, min(rw.count, _WRITE_CHUNK // BLOCK_SIZE))
                r = OK
                pos = 0
                while pos < length and r == OK:
                    n = min(len(chunk), length - pos)
                    r = be.writev(off + pos, [memoryview(chunk)[:n]])
                    pos += n
            if r != OK:
                req._io_failed(r, WRITE_ERROR)
            else:
                req.good()

        if ndob:
            apply(bytes(BLOCK_SIZE))
        else:
            req.data_out(BLOCK_SIZE, apply)

    def _unmap(self, req: ScsiRequest, cdb: bytes) -> None:
        if cdb[_B1] & _UNMAP_ANCHOR:            # ANCHOR
            req.check(INVALID_FIELD)
            return
        if self.backend.read_only:
            req.check(WRITE_PROTECTED)
            return
        plen = parameter_list_length(cdb)

        def apply(p: bytes) -> None:
            if len(p) == 0:
                req.good()
                return
            hl, dl = _UNMAP_HDR.size, _UNMAP_DESC.size
            if len(p) < hl:
                req.check(INVALID_PARAM_LEN)
                return
            dlen, bdlen, _ = _UNMAP_HDR.unpack_from(p, 0)
            if bdlen > len(p) - hl or bdlen % dl or dlen + 2 > len(p) \
                    or bdlen // dl > pages.MAX_UNMAP_DESCRIPTORS:
                req.check(INVALID_PARAM_LEN if bdlen > len(p) - hl else INVALID_PARAM)
                return
            descs = [_UNMAP_DESC.unpack_from(p, hl + dl * i)[:2] for i in range(bdlen // dl)]
            cap = self.capacity
            for lba, n in descs:
                if lba + n > cap:
                    req.check(LBA_OUT_OF_RANGE)
                    return
                if n > pages.MAX_UNMAP_BLOCKS:
                    req.check(INVALID_PARAM)
                    return
            for lba, n in descs:
                if n:
                    r = self.backend.discard(lba * BLOCK_SIZE, n * BLOCK_SIZE)
                    if r != OK:
                        req._io_failed(r, WRITE_ERROR)
                        return
            req.good()

        req.data_out(plen, apply)

    # --- MODE SENSE / MODE SELECT ----------------------------------------------------------
    def _mode_sense(self, req: ScsiRequest, cdb: bytes) -> None:
        ten = cdb[0] == Op.MODE_SENSE_10
        c = (C.ModeSense10 if ten else C.ModeSense6).parse(cdb)
        dbd = c.flags.dbd                     # (LLBAA: we only have short descriptors; ignored)
        pc, page, sub = c.page.pc, c.page.page_code, c.subpage_code
        alloc = c.allocation_length
        if pc == PageControl.SAVED:
            req.check(SAVING_NOT_SUPPORTED)
            return
        if page == pages.MODE_PAGE_ALL:
            if sub not in (0x00, 0xFF):
                req.check(INVALID_FIELD)
                return
            plist = pages.MODE_PAGES
        elif page in pages.MODE_PAGES and sub == 0:
            plist = (page,)
        else:
            req.check(INVALID_FIELD)
            return
        wce = self.backend.write_cache_enabled
        body = b"".join(pages.mode_page(p, pc, wce, self.default_wce) for p in plist)
        bdesc = b"" if dbd else pages.block_descriptor(self.capacity, BLOCK_SIZE)
        hlen = pages.MODE_HEADER_10_LEN if ten else pages.MODE_HEADER_6_LEN
        hdr = pages.mode_header(ten, hlen + len(bdesc) + len(body), self.backend.read_only,
                                len(bdesc))
        req.data_in((hdr + bdesc + body)[:alloc])

    def _mode_select(self, req: ScsiRequest, cdb: bytes) -> None:
        ten = cdb[0] == Op.MODE_SELECT_10
        if cdb[_B1] & _MSEL["sp"] or not cdb[_B1] & _MSEL["pf"]:   # SP=1 (cannot save), PF=0 (vendor)
            req.check(INVALID_FIELD)
            return
        plen = parameter_list_length(cdb)

        def apply(p: bytes) -> None:
            hlen = pages.MODE_HEADER_10_LEN if ten else pages.MODE_HEADER_6_LEN
            if len(p) == 0:
                req.good()
                return
            if len(p) < hlen:
                req.check(INVALID_PARAM_LEN)
                return
            hdr = (pages.ModeHeader10 if ten else pages.ModeHeader6).parse(p[:hlen])
            bdl = hdr.block_descriptor_length
            if bdl not in (0, pages.BLOCK_DESCRIPTOR_LEN) or hlen + bdl > len(p):
                req.check(INVALID_PARAM_LEN if hlen + bdl > len(p) else INVALID_PARAM)
                return
            if bdl and pages.block_descriptor_length(p[hlen:hlen + bdl]) != BLOCK_SIZE:
                req.check(INVALID_PARAM)            # block length is not changeable
                return
            pos = hlen + bdl
            new_wce = None
            wce = self.backend.write_cache_enabled
            while pos < len(p):
                if pos + pages.ModePageHeader.sizeof() > len(p):
                    req.check(INVALID_PARAM_LEN)
                    return
                ph = pages.ModePageHeader.parse(p[pos:])
                code, plen_ = ph.byte0.page_code, ph.page_length
                if ph.byte0.spf:                    # SPF: no subpages here
                    req.check(INVALID_PARAM)
                    return
                want = pages.mode_page_length(code)
                if want is None or plen_ + 2 != want:
                    req.check(INVALID_PARAM)
                    return
                if pos + want > len(p):
                    req.check(INVALID_PARAM_LEN)
                    return
                got = p[pos:pos + want]
                cur = pages.mode_page(code, PageControl.CURRENT, wce, self.default_wce)
                mask = pages.mode_page(code, PageControl.CHANGEABLE, wce, self.default_wce)
                for i in range(2, want):            # only changeable bits may differ
                    if (got[i] ^ cur[i]) & ~mask[i] & 0xFF:
                        req.check(INVALID_PARAM)
                        return
                if code == pages.MODE_PAGE_CACHING:
                    new_wce = pages.mode_page_wce(got)
                pos += want
            if new_wce is not None and new_wce != wce:
                r = self.backend.set_write_cache(new_wce)
                if r != OK:
                    req._io_failed(r, WRITE_ERROR)
                    return
            req.good()

        req.data_out(plen, apply)


_HANDLERS: dict[int, Callable[[ScsiDisk, ScsiRequest, bytes], None]] = {
    Op.TEST_UNIT_READY: ScsiDisk._test_unit_ready,
    Op.REQUEST_SENSE: ScsiDisk._request_sense,
    Op.INQUIRY: ScsiDisk._inquiry,
    Op.REPORT_LUNS: ScsiDisk._report_luns,
    Op.READ_CAPACITY_10: ScsiDisk._read_capacity_10,
    Op.SERVICE_ACTION_IN_16: ScsiDisk._service_action_in,
    Op.READ_6: ScsiDisk._read, Op.READ_10: ScsiDisk._read,
    Op.READ_12: ScsiDisk._read, Op.READ_16: ScsiDisk._read,
    Op.WRITE_6: ScsiDisk._write, Op.WRITE_10: ScsiDisk._write,
    Op.WRITE_12: ScsiDisk._write, Op.WRITE_16: ScsiDisk._write,
    Op.VERIFY_10: ScsiDisk._verify, Op.VERIFY_12: ScsiDisk._verify, Op.VERIFY_16: ScsiDisk._verify,
    Op.SYNCHRONIZE_CACHE_10: ScsiDisk._sync_cache, Op.SYNCHRONIZE_CACHE_16: ScsiDisk._sync_cache,
    Op.START_STOP_UNIT: ScsiDisk._start_stop,
    Op.FORMAT_UNIT: ScsiDisk._format_unit,
    Op.WRITE_SAME_10: ScsiDisk._write_same, Op.WRITE_SAME_16: ScsiDisk._write_same,
    Op.UNMAP: ScsiDisk._unmap,
    Op.MODE_SENSE_6: ScsiDisk._mode_sense, Op.MODE_SENSE_10: ScsiDisk._mode_sense,
    Op.MODE_SELECT_6: ScsiDisk._mode_select, Op.MODE_SELECT_10: ScsiDisk._mode_select,
}
