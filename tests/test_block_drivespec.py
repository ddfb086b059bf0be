"""Drive specs (every bad spec has its own message), format probing, raw windows."""

from __future__ import annotations

import errno
import json

import pytest

from blockbed.block import registry
from blockbed.block.backend import BlockBackend, CacheMode, DetectZeroes, DiscardMode, ErrorAction
from blockbed.block.driver import BlockError
from blockbed.block.drivespec import DriveSpecError, open_drive, parse_drive_spec, split_options
from blockbed.block.file import create_file
from blockbed.block.raw import RawDriver
from blockbed.block.registry import open_image
from conftest import run_tool

MiB = 1 << 20


@pytest.fixture
def img(tmp_path):
    p = str(tmp_path / "disk.img")
    create_file(p, MiB)
    return p


def test_full_spec_parses():
    s = parse_drive_spec("file=/a,,b.img,format=raw,if=virtio,cache=directsync,discard=unmap,"
                         "detect-zeroes=unmap,readonly=off,werror=stop,rerror=ignore,"
                         "serial=QM0001,id=d0,write-cache=off,logical_block_size=4096,"
                         "num-queues=2")
    assert s.file == "/a,b.img" and s.format == "raw" and s.interface == "virtio"
    assert s.cache is CacheMode.DIRECTSYNC and s.discard is DiscardMode.UNMAP
    assert s.detect_zeroes is DetectZeroes.UNMAP and not s.read_only
    assert s.werror is ErrorAction.STOP and s.rerror is ErrorAction.IGNORE
    assert s.serial == "QM0001" and s.id == "d0"
    assert s.device_options == {"write-cache": "off", "logical_block_size": "4096",
                                "num-queues": 2}
    assert not s.write_cache_default


def test_defaults_are_qemus():
    s = parse_drive_spec("file=x")
    assert (s.format, s.interface, s.cache, s.discard, s.detect_zeroes, s.werror, s.rerror) == \
        (None, "ide", CacheMode.WRITEBACK, DiscardMode.IGNORE, DetectZeroes.OFF,
         ErrorAction.ENOSPC, ErrorAction.REPORT)


def test_cache_switches_and_aliases():
    assert parse_drive_spec("file=x,cache.direct=on").cache is CacheMode.NONE
    assert parse_drive_spec("file=x,cache=none,cache.writeback=off").cache is CacheMode.DIRECTSYNC
    assert parse_drive_spec("file=x,cache.no-flush=on").cache is CacheMode.UNSAFE
    assert parse_drive_spec("file=x,read-only,discard=on").read_only
    assert parse_drive_spec("file=x,discard=on").discard is DiscardMode.UNMAP
    assert split_options("a=1,b") == [("a", "1"), ("b", "on")]


ALL_KEYS = ("cache, cache.direct, cache.no-flush, cache.writeback, detect-zeroes, discard, "
            "encrypt.key-secret, file, force-share, format, id, if, locking, log-writes, native-fua, offset, readonly, "
            "rerror, serial, size, werror, bus, disable-legacy, disable-modern, discard_granularity, "
            "logical_block_size, "
            "model, ncq, num-queues, physical_block_size, queue-size, unit, write-cache, wwn")


