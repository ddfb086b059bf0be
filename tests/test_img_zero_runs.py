"""``img convert``'s zero detection (``-S``): the run splitter against a naive model."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from blockbed.cli.img import CHUNK
from blockbed.cli.img_convert import _zero_runs


def naive_runs(buf: bytes, n: int, gran: int) -> list[tuple[int, int, bool]]:
    """Granule by granule; the partial tail is data unless everything is zero."""
    if not any(buf[:n]):
        return [(0, n, True)]
    runs: list[tuple[int, int, bool]] = []
    for g in range(0, n, gran):
        end = min(n, g + gran)
        z = end - g == gran and not any(buf[g:end])
        if runs and runs[-1][2] == z:
            s, ln, _ = runs[-1]
            runs[-1] = (s, ln + end - g, z)
        else:
            runs.append((g, end - g, z))
    return runs


def merged(runs):
    out = []
    for s, ln, z in runs:
        if out and out[-1][2] == z and out[-1][0] + out[-1][1] == s:
            out[-1] = (out[-1][0], out[-1][1] + ln, z)
        else:
            out.append((s, ln, z))
    return out


@settings(max_examples=300, deadline=None)
@given(gran_bits=st.integers(9, 13), n_granules=st.integers(1, 40), tail=st.integers(0, 511),
       pokes=st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(1, 255)), max_size=12))
def test_zero_runs_match_model(gran_bits, n_granules, tail, pokes):
    gran = 1 << gran_bits
    n = n_granules * gran + tail
    buf = bytearray(CHUNK)
    for pos, val in pokes:
        buf[pos % n] = val
    got = _zero_runs(buf, n, gran)
    # the runs tile [0, n) in order
    assert [s for s, _, _ in got] == [0] + [s + ln for s, ln, _ in got[:-1]]
    assert sum(ln for _, ln, _ in got) == n
    assert merged(got) == naive_runs(bytes(buf), n, gran)


def test_inner_byte_of_candidate_granule_counts():
    """A granule whose first and last bytes are zero but a middle byte is not is data."""
    gran = 4096
    buf = bytearray(CHUNK)
    buf[3 * gran + 100] = 7
    buf[10 * gran] = 1
    got = merged(_zero_runs(buf, 16 * gran, gran))
    assert got == [(0, 3 * gran, True), (3 * gran, gran, False), (4 * gran, 6 * gran, True),
                   (10 * gran, gran, False), (11 * gran, 5 * gran, True)]
