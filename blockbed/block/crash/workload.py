"""Python-driven workloads on a BlockBackend (unit tests, benchmarks, qcow2 sweeps).

The same mix flushtest runs in a guest — plain writes, FUA writes, flushes,
write-cache toggles, overwrites of the same sectors, discards and
write-zeroes, all with self-describing sectors — driven straight at the
backend, with the guest-side bookkeeping of promises printed in flushtest's
record format (:mod:`.guestrecord`).

``ignore_flush`` / ``ignore_fua`` play a faulty device: the workload
believes the flush completed / the FUA was honoured, but never tells the
backend, exactly as a device with ``x-ignore-flush=on`` would.  The
engine must catch both.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..backend import BlockBackend
from .sector import FLAG_FUA, FLAG_WT, SECTOR, make_write


@dataclass
class WorkloadConfig:
    ops: int = 200
    seed: int = 0
    region_sectors: int = 256         # LBAs used (small → many overwrites)
    max_sectors: int = 8
    p_flush: float = 0.12
    p_fua: float = 0.10
    p_wce_toggle: float = 0.03
    p_discard: float = 0.04
    p_zeroes: float = 0.03
    ignore_flush: bool = False
    ignore_fua: bool = False
    lba_stride: int = 1               # > 1 spreads writes (allocation-heavy qcow2 runs)


@dataclass
class WorkloadResult:
    lines: list[str] = field(default_factory=list)
    writes: int = 0
    flushes: int = 0
    promises: int = 0

    @property
    def transcript(self) -> str:
        return "\n".join(self.lines) + "\n"


def run_workload(backend: BlockBackend, cfg: WorkloadConfig) -> WorkloadResult:
    rng = random.Random(cfg.seed)
    res = WorkloadResult()
    out = res.lines
    size_sectors = backend.length() // SECTOR
    region = min(cfg.region_sectors, size_sectors // max(1, cfg.lba_stride))
    pending: list[int] = []          # completed writes not yet promised
    epoch = 0
    wid = 0
    out.append(f"FT config dev=python qd=1 fua=1 flush=1 wce={int(backend.write_cache_enabled)} "
               f"wce_toggle=1 discard=1")

    def promise(ids: list[int], why: str) -> None:
        for i in ids:
            out.append(f"FT promise id={i} after={wid} why={why}")
            res.promises += 1

    for _ in range(cfg.ops):
        r = rng.random()
        if r < cfg.p_flush:
            if not cfg.ignore_flush and backend.flush() != 0:
                continue
            res.flushes += 1
            epoch += 1
            promise(pending, "flush")
            pending = []
            continue
        r -= cfg.p_flush
        if r < cfg.p_wce_toggle:
            on = not backend.write_cache_enabled
            if backend.set_write_cache(on) != 0:
                continue
            if not on:   # disabling the cache flushes it (ATA SET FEATURES 0x82)
                promise(pending, "wce-disable")
                pending = []
            continue
        r -= cfg.p_wce_toggle
        count = rng.randint(1, cfg.max_sectors)
        lba = rng.randrange(0, max(1, region - count)) * cfg.lba_stride
        lba = min(lba, size_sectors - count)
        if r < cfg.p_discard:
            backend.discard(lba * SECTOR, count * SECTOR)
            continue
        r -= cfg.p_discard
        if r < cfg.p_zeroes:
            backend.write_zeroes(lba * SECTOR, count * SECTOR)
            continue
        r -= cfg.p_zeroes
        fua = r < cfg.p_fua
        wid += 1
        wt = not backend.write_cache_enabled
        flags = (FLAG_FUA if fua else 0) | (FLAG_WT if wt else 0)
        data = make_write(wid, lba, count, epoch, flags)
        rc = backend.write(lba * SECTOR, memoryview(data), fua=fua and not cfg.ignore_fua)
        if rc != 0:
            continue
        res.writes += 1
        if fua:
            promise([wid], "fua")
        elif wt:
            promise([wid], "wce-off")
        else:
            pending.append(wid)
    out.append(f"FT summary writes={res.writes} promises={res.promises} flushes={res.flushes} errors=0")
    return res
