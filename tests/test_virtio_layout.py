"""The virtio layout declarations (blockbed/devices/virtio/layout.py): they parse
what a guest wrote, and every hot-path fast form is derived from them and matches
the spec's numbers (virtio 1.2 §2.7, §4.1.4.3, §5.2)."""

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from libqos_virtio import QVirtioBlk  # noqa: E402

from blockbed.devices.fastform import fast, offsets, struct_format, to_dict  # noqa: E402
from blockbed.devices.virtio import blk, layout as L, pci, virtqueue  # noqa: E402


def test_parse_what_the_guest_wrote():
    vb = QVirtioBlk()
    vb.start()
    r = vb.rings[0]
    hdr = vb.alloc(16)
    vb.qt.memwrite(hdr, struct.pack("<IIQ", 1, 0, 77))          # OUT, sector 77
    data, status = vb.alloc(512), vb.alloc(1)
    head = vb.put_chain([(hdr, 16, 0), (data, 512, 0), (status, 1, 2)])
    desc = L.VirtqDesc.parse(vb.qt.memread(r.desc + 16 * head, 16))
    assert desc.addr == hdr and desc.len == 16 and desc.flags.NEXT and not desc.flags.WRITE
    last = L.VirtqDesc.parse(vb.qt.memread(r.desc + 16 * ((head + 2) % r.size), 16))
    assert last.addr == status and last.flags.WRITE and not last.flags.NEXT
    avail = L.VirtqAvail.parse(vb.qt.memread(r.avail, L.avail_size(r.size)), size=r.size)
    assert avail.idx == 1 and avail.ring[0] == head
    h = L.BlkReqHeader.parse(vb.qt.memread(hdr, 16))
    assert h.type == "OUT" and h.sector == 77
    assert to_dict(h) == {"type": "OUT", "reserved": 0, "sector": 77}
    vb.kick()
    used = L.VirtqUsed.parse(vb.qt.memread(r.used, L.used_size(r.size)), size=r.size)
    assert used.idx == 1 and used.ring[0].id == head and used.ring[0].len == 1
    cfg = L.BlkConfig.parse(vb.dev.device_config())
    assert cfg.capacity == (1 << 20) // 512 and cfg.blk_size == 512
    assert cfg.num_queues == 1 and cfg.write_zeroes_may_unmap == 1


def test_fast_forms_are_derived_and_match_the_spec():
    # §2.7.5 / §2.7.8: 16-byte descriptors, 8-byte used elements
    assert virtqueue._DESC is L.DESC and L.DESC.format == "<QLHH" and L.DESC.size == 16
    assert virtqueue._USED_ELEM is L.USED_ELEM and L.USED_ELEM.size == 8
    assert (L.AVAIL_FLAGS, L.AVAIL_IDX, L.AVAIL_RING, L.USED_IDX, L.USED_RING) == (0, 2, 4, 2, 4)
    assert L.avail_size(256) == 6 + 2 * 256 and L.used_size(256) == 6 + 8 * 256
    assert L.used_event_offset(16) == 4 + 2 * 16 and L.avail_event_offset(16) == 4 + 8 * 16
    assert (L.DESC_F_NEXT, L.DESC_F_WRITE, L.DESC_F_INDIRECT, L.AVAIL_F_NO_INTERRUPT) == (1, 2, 4, 1)
    # §5.2.6: 16-byte header, 16-byte discard/write-zeroes segment, unmap = bit 0
    assert blk._HDR is L.BLK_HDR and L.BLK_HDR.size == 16
    assert blk._DWZ is L.BLK_DWZ and L.BLK_DWZ.size == 16 and blk.DWZ_FLAG_UNMAP == 1
    assert (blk.T_IN, blk.T_OUT, blk.T_FLUSH, blk.T_DISCARD, blk.T_WRITE_ZEROES) == (0, 1, 4, 11, 13)
    # §5.2.4: writeback at 32; 57 bytes up to write_zeroes_may_unmap (QEMU's size)
    assert blk._CONFIG is L.BLK_CONFIG and L.BLK_CONFIG.size == 57 and blk.WRITEBACK_OFFSET == 32
    # §4.1.4.3 offsets
    assert pci.COMMON_FIELDS is L.COMMON_FIELDS and pci.COMMON_SIZE == 0x3C
    expect = {0x00: ("device_feature_select", 4), 0x14: ("device_status", 1),
              0x16: ("queue_select", 2), 0x20: ("queue_desc", 8), 0x30: ("queue_device", 8),
              0x3A: ("queue_reset", 2)}
    assert all(L.COMMON_FIELDS[k] == v for k, v in expect.items())
    # §4.1.4: cap.offset at 8, notify multiplier at 16, pci_cfg_data at 16
    assert (L.CAP_OFF_BAR, L.CAP_OFF_OFFSET, L.CAP_OFF_NOTIFY_MULT, L.CAP_OFF_PCI_CFG_DATA) == (4, 8, 16, 16)
    assert (L.ISR_QUEUE, L.ISR_CONFIG) == (1, 2)


def test_a_changed_declaration_changes_the_fast_form():
    from construct import Int16ul, Int32ul, Struct
    s = Struct("a" / Int32ul, "b" / Int16ul, "c" / Struct("d" / Int16ul))
    assert struct_format(s) == "<LHH" and fast(s).size == 8
    assert offsets(s) == {"a": 0, "b": 4, "c": 6, "c.d": 6}

