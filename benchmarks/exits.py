"""Port-I/O and MMIO exits per second through blockbed's dispatch.

A guest executes N ``out`` instructions to a port with an empty handler, then
N 32-bit MMIO writes to a region with an empty handler, then exits.  The time
of each phase is taken from the host side (the handlers mark phase changes),
so the figure is exits through the full path: unicorn callback → bus lookup →
event tick → handler.  For comparison the same loops run on a bare unicorn
with do-nothing hooks, registered through the Python binding and, as the machine
registers its own (machine/uc_direct.py), as plain function pointers.

Target (issue 16): >= 2 million exits per second through the dispatch.
Run: ``python benchmarks/exits.py [N]``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from blockbed.machine import Machine, MachineConfig  # noqa: E402

GUEST = r"""
#include "prologue.S"
body:
  mov $0x511, %dx          /* phase marker: start of port loop */
  out %al, %dx
  mov $N, %ecx
  mov $0x510, %dx
1: out %al, %dx
  dec %ecx
  jnz 1b
  mov $0x511, %dx          /* phase marker: start of MMIO loop */
  out %al, %dx
  mov $N, %ecx
  mov $0xE0000000, %ebx
2: movl %eax, (%rbx)
  dec %ecx
  jnz 2b
  mov $0x511, %dx
  out %al, %dx
  mov $0, %al
  jmp guest_exit
"""


class Empty:
    def read(self, offset, size):
        return 0

    def write(self, offset, size, value):
        pass


class Marker:
    def __init__(self):
        self.times: list[float] = []

    def read(self, offset, size):
        return 0

    def write(self, offset, size, value):
        self.times.append(time.perf_counter())


def build(n: int, out: Path) -> Path:
    src = out / "exits.S"
    src.write_text(GUEST.replace("$N", f"${n}"))
    obj, elf = out / "exits.o", out / "exits.elf"
    subprocess.run(["gcc", "-m32", "-c", "-I", str(REPO / "tests" / "asm"), str(src), "-o", str(obj)], check=True)
    subprocess.run(["ld", "-m", "elf_i386", "-Ttext=0x100000", str(obj), "-o", str(elf)], check=True)
    return elf


def blockbed_rates(elf: Path, n: int) -> tuple[float, float]:
    m = Machine(MachineConfig(memory_mib=32, timeout_s=600))
    marker = Marker()
    m.pio.add("empty", 0x510, 1, Empty())
    m.pio.add("marker", 0x511, 1, marker)
    m.mmio.add("empty", 0xE0000000, 0x1000, Empty())
    m.load_kernel(str(elf))
    r = m.run()
    assert r.exit_code == 0, r.reason
    t0, t1, t2 = marker.times
    return n / (t1 - t0), n / (t2 - t1)


def unicorn_alone_rates(n: int, direct: bool) -> tuple[float, float]:
    """The same loops on a bare unicorn with do-nothing hooks, registered through the
    Python binding or (``direct``) as plain function pointers, as the machine does."""
    import ctypes
    import mmap

    from unicorn import UC_ARCH_X86, UC_HOOK_INSN, UC_MODE_32, UC_PROT_ALL, Uc
    from unicorn import x86_const as X

    code = bytes.fromhex("b9") + n.to_bytes(4, "little") + bytes.fromhex("66ba1005" "ee" "49" "75fc")
    code2 = bytes.fromhex("b9") + n.to_bytes(4, "little") + bytes.fromhex("bb000000e0" "8903" "49" "75fb" "f4")
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    mm = mmap.mmap(-1, 16 << 20)
    uc.mem_map_ptr(0, 16 << 20, UC_PROT_ALL, ctypes.addressof(ctypes.c_char.from_buffer(mm)))
    mm[0x1000:0x1000 + len(code)] = code
    mm[0x2000:0x2000 + len(code2)] = code2
    if direct:
        from blockbed.machine import uc_direct
        uc_direct.hook_insn(uc, X.UC_X86_INS_OUT, uc_direct.OUT_CFUNC, lambda h, port, size, value, ud: None)
        uc_direct.mmio_map(uc, 0xE0000000, 0x1000, lambda *a: 0, lambda *a: None)
    else:
        uc.hook_add(UC_HOOK_INSN, lambda uc, port, size, value, ud: None, None, 1, 0, X.UC_X86_INS_OUT)
        uc.mmio_map(0xE0000000, 0x1000, lambda *a: 0, None, lambda *a: None, None)
    t = time.perf_counter()
    uc.emu_start(0x1000, 0x1000 + len(code))
    pio = n / (time.perf_counter() - t)
    t = time.perf_counter()
    uc.emu_start(0x2000, 0x2000 + len(code2) - 1)
    mmio = n / (time.perf_counter() - t)
    return pio, mmio


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        elf = build(n, Path(tmp))
        pio, mmio = blockbed_rates(elf, n)
    upio, ummio = unicorn_alone_rates(n, direct=False)
    dpio, dmmio = unicorn_alone_rates(n, direct=True)
    print(f"exits per second, {n} of each kind (target of issue 16: >= 2,000,000 through the dispatch)")
    print(f"{'':18}{'blockbed':>12}{'bare, binding':>15}{'ratio':>7}{'bare, direct':>14}{'ratio':>7}")
    print(f"{'port I/O (out)':18}{pio:12,.0f}{upio:15,.0f}{pio / upio:7.2f}{dpio:14,.0f}{pio / dpio:7.2f}")
    print(f"{'MMIO (32-bit wr)':18}{mmio:12,.0f}{ummio:15,.0f}{mmio / ummio:7.2f}{dmmio:14,.0f}{mmio / dmmio:7.2f}")
    ok = pio >= 2e6 and mmio >= 2e6
    print("target met" if ok else "target NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
