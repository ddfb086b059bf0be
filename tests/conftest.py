"""Shared test fixtures.

Tests that need a QEMU tool ask for it through :func:`need_tool` (or the
``qemu_img``/``qemu_io``/``qemu_system`` fixtures).  When the tool is absent
the test is skipped with the reason — unless ``BLOCKBED_REQUIRE_QEMU=1`` (set
by CI), where a missing tool is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GUEST_BUILD = REPO / "guests" / "build"


def need_tool(name: str) -> str:
    """Return the path of ``name`` or skip (fail under BLOCKBED_REQUIRE_QEMU=1)."""
    path = shutil.which(name)
    if path:
        return path
    msg = f"{name} is not installed (Debian: qemu-utils / qemu-system-x86 / libnbd-bin)"
    if os.environ.get("BLOCKBED_REQUIRE_QEMU") == "1":
        pytest.fail(msg + " and BLOCKBED_REQUIRE_QEMU=1")
    pytest.skip(msg)


@pytest.fixture
def qemu_img() -> str:
    return need_tool("qemu-img")


@pytest.fixture
def qemu_io() -> str:
    return need_tool("qemu-io")


@pytest.fixture
def qemu_system() -> str:
    return need_tool("qemu-system-x86_64")


@pytest.fixture(scope="session")
def tools() -> None:
    """Everything a differential guest test needs: QEMU, qemu-img and qemu-io."""
    for name in ("qemu-system-x86_64", "qemu-img", "qemu-io"):
        need_tool(name)


def guest_elf(name: str) -> Path:
    """Path of a built guest; builds the guests if it is missing."""
    elf = GUEST_BUILD / f"{name}.elf"
    if not elf.exists():
        subprocess.run(["make", "-s", "-C", str(REPO / "guests")], check=True)
    return elf


def run_tool(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command, capture text output; on failure show both streams."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc
