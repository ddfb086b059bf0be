"""virtio-blk device tests through the qtest API (no guest code).

Transport (virtio 1.2 §4.1): identity, capabilities, feature offer (QEMU 7.2's),
FEATURES_OK handshake, reset, queue registers, MSI-X and INTx, the PCI_CFG
window, RING_RESET.  Block device (§5.2): IN/OUT with scatter lists and
indirect tables, FLUSH, GET_ID, DISCARD, WRITE_ZEROES, RO, CONFIG_WCE,
resize, several queues, EVENT_IDX suppression, the stop error policy.
"""

from __future__ import annotations

import errno

import pytest

from blockbed.block.backend import BlockBackend
from blockbed.block.memory import MemoryDriver
from libqos_virtio import (ACK, DEFAULT_FEATURES, DRIVER, DRIVER_OK, F_CONFIG_WCE, F_EVENT_IDX,
                           F_FLUSH, F_MQ, F_RING_RESET, F_RO, F_VERSION_1,
                           F_WRITE_ZEROES, FEATURES_OK, CFGGEN, GF, GFSELECT, MSIX_CFG, NO_VECTOR,
                           NUMQ, Q_ENABLE, Q_MSIX, Q_NOFF, Q_RESET, Q_SELECT, Q_SIZE, QEMU_72_FEATURES,
                           S_IOERR, S_OK, S_UNSUPP, STATUS, T_DISCARD, T_FLUSH, T_GET_ID, T_IN,
                           T_OUT, T_WRITE_ZEROES, QVirtioBlk, D_WRITE)

MiB = 1 << 20


@pytest.fixture
def vb():
    v = QVirtioBlk(MiB, serial="SER123")
    yield v
    assert v.dev.internal_errors == 0
    v.close()


def pattern(n: int, seed: int = 1) -> bytes:
    return bytes((i * 31 + seed * 7 + (i >> 9)) & 0xFF for i in range(n))


# --- PCI identity and capabilities ------------------------------------------------

def test_pci_identity_and_bars(vb):
    qt, d = vb.qt, vb.dev
    assert qt.pci_config_read(d, 0, 2) == 0x1AF4
    assert qt.pci_config_read(d, 2, 2) == 0x1042          # 0x1040 + device type 2 (§4.1.2.1)
    assert qt.pci_config_read(d, 8, 1) == 1                # revision >= 1: modern
    assert qt.pci_config_read(d, 0x08, 4) >> 8 == 0x010000  # mass storage, SCSI-class as QEMU
    assert qt.pci_config_read(d, 0x2C, 2) == 0x1AF4
    bar1 = qt.pci_config_read(d, 0x14)
    bar4 = qt.pci_config_read(d, 0x20)
    assert bar1 & 0xF == 0x0                              # 32-bit memory
    assert bar4 & 0xF == 0xC                              # 64-bit prefetchable
    # sizes as QEMU: MSI-X BAR 4 KiB, modern BAR 16 KiB
    assert [b.size for b in d.bars if b] == [0x1000, 0x4000]


def test_capabilities_layout(vb):
    types = [c[0] for c in vb.caps]
    assert types == [1, 3, 4, 2, 5]                        # common, ISR, device, notify, PCI_CFG
    assert vb.cap_ids[-1] == 0x11                          # then MSI-X
    assert vb.notify_mult == 4
    for cfg_type, bar, off, length, _ in vb.caps[:4]:
        assert bar == 4 and length == 0x1000
    assert vb.cr16(NUMQ) == 1


def test_features_offered_as_qemu_7_2(vb):
    assert vb.offered() == QEMU_72_FEATURES


def test_features_offered_ro_and_mq():
    v = QVirtioBlk(backend=BlockBackend(MemoryDriver(bytearray(MiB)), read_only=True), num_queues=2)
    try:
        assert v.offered() == QEMU_72_FEATURES | 1 << F_RO | 1 << F_MQ
        assert v.cr16(NUMQ) == 2
        assert v.config(34, 2) == 2
    finally:
        v.close()


