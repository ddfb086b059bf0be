"""The MMIO bus's unicorn mappings (machine/bus.py): chunks change only where the
regions changed, and every address of the window still lands in the right handler."""

from __future__ import annotations

from blockbed.machine.bus import FOUR_GIB, MmioBus

WINDOW = 0xC000_0000


class FakeUc:
    """Records mmio_map/mem_unmap, and checks mappings never overlap."""

    def __init__(self) -> None:
        self.maps: dict[int, tuple[int, object, object]] = {}
        self.mapped = 0
        self.unmapped = 0

    def mmio_map(self, base, size, rd, _rd_ud, wr, _wr_ud) -> None:
        for b, (n, _r, _w) in self.maps.items():
            assert not (base < b + n and b < base + size), f"{base:#x} overlaps {b:#x}"
        self.maps[base] = (size, rd, wr)
        self.mapped += 1

    def mem_unmap(self, base, size) -> None:
        assert self.maps.pop(base)[0] == size
        self.unmapped += 1

    def read(self, addr: int, size: int = 4) -> int:
        for b, (n, rd, _w) in self.maps.items():
            if b <= addr < b + n:
                return rd(self, addr - b, size, None)
        raise AssertionError(f"{addr:#x} unmapped")


class Tag:
    def __init__(self, tag: int) -> None:
        self.tag = tag

    def read(self, offset: int, size: int) -> int:
        return self.tag << 16 | offset

    def write(self, offset: int, size: int, value: int) -> None:
        pass


def test_a_bar_move_remaps_only_its_own_chunks_and_decoding_stays_right():
    uc = FakeUc()
    bus = MmioBus(WINDOW)
    bus.attach(uc, lambda h: (lambda u, off, size, ud: h.read(off, size),
                              lambda u, off, size, val, ud: h.write(off, size, val)))
    regions = [bus.add(f"dev{i}", 0xFE00_0000 + i * 0x10_0000, 0x4000, Tag(i)) for i in range(6)]
    bus.add("small", 0xFEC0_0000, 0x20, Tag(9))           # sub-page region
    bus.add("high", 0x1_0000_0000, 0x4000, Tag(10))                     # a 64-bit BAR placed high
    before = uc.unmapped
    # What Linux does to one BAR: disable decode (remove), then map it elsewhere.
    bus.remove(regions[2])
    moved = bus.add("dev2", 0xFD00_0000, 0x4000, regions[2].handler)
    assert uc.unmapped - before <= 4, "one BAR change remapped unrelated chunks"
    assert moved is not None
    # Every region answers at its own addresses; holes read all-ones.
    for i in (0, 1, 3, 4, 5):
        assert uc.read(0xFE00_0000 + i * 0x10_0000 + 0x123) == i << 16 | 0x123
    assert uc.read(0xFD00_0000 + 0x3FFC) == 2 << 16 | 0x3FFC
    assert uc.read(0xFE20_0000) == 0xFFFFFFFF                          # where dev2 was
    assert uc.read(0xFEC0_0010) == 9 << 16 | 0x10
    assert uc.read(0xFEC0_0800) == 0xFFFFFFFF                          # rest of that page
    assert uc.read(0x1_0000_0010) == 10 << 16 | 0x10
    # The window is covered end to end, with nothing mapped twice.
    covered = sorted((b, n) for b, (n, _r, _w) in uc.maps.items() if b < FOUR_GIB)
    cursor = WINDOW
    for b, n in covered:
        assert b == cursor
        cursor = b + n
    assert cursor == FOUR_GIB


def test_random_adds_and_removes_keep_every_address_decoded_right():
    """Any sequence of BAR-like adds and removes (whole pages, sub-page, shared pages,
    the same handler moving, above 4 GiB) leaves unicorn's mappings a partition of the
    window in which every region answers at its own addresses and nothing else does."""
    import random
    rnd = random.Random(7)
    uc = FakeUc()
    bus = MmioBus(WINDOW)
    bus.attach(uc, lambda h: (lambda u, off, size, ud: h.read(off, size),
                              lambda u, off, size, val, ud: h.write(off, size, val)))
    handlers = [Tag(i) for i in range(8)]
    live: dict[int, object] = {}          # handler index -> Region
    for step in range(400):
        i = rnd.randrange(len(handlers))
        if i in live:
            bus.remove(live.pop(i))
        else:
            size = rnd.choice([0x20, 0x100, 0x1000, 0x4000, 0x10000])
            base = rnd.choice([0xFEBF0000, 0xFEC00000, 0xE0000000, 0x1_0000_0000]) \
                + rnd.randrange(0, 0x10) * size
            region = bus.add(f"r{i}", base, size, handlers[i])
            if region is not None:
                live[i] = region
        # the window is a partition, and decoding matches the live regions
        covered = sorted((b, n) for b, (n, _r, _w) in uc.maps.items() if b < FOUR_GIB)
        cursor = WINDOW
        for b, n in covered:
            assert b == cursor, f"step {step}: hole or overlap at {cursor:#x}"
            cursor = b + n
        assert cursor == FOUR_GIB
        for j, region in live.items():
            for off in (0, region.size - 4):
                assert uc.read(region.base + off) == j << 16 | off, (step, j, hex(region.base))
        for probe in (0xE0000000 + 0x20000, 0xFEBE0000):
            if not any(r.base <= probe < r.end for r in live.values()):
                assert uc.read(probe) == 0xFFFFFFFF
