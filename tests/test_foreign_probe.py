"""Foreign image formats are recognised as qemu-img recognises them — never opened as raw
(which would show the container's metadata as disk data and let the first write destroy
the image).  Those with a read-only driver (vmdk, vpc, vdi, qed, vhdx) open read-only and refuse a
read-write open; the others are refused with a clear error.  ``-f raw`` still opens
them raw."""

from __future__ import annotations

import json
import subprocess

import pytest

from blockbed.block import registry
from blockbed.block.driver import BlockError
from blockbed.cli import main as blockbed_main
from conftest import run_qemu_pbkdf

# (qemu-img create -f FMT, extra options, the format name qemu-img info reports)
READABLE = [
    ("vmdk", [], "vmdk"),
    ("vmdk", ["-o", "subformat=streamOptimized"], "vmdk"),
    ("vmdk", ["-o", "subformat=monolithicFlat"], "vmdk"),       # a text descriptor
    ("vmdk", ["-o", "subformat=twoGbMaxExtentSparse"], "vmdk"),
    ("vpc", [], "vpc"),
    ("vdi", [], "vdi"),
    ("qed", [], "qed"),
    ("vhdx", [], "vhdx"),
]
KINDS = [
    ("qcow", [], "qcow"),
    ("parallels", [], "parallels"),
    ("luks", ["--object", "secret,id=s,data=x", "-o", "key-secret=s,iter-time=10"], "luks"),
]


@pytest.mark.parametrize("fmt,extra,name", KINDS, ids=lambda v: v if isinstance(v, str) else "")
def test_foreign_image_is_detected_and_refused(qemu_img, tmp_path, capsys, fmt, extra, name):
    img = tmp_path / f"disk.{fmt}"
    p = run_qemu_pbkdf(qemu_img, "create", "-q", "-f", fmt, *extra, str(img), "10M")
    assert p.returncode == 0, p.stderr
    info = json.loads(subprocess.run([qemu_img, "info", "--output=json", str(img)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == name                     # what qemu-img's probe says
    before = img.read_bytes()
    capsys.readouterr()
    assert blockbed_main(["img", "info", str(img)]) == 1
    err = capsys.readouterr().err
    assert f"image format '{name}' is not supported" in err and err.count("\n") == 1
    with open(img, "rb") as f:
        assert registry.probe_other_format(f.read(registry.PROBE_BYTES)) == name
    for f in (None, name):
        with pytest.raises(BlockError, match=f"image format '{name}' is not supported"):
            registry.open_image(str(img), f, read_only=False)
    assert img.read_bytes() == before
    # explicitly raw: opens, as in QEMU
    assert blockbed_main(["img", "info", "-f", "raw", str(img)]) == 0
    assert "file format: raw" in capsys.readouterr().out


@pytest.mark.parametrize("fmt,extra,name", READABLE, ids=lambda v: v if isinstance(v, str)
                         else "")
def test_readable_foreign_image_opens_read_only(qemu_img, tmp_path, capsys, fmt, extra, name):
    img = tmp_path / f"disk.{fmt}"
    p = run_qemu_pbkdf(qemu_img, "create", "-q", "-f", fmt, *extra, str(img), "10M")
    assert p.returncode == 0, p.stderr
    before = img.read_bytes()
    capsys.readouterr()
    assert blockbed_main(["img", "info", str(img)]) == 0
    assert f"file format: {name}" in capsys.readouterr().out
    with open(img, "rb") as f:
        assert registry.probe_other_format(f.read(registry.PROBE_BYTES)) == name
    for f in (None, name):
        with pytest.raises(BlockError, match="read-only"):
            registry.open_image(str(img), f, read_only=False)
        registry.open_image(str(img), f, read_only=True).close()
    assert img.read_bytes() == before
    assert blockbed_main(["img", "info", "-f", "raw", str(img)]) == 0
    assert "file format: raw" in capsys.readouterr().out


def test_raw_sector0_guard_knows_foreign_magics(tmp_path):
    """A probed raw image may not be turned into a VMDK by a guest write to sector 0."""
    img = tmp_path / "disk.img"
    img.write_bytes(bytes(1 << 20))
    node = registry.open_image(str(img), None, read_only=False)
    try:
        with pytest.raises(BlockError):
            node.write(0, memoryview(b"KDMV" + bytes(508)))
        node.write(512, memoryview(b"KDMV" + bytes(508)))       # elsewhere: fine
    finally:
        node.close()
    assert img.read_bytes()[:4] == bytes(4)


def test_text_files_are_not_vmdk_descriptors(tmp_path):
    from blockbed.block.foreign import PROBES
    assert PROBES["vmdk"](b"hello world\nthis is text\n" + bytes(100), None) == 0
    assert PROBES["vmdk"](b'# Disk DescriptorFile\nversion=1\ncreateType="monolithicFlat"\n',
                          None) == 100
