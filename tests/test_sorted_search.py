"""search_sorted gives np.searchsorted's positions whatever the batch: below and above the size at
which it sorts the probes, with repeated keys and probes, for the integer and digest tables it
searches."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.sorted_search import SORTED_PROBES_MIN, search_sorted


@settings(max_examples=60, deadline=None)
@given(keys=st.lists(st.integers(0, 300), max_size=400), seed=st.integers(0, 2**32 - 1),
       probes=st.sampled_from([0, 1, 7, SORTED_PROBES_MIN - 1, SORTED_PROBES_MIN, 3 * SORTED_PROBES_MIN]),
       side=st.sampled_from(["left", "right"]))
def test_the_positions_of_np_searchsorted(keys: list[int], seed: int, probes: int, side: str) -> None:
    table = np.sort(np.array(keys, dtype=np.uint64))
    asked = np.random.default_rng(seed).integers(0, 310, probes).astype(np.uint64)  # some repeat, some miss
    assert np.array_equal(search_sorted(table, asked, side), np.searchsorted(table, asked, side=side))


def test_digest_tables_and_probes_with_a_shared_prefix() -> None:
    rng = np.random.default_rng(7)
    raw = rng.bytes(16 * 5000)
    table = np.unique(np.frombuffer(raw, dtype="S16"))
    # probes: keys, keys with their last byte changed (they sort next to a key), and strangers
    keys = table[rng.integers(0, len(table), 3000)]
    near = np.array([k[:15] + bytes([(k[15:16] or b"\0")[0] ^ 1]) for k in keys[:1000].tolist()], dtype="S16")
    asked = np.concatenate([keys, near, np.frombuffer(rng.bytes(16 * 1000), dtype="S16")])
    rng.shuffle(asked)
    assert len(asked) >= SORTED_PROBES_MIN
    assert np.array_equal(search_sorted(table, asked), np.searchsorted(table, asked))
    assert search_sorted(table, asked).dtype == np.intp
