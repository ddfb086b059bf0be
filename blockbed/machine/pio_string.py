"""``rep ins``/``rep outs`` in one exit: the block moved at once when the port can.

Unicorn runs a REP string I/O instruction one iteration at a time, and every
iteration is one UC_HOOK_INSN IN/OUT callback -- for IDE PIO that is a Python
exit per 16-bit word.  When the port's handler offers a bulk transfer,
:class:`PioStrings` moves the rest of the block in the hooked iteration:

- ``read_string(offset, size, count) -> bytes-like``: up to ``count`` units of
  ``size`` bytes, whole units only, fewer when the device has fewer ready (the
  IDE data register stops at the end of its DRQ block); empty when it takes
  none, and then nothing happened.
- ``write_string(offset, size, data) -> int``: the units of ``data`` it took,
  from the front (0: none, nothing happened).  ``data`` views guest RAM; the
  handler copies what it keeps.

What unicorn (2.1, QEMU 5's translator: ``gen_repz`` around ``gen_ins`` /
``gen_outs``) does around the hook, measured with a guest that reports
RCX/RDI/RSI after the instruction (see tests/test_pio_string.py):

- inside the hook RIP is the instruction (prefixes included), RCX still counts
  the hooked iteration, RDI/RSI address its unit;
- for INS the destination address is taken *before* the hook (a dummy store
  there first, so a #PF strikes before the port is read) and the value the
  hook returns is stored at that address; for OUTS the unit was loaded from
  [RSI] before the hook and arrives as its ``value``;
- register writes made in the hook stick: after it unicorn decrements RCX,
  adds the operand size to RDI/RSI (DF=0) to whatever the hook left, and ends
  the instruction when RCX reaches 0 -- so RCX=1 makes the hooked iteration the
  last one;
- when a stop is requested in an INS hook (an interrupt kick, a machine
  stop), unicorn performs the iteration -- the store at the original RDI
  included -- and then executes it *again* on resume, from the registers the
  hook left: the second store goes to the new RDI.  The replay guard (cpu.py
  ``_pio_replayed``) answers that second IN from its record.  An OUTS
  iteration is not executed again (no second OUT, no replay: measured).

So a bulk INS of ``m`` units returns unit 0 (stored by unicorn at RDI), copies
units 1..m-1 into guest RAM itself and leaves RCX = RCX-(m-1), RDI = RDI+(m-1)
*size: unicorn's own step lands on the right final values.  A bulk OUTS hands
units 0..m-1 to the device and moves RCX/RSI the same way.  If a stop is
pending after the transfer, the INS re-execution addresses unit m-1, so the
record the replay guard keeps must hold *that* unit (stored again at
RDI+(m-1)*size, where it already is): ``last`` carries it to the hook's record.
OUTS records its last unit the same way, which is what a re-execution would
load.  A bulk transfer is never started while a stop is pending, so the guard
never has to tell a replayed bulk from a new one.

Only the 4 KiB page of the hooked unit is touched: unicorn validated exactly
that access (present, writable for INS, user when CPL 3; A/D bits set by its
walk), and the translation asks unicorn's MMU for exactly that access
(``uc_vmem_translate``; the instruction bytes at RIP likewise).  A
block that crosses a page ends the bulk at the page end; the next iteration is
hooked again after unicorn's own access to the next page -- so an unmapped or
read-only page raises the #PF at exactly the iteration the per-unit path
raises it, with the same registers.  Physical addresses outside RAM (MMIO)
are left to unicorn.  Like device DMA, the copy bypasses unicorn's
self-modifying-code detection.

Handled: 64-bit code (EFER.LMA and CS.L), address size 64 or 32 (67h: ECX,
EDI/ESI), REP (F3h, and F2h which QEMU's decoder takes as REP for INS/OUTS),
operand size from 66h/REX.W checked against the hook's, DS/ES/CS/SS overrides
(base 0).  Everything else runs the per-unit path: DF=1, TF=1, FS/GS
overrides, legacy or compatibility mode, a count of 1, LOCK.

64-bit code is told by CS.L in the GDT descriptor (software walk, :mod:`.paging`,
cached while CR3, GDTR.base and CS stay the same; the descriptor itself is read
every time).  Registers go through one batch call each way (:class:`_Registers`).

Time: a bulk transfer is one exit, one virtual tick (as one port access).
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

from unicorn import UC_PROT_EXEC, UC_PROT_READ, UC_PROT_WRITE
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from .. import trace
from .cpu_state import StopReason
from .paging import PageFault, PagingState, read_entry, translate
from .uc_direct import Mmr, Msr

if TYPE_CHECKING:
    from .cpu import CPU

PAGE = 0x1000
DF_TF = (1 << 10) | (1 << 8)
EFER_LMA = 1 << 10
_LEGACY_PREFIXES = frozenset((0x26, 0x2E, 0x36, 0x3E, 0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x64, 0x65))
_INS, _OUTS = (0x6C, 0x6D), (0x6E, 0x6F)
EFER = 0xC0000080
_READ = (X.UC_X86_REG_RIP, X.UC_X86_REG_RCX, X.UC_X86_REG_RDI, X.UC_X86_REG_RSI,
         X.UC_X86_REG_RFLAGS, X.UC_X86_REG_CS, X.UC_X86_REG_CR0, X.UC_X86_REG_CR3,
         X.UC_X86_REG_CR4, X.UC_X86_REG_CR2, X.UC_X86_REG_MSR, X.UC_X86_REG_GDTR)


_vmem_translate = uclib.uc_vmem_translate     # (uc, address, uc_prot, uint64_t *paddress)
_vmem_translate.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p]
_vmem_translate.restype = ctypes.c_int


class _Registers:
    """The registers the bulk path needs, read and written with one
    ``uc_reg_read_batch``/``uc_reg_write_batch`` call each: through the Python
    binding every ``reg_read`` costs ~4 us inside a hook (measured), ten of them
    more than the exits a 256-word block saves are worth.  The machine keeps the
    engine in UC_MODE_64 while guest code runs (cpu.py ``_engine_mode``), so
    every value is written at full width."""

    def __init__(self, uc):
        self.handle = uc._uch
        n = len(_READ)
        self.ids = (ctypes.c_int * n)(*_READ)
        self.values = (ctypes.c_uint64 * (n - 2))()
        self.efer = Msr(EFER, 0)
        self.gdtr = Mmr()
        base = ctypes.addressof(self.values)
        self.ptrs = (ctypes.c_void_p * n)(*[base + 8 * i for i in range(n - 2)],
                                          ctypes.addressof(self.efer), ctypes.addressof(self.gdtr))
        self.n = n
        self.write_ids = (ctypes.c_int * 2)(X.UC_X86_REG_RCX, 0)
        self.write_values = (ctypes.c_uint64 * 2)()
        wbase = ctypes.addressof(self.write_values)
        self.write_ptrs = (ctypes.c_void_p * 2)(wbase, wbase + 8)
        self.phys = ctypes.c_uint64()

    def read(self) -> list[int]:
        """[RIP, RCX, RDI, RSI, RFLAGS, CS, CR0, CR3, CR4, CR2]; EFER and GDTR in
        ``efer.value`` and ``gdtr``."""
        uclib.uc_reg_read_batch(self.handle, self.ids, self.ptrs, self.n)
        return list(self.values)

    def translate(self, addr: int, prot: int) -> int | None:
        """Linear -> physical through unicorn's own MMU (``uc_vmem_translate``: the
        guest's page tables at the current CPL, as the access unicorn just made;
        under 1 us where the software walk of :mod:`.paging` takes ~7 us), None
        if it refuses.  A refusal leaves CR2 = ``addr`` behind (QEMU's page walk
        records the fault even when only probing: measured), so CR2 is put back to
        the value :meth:`read` found.  The bulk path translates only what unicorn
        has just accessed, so a refusal takes a stale TLB entry (page tables changed
        without INVLPG) and ends in the per-unit path."""
        if _vmem_translate(self.handle, addr, prot, ctypes.byref(self.phys)):
            self.write_ids[0] = X.UC_X86_REG_CR2
            self.write_values[0] = self.values[9]
            uclib.uc_reg_write_batch(self.handle, self.write_ids, self.write_ptrs, 1)
            self.write_ids[0] = X.UC_X86_REG_RCX
            return None
        return self.phys.value

    def write(self, rcx: int, reg: int, value: int) -> None:
        self.write_ids[1] = reg
        self.write_values[0] = rcx
        self.write_values[1] = value
        uclib.uc_reg_write_batch(self.handle, self.write_ids, self.write_ptrs, 2)


def decode(code: bytes, outs: bool) -> tuple[int, bool] | None:
    """(operand size, 32-bit addressing) of a REP INS (``outs`` False) or REP OUTS
    at the start of ``code`` in 64-bit mode; None for anything else or for what
    the bulk path leaves to unicorn (LOCK, FS/GS override, no REP)."""
    rep = opsize = addr32 = False
    rex = 0
    for b in code[:15]:
        if b in _LEGACY_PREFIXES:
            if b == 0xF0 or (outs and b in (0x64, 0x65)):
                return None
            rep |= b in (0xF2, 0xF3)
            opsize |= b == 0x66
            addr32 |= b == 0x67
            rex = 0                     # a REX not right before the opcode is ignored
        elif 0x40 <= b <= 0x4F:
            rex = b
        else:
            if not rep or b not in (_OUTS if outs else _INS):
                return None
            size = 1 if b in (0x6C, 0x6E) else 4 if rex & 8 or not opsize else 2
            return size, addr32
    return None


class _StringPort:
    """What the CPU's hooks call for a port whose handler has string methods
    (machine/bus.py ``hook_ports``): the bulk path first, when no stop is
    pending, else the handler's own read/write."""

    def __init__(self, strings: "PioStrings", handler, base: int):
        self.strings, self.handler, self.base = strings, handler, base
        self.cpu = strings.cpu
        self.running = strings.running

    def read(self, offset: int, size: int) -> int:
        if self.cpu.stop_reason is self.running:
            got = self.strings.ins(self.handler, offset, self.base + offset, size)
            if got is not None:
                if self.cpu.stop_reason is not self.running:
                    self.strings.last = got[1]      # the handler asked for a stop
                return got[0]
        return self.handler.read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        if self.cpu.stop_reason is self.running:
            last = self.strings.outs(self.handler, offset, self.base + offset, size)
            if last is not None:
                if self.cpu.stop_reason is not self.running:
                    self.strings.last = last
                return
        self.handler.write(offset, size, value)


