"""``blockbed img info`` of the foreign formats prints what ``qemu-img info`` prints.

Differential, text and ``--output=json``: images made by qemu-img create/convert in each
format and subformat (VMDK delta links, QED backing files raw and probed, multi-extent
twoGbMaxExtent images).  Both tools run in the image's directory on relative names, so
filenames, backing paths and extent paths are the same strings; ``disk size`` is read
from the same files.  Nothing is masked.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from fmt_helpers import bb, make_raw, qemu

# (name, how it is made: "convert FMT OPTS" from the pattern, or "create FMT OPTS SIZE")
IMAGES = [
    ("sparse.vmdk", ["convert", "vmdk", "subformat=monolithicSparse"]),
    ("sparse6.vmdk", ["convert", "vmdk", "subformat=monolithicSparse,compat6=on"]),
    ("stream.vmdk", ["convert", "vmdk", "subformat=streamOptimized"]),
    ("flat.vmdk", ["convert", "vmdk", "subformat=monolithicFlat"]),
    ("two.vmdk", ["convert", "vmdk", "subformat=twoGbMaxExtentSparse"]),
    ("twoflat.vmdk", ["convert", "vmdk", "subformat=twoGbMaxExtentFlat"]),
    ("big2g.vmdk", ["create", "vmdk", "subformat=twoGbMaxExtentSparse", "5G"]),
    ("big2gflat.vmdk", ["create", "vmdk", "subformat=twoGbMaxExtentFlat", "5G"]),
    ("empty.vmdk", ["create", "vmdk", "subformat=monolithicSparse", "10M"]),
    ("dyn.vhd", ["convert", "vpc", "subformat=dynamic"]),
    ("force.vhd", ["convert", "vpc", "subformat=dynamic,force_size=on"]),
    ("dyn.vhdx", ["convert", "vhdx", "subformat=dynamic"]),
    ("fixed.vhdx", ["convert", "vhdx", "subformat=fixed"]),
    ("bs.vhdx", ["create", "vhdx", "block_size=1M", "64M"]),
    ("dyn.vdi", ["convert", "vdi", "static=off"]),
    ("static.vdi", ["convert", "vdi", "static=on"]),
    ("a.qed", ["convert", "qed", "cluster_size=65536"]),
    ("big.qed", ["create", "qed", "cluster_size=1M", "1G"]),
]


def _make(qemu_img, tmp_path, name, how):
    op, fmt, opts, *size = how
    if op == "convert":
        qemu(qemu_img, "convert", "-f", "raw", "-O", fmt, "-o", opts, "src.raw", name)
    else:
        qemu(qemu_img, "create", "-q", "-f", fmt, "-o", opts, name, *size)


def _same_info(capsys, qemu_img, name, fmt=(), chain=()):
    for output in ("human", "json"):
        ref = qemu(qemu_img, "info", *fmt, *chain, f"--output={output}", name).stdout
        rc, out, err = bb(capsys, "info", *fmt, *chain, f"--output={output}", name)
        assert (rc, err) == (0, "")
        assert out == ref, f"{name} --output={output}"


@pytest.fixture
def here(tmp_path):
    old = os.getcwd()
    os.chdir(tmp_path)
    make_raw(tmp_path / "src.raw")
    yield tmp_path
    os.chdir(old)


@pytest.mark.parametrize("name,how", IMAGES, ids=[n for n, _ in IMAGES])
def test_info_equals_qemu_img(capsys, qemu_img, here, name, how):
    _make(qemu_img, here, name, how)
    _same_info(capsys, qemu_img, name)


def test_fixed_vhd_info_with_explicit_format(capsys, qemu_img, here):
    """A fixed VHD probes as raw (footer only at the end); with -f vpc: no cluster size."""
    qemu(qemu_img, "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=fixed",
         "src.raw", "fixed.vhd")
    _same_info(capsys, qemu_img, "fixed.vhd", ["-f", "vpc"])


def test_vmdk_delta_link_info(capsys, qemu_img, here):
    """parent cid, backing file (parentFileNameHint) and backing format vmdk."""
    qemu(qemu_img, "convert", "-f", "raw", "-O", "vmdk", "src.raw", "base.vmdk")
    qemu(qemu_img, "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", "top.vmdk")
    _same_info(capsys, qemu_img, "top.vmdk")
    _same_info(capsys, qemu_img, "top.vmdk", chain=["--backing-chain"])


@pytest.mark.parametrize("bfmt", ["raw", "qed"])
def test_qed_backing_file_info(capsys, qemu_img, here, bfmt):
    """QED stores a backing format only as the raw no-probe bit: "raw" or nothing."""
    qemu(qemu_img, "convert", "-f", "raw", "-O", bfmt, "src.raw", f"base.{bfmt}")
    qemu(qemu_img, "create", "-q", "-f", "qed", "-b", f"base.{bfmt}", "-F", bfmt, "top.qed")
    _same_info(capsys, qemu_img, "top.qed")
    _same_info(capsys, qemu_img, "top.qed", chain=["--backing-chain"])


def test_paths_in_a_subdirectory(capsys, qemu_img, here):
    """Extent files and backing paths are relative to the image's directory: the
    extent filenames and full-backing-filename carry the directory, as in qemu-img."""
    (here / "sub").mkdir()
    qemu(qemu_img, "create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse",
         "sub/t.vmdk", "5G")
    qemu(qemu_img, "convert", "-f", "raw", "-O", "qed", "src.raw", "base.qed")
    qemu(qemu_img, "create", "-q", "-f", "qed", "-b", "../base.qed", "-F", "qed", "sub/q.qed")
    for name in ("sub/t.vmdk", "sub/q.qed", str(here / "sub/t.vmdk")):
        _same_info(capsys, qemu_img, name)
    _same_info(capsys, qemu_img, "sub/q.qed", chain=["--backing-chain"])


def test_vmdk_invalid_cid_is_one_line(capsys, qemu_img, here):
    """A CID that is not hex: qemu-img refuses the image (vmdk_read_cid: EINVAL);
    blockbed's info says which field in one line."""
    qemu(qemu_img, "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", "f.vmdk",
         "1M")
    text = (here / "f.vmdk").read_text()
    (here / "f.vmdk").write_text("\n".join("CID=zzzz" if ln.startswith("CID=") else ln
                                           for ln in text.splitlines()) + "\n")
    assert qemu_img and subprocess.run([qemu_img, "info", "f.vmdk"],
                                       capture_output=True).returncode == 1
    rc, out, err = bb(capsys, "info", "f.vmdk")
    assert rc == 1 and out == "" and len(err.splitlines()) == 1
    assert "invalid CID 'zzzz'" in err
