"""Build build/linux/bzImage and build/linux/initramfs.cpio.gz from Debian packages only.

Packages come from `apt-get download` (the kernel named by linux-image-amd64's dependency,
busybox-static, e2fsprogs) and are unpacked with `dpkg-deb -x`.  Debian's kernel package has
no modules.dep, so the module dependency closure is computed from each module's own
`.modinfo` section ("depends=" field), as depmod does.  The result is cached: a second run
with the same package versions and the same init script does nothing.

Usage: python -m blockbed.linuxguest.build [--out build/linux] [--debs DIR]
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from blockbed.linuxguest import layout

#: Modules each controller needs (their dependencies are added automatically).
CONTROLLER_MODULES: dict[str, list[str]] = {
    "virtio": ["virtio_pci", "virtio_blk"],
    "ahci": ["ahci", "sd_mod"],
    "ide": ["ata_piix", "sd_mod"],
    "lsi": ["sym53c8xx", "sd_mod"],
}
#: Loaded for every controller: ext4 and the checksum it looks up through the crypto API.
COMMON_MODULES = ["crc32c_generic", "ext4"]
BINARIES = ["sbin/mke2fs", "sbin/e2fsck"]
INIT = Path(__file__).with_name("init.sh")


class BuildError(Exception):
    """A clear reason the guest cannot be built (no traceback for the user)."""


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    except FileNotFoundError as e:
        raise BuildError(f"{cmd[0]} not found: {e}") from None
    except subprocess.CalledProcessError as e:
        raise BuildError(f"{' '.join(cmd)} failed: {e.stderr.strip()}") from None


def kernel_package() -> str:
    """The versioned kernel package linux-image-amd64 depends on (e.g. linux-image-6.1.0-57-amd64)."""
    out = _run(["apt-cache", "depends", "linux-image-amd64"]).stdout
    m = re.search(r"Depends:\s*(linux-image-\S+-amd64)", out)
    if not m:
        raise BuildError("apt-cache knows no linux-image-amd64 (run apt-get update)")
    return m.group(1)


def download(debs: Path) -> list[Path]:
    """apt-get download the three packages into debs (reusing files already there)."""
    debs.mkdir(parents=True, exist_ok=True)
    wanted = [kernel_package(), "busybox-static", "e2fsprogs"]
    have = {p.name.split("_")[0]: p for p in debs.glob("*.deb")}
    missing = [w for w in wanted if w not in have]
    if missing:
        _run(["apt-get", "download", *missing], cwd=debs)
        have = {p.name.split("_")[0]: p for p in debs.glob("*.deb")}
    return [have[w] for w in wanted]


@dataclass
class Module:
    name: str
    path: Path
    depends: list[str]

    def data(self) -> bytes:
        raw = self.path.read_bytes()
        return lzma.decompress(raw) if self.path.name.endswith(".xz") else raw


def _modinfo_depends(data: bytes) -> list[str]:
    m = re.search(rb"depends=([A-Za-z0-9_,-]*)\x00", data)
    return [d for d in m.group(1).decode().split(",") if d] if m else []


def scan_modules(root: Path) -> dict[str, Module]:
    """Index every .ko / .ko.xz under root/lib/modules by its name (dashes as underscores)."""
    mods: dict[str, Module] = {}
    for p in root.glob("lib/modules/*/kernel/**/*.ko*"):
        name = re.sub(r"\.ko(\.xz)?$", "", p.name).replace("-", "_")
        mod = Module(name, p, [])
        mod.depends = [d.replace("-", "_") for d in _modinfo_depends(mod.data())]
        mods[name] = mod
    return mods


def closure(mods: dict[str, Module], wanted: list[str], done: set[str]) -> list[str]:
    """Dependency-first load order of wanted, leaving out names already in done."""
    order: list[str] = []

    def visit(n: str) -> None:
        if n in done:
            return
        if n not in mods:
            raise BuildError(f"kernel module {n} not found (built in? check modules.builtin)")
        done.add(n)
        for d in mods[n].depends:
            visit(d)
        order.append(n)

    for w in wanted:
        visit(w)
    return order


def _libs(binary: Path) -> list[Path]:
    out = _run(["ldd", str(binary)]).stdout
    return [Path(p) for p in re.findall(r"(/\S+\.so[.\d]*)", out)]


def _cpio_newc(files: dict[str, tuple[int, bytes]]) -> bytes:
    """A newc cpio archive of {path: (mode, data)}; symlinks have mode 0o120777 and data=target."""
    buf = io.BytesIO()
    ino = 1
    for name, (mode, data) in sorted(files.items()):
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
        buf.write(hdr.encode() + nb)
        buf.write(b"\0" * (-(110 + len(nb)) % 4))
        buf.write(data)
        buf.write(b"\0" * (-len(data) % 4))
        ino += 1
    nb = b"TRAILER!!!\0"
    buf.write(("070701" + "0" * 8 * 11 + f"{len(nb):08x}" + "0" * 8).encode() + nb)
    buf.write(b"\0" * (-(110 + len(nb)) % 4))
    return buf.getvalue()


def init_script() -> bytes:
    s = INIT.read_text()
    s = s.replace("@PATTERN_OFFSET_MB@", str(layout.PATTERN_OFFSET // layout.MiB))
    s = s.replace("@PATTERN_MB@", str(layout.PATTERN_SIZE // layout.MiB))
    s = s.replace("@FS_KB@", str(layout.FS_SIZE // 1024))
    return s.encode()


def build_initramfs(root: Path) -> bytes:
    files: dict[str, tuple[int, bytes]] = {}
    for d in ("bin", "sbin", "dev", "proc", "sys", "mnt", "modules", "lib", "lib64", "tmp"):
        files[d] = (0o40755, b"")
    files["bin/busybox"] = (0o100755, (root / "bin/busybox").read_bytes())
    files["init"] = (0o100755, init_script())
    files["pattern.bin"] = (0o100644, layout.pattern())
    for b in BINARIES:
        files[b] = (0o100755, (root / b).read_bytes())
        for lib in _libs(root / b):
            files[str(lib).lstrip("/")] = (0o100755, lib.resolve().read_bytes())
    if "usr" in {p.split("/")[0] for p in files}:
        files["usr"] = (0o40755, b"")
    for p in list(files):
        parts = p.split("/")
        for i in range(1, len(parts)):
            files.setdefault("/".join(parts[:i]), (0o40755, b""))
    mods = scan_modules(root)
    done: set[str] = set()
    lists = {"common": closure(mods, COMMON_MODULES, done)}
    for ctrl, wanted in CONTROLLER_MODULES.items():
        lists[ctrl] = closure(mods, wanted, set(done))
    for ctrl, names in lists.items():
        files[f"modules/{ctrl}.list"] = (0o100644, "".join(f"{n}.ko\n" for n in names).encode())
        for n in names:
            files[f"modules/{n}.ko"] = (0o100644, mods[n].data())
    return gzip.compress(_cpio_newc(files), 6, mtime=0)


def build(out: Path, debs: Path) -> tuple[Path, Path]:
    """Build (or reuse from cache) bzImage and initramfs.cpio.gz in out."""
    pkgs = download(debs)
    key = hashlib.sha256()
    for p in pkgs:
        key.update(p.name.encode())
    key.update(init_script())
    key.update(Path(__file__).read_bytes())
    key.update(Path(layout.__file__).read_bytes())
    stamp = out / "cache-key"
    kernel, initrd = out / "bzImage", out / "initramfs.cpio.gz"
    if stamp.exists() and stamp.read_text() == key.hexdigest() and kernel.exists() and initrd.exists():
        return kernel, initrd
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="linuxguest-") as tmp:
        root = Path(tmp)
        for p in pkgs:
            _run(["dpkg-deb", "-x", str(p), str(root)])
        vmlinuz = next(root.glob("boot/vmlinuz-*"))
        shutil.copyfile(vmlinuz, kernel)
        initrd.write_bytes(build_initramfs(root))
    stamp.write_text(key.hexdigest())
    return kernel, initrd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("build/linux"))
    ap.add_argument("--debs", type=Path, default=Path("build/linux/debs"))
    a = ap.parse_args(argv)
    try:
        kernel, initrd = build(a.out, a.debs)
    except BuildError as e:
        print(f"linux-guest: {e}", file=sys.stderr)
        return 1
    print(f"{kernel} ({kernel.stat().st_size} bytes), {initrd} ({initrd.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
