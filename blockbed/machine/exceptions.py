"""Exception and interrupt delivery through the guest's IDT in long mode.

Unicorn (QEMU's TCG without ``do_interrupt``) stops at a CPU exception and
reports only the vector to ``UC_HOOK_INTR``; it never enters the guest's
handler.  This module does what the processor does (Intel SDM vol. 3 §6.12,
§6.14 "Exception and interrupt handling in 64-bit mode"):

1. the 16-byte gate at IDTR.base + 16*vector (a *linear* address, walked
   through the guest's page tables by :mod:`.paging`); beyond the limit or
   not a 64-bit interrupt/trap gate -> #GP(vector*8+2+EXT), not present ->
   #NP; a software ``INT n`` needs gate DPL >= CPL;
2. the target code segment from the GDT: a present 64-bit code segment;
   its DPL is the new CPL;
3. the stack: IST n from the 64-bit TSS (TR.base + 0x24 + 8*(n-1)) when the
   gate names one, RSP0..2 from the TSS on a privilege change (then SS is
   the NULL selector with RPL = new CPL), else the current RSP; aligned down
   to 16 bytes;
4. pushed: SS, RSP, RFLAGS, CS, RIP and, for #DF #TS #NP #SS #GP #PF #AC
   (hardware-raised only), the error code;
5. RFLAGS.TF, NT, RF cleared, and IF for an interrupt gate.

A fault while delivering is combined by §6.15 Table 6-5: benign first ->
the second is delivered; contributory + contributory, or #PF + (#PF or
contributory) -> #DF(0); a fault while delivering #DF is a triple fault
(:class:`TripleFault`, the machine reports it; a PC would reset).

Unicorn leaves two things behind after its hook (found in its CPU state,
see :class:`UnicornExceptionState`): the error code it computed (e.g. the
#PF P/W/U/I bits) and QEMU's "exception in flight" marker, which must be
cleared or the next fault would be promoted to a double fault.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from typing import Callable

from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_64, Uc
from unicorn import x86_const as X

from .paging import (SUPERVISOR_READ, SUPERVISOR_WRITE, Access, PageFault, PagingState,
                     translate)

DE, DB, NMI, BP, OF, BR, UD, NM, DF, TS, NP, SS_, GP, PF, MF, AC = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17)
WITH_ERROR_CODE = frozenset({DF, TS, NP, SS_, GP, PF, AC, 21, 29, 30})
CONTRIBUTORY = frozenset({DE, TS, NP, SS_, GP})

RFLAGS_TF = 1 << 8
RFLAGS_IF = 1 << 9
RFLAGS_NT = 1 << 14
RFLAGS_RF = 1 << 16


class TripleFault(Exception):
    """A fault while delivering #DF: the processor shuts down (§6.15, interrupt 8)."""


class DeliveryFault(Exception):
    """A fault the processor raises while delivering: vector and error code."""

    def __init__(self, vector: int, error_code: int, why: str, cr2: int | None = None):
        super().__init__(why)
        self.vector = vector
        self.error_code = error_code
        self.why = why
        self.cr2 = cr2


@dataclass
class Event:
    """One event to deliver."""

    vector: int
    error_code: int | None = None    # pushed when not None
    software: bool = False           # INT n / INT3 / INTO: gate DPL is checked
    external: bool = False           # EXT bit of error codes raised while delivering
    cr2: int | None = None           # #PF: the faulting linear address
    origin_rip: int | None = None    # software: the INT instruction (a fault raised
                                     # while delivering it points there, not after it)


@dataclass
class Frame:
    """The CPU state delivery reads and writes (a snapshot, see :class:`Delivery`)."""

    rip: int
    rsp: int
    rflags: int
    cs: int
    ss: int