def test_device_config_as_qemu(vb):
    assert vb.capacity() == MiB // 512
    assert vb.config(8, 4) == 0                           # size_max
    assert vb.config(12, 4) == 256 - 2                    # seg_max
    assert (vb.config(16, 2), vb.config(18, 1), vb.config(19, 1)) == (2, 16, 63)
    assert vb.config(20, 4) == 512                        # blk_size
    assert vb.config(32, 1) == 1                          # writeback (cache=writeback)
    assert vb.config(36, 4) == 0x3FFFFF and vb.config(40, 4) == 1 and vb.config(44, 4) == 1
    assert vb.config(48, 4) == 0x3FFFFF and vb.config(52, 4) == 1 and vb.config(56, 1) == 1
    assert vb.config(56, 4) == 0xFFFFFFFF                 # past the 57-byte config: all ones


# --- negotiation and reset (§3.1.1, §2.4) -------------------------------------------

def test_features_ok_requires_version_1(vb):
    st = vb.negotiate(DEFAULT_FEATURES & ~(1 << F_VERSION_1))
    assert not st & FEATURES_OK


def test_features_ok_refuses_unoffered_bits(vb):
    vb.negotiate(0)
    vb.cw8(STATUS, 0)
    vb.cw8(STATUS, ACK | DRIVER)
    vb.cw32(GFSELECT, 1)
    vb.cw32(GF, 1 | 1 << 2)                                # VERSION_1 + ACCESS_PLATFORM (not offered)
    vb.cw8(STATUS, ACK | DRIVER | FEATURES_OK)
    assert not vb.status & FEATURES_OK


def test_features_frozen_after_features_ok(vb):
    assert vb.negotiate() & FEATURES_OK
    vb.cw32(GFSELECT, 0)
    vb.cw32(GF, 0)
    assert vb.dev.features == vb.features


def test_reset_clears_everything(vb):
    vb.start()
    vb.cw16(MSIX_CFG, 0)
    vb.do(T_OUT, 0, pattern(512))
    vb.cw8(STATUS, 0)
    assert vb.status == 0
    assert vb.dev.features == 0
    assert vb.cr16(MSIX_CFG) == NO_VECTOR
    vb.cw16(Q_SELECT, 0)
    assert vb.cr16(Q_ENABLE) == 0 and vb.cr16(Q_SIZE) == 256
    # the device works again after a fresh initialisation
    vb.rings.clear()
    vb.start()
    assert vb.do(T_IN, 0, read_len=512)[:2] == (S_OK, pattern(512))


def test_queue_registers(vb):
    vb.negotiate()
    vb.cw16(Q_SELECT, 0)
    assert vb.cr16(Q_SIZE) == 256
    vb.cw16(Q_SIZE, 100)                                   # not a power of two: refused
    assert vb.cr16(Q_SIZE) == 256
    vb.cw16(Q_SIZE, 64)
    assert vb.cr16(Q_SIZE) == 64
    assert vb.cr16(Q_NOFF) == 0
    vb.cw16(Q_MSIX, 7)                                     # beyond the 2 vectors
    assert vb.cr16(Q_MSIX) == NO_VECTOR
    vb.cw16(Q_SELECT, 5)                                   # no such queue
    assert vb.cr16(Q_SIZE) == 0 and vb.cr16(Q_MSIX) == NO_VECTOR
    g = vb.cr8(CFGGEN)
    assert g == vb.cr8(CFGGEN)


# --- I/O --------------------------------------------------------------------------------

