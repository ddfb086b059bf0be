"""docs/tutorial.md cannot rot: every exercise's command runs here and the answer
the document states (``answer-N: key=value …`` in its Answers section) must be
what the tools print today.  Run with ``BLOCKBED_TUTORIAL_PRINT=1`` to print
the current answers (to update the document after a deliberate change).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, guest_elf

DOC = REPO / "docs" / "tutorial.md"
CONTROLLERS = ("virtio", "ahci", "ide", "lsi")


def blockbed(*argv: str, cwd: Path, ok=(0,)) -> str:
    p = subprocess.run([sys.executable, "-m", "blockbed", *argv], capture_output=True, text=True, cwd=cwd,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode in ok, f"blockbed {' '.join(argv)}: {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout


def section(out: str, title: str) -> str:
    return out.split(f"== the first {title}")[1].split("== the first")[0]


def first_write_command(out: str, ctl: str) -> str:
    line = next(l for l in section(out, "write").splitlines() if "req.submit" in l)
    pat = {"virtio": r"header\{type=(\w+)", "ahci": r"command=(.+?) command_code",
           "ide": r"command=(.+?) command_code", "lsi": r"opcode=(.+?) opcode_code"}[ctl]
    return re.search(pat, line).group(1).replace(" ", "_")


def answers(tmp: Path) -> dict[int, dict[str, str]]:
    guest_elf("disktest")
    out: dict[int, dict[str, str]] = {1: {}, 2: {}, 3: {}, 4: {}, 5: {}, 6: {}, 7: {}}
    for ctl in CONTROLLERS:                                   # exercises 1 and 2
        blockbed("img", "create", "-f", "qcow2", f"{ctl}.qcow2", "16M", cwd=tmp)
        o = blockbed("explain", "--drive", f"file={ctl}.qcow2,format=qcow2,if={ctl}", cwd=tmp)
        out[1][ctl] = re.search(r"exits per request: ([\d.]+)", o).group(1)
        out[2][ctl] = first_write_command(o, ctl)
    for cache in ("writeback", "writethrough", "unsafe"):     # exercise 3
        blockbed("img", "create", "-f", "raw", f"{cache}.raw", "16M", cwd=tmp)
        o = blockbed("explain", "--drive", f"file={cache}.raw,format=raw,if=virtio,cache={cache}", cwd=tmp)
        w, f = section(o, "write"), section(o, "flush")
        fua = re.search(r"file\.pwritev .*fua=(\w+)", w).group(1)
        out[3][cache] = (f"fua:{fua},write-fdatasync:{w.count('file.fdatasync')},"
                         f"flush-fdatasync:{f.count('file.fdatasync')}")
    blockbed("img", "create", "-f", "qcow2", "e4.qcow2", "16M", cwd=tmp)   # exercises 4, 5, 7
    runs = [blockbed("explain", "--drive", "file=e4.qcow2,format=qcow2,if=ahci", cwd=tmp) for _ in range(2)]
    for name, o in zip(("fresh", "again"), runs):
        w = section(o, "write")
        out[4][name] = f"syscalls:{w.count('protocol   file.')},alloc:{w.count('qcow2.alloc ')}"
    w = section(runs[0], "write")
    out[5]["clusters"] = "+".join(re.findall(r"refcount_update cluster=(\d+)", w))
    out[5]["fdatasync"] = str(w.count("file.fdatasync"))
    m = blockbed("img", "map", "--picture", "e4.svg", "e4.qcow2", cwd=tmp)
    out[7]["data"] = re.search(r"data (\d+)", m).group(1)
    out[7]["L2"] = re.search(r"L2 table (\d+)", m).group(1)
    blockbed("img", "create", "-f", "raw", "ct.raw", "16M", cwd=tmp)       # exercise 6
    for cache in ("writeback", "unsafe"):
        o = blockbed("crashtest", "--drive", f"file=ct.raw,format=raw,if=virtio,cache={cache}", "--states", "100",
                     "--append", "dev=virtio seed=1 ops=40 qd=4", cwd=tmp, ok=(0, 1))
        out[6][cache] = re.search(r"RESULT: (\w+)", o).group(1)
    return out


def stated() -> dict[int, dict[str, str]]:
    got = {}
    for n, body in re.findall(r"`answer-(\d+): ([^`]*)`", DOC.read_text()):
        got[int(n)] = dict(kv.split("=", 1) for kv in body.split())
    return got


def test_tutorial_answers_hold(tmp_path):
    now = answers(tmp_path)
    if os.environ.get("BLOCKBED_TUTORIAL_PRINT"):
        for n, kv in now.items():
            print(f"`answer-{n}: " + " ".join(f"{k}={v}" for k, v in kv.items()) + "`")
    doc = stated()
    assert sorted(doc) == sorted(now), "every exercise has exactly one stated answer"
    assert len(doc) >= 6
    for n in sorted(now):
        assert doc[n] == now[n], f"exercise {n}: the tutorial says {doc[n]}, the tools now print {now[n]}"


@pytest.mark.parametrize("n", range(1, 8))
def test_each_exercise_has_a_command(n):
    text = DOC.read_text()
    assert f"### Exercise {n}" in text
    block = text.split(f"### Exercise {n}")[1].split("###")[0]
    assert "```" in block and "blockbed " in block