@pytest.mark.parametrize("spec,message", [
    ("file=x,cache=fast",
     "drive option 'cache': invalid value 'fast'; allowed: writeback, none, writethrough, "
     "directsync, unsafe"),
    ("file=x,cahce=none", f"drive: unknown option 'cahce' (did you mean 'cache'?); allowed: {ALL_KEYS}"),
    ("file=x,colour=red", f"drive: unknown option 'colour'; allowed: {ALL_KEYS}"),
    ("file=x,if=scsi", "drive option 'if': invalid value 'scsi'; allowed: virtio, ahci, ide, lsi"),
    ("file=x,format=vmdk", "drive option 'format': invalid value 'vmdk'; allowed: raw, qcow2"),
    ("file=x,readonly=maybe", "drive option 'readonly': invalid value 'maybe'; allowed: on, off"),
    ("file=x,werror=retry",
     "drive option 'werror': invalid value 'retry'; allowed: enospc, report, ignore, stop"),
    ("file=x,rerror=enospc",
     "drive option 'rerror': invalid value 'enospc'; allowed: report, ignore, stop"),
    ("file=x,discard=trim", "drive option 'discard': invalid value 'trim'; allowed: ignore, unmap"),
    ("file=x,detect-zeroes=yes",
     "drive option 'detect-zeroes': invalid value 'yes'; allowed: off, on, unmap"),
    ("file=x,detect-zeroes=unmap", "drive option 'detect-zeroes': value 'unmap' needs discard=unmap"),
    ("file=x,force-share=on", "drive option 'force-share': value 'on' needs readonly=on"),
    ("file=x,serial=ABCDEFGHIJKLMNOPQRSTU",
     "drive option 'serial': invalid value 'ABCDEFGHIJKLMNOPQRSTU'; allowed: 1 to 20 printable "
     "ASCII characters"),
    ("file=x,offset=100", "drive option 'offset': invalid value '100'; allowed: an integer >= 0, "
                          "a multiple of 512"),
    ("file=x,num-queues=0", "drive option 'num-queues': invalid value '0'; allowed: an integer 1..16"),
    ("file=x,queue-size=100",
     "drive option 'queue-size': invalid value '100'; allowed: an integer 2..1024, a power of two"),
    ("file=x,logical_block_size=1000",
     "drive option 'logical_block_size': invalid value '1000'; allowed: 512, 4096"),
    ("file=x,write-cache=maybe",
     "drive option 'write-cache': invalid value 'maybe'; allowed: on, off, auto"),
    ("file=x,format=qcow2,offset=512", "drive options 'offset'/'size': only allowed with format=raw"),
    ("file=x,cache.direct=on,cache.no-flush=on",
     "drive options cache.direct, cache.no-flush: cache.no-flush=on is only supported together "
     "with cache.writeback=on,cache.direct=off (cache=unsafe)"),
    ("file=x,cache=none,cache=none", "drive option 'cache' given twice"),
    ("cache=none", "drive: option 'file' is required (file=PATH)"),
    ("file=,if=ide", "drive option 'file': empty value"),
    ("file=x,,y,", "drive: empty option in 'file=x,,y,' (stray comma?)"),
])
def test_bad_specs_each_give_their_message(spec, message):
    with pytest.raises(DriveSpecError) as ei:
        parse_drive_spec(spec)
    assert str(ei.value) == message


def test_missing_file(tmp_path):
    p = tmp_path / "missing.img"
    with pytest.raises(DriveSpecError) as ei:
        open_drive(f"file={p},format=raw")
    assert str(ei.value) == f"drive file={p}: No such file or directory"


def test_format_mismatch(img, qemu_img, tmp_path):
    pytest.importorskip("blockbed.block.qcow2")
    with pytest.raises(DriveSpecError) as ei:
        open_drive(f"file={img},format=qcow2")
    assert str(ei.value) == (f"drive file={img}: '{img}' is not a qcow2 image (it looks like "
                             "raw); use format=raw")


def test_locked_image_message(img):
    first = open_drive(f"file={img},format=raw")
    with pytest.raises(DriveSpecError) as ei:
        open_drive(f"file={img},format=raw")
    assert str(ei.value) == (f"drive file={img}: Failed to get \"write\" lock; is another "
                             f"process using the image [{img}]?")
    first.close()


def test_open_drive_builds_the_backend(img):
    be = open_drive(f"file={img},format=raw,cache=none,discard=unmap,werror=report,"
                    "write-cache=off,id=disk7")
    assert isinstance(be, BlockBackend) and be.name == "disk7"
    assert be.cache is CacheMode.NONE and be.root.file.direct
    assert not be.write_cache_enabled           # write-cache=off overrides cache=none's WCE
    assert be.discard_mode is DiscardMode.UNMAP and be.werror is ErrorAction.REPORT
    be.close()
    be = open_drive(f"file={img},format=raw,readonly=on")
    assert be.read_only and be.writev(0, [memoryview(b"x")]) == -errno.EROFS
    be.close()


# --- probing --------------------------------------------------------------------------

