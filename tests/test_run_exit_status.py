"""``blockbed run`` exit statuses cannot be mistaken for one another: guest debug-exit
values 0..118 are the status, larger ones (which would collide with the host outcomes
120..125 or wrap around to 0 = success) are 119, and stderr always says which outcome
it was and the guest's value."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

ASM = Path(__file__).parent / "asm"


def _guest(tmp_path: Path, value: int) -> Path:
    if not shutil.which("gcc"):
        pytest.skip("gcc is needed to build the test guest")
    obj, elf = tmp_path / f"e{value}.o", tmp_path / f"e{value}.elf"
    subprocess.run(["gcc", "-m32", "-c", "-x", "assembler-with-cpp", "-I", str(ASM),
                    f"-DEXIT_VALUE={value}",
                    str(ASM / "exit_value.asm"), "-o", str(obj)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext=0x100000", str(obj), "-o", str(elf)],
                   check=True)
    return elf


@pytest.mark.parametrize("value,status", [(0, 0), (1, 1), (2, 2), (118, 118), (119, 119),
                                          (121, 119), (124, 119), (255, 119), (256, 119),
                                          (512, 119), (0xFFFFFFFF, 119)])
def test_guest_values_never_collide(tmp_path, value, status):
    elf = _guest(tmp_path, value)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-m", "blockbed", "run", "--kernel", str(elf),
                        "--timeout", "20"], capture_output=True, text=True, env=env)
    assert p.returncode == status, p.stderr
    if value:
        assert f"guest exited with debug-exit value {value}" in p.stderr
    else:
        assert "guest exited with debug-exit value" not in p.stderr
    assert "guest fault" not in p.stderr
