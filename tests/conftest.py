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
    msg = f"{name} is not installed (Debian: qemu-utils / qemu-system-x86 / libnbd-bin / acpica-tools)"
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


# Debian's qemu 7.2 sizes every LUKS header with a PBKDF2 iteration benchmark that
# fails with this message when the thread CPU clock did not move during its timed
# loop (hosts whose per-thread CPU time advances in whole scheduler ticks; about 40%
# of attempts on an idle 2-core machine).  That is the reference tool failing to
# measure, not an answer.
QEMU_PBKDF_CLOCK = "Unable to get accurate CPU usage"


def run_qemu_pbkdf(*argv: str, budget_s: float = 60.0, **kw) -> subprocess.CompletedProcess:
    """Run a qemu tool that creates a LUKS header, again while it fails only with
    QEMU_PBKDF_CLOCK.  After ``budget_s`` the last result is returned: the caller's
    assertion then fails, never skips, so CI cannot pass without the reference."""
    import time
    deadline = time.monotonic() + budget_s
    while True:
        p = subprocess.run(list(argv), capture_output=True, text=True, **kw)
        if QEMU_PBKDF_CLOCK not in p.stderr or time.monotonic() > deadline:
            return p
        time.sleep(0.05)
