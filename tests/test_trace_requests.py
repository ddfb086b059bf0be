"""Request ids link every layer's events; decoded structures; the trace viewer.

Each controller test boots disktest on a fresh qcow2 image with tracing on and
follows the first write from the controller's ``req.submit`` through
BlockBackend, qcow2 and the file driver's ``pwritev`` to ``req.complete``: the
test fails when any layer drops the id (an event of that layer missing from
the request) or when an id leaks onto an event outside its request.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from blockbed import trace, trace_decode as d
from blockbed.block.qcow2.imagecreate import create
from blockbed.cli.explain import run_traced
from blockbed.tracereader import build, layer_of
from conftest import REPO, guest_elf

CONTROLLERS = ("virtio", "ahci", "ide", "lsi")
APPEND = "dev={} ops=6 span=256 seed=1"


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """One traced disktest run per controller (events as JSON-lines dicts)."""
    out = {}
    for ctl in CONTROLLERS:
        img = tmp_path_factory.mktemp(ctl) / "disk.qcow2"
        create(str(img), 16 << 20, {})
        result, serial, events = run_traced(str(guest_elf("disktest")),
                                            f"file={img},format=qcow2,if={ctl}", APPEND.format(ctl))
        assert result.exit_status == 0, serial.decode(errors="replace")
        out[ctl] = events
    return out


@pytest.mark.parametrize("ctl", CONTROLLERS)
def test_first_write_linked_down_to_pwritev(traces, ctl):
    tr = build(traces[ctl])
    w = tr.first("write")
    assert w is not None and w.controller == ctl
    names = [e["event"] for e in w.events]
    for layer_event in ("req.submit", "backend.write", "qcow2.write", "file.pwritev", "req.complete"):
        assert layer_event in names, f"{ctl}: {layer_event} lost the request id: {names}"
    assert {"controller", "backend", "format", "protocol"} <= w.layers()
    # the first write to a fresh image allocates: an L2 table and a data cluster
    assert "qcow2.l2_alloc" in names and "qcow2.alloc" in names
    # every id'd event lies between its request's submission and the next exit after completion
    seq = {e["seq"]: i for i, e in enumerate(traces[ctl])}
    for r in tr.requests.values():
        assert r.events[0]["event"] == "req.submit"
        assert all(seq[e["seq"]] >= seq[r.submit["seq"]] for e in r.events)
    # no exit is ever tagged: an exit is an entry point, it resets the current request
    assert not any("req" in e for e in tr.exits())


@pytest.mark.parametrize("ctl", CONTROLLERS)
def test_every_request_completes_and_flush_reaches_fdatasync(traces, ctl):
    tr = build(traces[ctl])
    assert tr.requests
    assert all(r.complete is not None for r in tr.requests.values()), \
        [r.submit for r in tr.requests.values() if r.complete is None]
    f = tr.first("flush")
    assert f is not None and "file.fdatasync" in [e["event"] for e in f.events]


@pytest.mark.parametrize("ctl", CONTROLLERS)
def test_decoded_command_matches_what_reached_the_backend(traces, ctl):
    """The decoded guest structure (virtio header, FIS, task file, CDB) names the
    sector and length that BlockBackend was asked to write."""
    tr = build(traces[ctl])
    checked = 0
    for r in tr.requests.values():
        if r.op != "write":
            continue
        bw = [e for e in r.events if e["event"] == "backend.write"]
        if not bw:
            continue                # merged into the previous request (virtio)
        s = r.submit
        if ctl == "virtio":
            lba, nbytes = s["header"]["sector"], s["bytes"]
            assert s["header"]["type"] == "OUT"
        elif ctl == "ahci":
            fis = s["fis"]
            lba = fis["lba"]
            nbytes = (fis["features"] if fis["command_code"] in (0x60, 0x61) else fis["count"]) * 512
            assert fis["c"] and fis["fis_type"] == 0x27
        elif ctl == "ide":
            lba, nbytes = s["taskfile"]["lba"], s["taskfile"]["count"] * 512
        else:
            lba, nbytes = s["cdb"]["lba"], s["cdb"]["blocks"] * 512
        assert bw[0]["offset"] == lba * 512
        assert sum(e["length"] for e in bw) >= nbytes if ctl == "virtio" else \
            sum(e["length"] for e in bw) == nbytes
        checked += 1
    assert checked >= 3


def test_ids_cost_nothing_and_leave_when_tracing_is_off():
    assert not trace.enabled
    with trace.Recorder() as rec:
        rid = trace.begin("test", "k", op="write")
        trace.emit("backend.write", offset=0)
        trace.leave()
        trace.emit("pio.out", port=1)
        assert trace.enter("k") == rid
        trace.emit("file.pwritev", offset=0)
        trace.end("k", status=0)
        trace.emit("apic.irr", vector=1)       # the interrupt after completion carries it
        trace.leave()
        trace.emit("pio.in", port=1)
    tags = [(e.name, e.fields.get("req")) for e in rec.events]
    assert tags == [("req.submit", rid), ("backend.write", rid), ("pio.out", None),
                    ("file.pwritev", rid), ("req.complete", rid), ("apic.irr", rid), ("pio.in", None)]
    assert trace.current is None and not trace.enabled


def test_decoders():
    cfis = bytearray(20)
    cfis[0], cfis[1], cfis[2], cfis[3] = 0x27, 0x80, 0x61, 8       # WRITE FPDMA QUEUED, 8 sectors
    cfis[4:7] = (0x123456).to_bytes(3, "little")
    cfis[8:11] = (0x78).to_bytes(3, "little")
    cfis[7], cfis[12] = 0x40, 3 << 3                               # tag 3
    f = d.h2d_fis(bytes(cfis))
    assert f["command"] == "WRITE FPDMA QUEUED" and f["lba"] == 0x78123456 and f["features"] == 8
    assert f["c"] is True and f["device"] == 0x40
    cdb = struct.pack(">BBIBHB", 0x2A, 0x08, 2048, 0, 8, 0)
    w10 = d.scsi_cdb(cdb)
    assert {k: v for k, v in w10.items() if k != "fields"} == \
        {"opcode": "WRITE(10)", "opcode_code": 0x2A, "lba": 2048, "blocks": 8, "fua": True}
    assert w10["fields"]["flags"]["fua"] is True and w10["fields"]["transfer_length"] == 8
    cdb16 = struct.pack(">BBQIBB", 0x8A, 0, 1 << 33, 16, 0, 0)
    assert d.scsi_cdb(cdb16)["lba"] == 1 << 33 and d.scsi_cdb(cdb16)["blocks"] == 16
    assert d.virtio_blk_header(struct.pack("<IIQ", 1, 0, 7)) == {"type": "OUT", "reserved": 0, "sector": 7}
    assert d.virtio_blk_header(struct.pack("<IIQ", 4, 3, 0)) == {"type": "FLUSH", "reserved": 3, "sector": 0}
    assert d.virtio_blk_header(struct.pack("<IIQ", 99, 0, 0))["type"] == 99      # unknown: the number
    assert d.virtq_desc(struct.pack("<QIHH", 0x1000, 512, 3, 1)) == \
        {"addr": 0x1000, "len": 512, "flags": ["NEXT", "WRITE"], "next": 1}
    assert [d.op_kind(n) for n in ("OUT", "IN", "FLUSH", "WRITE DMA FUA EXT", "SYNCHRONIZE CACHE(10)",
                                   "READ CAPACITY(10)", "WRITE SAME(16)", "UNMAP")] == \
        ["write", "read", "flush", "write", "flush", "other", "write_zeroes", "discard"]
    assert d.lsi_register(0x2C) == "DSP" and d.lsi_register(0x2E) == "DSP+2"


def test_port_exits_disassembled(traces):
    outs = [e for e in traces["ide"] if e["event"] == "pio.out"]
    assert outs and all(e["insn"].split(": ", 1)[1].startswith("out ") for e in outs[:50])


@pytest.mark.parametrize("ctl", ["virtio", "ahci", "lsi"])
def test_mmio_exits_name_their_own_instruction(traces, ctl):
    """MMIO events carry the disassembled access (unicorn syncs RIP for the tracing
    memory hook, not for MMIO callbacks): reads are loads, writes are stores, never a
    block's first instruction, and the LSI's DSP writes show DSP's offset (0x2c) as
    the displacement of the store."""
    import re
    ev = [e for e in traces[ctl] if e["event"] in ("mmio.read", "mmio.write")]
    assert ev
    for e in ev:
        text = e["insn"].split(": ", 1)[1]
        if e["event"] == "mmio.read":
            assert re.match(r"movz?x? \w+, \w+ ptr \[", text), e
        else:
            assert re.match(r"mov \w+ ptr \[[^]]*\], ", text), e
    if ctl == "lsi":
        dsp = [e for e in ev if e["event"] == "mmio.write" and e["offset"] & 0x3FF == 0x2C]   # page-relative
        assert dsp and all("+ 0x2c]" in e["insn"] for e in dsp)


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "blockbed", *argv], capture_output=True, text=True,
                          cwd=REPO)


def test_viewer_on_a_recorded_trace(traces, tmp_path):
    path = tmp_path / "ahci.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in traces["ahci"]))
    s = _cli("trace", str(path))
    assert s.returncode == 0, s.stderr
    tr = build(traces["ahci"])
    assert f"{len(tr.requests)} requests" in s.stdout and "controller ahci:" in s.stdout
    assert "host syscalls per write:" in s.stdout and "exits per request:" in s.stdout
    w = _cli("trace", str(path), "--first-write")
    assert w.returncode == 0, w.stderr
    lines = w.stdout.splitlines()
    assert lines[0] == f"request {tr.first('write').id}: ahci write"
    order = [next(i for i, l in enumerate(lines) if key in l)
             for key in ("req.submit", "backend.write", "qcow2.write", "file.pwritev", "req.complete")]
    assert order == sorted(order)
    assert "command=WRITE FPDMA QUEUED" in w.stdout
    # indentation follows the layer: the syscall is deeper than the backend call
    ind = lambda key: len(next(l for l in lines if key in l)) - len(next(l for l in lines if key in l).lstrip())  # noqa: E731
    assert ind("file.pwritev") > ind("qcow2.write") > ind("backend.write") > ind("req.submit")
    f = _cli("trace", str(path), "--first-flush")
    assert f.returncode == 0 and "FLUSH CACHE" in f.stdout and "file.fdatasync" in f.stdout
    missing = _cli("trace", str(path), "--request", "99999")
    assert missing.returncode == 1 and "no request 99999" in missing.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    b = _cli("trace", str(bad))
    assert b.returncode == 2 and "bad.jsonl:1: not a JSON line" in b.stderr and "Traceback" not in b.stderr


@pytest.mark.parametrize("ext", ["svg", "png"])
def test_timeline_picture(traces, tmp_path, ext):
    pytest.importorskip("matplotlib", reason="the optional extra blockbed[pictures] is not installed")
    path = tmp_path / "lsi.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in traces["lsi"]))
    out = tmp_path / f"t.{ext}"
    p = _cli("trace", str(path), "--timeline", str(out))
    assert p.returncode == 0, p.stderr
    data = out.read_bytes()
    assert len(data) > 10_000
    if ext == "svg":
        text = data.decode()
        for lane in ("guest exit", "controller", "backend", "format", "protocol", "interrupt", "flush"):
            assert f">{lane}<" in text, lane
    else:
        assert data.startswith(b"\x89PNG")


def test_explain(tmp_path):
    img = tmp_path / "d.qcow2"
    create(str(img), 16 << 20, {})
    p = _cli("explain", "--drive", f"file={img},format=qcow2,if=virtio")
    assert p.returncode == 0, p.stderr
    first_write, first_flush = p.stdout.split("== the first write")[1].split("== the first flush")
    assert "header{type=OUT" in first_write and "file.pwritev" in first_write
    assert "backend.flush" in first_flush and "file.fdatasync" in first_flush


def test_layer_of():
    assert [layer_of(n) for n in ("pio.out", "ahci.cmd", "backend.write", "qcow2.alloc", "file.pwritev",
                                  "apic.irr")] == \
        ["guest exit", "controller", "backend", "format", "protocol", "interrupt"]