class Delivery:
    """Long-mode delivery over callbacks into the CPU.

    ``read_phys(paddr, n)``/``write_phys(paddr, data)`` access RAM (raising
    ``ValueError`` outside it); ``sysregs()`` returns (PagingState, IDTR
    (base, limit), GDTR (base, limit), TR base).
    """

    def __init__(self, read_phys: Callable[[int, int], bytes],
                 write_phys: Callable[[int, bytes], None],
                 sysregs: Callable[[], tuple]):
        self.read_phys = read_phys
        self.write_phys = write_phys
        self.sysregs = sysregs

    # --- linear memory ------------------------------------------------------
    def _phys(self, paging: PagingState, addr: int, access: Access) -> int:
        try:
            return translate(paging, lambda p: struct.unpack("<Q", self._rd(p, 8))[0], addr, access)
        except PageFault as pf:
            raise DeliveryFault(PF, pf.error_code, str(pf), cr2=pf.address) from None

    def _rd(self, paddr: int, n: int) -> bytes:
        try:
            return self.read_phys(paddr, n)
        except ValueError as exc:
            raise DeliveryFault(-1, 0, str(exc)) from None

    def read_linear(self, paging: PagingState, addr: int, n: int) -> bytes:
        out = b""
        while n:
            chunk = min(n, 0x1000 - (addr & 0xFFF))
            out += self._rd(self._phys(paging, addr, SUPERVISOR_READ), chunk)
            addr = (addr + chunk) & 0xFFFF_FFFF_FFFF_FFFF
            n -= chunk
        return out

    def write_linear(self, paging: PagingState, addr: int, data: bytes) -> None:
        # Translate every page first so a fault leaves memory untouched.
        parts, pos = [], 0
        while pos < len(data):
            chunk = min(len(data) - pos, 0x1000 - (addr & 0xFFF))
            parts.append((self._phys(paging, addr, SUPERVISOR_WRITE), data[pos:pos + chunk]))
            addr = (addr + chunk) & 0xFFFF_FFFF_FFFF_FFFF
            pos += chunk
        for paddr, part in parts:
            try:
                self.write_phys(paddr, part)
            except ValueError as exc:
                raise DeliveryFault(-1, 0, str(exc)) from None

    # --- delivery ------------------------------------------------------------
    def deliver(self, event: Event, frame: Frame) -> tuple[Frame, int, int | None]:
        """Deliver ``event``, combining faults raised on the way (Table 6-5).

        Returns the new frame, the vector finally delivered and the CR2 to set
        (None: unchanged).  Raises :class:`TripleFault`."""
        cr2 = event.cr2
        for _ in range(3):
            try:
                return self._deliver_once(event, frame), event.vector, cr2
            except DeliveryFault as f:
                if f.vector < 0:
                    raise TripleFault(f"while delivering vector {event.vector}: {f.why}") from None
                if event.software and event.origin_rip is not None:
                    frame = Frame(event.origin_rip, frame.rsp, frame.rflags, frame.cs, frame.ss)
                if event.vector == DF:
                    raise TripleFault(f"while delivering #DF: {f.why}") from None
                first_pf = event.vector == PF and not event.software
                first_contrib = event.vector in CONTRIBUTORY and not event.software
                if (first_contrib and f.vector in CONTRIBUTORY) or \
                        (first_pf and (f.vector == PF or f.vector in CONTRIBUTORY)):
                    event = Event(DF, 0, external=event.external)
                else:
                    event = Event(f.vector, f.error_code, external=event.external, cr2=f.cr2)
                    if f.cr2 is not None:
                        cr2 = f.cr2
        raise TripleFault("nested faults while delivering")

    def _deliver_once(self, ev: Event, fr: Frame) -> Frame:
        paging, (idt_base, idt_limit), (gdt_base, gdt_limit), tr_base = self.sysregs()
        ext = 1 if ev.external else 0
        idt_err = ev.vector * 8 + 2 + ext
        if ev.vector * 16 + 15 > idt_limit:
            raise DeliveryFault(GP, idt_err, f"vector {ev.vector} beyond the IDT limit {idt_limit:#x}")
        lo, hi = struct.unpack("<QQ", self.read_linear(paging, idt_base + ev.vector * 16, 16))
        gate_type = (lo >> 40) & 0xF
        dpl = (lo >> 45) & 3
        present = (lo >> 47) & 1
        ist = (lo >> 32) & 7
        selector = (lo >> 16) & 0xFFFF
        target = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000) | ((hi & 0xFFFFFFFF) << 32)
        cpl = fr.cs & 3
        if gate_type not in (0xE, 0xF):
            raise DeliveryFault(GP, idt_err, f"IDT entry {ev.vector} is type {gate_type:#x}, "
                                             "not a 64-bit interrupt/trap gate")
        if ev.software and dpl < cpl:
            raise DeliveryFault(GP, idt_err, f"INT {ev.vector}: gate DPL {dpl} < CPL {cpl}")
        if not present:
            raise DeliveryFault(NP, idt_err, f"IDT gate {ev.vector} not present")
        # The target code segment (§6.14.1; LDT selectors are not modelled).
        sel_err = (selector & 0xFFFC) + ext
        if selector & 4 or selector < 4 or (selector | 7) > gdt_limit:
            raise DeliveryFault(GP, sel_err, f"gate {ev.vector}: code selector {selector:#x} "
                                             "is null, in the LDT or beyond the GDT limit")
        desc = struct.unpack("<Q", self.read_linear(paging, gdt_base + (selector & ~7), 8))[0]
        is_code = (desc >> 43) & 3 == 3
        long_cs = (desc >> 53) & 1 and not (desc >> 54) & 1
        cs_dpl = (desc >> 45) & 3
        if not is_code or not long_cs or cs_dpl > cpl:
            raise DeliveryFault(GP, sel_err, f"gate {ev.vector}: selector {selector:#x} is not a "
                                             f"64-bit code segment with DPL <= CPL (descriptor {desc:#x})")
        if not (desc >> 47) & 1:
            raise DeliveryFault(NP, sel_err, f"gate {ev.vector}: code segment {selector:#x} not present")
        conforming = (desc >> 42) & 1
        new_cpl = cpl if conforming else cs_dpl
        ss = fr.ss
        if ist or new_cpl != cpl:
            slot = 0x24 + 8 * (ist - 1) if ist else 4 + 8 * new_cpl
            rsp = struct.unpack("<Q", self.read_linear(paging, tr_base + slot, 8))[0]
            if new_cpl != cpl:
                ss = new_cpl          # NULL selector, RPL = new CPL (§6.14.4)
        else:
            rsp = fr.rsp
        rsp &= ~0xF
        words = [fr.rip, fr.cs, fr.rflags, fr.rsp, fr.ss]
        if ev.error_code is not None:
            words.insert(0, ev.error_code & 0xFFFF_FFFF_FFFF_FFFF)
        rsp = (rsp - 8 * len(words)) & 0xFFFF_FFFF_FFFF_FFFF
        self.write_linear(paging, rsp, struct.pack(f"<{len(words)}Q", *words))
        flags = fr.rflags & ~(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF)
        if gate_type == 0xE:
            flags &= ~RFLAGS_IF
        return Frame(rip=target, rsp=rsp, rflags=flags, cs=(selector & ~3) | new_cpl, ss=ss)