def test_probe_raw_warns_and_guards_sector_zero(img, monkeypatch):
    warnings = []
    monkeypatch.setattr(registry, "warn_handler", warnings.append)
    be = open_drive(f"file={img}")
    assert warnings == [f"image format was not specified for '{img}' and probing guessed raw; "
                        "writes to sector 0 are restricted (specify format=raw explicitly to "
                        "remove the restriction)"]
    assert isinstance(be.root, RawDriver) and be.root.probed
    qcow2_header = b"QFI\xfb\x00\x00\x00\x03" + bytes(504)
    assert be.writev(0, [memoryview(qcow2_header)]) == -errno.EPERM
    assert be.writev(0, [memoryview(b"\x55" * 512)]) == 0          # harmless data is fine
    assert be.writev(512, [memoryview(qcow2_header)]) == 0          # other sectors are fine
    be.close()
    assert open(img, "rb").read(4) == b"\x55" * 4
    warnings.clear()
    be = open_drive(f"file={img},format=raw")                         # explicit: no guard
    assert warnings == [] and not be.root.probed
    assert be.writev(0, [memoryview(qcow2_header)]) == 0
    be.close()


def test_probe_finds_qcow2_without_warning(tmp_path, qemu_img, monkeypatch):
    pytest.importorskip("blockbed.block.qcow2")
    p = str(tmp_path / "d.qcow2")
    run_tool(qemu_img, "create", "-q", "-f", "qcow2", p, "2M")
    warnings = []
    monkeypatch.setattr(registry, "warn_handler", warnings.append)
    with open_image(p) as node:
        assert node.driver_name == "qcow2" and node.length() == 2 * MiB
    assert warnings == []


def test_unavailable_format_is_a_clear_error(monkeypatch, img):
    monkeypatch.setitem(registry._lazy, "qcow2", "blockbed.block.no_such_module")
    monkeypatch.delitem(registry._formats, "qcow2", raising=False)
    with pytest.raises(BlockError, match="format qcow2 is not available in this build"):
        open_image(img, "qcow2")
    # an image carrying the qcow2 magic is never opened as raw just because qcow2 is missing
    with open(img, "r+b") as fh:
        fh.write(b"QFI\xfb\x00\x00\x00\x03")
    with pytest.raises(BlockError, match="format qcow2 is not available"):
        open_image(img)


def test_unknown_format(img):
    with pytest.raises(BlockError, match="format=bogus: unknown format; allowed: qcow2, qed, "
                                         "raw, vdi, vhdx, vmdk, vpc"):
        open_image(img, "bogus")
    # foreign formats (read-only or only recognised) are not "unknown" (test_foreign_probe.py)
    for fmt in ("vmdk", "parallels"):
        with pytest.raises(BlockError, match=f"is not a {fmt} image"):
            open_image(img, fmt)


# --- raw offset/size, against qemu-io ------------------------------------------------

def test_raw_window_matches_qemu(img, qemu_io, qemu_img):
    be = open_drive(f"file={img},format=raw,offset=65536,size=131072")
    assert be.length() == 131072
    assert be.writev(0, [memoryview(b"\x5a" * 512)]) == 0
    assert be.writev(131072 - 512, [memoryview(b"\xa5" * 512)]) == 0
    assert be.writev(131072, [memoryview(b"x" * 512)]) == -errno.EIO     # past the window
    ext = be.root.block_status(0, 131072)
    assert ext[0].offset == 0 and ext[0].data and ext[0].host_offset == 65536
    be.close()
    spec = "json:" + json.dumps({"driver": "raw", "offset": 65536, "size": 131072,
                                 "file": {"driver": "file", "filename": img}})
    info = json.loads(run_tool(qemu_img, "info", "--output=json", spec).stdout)
    assert info["virtual-size"] == 131072
    out = run_tool(qemu_io, "-c", "read -P 0x5a 0 512", "-c", "read -P 0 512 130048",
                   "-c", "read -P 0xa5 130560 512", spec).stdout
    assert "Pattern verification failed" not in out and out.count("read ") == 3
    with open(img, "rb") as fh:
        assert fh.read(65536) == bytes(65536)


def test_raw_window_bad_options(img):
    with pytest.raises(BlockError, match="past the end of the file"):
        open_image(img, "raw", options={"offset": MiB, "size": 512})
    with pytest.raises(BlockError, match="raw: unknown option 'sise'; allowed: offset, size"):
        open_image(img, "raw", options={"sise": 512})
