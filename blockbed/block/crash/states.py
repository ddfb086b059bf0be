"""Crash-state enumeration (CrashMonkey's model over a dm-log-writes log).

A crash state is "everything up to the last completed host flush, plus a
subset of the writes after it" (semantics.md).  For each epoch (the host
ops between two flushes) we enumerate:

* the **flush boundary**: the epoch's prefix of length 0, i.e. the image
  exactly as the previous flush left it, checked with every promise made
  up to that point;
* the **in-order prefixes** ``1 … n-1`` (and ``n`` for the tail epoch, the
  "power cut at the very end" state): a crash at host position ``start+i``;
* **seeded random subsets** at 512-byte granularity: each write is left out,
  kept, or *torn* (split at 1–3 random sector boundaries, each piece kept
  or not), so multi-sector writes tear.  FUA writes are always kept (they
  were durable at completion).  Their crash position is the end of the
  epoch, just before the closing flush completed.

``--states N`` bounds the total; boundaries come first, then the rest is
shared between prefixes and random subsets (subsets get at least half:
prefixes alone never expose a write lost without any flush), each sampled
evenly across the log.  A state's ID
(``E.pI`` / ``E.rK``) determines it completely given the log and the seed,
so one state can be replayed alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .hostlog import SECTOR, Epoch, HostLog, OpKind

Piece = tuple[int, int, int]   # (op index, byte start within op, byte end within op)


@dataclass(frozen=True, slots=True)
class CrashState:
    id: str
    epoch: int
    base: int          # ops [0, base) are fully applied (the epoch start)
    crash_pos: int     # host position of the crash: promises made at <= this must hold
    prefix: int | None = None     # in-order prefix length within the epoch
    subset: int | None = None     # random subset number within the epoch

    @property
    def kind(self) -> str:
        return "prefix" if self.prefix is not None else "subset"


class StateIdError(ValueError):
    pass


def _even_sample(items: list, n: int) -> list:
    if n >= len(items):
        return list(items)
    if n <= 0:
        return []
    step = len(items) / n
    return [items[int(k * step)] for k in range(n)]


def enumerate_states(log: HostLog, limit: int | None = None, seed: int = 0) -> list[CrashState]:
    """The crash states to check, sorted by crash position (the sweep order)."""
    epochs = log.epochs()
    boundaries: list[CrashState] = []
    prefixes: list[CrashState] = []
    subset_epochs: list[Epoch] = []
    for ep in epochs:
        boundaries.append(_prefix_state(ep, 0))
        last = ep.count if ep.flush is None else ep.count - 1
        for i in range(1, last + 1):
            prefixes.append(_prefix_state(ep, i))
        if _tearable_sectors(log, ep) >= 2:
            subset_epochs.append(ep)
    if limit is None:
        limit = len(boundaries) + len(prefixes) + 4 * len(subset_epochs)
    limit = max(1, limit)
    chosen: list[CrashState] = []
    if len(boundaries) >= limit:
        keep = _even_sample(boundaries[:-1], limit - 1) + [boundaries[-1]]
        chosen = keep
    else:
        chosen = list(boundaries)
        room = limit - len(chosen)
        # prefixes only ever add writes in order, so on their own they never
        # expose a lost write that no flush covered (cache=unsafe on raw has
        # no host flush at all): torn subsets get at least half of the room
        want_subsets = room // 2 if subset_epochs else 0
        take = min(len(prefixes), room - want_subsets)
        chosen += _even_sample(prefixes, take)
        room = limit - len(chosen)
        if room > 0 and subset_epochs:
            per = [0] * len(subset_epochs)
            # round robin, at most 2**sectors-ish distinct subsets per epoch
            caps = [min(1 << min(_tearable_sectors(log, ep), 20), 64 * max(1, ep.count))
                    for ep in subset_epochs]
            k = 0
            stalled = 0
            while room > 0 and stalled < len(subset_epochs):
                i = k % len(subset_epochs)
                if per[i] < caps[i]:
                    per[i] += 1
                    room -= 1
                    stalled = 0
                else:
                    stalled += 1
                k += 1
            for ep, n in zip(subset_epochs, per):
                end = ep.stop
                chosen += [CrashState(f"{ep.number}.r{j}", ep.number, ep.start, end, subset=j)
                           for j in range(n)]
        if room > 0 and take < len(prefixes):      # subsets ran out: more prefixes
            have = {s.id for s in chosen}
            chosen += _even_sample([s for s in prefixes if s.id not in have], room)
    chosen.sort(key=lambda s: (s.base, s.crash_pos, s.prefix is None, s.subset or 0, s.prefix or 0))
    return chosen


def _prefix_state(ep: Epoch, i: int) -> CrashState:
    return CrashState(f"{ep.number}.p{i}", ep.number, ep.start, ep.start + i, prefix=i)


def _tearable_sectors(log: HostLog, ep: Epoch) -> int:
    n = 0
    for op in log.ops[ep.start:ep.stop]:
        if op.kind in (OpKind.WRITE, OpKind.DISCARD) and not op.fua:
            n += max(1, op.length // SECTOR)
    return n


def parse_state_id(log: HostLog, state_id: str) -> CrashState:
    """Rebuild a state from its ID (for ``crashtest --replay``)."""
    try:
        e_str, rest = state_id.split(".", 1)
        epoch = int(e_str)
        kind, num = rest[0], int(rest[1:])
    except (ValueError, IndexError):
        raise StateIdError(f"state '{state_id}': expected EPOCH.pN or EPOCH.rN (e.g. 3.p2)") from None
    epochs = log.epochs()
    if not 0 <= epoch < len(epochs):
        raise StateIdError(f"state '{state_id}': the log has epochs 0..{len(epochs) - 1}")
    ep = epochs[epoch]
    if kind == "p":
        if not 0 <= num <= ep.count:
            raise StateIdError(f"state '{state_id}': epoch {epoch} has {ep.count} ops")
        return _prefix_state(ep, num)
    if kind == "r" and num >= 0:
        return CrashState(state_id, epoch, ep.start, ep.stop, subset=num)
    raise StateIdError(f"state '{state_id}': expected EPOCH.pN or EPOCH.rN")


def state_pieces(log: HostLog, state: CrashState, seed: int) -> list[Piece]:
    """The epoch ops (or parts of them) this state adds on top of ``state.base``."""
    ops = log.ops
    if state.prefix is not None:
        return [(i, 0, ops[i].length) for i in range(state.base, state.base + state.prefix)
                if ops[i].kind in (OpKind.WRITE, OpKind.DISCARD)]
    rng = random.Random(f"{seed}/{state.epoch}/{state.subset}")
    out: list[Piece] = []
    for i in range(state.base, state.crash_pos):
        op = ops[i]
        if op.kind not in (OpKind.WRITE, OpKind.DISCARD):
            continue
        if op.fua:
            out.append((i, 0, op.length))
            continue
        r = rng.random()
        if r < 1 / 3:
            continue
        nsec = max(1, op.length // SECTOR)
        if r < 2 / 3 or nsec == 1:
            if r < 2 / 3 or rng.random() < 0.5:
                out.append((i, 0, op.length))
            continue
        cuts = sorted(rng.sample(range(1, nsec), min(rng.randint(1, 3), nsec - 1)))
        bounds = [0] + [c * SECTOR for c in cuts] + [op.length]
        first = rng.random() < 0.5
        for k in range(len(bounds) - 1):
            keep = first if k % 2 == 0 else not first
            if rng.random() < 0.25:
                keep = not keep
            if keep:
                out.append((i, bounds[k], bounds[k + 1]))
    return out