@pytest.mark.parametrize("indirect,segs", [(False, 1), (False, 5), (True, 1), (True, 9)])
def test_write_read_roundtrip(vb, indirect, segs):
    vb.start(size=32)
    data = pattern(8 * 512, seed=segs)
    st, _, used_len = vb.do(T_OUT, 10, data, indirect=indirect, segs=segs)
    assert (st, used_len) == (S_OK, 1)
    assert bytes(vb.backend.root.buf[10 * 512:18 * 512]) == data
    st, got, used_len = vb.do(T_IN, 10, read_len=8 * 512, indirect=indirect, segs=segs)
    assert (st, got, used_len) == (S_OK, data, 8 * 512 + 1)


def test_header_split_across_descriptors(vb):
    vb.start()
    hdr = vb.header(T_OUT, 3)
    data = vb.alloc(512)
    vb.qt.memwrite(data, pattern(512, 9))
    st = vb.alloc(1)
    # 16-byte header as 5 + 11 bytes, data 512, status inside a 4-byte writable tail
    vb.put_chain([(hdr, 5, 0), (hdr + 5, 11, 0), (data, 512, 0), (st, 1, D_WRITE)])
    vb.kick()
    assert len(vb.used()) == 1 and vb.status_at(st) == S_OK
    assert bytes(vb.backend.root.buf[3 * 512:4 * 512]) == pattern(512, 9)


def test_flush_and_get_id(vb):
    vb.start()
    before = vb.backend.stats.flush.ops
    assert vb.do(T_FLUSH)[0] == S_OK
    assert vb.backend.stats.flush.ops == before + 1
    st, ident, used_len = vb.do(T_GET_ID, read_len=20)
    assert st == S_OK and ident == b"SER123".ljust(20, b"\0") and used_len == 21


def test_flush_unsupp_when_not_negotiated(vb):
    vb.start(DEFAULT_FEATURES & ~(1 << F_FLUSH) & ~(1 << F_CONFIG_WCE))
    assert vb.do(T_FLUSH)[0] == S_UNSUPP