class PioStrings:
    """The bulk path of one CPU's IN/OUT hooks (``cpu.pio_strings``).

    ``enabled`` False makes every string instruction take the per-unit path
    (tests compare the two).  ``transfers``/``units`` count bulk exits and the
    units they moved.  ``last``: the replay value of a bulk transfer after which
    a stop is pending (set only then), taken by the hook's replay record in the
    same exit."""

    def __init__(self, cpu: "CPU"):
        self.cpu = cpu
        self.running = StopReason.NONE
        self.last: int | None = None
        self.memory = cpu.machine.memory
        self.regs = _Registers(cpu.uc)
        self._cs_key: tuple | None = None
        self._cs_at = 0
        self.enabled = True
        self.transfers = 0
        self.units = 0

    def wrap(self, handler, base: int) -> _StringPort:
        return _StringPort(self, handler, base)

    def take_last(self) -> int | None:
        last, self.last = self.last, None
        return last

    def _setup(self, size: int, outs: bool):
        """The hooked iteration as (count, pointer, address mask, physical address
        of the pointer, units that fit in its page), or None."""
        if not self.enabled:
            return None
        regs = self.regs
        rip, rcx, rdi, rsi, rflags, cs, cr0, cr3, cr4, _cr2 = regs.read()
        if rflags & DF_TF or not regs.efer.value & EFER_LMA or cs & 4 or \
                (cs | 7) > regs.gdtr.limit:
            return None
        mem = self.memory
        key = (cr3, regs.gdtr.base, cs)
        if key != self._cs_key:
            # The walk to CS's descriptor, again only when CR3, GDTR or CS change.
            paging = PagingState(cr0, cr3, cr4, regs.efer.value)
            try:
                self._cs_at = translate(paging, read_entry(mem), key[1] + (cs & ~7))
            except PageFault:
                return None
            self._cs_key = key
        desc_at = self._cs_at
        code_at = regs.translate(rip, UC_PROT_EXEC)
        if code_at is None:
            return None
        if not mem.contains(desc_at, 8) or not (mem.read_u64(desc_at) >> 53) & 1:
            return None                                 # not CS.L: not 64-bit code
        code = mem.read(code_at, min(15, PAGE - (rip & (PAGE - 1)), max(0, mem.size - code_at)))
        op = decode(code, outs)
        if op is None or op[0] != size:
            return None                                 # (an instruction across a page too)
        mask = 0xFFFF_FFFF if op[1] else 0xFFFF_FFFF_FFFF_FFFF
        count = rcx & mask
        ptr = (rsi if outs else rdi) & mask
        fit = min(count, (PAGE - (ptr & (PAGE - 1))) // size)
        if fit < 2:
            return None
        phys = regs.translate(ptr, UC_PROT_READ if outs else UC_PROT_WRITE)
        if phys is None or not mem.contains(phys, fit * size):
            return None
        return count, ptr, mask, phys, fit

    def _advance(self, count: int, ptr: int, mask: int, m: int, size: int, reg: int) -> None:
        """Leave RCX/RDI|RSI so that unicorn's own step after the hook lands on
        the values ``m`` iterations would have left."""
        self.regs.write((count - (m - 1)) & mask, reg, (ptr + (m - 1) * size) & mask)
        self.transfers += 1
        self.units += m

    def ins(self, handler, offset: int, port: int, size: int) -> tuple[int, int] | None:
        """A bulk ``rep ins`` from ``handler.read_string``: (the value for the
        hooked iteration, the replay value), or None for the per-unit path."""
        s = self._setup(size, False)
        if s is None:
            return None
        count, ptr, mask, phys, fit = s
        data = handler.read_string(offset, size, fit)
        m = len(data) // size
        if m == 0:
            return None
        self.memory.buf[phys + size:phys + m * size] = data[size:m * size]
        # These are the CPU's own stores (an x86 store over code is seen by the next
        # fetch), written past unicorn: drop its translations of them.
        self.memory.drop_code(phys + size, (m - 1) * size)
        self._advance(count, ptr, mask, m, size, X.UC_X86_REG_RDI)
        if trace.enabled:
            trace.emit("cpu.pio_string", write=False, port=port, size=size, units=m, addr=ptr)
        return (int.from_bytes(data[:size], "little"),
                int.from_bytes(data[(m - 1) * size:m * size], "little"))

    def outs(self, handler, offset: int, port: int, size: int) -> int | None:
        """A bulk ``rep outs`` to ``handler.write_string``: the replay value (the
        last unit written), or None for the per-unit path (nothing was written)."""
        s = self._setup(size, True)
        if s is None:
            return None
        count, ptr, mask, phys, fit = s
        view = self.memory.buf[phys:phys + fit * size]
        m = handler.write_string(offset, size, view)
        if m == 0:
            return None
        last = int.from_bytes(view[(m - 1) * size:m * size], "little")
        self._advance(count, ptr, mask, m, size, X.UC_X86_REG_RSI)
        if trace.enabled:
            trace.emit("cpu.pio_string", write=True, port=port, size=size, units=m, addr=ptr)
        return last
