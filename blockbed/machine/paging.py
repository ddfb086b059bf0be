"""The guest's page tables, walked in software (Intel SDM vol. 3 §4.5, 4-level paging).

Unicorn's MMU translates the guest's own accesses; this walk is for the
accesses the *machine* makes on the guest's behalf while delivering an
exception or interrupt: reading the IDT gate, the GDT descriptor, the TSS and
pushing the stack frame, all at linear (usually higher-half) addresses.

A walk either returns the physical address or raises :class:`PageFault` with
the error code a real CPU would report for the same access (§4.7: P, W/R,
U/S, RSVD, I/D), so the machine can turn a failing delivery into a #PF or a
double fault the way the hardware does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntFlag

CR0_PG = 1 << 31
CR0_WP = 1 << 16
CR4_PAE = 1 << 5
CR4_LA57 = 1 << 12
EFER_LMA = 1 << 10
EFER_NXE = 1 << 11

PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_US = 1 << 2
PTE_PS = 1 << 7
PTE_NX = 1 << 63
ADDR_MASK = 0x000F_FFFF_FFFF_F000   # bits 51:12 of an entry


class PFError(IntFlag):
    """#PF error code bits (SDM vol. 3 §4.7, Figure 4-12)."""

    P = 1       # the page was present (protection violation)
    W = 2       # the access was a write
    U = 4       # the access was a user-mode (CPL 3) access
    RSVD = 8    # a reserved bit was set in a paging-structure entry
    I = 16      # the access was an instruction fetch


@dataclass(frozen=True)
class Access:
    """The kind of access being translated."""

    write: bool = False
    user: bool = False
    fetch: bool = False
    # Supervisor accesses the CPU makes implicitly (IDT/GDT/TSS, the interrupt
    # stack) are supervisor-mode accesses even from CPL 3 (§4.6).


SUPERVISOR_READ = Access()
SUPERVISOR_WRITE = Access(write=True)


class PageFault(Exception):
    """The walk failed: ``address`` is what CR2 gets, ``error_code`` the #PF code."""

    def __init__(self, address: int, error_code: int, why: str):
        super().__init__(f"#PF at {address:#x} (error code {error_code:#x}): {why}")
        self.address = address
        self.error_code = error_code
        self.why = why


def canonical(addr: int, bits: int = 48) -> bool:
    """True when bits 63:bits-1 of a linear address are all equal (§3.3.7.1)."""
    top = addr >> (bits - 1)
    return top == 0 or top == (1 << (65 - bits)) - 1


@dataclass
class PagingState:
    """The control registers a walk depends on."""

    cr0: int
    cr3: int
    cr4: int
    efer: int

    @property
    def enabled(self) -> bool:
        return bool(self.cr0 & CR0_PG)


def translate(state: PagingState, read_phys, addr: int, access: Access = SUPERVISOR_READ) -> int:
    """Linear ``addr`` -> physical, or :class:`PageFault`.

    ``read_phys(paddr) -> int`` reads one 8-byte paging-structure entry (and may
    raise for an address outside RAM).  Without CR0.PG the address is physical.
    Only long-mode 4-level paging (and 5-level with CR4.LA57) is walked: a
    32-bit guest with paging on never reaches the machine's delivery path.
    Accessed/dirty bits are not set (nothing in the machine reads them back).
    """
    if not state.enabled:
        return addr & 0xFFFF_FFFF_FFFF_FFFF
    if not (state.efer & EFER_LMA) or not (state.cr4 & CR4_PAE):
        raise PageFault(addr, 0, "only long-mode (4/5-level) paging is walked by the machine")
    levels = 5 if state.cr4 & CR4_LA57 else 4
    if not canonical(addr, 57 if levels == 5 else 48):
        raise PageFault(addr, 0, "non-canonical address")
    err_access = (PFError.W if access.write else 0) | (PFError.U if access.user else 0) | \
        (PFError.I if access.fetch and state.efer & EFER_NXE else 0)
    table = state.cr3 & ADDR_MASK
    writable = user = True
    nx = False
    shift = 39 + 9 * (levels - 4)
    for level in range(levels, 0, -1):
        entry_addr = table + ((addr >> shift) & 0x1FF) * 8
        entry = read_phys(entry_addr)
        if not entry & PTE_P:
            raise PageFault(addr, int(err_access), f"level-{level} entry at {entry_addr:#x} not present")
        if entry & PTE_NX and not state.efer & EFER_NXE:
            raise PageFault(addr, int(err_access | PFError.P | PFError.RSVD),
                            f"level-{level} entry {entry:#x}: NX set without EFER.NXE")
        writable &= bool(entry & PTE_RW)
        user &= bool(entry & PTE_US)
        nx |= bool(entry & PTE_NX)
        large = level in (2, 3) and entry & PTE_PS
        if level == 1 or large:
            page_size = 1 << shift
            base = entry & ADDR_MASK & ~(page_size - 1)
            _check(addr, access, err_access, writable, user, nx, state)
            return base | (addr & (page_size - 1))
        if level in (4, 5) and entry & PTE_PS:
            raise PageFault(addr, int(err_access | PFError.P | PFError.RSVD),
                            f"level-{level} entry {entry:#x} has PS set")
        table = entry & ADDR_MASK
        shift -= 9
    raise AssertionError("unreachable")


def _check(addr: int, access: Access, err: int, writable: bool, user: bool, nx: bool,
           state: PagingState) -> None:
    """Access rights of the final translation (§4.6)."""
    why = ""
    if access.user and not user:
        why = "user access to a supervisor page"
    elif access.write and not writable and (access.user or state.cr0 & CR0_WP):
        why = "write to a read-only page"
    elif access.fetch and nx and state.efer & EFER_NXE:
        why = "instruction fetch from a no-execute page"
    if why:
        raise PageFault(addr, int(err | PFError.P), why)


def read_entry(memory):
    """A ``read_phys`` for :func:`translate` over the machine's :class:`Memory`."""
    def rd(paddr: int) -> int:
        if not memory.contains(paddr, 8):
            raise PageFault(paddr, 0, f"paging-structure entry at {paddr:#x} is outside RAM")
        return struct.unpack_from("<Q", memory.view(paddr, 8))[0]
    return rd