def test_discard_and_write_zeroes(vb):
    vb.start()
    vb.do(T_OUT, 0, pattern(16 * 512))
    assert vb.dwz(T_WRITE_ZEROES, 2, 4) == S_OK
    assert bytes(vb.backend.root.buf[2 * 512:6 * 512]) == bytes(4 * 512)
    assert bytes(vb.backend.root.buf[6 * 512:8 * 512]) == pattern(16 * 512)[6 * 512:8 * 512]
    assert vb.dwz(T_WRITE_ZEROES, 8, 2, flags=1) == S_OK  # unmap flag allowed
    assert bytes(vb.backend.root.buf[8 * 512:10 * 512]) == bytes(1024)
    assert vb.dwz(T_DISCARD, 10, 2) == S_OK
    assert vb.backend.stats.discards_ignored == 1          # discard=ignore, as QEMU's default
    assert vb.dwz(T_DISCARD, 10, 2, flags=1) == S_UNSUPP   # §5.2.6.2: unmap on discard
    assert vb.dwz(T_WRITE_ZEROES, 10, 2, flags=2) == S_UNSUPP  # unknown flag
    assert vb.dwz(T_WRITE_ZEROES, 10, 2, nseg=2) == S_UNSUPP   # > max_write_zeroes_seg
    assert vb.dwz(T_WRITE_ZEROES, MiB // 512 - 1, 2) == S_IOERR
    assert vb.dwz(T_DISCARD, 0, 0x400000) == S_IOERR           # > max_discard_sectors


def test_discard_unsupp_when_not_negotiated(vb):
    vb.start(DEFAULT_FEATURES & ~(1 << F_WRITE_ZEROES))
    assert vb.dwz(T_WRITE_ZEROES, 0, 1) == S_UNSUPP


def test_read_only(vb):
    v = QVirtioBlk(backend=BlockBackend(MemoryDriver(bytearray(pattern(MiB))), read_only=True))
    try:
        v.start()
        assert v.features >> F_RO & 1
        assert v.do(T_OUT, 0, bytes(512))[0] == S_IOERR
        assert v.dwz(T_WRITE_ZEROES, 0, 1) == S_IOERR
        assert v.do(T_IN, 0, read_len=512)[:2] == (S_OK, pattern(MiB)[:512])
    finally:
        v.close()


# --- write cache (semantics.md, virtio-blk) ------------------------------------------------

def test_writeback_field_switches_cache_live(vb):
    vb.start()
    assert vb.backend.write_cache_enabled
    flushes = vb.backend.stats.flush.ops
    vb.qt.writeb(vb.devcfg + 32, 0)
    assert not vb.backend.write_cache_enabled and vb.config(32, 1) == 0
    assert vb.backend.stats.flush.ops == flushes + 1       # turning the cache off flushes
    vb.qt.writeb(vb.devcfg + 32, 1)
    assert vb.backend.write_cache_enabled
    vb.qt.writeb(vb.devcfg + 32, 0)
    vb.cw8(STATUS, 0)                                      # reset restores the cache mode's WCE
    assert vb.backend.write_cache_enabled


def test_writeback_ignored_without_config_wce(vb):
    vb.start(DEFAULT_FEATURES & ~(1 << F_CONFIG_WCE))
    vb.qt.writeb(vb.devcfg + 32, 0)
    assert vb.backend.write_cache_enabled                  # FLUSH negotiated: writeback


def test_writethrough_when_driver_cannot_flush(vb):
    vb.start(DEFAULT_FEATURES & ~(1 << F_CONFIG_WCE) & ~(1 << F_FLUSH))
    assert not vb.backend.write_cache_enabled              # every write FUA


def test_writethrough_cache_mode():
    v = QVirtioBlk(backend=BlockBackend(MemoryDriver(bytearray(MiB)), cache="writethrough"))
    try:
        assert v.config(32, 1) == 0
    finally:
        v.close()


# --- resize, interrupts ------------------------------------------------------------------------

def test_resize_updates_capacity_with_config_interrupt(vb):
    vb.start()
    # MSI-X: enable through config space, program vector 1 for config changes
    qt, d = vb.qt, vb.dev
    cap = d.msix.off
    table = qt.bar_address(d, 1)
    qt.writel(table + 16 + 0, 0xFEE00000)
    qt.writel(table + 16 + 8, 0x61)
    qt.writel(table + 16 + 12, 0)
    qt.pci_config_write(d, cap + 2, 0x8000, 2)
    vb.cw16(MSIX_CFG, 1)
    assert vb.cr16(MSIX_CFG) == 1
    gen = vb.cr8(CFGGEN)
    assert vb.backend.resize(2 * MiB) == 0
    assert vb.capacity() == 2 * MiB // 512
    assert vb.cr8(CFGGEN) != gen
    assert 0x61 in qt.pending_vectors()
    assert vb.isr() & 2
    assert vb.do(T_OUT, 2 * MiB // 512 - 1, bytes(512))[0] == S_OK


def test_msix_queue_vector_and_event_idx(vb):
    qt, d = vb.qt, vb.dev
    vb.negotiate()
    table = qt.bar_address(d, 1)
    qt.writel(table, 0xFEE00000)
    qt.writel(table + 8, 0x55)
    qt.writel(table + 12, 0)
    qt.pci_config_write(d, d.msix.off + 2, 0x8000, 2)
    r = vb.setup_queue(0, 16, vector=0)
    vb.cw8(STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    assert vb.features >> F_EVENT_IDX & 1
    # used_event = 0: interrupt for the first completion
    vb.do(T_FLUSH)
    assert 0x55 in qt.pending_vectors()
    qt.ack_vector(0x55)
    # avail_event follows the device's consumption
    assert qt.readw(r.used + 4 + 8 * r.size) == r.avail_idx
    # used_event far ahead: no interrupt
    qt.writew(r.avail + 4 + 2 * r.size, 100)
    vb.do(T_FLUSH)
    assert 0x55 not in qt.pending_vectors()


def test_interrupt_driven_queue_completes_later_out_of_order(vb):
    """A queue with an MSI-X vector completes from the event queue, with its interrupt."""
    qt, d = vb.qt, vb.dev
    vb.negotiate(DEFAULT_FEATURES & ~(1 << F_EVENT_IDX))
    table = qt.bar_address(d, 1)
    qt.writel(table, 0xFEE00000)
    qt.writel(table + 8, 0x56)
    qt.writel(table + 12, 0)
    qt.pci_config_write(d, d.msix.off + 2, 0x8000, 2)
    vb.setup_queue(0, 64, vector=0)
    vb.cw8(STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    heads = [vb.submit(T_OUT, i, pattern(512, i), kick=False)[0] for i in range(12)]
    vb.kick()
    assert vb.used() == [] and 0x56 not in qt.pending_vectors()
    assert bytes(vb.backend.root.buf[:512]) == pattern(512, 0)   # executed at the doorbell
    done = vb.wait_used(n=12)
    assert sorted(h for h, _ in done) == sorted(heads) and [h for h, _ in done] != heads
    assert 0x56 in qt.pending_vectors()
    # a reset drops completions still scheduled
    vb.submit(T_FLUSH)
    vb.cw8(STATUS, 0)
    qt.clock_step(100)
    assert qt.readw(vb.rings[0].used + 2) == 12


def test_intx_and_isr_read_clears(vb):
    vb.negotiate(DEFAULT_FEATURES & ~(1 << F_EVENT_IDX))
    vb.setup_queue(0, 16)
    vb.cw8(STATUS, ACK | DRIVER | FEATURES_OK | DRIVER_OK)
    vb.do(T_FLUSH)
    assert vb.dev.intx_level == 1
    assert vb.isr() == 1
    assert vb.dev.intx_level == 0 and vb.isr() == 0
    # VRING_AVAIL_F_NO_INTERRUPT suppresses it
    vb.qt.writew(vb.rings[0].avail, 1)
    vb.do(T_FLUSH)
    assert vb.dev.intx_level == 0


def test_multiqueue():
    v = QVirtioBlk(MiB, num_queues=2)
    try:
        v.start(queues=2)
        assert v.features >> F_MQ & 1
        assert v.do(T_OUT, 1, pattern(512, 3), q=1)[0] == S_OK
        assert v.used(0) == []
        assert v.do(T_IN, 1, read_len=512, q=0)[:2] == (S_OK, pattern(512, 3))
        assert v.cr16(NUMQ) == 2
    finally:
        v.close()


def test_batch_completes_out_of_order_but_all(vb):
    vb.start(size=64)
    heads = [vb.submit(T_OUT, i, pattern(512, i), kick=False)[0] for i in range(20)]
    vb.kick()
    done = vb.used()
    assert sorted(h for h, _ in done) == sorted(heads)
    assert [h for h, _ in done] != heads                   # seeded reordering
    for i in range(20):
        assert bytes(vb.backend.root.buf[i * 512:(i + 1) * 512]) == pattern(512, i)


def test_ring_reset(vb):
    vb.start()
    assert vb.features >> F_RING_RESET & 1
    vb.do(T_FLUSH)
    vb.cw16(Q_SELECT, 0)
    vb.cw16(Q_RESET, 1)
    assert vb.cr16(Q_RESET) == 1 and vb.cr16(Q_ENABLE) == 0
    vb.rings.clear()
    vb.setup_queue(0, 16)
    assert vb.cr16(Q_RESET) == 0
    assert vb.do(T_FLUSH)[0] == S_OK


def test_pci_cfg_window_reaches_common_config(vb):
    qt, d = vb.qt, vb.dev
    cap = [c for c in vb.caps if c[0] == 5][0][4]
    qt.pci_config_write(d, cap + 4, 4, 1)                  # bar 4
    qt.pci_config_write(d, cap + 8, 0x12)                  # offset: num_queues
    qt.pci_config_write(d, cap + 12, 2)                    # length 2
    assert qt.pci_config_read(d, cap + 16, 2) == 1
    qt.pci_config_write(d, cap + 8, 0x14)                  # device_status, 1 byte
    qt.pci_config_write(d, cap + 12, 1)
    qt.pci_config_write(d, cap + 16, ACK, 1)
    assert vb.status == ACK


class _FailOnce(MemoryDriver):
    """Fails the first write with ENOSPC (for the stop policy)."""

    def __init__(self, data):
        super().__init__(data)
        self.fail = True

    def writev(self, offset, bufs, fua=False):
        if self.fail:
            self.fail = False
            raise OSError(errno.ENOSPC, "no space")
        return super().writev(offset, bufs, fua)


def test_stop_policy_keeps_request_pending_until_resume():
    be = BlockBackend(_FailOnce(bytearray(MiB)), werror="stop")
    v = QVirtioBlk(backend=be)
    stops = []
    be.on_stop = stops.append
    try:
        v.start()
        head, st, _ = v.submit(T_OUT, 4, pattern(512, 4))
        h2, st2, _ = v.submit(T_FLUSH)
        assert len(stops) == 1 and v.used() == [] and v.status_at(st) == 0xEE
        v.dev.resume()
        assert sorted(h for h, _ in v.used()) == sorted([head, h2])
        assert v.status_at(st) == S_OK and v.status_at(st2) == S_OK
        assert bytes(be.root.buf[4 * 512:5 * 512]) == pattern(512, 4)
    finally:
        v.close()


def test_backend_error_reports_ioerr():
    be = BlockBackend(_FailOnce(bytearray(MiB)), werror="report")
    v = QVirtioBlk(backend=be)
    try:
        v.start()
        assert v.do(T_OUT, 0, bytes(512))[:1] == (S_IOERR,)
        assert v.do(T_OUT, 0, bytes(512))[:1] == (S_OK,)
    finally:
        v.close()


def test_attach_from_drive_spec(tmp_path):
    from blockbed.devices.attach import attach_drives
    from blockbed.machine import Machine, MachineConfig
    img = tmp_path / "d.img"
    img.write_bytes(bytes(MiB))
    m = Machine(MachineConfig(memory_mib=16))
    try:
        attach_drives(m, [f"file={img},format=raw,if=virtio,serial=ABC,num-queues=2",
                          f"file={img},format=raw,if=virtio,readonly=on,force-share=on"])
        devs = m.pci.find(0x1AF4, 0x1042)
        assert len(devs) == 2
        assert devs[0].serial == b"ABC" and devs[0].num_queues == 2
        assert devs[1].offered_features >> F_RO & 1
        assert devs[0].name != devs[1].name
    finally:
        m.close()


# --- request merging ------------------------------------------------------------------------

def test_contiguous_requests_merge_into_one_backend_call(vb):
    vb.start(size=64)
    before = vb.backend.stats.write.ops
    reqs = [vb.submit(T_OUT, 8 + 2 * i, pattern(1024, i), kick=False, segs=2) for i in range(6)]
    vb.kick()
    assert len(vb.used()) == 6
    assert all(vb.status_at(st) == S_OK for _, st, _ in reqs)
    assert vb.backend.stats.write.ops == before + 1
    assert bytes(vb.backend.root.buf[8 * 512:20 * 512]) == b"".join(pattern(1024, i) for i in range(6))
    reads = [vb.submit(T_IN, 8 + 2 * i, read_len=1024, kick=False) for i in range(6)]
    before = vb.backend.stats.read.ops
    vb.kick()
    assert len(vb.used()) == 6 and vb.backend.stats.read.ops == before + 1
    for i, (_, st, buf) in enumerate(reads):
        assert vb.status_at(st) == S_OK and vb.qt.memread(buf, 1024) == pattern(1024, i)


class _BadSector(MemoryDriver):
    """EIO for any write touching sector 5."""

    def writev(self, offset, bufs, fua=False):
        n = sum(len(b) for b in bufs)
        if offset <= 5 * 512 < offset + n:
            raise OSError(errno.EIO, "bad sector")
        return super().writev(offset, bufs, fua)


def test_failed_merge_fails_every_request_of_the_merge():
    """QEMU 7.2 (virtio_blk_rw_complete): a merged request fails as a whole, so every
    request in it gets IOERR, including those not touching the bad sector."""
    v = QVirtioBlk(backend=BlockBackend(_BadSector(bytearray(MiB)), werror="report"))
    try:
        v.start(size=32)
        reqs = [v.submit(T_OUT, s, pattern(512, s), kick=False) for s in (4, 5, 6, 7)]
        v.kick()
        assert len(v.used()) == 4
        assert [v.status_at(st) for _, st, _ in reqs] == [S_IOERR] * 4
        assert v.dev.errors == 4
    finally:
        v.close()


def test_one_shot_eio_on_a_merged_write_reaches_the_guest():
    """A transient error (blkdebug once=on) fails the merge it hit; it is not hidden by
    retrying each request alone.  The next batch succeeds."""
    be = BlockBackend(_FailOnce(bytearray(MiB)), werror="report")
    v = QVirtioBlk(backend=be)
    try:
        v.start(size=32)
        reqs = [v.submit(T_OUT, s, pattern(512, s), kick=False) for s in (8, 9, 10)]
        v.kick()
        assert [v.status_at(st) for _, st, _ in reqs] == [S_IOERR] * 3
        again = [v.submit(T_OUT, s, pattern(512, s), kick=False) for s in (8, 9, 10)]
        v.kick()
        assert [v.status_at(st) for _, st, _ in again] == [S_OK] * 3
        assert bytes(be.root.buf[8 * 512:11 * 512]) == b"".join(pattern(512, s)
                                                                for s in (8, 9, 10))
    finally:
        v.close()


def test_stop_policy_on_a_merged_write_retries_all_on_resume():
    be = BlockBackend(_FailOnce(bytearray(MiB)), werror="stop")
    v = QVirtioBlk(backend=be)
    stops = []
    be.on_stop = stops.append
    try:
        v.start(size=32)
        reqs = [v.submit(T_OUT, s, pattern(512, s), kick=False) for s in (8, 9, 10)]
        v.kick()
        assert len(stops) == 1 and v.used() == []
        assert all(v.status_at(st) == 0xEE for _, st, _ in reqs)
        v.dev.resume()
        assert sorted(h for h, _ in v.used()) == sorted(h for h, _, _ in reqs)
        assert [v.status_at(st) for _, st, _ in reqs] == [S_OK] * 3
    finally:
        v.close()


class _Recording(MemoryDriver):
    def __init__(self, data):
        super().__init__(data)
        self.calls = []

    def write_zeroes(self, offset, length, may_unmap=False):
        self.calls.append(("write_zeroes", offset, length, may_unmap))
        return super().write_zeroes(offset, length, may_unmap)

    def discard(self, offset, length):
        self.calls.append(("discard", offset, length))
        return super().discard(offset, length)


@pytest.mark.parametrize("mode", ["unmap", "ignore"])
def test_unmap_flag_reaches_the_backend(mode):
    root = _Recording(bytearray(MiB))
    v = QVirtioBlk(backend=BlockBackend(root, discard=mode))
    try:
        v.start()
        assert v.dwz(T_WRITE_ZEROES, 4, 2, flags=1) == S_OK
        assert v.dwz(T_WRITE_ZEROES, 8, 2, flags=0) == S_OK
        assert v.dwz(T_DISCARD, 16, 4) == S_OK
        unmap = mode == "unmap"
        expected = [("write_zeroes", 2048, 1024, unmap), ("write_zeroes", 4096, 1024, False)]
        if unmap:
            expected.append(("discard", 8192, 2048))
        assert root.calls == expected
    finally:
        v.close()
