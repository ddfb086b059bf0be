"""``blockbed img convert`` and ``img info`` of OVA archives (blockbed/block/ova.py).

The OVAs are built here with Python's tarfile (USTAR) from streamOptimized VMDKs that
``qemu-img convert -O vmdk -o subformat=streamOptimized`` made of patterned raw files;
each conversion (qcow2 and raw) is checked with ``qemu-img compare`` against its raw
source.  Hostile archives (manifest mismatch, missing disk, malformed OVF, member
paths with ``..`` or absolute, capacity mismatch, a descriptor VMDK naming a host
file) give one clear line and write nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile

import pytest

from fmt_helpers import MiB, bb, make_raw, qemu

NS = "http://schemas.dmtf.org/ovf/envelope/1"


def ovf_xml(disks, units="byte", extra_file="", ns=NS, size_attr="") -> bytes:
    """An OVF envelope: ``disks`` is [(href, capacity)]."""
    refs = "".join(f'<File ovf:id="file{i}" ovf:href="{h}"{size_attr}/>' for i, (h, _) in
                   enumerate(disks, 1))
    ds = "".join(f'<Disk ovf:diskId="vmdisk{i}" ovf:fileRef="file{i}" ovf:capacity="{c}" '
                 f'ovf:capacityAllocationUnits="{units}" ovf:format="http://www.vmware.com/'
                 'interfaces/specifications/vmdk.html#streamOptimized"/>'
                 for i, (_, c) in enumerate(disks, 1))
    return (f'<?xml version="1.0"?><Envelope xmlns="{ns}" xmlns:ovf="{ns}">'
            f'<References>{refs}{extra_file}</References><DiskSection><Info>d</Info>{ds}'
            '</DiskSection><VirtualSystem ovf:id="vm"/></Envelope>').encode()


def build_ova(path, members, manifest=True, algo="sha256", fmt=tarfile.USTAR_FORMAT):
    """A USTAR tar of ``members`` ([(name, bytes)]), the .ovf first, then a manifest."""
    if manifest:
        lines = "".join(f"{algo.upper()}({n})= {hashlib.new(algo, b).hexdigest()}\n"
                        for n, b in members)
        members = [members[0], ("vm.mf", lines.encode()), *members[1:]]
    with tarfile.open(path, "w", format=fmt) as t:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))


def stream_vmdk(qemu_img, tmp_path, name, size, seed):
    raw = tmp_path / f"{name}.raw"
    runs = [(seed * 4096, 70000), (size // 2 + 512, 5000 + seed)]
    make_raw(raw, size=size, runs=runs)
    vmdk = tmp_path / f"{name}.vmdk"
    qemu(qemu_img, "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized",
         str(raw), str(vmdk))
    vsize = json.loads(qemu(qemu_img, "info", "--output=json", str(vmdk)).stdout)["virtual-size"]
    return raw, vmdk.read_bytes(), vsize


@pytest.fixture
def two(qemu_img, tmp_path):
    """Two disks: (raw sources, OVA members)."""
    r1, d1, s1 = stream_vmdk(qemu_img, tmp_path, "d1", 10 * MiB + 1536, 1)
    r2, d2, s2 = stream_vmdk(qemu_img, tmp_path, "d2", 3 * MiB, 2)
    return [r1, r2], [("d1.vmdk", d1), ("d2.vmdk", d2)], [s1, s2]


def _compare(qemu_img, out, fmt, raw):
    r = subprocess.run([qemu_img, "compare", "-f", fmt, "-F", "raw", str(out), str(raw)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _one_error(capsys, tmp_path, ova, *args):
    before = set(os.listdir(tmp_path))
    rc, out, err = bb(capsys, "convert", "-O", "qcow2", *args, str(ova),
                      str(tmp_path / "out.qcow2"))
    assert rc == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert set(os.listdir(tmp_path)) == before, "a failed convert wrote files"
    return err


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_single_disk_ova_converts(capsys, qemu_img, tmp_path, fmt):
    raw, data, size = stream_vmdk(qemu_img, tmp_path, "d1", 10 * MiB + 1536, 1)
    ova = tmp_path / "vm.ova"
    build_ova(ova, [("vm.ovf", ovf_xml([("d1.vmdk", size)])), ("d1.vmdk", data)])
    out = tmp_path / f"out.{fmt}"
    rc, _, err = bb(capsys, "convert", "-O", fmt, str(ova), str(out))
    assert (rc, err) == (0, "")
    _compare(qemu_img, out, fmt, raw)


@pytest.mark.parametrize("tarfmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_gnu_and_pax_tars_with_long_names(capsys, qemu_img, tmp_path, tarfmt):
    """Long member names (GNU longname, PAX path records) are resolved by tarfile; the
    disk is still read in place at its data offset."""
    raw, data, size = stream_vmdk(qemu_img, tmp_path, "d1", 2 * MiB, 3)
    name = "disks/" + "x" * 120 + ".vmdk"
    ova = tmp_path / "vm.ova"
    build_ova(ova, [("vm.ovf", ovf_xml([(name, size)])), (name, data)], fmt=tarfmt)
    rc, _, err = bb(capsys, "convert", "-O", "qcow2", str(ova), str(tmp_path / "o.qcow2"))
    assert (rc, err) == (0, "")
    _compare(qemu_img, tmp_path / "o.qcow2", "qcow2", raw)


def test_several_disks_get_numbered_outputs(capsys, qemu_img, tmp_path, two):
    raws, members, sizes = two
    ova = tmp_path / "vm.ova"
    build_ova(ova, [("vm.ovf", ovf_xml(list(zip(["d1.vmdk", "d2.vmdk"], sizes)))), *members],
              algo="sha1")
    rc, _, err = bb(capsys, "convert", "-O", "qcow2", str(ova), str(tmp_path / "out.qcow2"))
    assert (rc, err) == (0, "")
    assert not (tmp_path / "out.qcow2").exists()
    for n, raw in enumerate(raws, 1):
        _compare(qemu_img, tmp_path / f"out-{n}.qcow2", "qcow2", raw)
    rc, _, err = bb(capsys, "convert", "-O", "raw", "--disk", "2", str(ova),
                    str(tmp_path / "second.raw"))
    assert (rc, err) == (0, "")
    _compare(qemu_img, tmp_path / "second.raw", "raw", raws[1])
    assert "has 2 disk(s)" in _one_error(capsys, tmp_path, ova, "--disk", "3")


def test_capacity_units_and_info(capsys, qemu_img, tmp_path):
    """``byte * 2^20`` capacities, the OVF 2.0 namespace, a correct ovf:size; img info
    lists the disks (text and json)."""
    raw, data, size = stream_vmdk(qemu_img, tmp_path, "d1", 4 * MiB, 0)
    ova = tmp_path / "vm.ova"
    ovf = ovf_xml([("d1.vmdk", size // MiB)], units="byte * 2^20",
                  ns="http://schemas.dmtf.org/ovf/envelope/2",
                  size_attr=f' ovf:size="{len(data)}"')
    build_ova(ova, [("vm.ovf", ovf), ("d1.vmdk", data)])
    rc, out, err = bb(capsys, "info", "--output=json", str(ova))
    assert (rc, err) == (0, "")
    info = json.loads(out)
    assert (info["format"], info["manifest"], info["disks"][0]["virtual-size"],
            info["disks"][0]["filename"]) == ("ova", "vm.mf", 4 * MiB, "d1.vmdk")
    rc, out, err = bb(capsys, "info", str(ova))
    assert rc == 0 and "[1]: d1.vmdk (vmdk, disk id vmdisk1): virtual size 4 MiB" in out
    rc, _, err = bb(capsys, "convert", "-O", "qcow2", str(ova), str(tmp_path / "o.qcow2"))
    assert (rc, err) == (0, "")
    _compare(qemu_img, tmp_path / "o.qcow2", "qcow2", raw)


def test_manifest_mismatch_is_one_line(capsys, qemu_img, tmp_path):
    raw, data, size = stream_vmdk(qemu_img, tmp_path, "d1", MiB, 0)
    ovf = ovf_xml([("d1.vmdk", size)])
    ova = tmp_path / "vm.ova"
    mf = f"SHA256(vm.ovf)= {hashlib.sha256(ovf).hexdigest()}\nSHA256(d1.vmdk)= {'0' * 64}\n"
    build_ova(ova, [("vm.ovf", ovf), ("vm.mf", mf.encode()), ("d1.vmdk", data)],
              manifest=False)
    err = _one_error(capsys, tmp_path, ova)
    assert "manifest SHA256 mismatch for 'd1.vmdk'" in err
    rc, _, err = bb(capsys, "info", str(ova))
    assert rc == 1 and "mismatch" in err


@pytest.mark.parametrize("case,needle", [
    ("missing", "the file 'd1.vmdk' is not in the archive"),
    ("malformed", "not well-formed XML"),
    ("dotdot", "'../evil.vmdk' is not a plain relative name"),
    ("absolute", "'/tmp/evil.vmdk' is not a plain relative name"),
    ("dotdotdir", "'a/../../up' is not a plain relative name"),
    ("symlink", "member 'link.vmdk' is not a regular file"),
    ("href", "ovf:href '../d1.vmdk' is not a plain relative name"),
    ("capacity", "the OVF capacity is"),
    ("units", "capacity unit 'sectors' is not a multiple of byte"),
    ("notdisk", "is raw, not a VMDK disk"),
    ("ovfsize", "its ovf:size says 7"),
    ("extent", "outside the archive"),
    ("relextent", "cannot use relative paths with VMDK descriptor file"),
])
def test_hostile_archives_fail_cleanly(capsys, qemu_img, tmp_path, case, needle):
    raw, data, size = stream_vmdk(qemu_img, tmp_path, "d1", MiB, 0)
    ovf = ovf_xml([("d1.vmdk", size)])
    members = [("vm.ovf", ovf), ("d1.vmdk", data)]
    if case == "missing":
        members = members[:1]
    elif case == "malformed":
        members[0] = ("vm.ovf", ovf[:-20])
    elif case in ("dotdot", "absolute"):
        members.append(("../evil.vmdk" if case == "dotdot" else "/tmp/evil.vmdk", b"x"))
    elif case == "href":
        members[0] = ("vm.ovf", ovf_xml([("../d1.vmdk", size)]))
    elif case == "capacity":
        members[0] = ("vm.ovf", ovf_xml([("d1.vmdk", size + 512)]))
    elif case == "units":
        members[0] = ("vm.ovf", ovf_xml([("d1.vmdk", size)], units="sectors"))
    elif case == "ovfsize":
        members[0] = ("vm.ovf", ovf_xml([("d1.vmdk", size)], size_attr=' ovf:size="7"'))
    elif case == "notdisk":
        members[1] = ("d1.vmdk", bytes(size))
    elif case in ("extent", "relextent"):   # a descriptor VMDK naming a host file
        target = raw if case == "extent" else raw.name
        desc = (f'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                f'createType="monolithicFlat"\nRW {size // 512} FLAT "{target}" 0\n').encode()
        members[1] = ("d1.vmdk", desc)
    ova = tmp_path / "vm.ova"
    build_ova(ova, members, manifest=case not in ("dotdot", "absolute"))
    if case in ("dotdotdir", "symlink"):
        with tarfile.open(ova, "a", format=tarfile.USTAR_FORMAT) as t:
            ti = tarfile.TarInfo("a/../../up" if case == "dotdotdir" else "link.vmdk")
            ti.type = tarfile.DIRTYPE if case == "dotdotdir" else tarfile.SYMTYPE
            ti.linkname = "/etc/passwd"
            t.addfile(ti)
    assert needle in _one_error(capsys, tmp_path, ova)


def test_no_output_when_a_later_disk_is_bad(capsys, qemu_img, tmp_path, two):
    """Every disk is checked before the first output is created."""
    _, members, sizes = two
    ova = tmp_path / "vm.ova"
    build_ova(ova, [("vm.ovf", ovf_xml([("d1.vmdk", sizes[0]), ("d2.vmdk", sizes[1] * 2)])),
                    *members])
    assert "disk 2 ('d2.vmdk')" in _one_error(capsys, tmp_path, ova)


def test_virtualbox_manifest_spacing_and_cert(capsys, qemu_img, tmp_path):
    """VirtualBox writes ``SHA256 (name) = hex``; a certificate member is ignored."""
    raw, data, size = stream_vmdk(qemu_img, tmp_path, "d1", MiB, 1)
    ovf = ovf_xml([("vm-disk001.vmdk", size)])
    mf = "".join(f"SHA256 ({n}) = {hashlib.sha256(b).hexdigest()}\n"
                 for n, b in (("vm.ovf", ovf), ("vm-disk001.vmdk", data)))
    ova = tmp_path / "vm.ova"
    build_ova(ova, [("vm.ovf", ovf), ("vm.mf", mf.encode()), ("vm.cert", b"SHA256(vm.mf)= 0\n"),
                    ("vm-disk001.vmdk", data)], manifest=False)
    rc, _, err = bb(capsys, "convert", "-O", "raw", str(ova), str(tmp_path / "o.raw"))
    assert (rc, err) == (0, "")
    _compare(qemu_img, tmp_path / "o.raw", "raw", raw)


def test_truncated_archive(capsys, qemu_img, tmp_path):
    raw, data, size = stream_vmdk(qemu_img, tmp_path, "d1", MiB, 0)
    ova = tmp_path / "vm.ova"
    build_ova(ova, [("vm.ovf", ovf_xml([("d1.vmdk", size)])), ("d1.vmdk", data)],
              manifest=False)
    with open(ova, "r+b") as f:
        f.truncate(4096 + len(data) // 2)
    err = _one_error(capsys, tmp_path, ova)
    assert "truncated" in err or "not a readable tar archive" in err


def test_not_a_tar_with_format_ova(capsys, tmp_path):
    bad = tmp_path / "x.ova"
    bad.write_bytes(b"not a tar" * 100)
    assert "not a readable tar archive" in _one_error(capsys, tmp_path, bad, "-f", "ova")


def test_disk_option_needs_an_ova(capsys, tmp_path):
    src = tmp_path / "a.raw"
    make_raw(src, size=MiB, runs=[(0, 512)])
    assert "not an OVA" in _one_error(capsys, tmp_path, src, "--disk", "1")


def _gzip_ovf(disks, compression="gzip"):
    return ovf_xml(disks).replace(b'ovf:href="d1.vmdk"',
                                  f'ovf:href="d1.vmdk" ovf:compression="{compression}"'.encode())


def test_gzip_compressed_disk_converts(capsys, qemu_img, tmp_path):
    """ovf:compression="gzip" (DSP0243): the stored member is gzip of the VMDK; the
    manifest hashes the stored bytes.  Two concatenated gzip members, split so the
    second starts exactly on a 64 KiB read boundary, are one stream (a decompressor
    that dropped the second member would leave a short disk that still opened)."""
    import gzip
    from blockbed.block.ova import GUNZIP_CHUNK
    raw, data, size = stream_vmdk(qemu_img, tmp_path, "d1", 10 * MiB + 1536, 1)
    # level 0 (stored blocks): the member's length follows the cut byte for byte, so a
    # cut can be chosen to make the first member end on a read boundary
    cut = len(data) // 2
    while len(gzip.compress(data[:cut], compresslevel=0, mtime=0)) % GUNZIP_CHUNK:
        cut -= 1
    stored = gzip.compress(data[:cut], compresslevel=0, mtime=0) + gzip.compress(data[cut:], mtime=0)
    assert len(stored) > GUNZIP_CHUNK and cut > 0
    ova = tmp_path / "vm.ova"
    build_ova(ova, [("vm.ovf", _gzip_ovf([("d1.vmdk", size)])), ("d1.vmdk", stored)])
    out = tmp_path / "out.qcow2"
    rc, _, err = bb(capsys, "convert", "-O", "qcow2", str(ova), str(out))
    assert (rc, err) == (0, "")
    _compare(qemu_img, out, "qcow2", raw)
    import tempfile
    assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("blockbed-ova-")]


@pytest.mark.parametrize("case,needle", [
    ("truncated", "the gzip stream is truncated"),
    ("garbage", "not valid gzip data"),
    ("trailing", "not valid gzip data"),
    ("bomb", "decompresses to more than"),
    ("bzip2", "compressed with 'bzip2'; only gzip"),
])
def test_bad_gzip_members_fail_cleanly(capsys, qemu_img, tmp_path, case, needle):
    import gzip
    raw, data, size = stream_vmdk(qemu_img, tmp_path, "d1", MiB, 0)
    stored = gzip.compress(data, mtime=0)
    if case == "truncated":
        stored = stored[:len(stored) // 2]
    elif case == "garbage":
        stored = b"\x1f\x8b" + bytes(100)
    elif case == "trailing":
        stored += b"JUNK" * 10
    elif case == "bomb":                    # 1 MiB disk, 200 MiB of zeros inside
        stored = gzip.compress(bytes(200 * MiB), compresslevel=1, mtime=0)
    ova = tmp_path / "vm.ova"
    build_ova(ova, [("vm.ovf", _gzip_ovf([("d1.vmdk", size)], "bzip2" if case == "bzip2"
                                         else "gzip")), ("d1.vmdk", stored)])
    assert needle in _one_error(capsys, tmp_path, ova)