def needs_error_code(vector: int, software: bool) -> bool:
    return not software and vector in WITH_ERROR_CODE


class UnicornExceptionState:
    """Where unicorn keeps ``env->error_code``, ``env->exception_is_int`` and
    ``env->old_exception`` in a saved context.

    The offsets are not part of unicorn's API, so they are measured once per
    process on a scratch engine: a write to a read-only page (error code 3 =
    P|W), a read of a not-present page (0), and INT3 (is_int = 1) are run and
    the int32 slots that take those values are found.  If the measurement is
    ambiguous, :attr:`ok` is False and the machine computes error codes itself.
    """

    _cached: "UnicornExceptionState | None" = None

    def __init__(self) -> None:
        self.error_code_off = self.is_int_off = self.old_exception_off = -1
        try:
            self._measure()
        except Exception:   # any surprise: leave ok False
            pass

    @classmethod
    def get(cls) -> "UnicornExceptionState":
        if cls._cached is None:
            cls._cached = cls()
        return cls._cached

    @property
    def ok(self) -> bool:
        return min(self.error_code_off, self.is_int_off, self.old_exception_off) >= 0

    @staticmethod
    def _slots(uc: Uc) -> list[int]:
        ctx = uc.context_save()
        n = ctx.size // 4
        return list(ctypes.cast(ctx.context, ctypes.POINTER(ctypes.c_int32))[:n])

    def _measure(self) -> None:
        def engine():
            uc = Uc(UC_ARCH_X86, UC_MODE_64)
            uc.mem_map(0, 0x400000)
            uc.mem_write(0x10000, struct.pack("<Q", 0x11003))
            uc.mem_write(0x11000, struct.pack("<Q", 0x12003))
            uc.mem_write(0x12000, struct.pack("<QQ", 0x83, 0x200081))  # 2-4 MiB read-only
            uc.reg_write(X.UC_X86_REG_CR3, 0x10000)
            uc.reg_write(X.UC_X86_REG_CR4, 0x20)                      # PAE
            uc.reg_write(X.UC_X86_REG_MSR, (0xC0000080, 0x500))       # EFER.LME | LMA
            uc.reg_write(X.UC_X86_REG_CR0, 0x80010011)                # PG | WP | PE
            uc.hook_add(UC_HOOK_INTR, lambda u, i, d: u.emu_stop())
            return uc

        def run(code: bytes, rax: int) -> tuple[list[int], list[int]]:
            uc = engine()
            uc.mem_write(0x1000, code + b"\x90" * 8)
            uc.reg_write(X.UC_X86_REG_RAX, rax)
            uc.reg_write(X.UC_X86_REG_RSP, 0x8000)
            before = self._slots(uc)
            uc.emu_start(0x1000, 0x1100, 0, 4)
            return before, self._slots(uc)

        b1, w_ro = run(b"\x48\x89\x00", 0x200010)            # mov [rax], rax: #PF, 3
        _, r_np = run(b"\x48\x8b\x00", 0x1234_5678_9000)     # mov rax, [rax]: #PF, 0
        _, i3 = run(b"\xcc", 0)
        ec = [i for i in range(len(w_ro)) if w_ro[i] == 3 and r_np[i] == 0 and i3[i] == 0
              and i + 1 < len(w_ro) and w_ro[i + 1] == 0 and i3[i + 1] == 1]
        old = [i for i in range(len(w_ro)) if b1[i] == -1 and w_ro[i] == PF and r_np[i] == PF]
        if len(ec) == 1 and len(old) == 1:
            self.error_code_off, self.is_int_off, self.old_exception_off = ec[0], ec[0] + 1, old[0]

    def read(self, uc: Uc) -> tuple[int, bool]:
        """(error code, software interrupt?) of the exception unicorn just reported
        (call from the UC_HOOK_INTR callback)."""
        ctx = uc.context_save()
        slots = ctypes.cast(ctx.context, ctypes.POINTER(ctypes.c_int32))
        return slots[self.error_code_off] & 0xFFFFFFFF, bool(slots[self.is_int_off])

    def clear_in_flight(self, uc: Uc) -> None:
        """Clear QEMU's exception-in-flight marker, as its delivery does once the
        exception is delivered (unicorn never delivers).  Must run after
        ``emu_start`` returned: a context restored inside the hook does not stick."""
        ctx = uc.context_save()
        slots = ctypes.cast(ctx.context, ctypes.POINTER(ctypes.c_int32))
        if slots[self.old_exception_off] != -1:
            slots[self.old_exception_off] = -1
            uc.context_restore(ctx)
