"""A grown file's receipt digest goes on from the sha256 state the last run kept, and is the
sha256 of the whole file all the same (distill.sha256_state, receipts.DigestCache.earlier)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from distill import receipts, sha256_state
from distill.jsonl import read_sealed, write_sealed
from distill.receipts import STATE_MIN_BYTES, DigestCache, digest_file, sha256_size_newlines_cut
from distill.sha256_state import Sha256State, check_state
from distill.workspace import Workspace

pytestmark = pytest.mark.skipif(not sha256_state.available(), reason="OpenSSL's SHA256 functions are not there")


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(st.binary(max_size=200), max_size=6))
def test_a_state_taken_up_again_hashes_as_hashlib(parts: list[bytes]) -> None:
    h = Sha256State()
    done = 0
    for part in parts:
        h = Sha256State(h.state(done), done)  # through its bytes, at every step
        h.update(part)
        done += len(part)
    whole = b"".join(parts)
    assert h.hexdigest() == hashlib.sha256(whole).hexdigest() and h.size == len(whole)
    twin = h.copy()
    twin.update(b"more")
    assert h.hexdigest() == hashlib.sha256(whole).hexdigest()  # a copy goes on alone
    assert twin.hexdigest() == hashlib.sha256(whole + b"more").hexdigest()


def test_a_state_that_is_not_one_over_that_many_bytes_is_refused() -> None:
    h = Sha256State()
    h.update(b"x" * 100)
    state = h.state()
    assert check_state(state, 100)
    for size in (99, 101, 164, 0):
        assert not check_state(state, size)
    num_at = 32 + 8 + 64
    bad_num = state[:num_at] + (200).to_bytes(4, "little") + state[num_at + 4:]  # OpenSSL would write past its block
    for damaged in (state[:-1], bad_num, state[:num_at + 4] + (20).to_bytes(4, "little")):
        assert not check_state(damaged, 100)
        with pytest.raises(ValueError):
            Sha256State(damaged, 100)


@settings(max_examples=80, deadline=None)
@given(old=st.binary(max_size=300), tail=st.binary(max_size=300), cuts=st.lists(st.integers(0, 620), max_size=4),
       chunk=st.sampled_from([1, 7, 64, 1 << 20]), edit=st.booleans(), counted=st.booleans())
def test_a_digest_that_goes_on_from_an_earlier_one_is_the_whole_files(
        tmp_path_factory: Any, old: bytes, tail: bytes, cuts: list[int], chunk: int, edit: bool, counted: bool) -> None:
    """`counted`: the earlier digest has its newline count (a JSONL file's), which the prefix then
    need not be counted for; without one it is counted."""
    path = tmp_path_factory.mktemp("grown") / "f.jsonl"
    path.write_bytes(old)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(receipts, "CHUNK", chunk)
        patch.setattr(receipts, "STATE_MIN_BYTES", 0)
        size, sha, lines, _, xxh3, state = sha256_size_newlines_cut(path, [])
        assert state is not None
        data = (bytes([old[0] ^ 1]) + old[1:] if edit and old else old) + tail  # the prefix edited, or not
        path.write_bytes(data)
        found = sha256_size_newlines_cut(path, sorted(set(cuts)),
                                         earlier=(size, sha, lines if counted else None, xxh3, state))
    got_size, got_sha, got_lines, states, got_xxh3, got_state = found
    assert (got_size, got_sha, got_lines, got_xxh3) == (len(data), hashlib.sha256(data).hexdigest(), data.count(b"\n"),
                                                        xxhash.xxh3_128_hexdigest(data))
    assert got_state is not None and Sha256State(bytes.fromhex(got_state), len(data)).hexdigest() == got_sha
    went_on = not (edit and old) and old  # an unchanged prefix: a cut inside it has no state (its asker reads it)
    expected_cuts = {c for c in cuts if c <= len(data) and (not went_on or c >= len(old))}
    assert set(states) == expected_cuts
    for cut, at in states.items():
        assert at.hexdigest() == hashlib.sha256(data[:cut]).hexdigest()


def _settled(path: Path, probe: Path) -> None:
    """Wait until the file system's clock is past the file's last change (a digest is kept across
    runs only then: receipts.RACY_MARGIN_NS)."""
    changed = path.stat().st_ctime_ns
    deadline = time.monotonic() + 5
    while (probe.touch() or probe.stat().st_ctime_ns <= changed) and time.monotonic() < deadline:
        time.sleep(0.001)


class _Hashed:
    """Bytes that went through Sha256State.update."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.bytes = 0
        real = Sha256State.update

        def counting(state: Sha256State, data: bytes) -> None:
            self.bytes += len(data)
            real(state, data)

        monkeypatch.setattr(Sha256State, "update", counting)


def _lines(n: int, start: int = 0) -> bytes:
    return b"".join(b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * 200) for i in range(start, start + n))


def _digested_and_saved(tmp_path: Path) -> tuple[Workspace, Path]:
    """A JSONL file over STATE_MIN_BYTES, digested once it settled, its digest saved as a run saves it."""
    ws = Workspace(tmp_path)
    path = tmp_path / "stream.jsonl"
    path.write_bytes(_lines(STATE_MIN_BYTES // 200 + 10))
    _settled(path, tmp_path / "probe")
    cache = DigestCache(clock=ws.clock_path)
    digest_file(ws, path, cache)
    cache.save(ws.digest_cache_path)
    return ws, path


def test_a_grown_file_is_hashed_from_where_its_saved_digest_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws, path = _digested_and_saved(tmp_path)
    with path.open("ab") as fh:
        fh.write(_lines(40, start=10**6))
    hashed = _Hashed(monkeypatch)
    grown = digest_file(ws, path, DigestCache.load(ws.digest_cache_path, clock=ws.clock_path))
    data = path.read_bytes()
    assert (grown.sha256, grown.bytes, grown.records) == (hashlib.sha256(data).hexdigest(), len(data), data.count(b"\n"))
    assert hashed.bytes == len(_lines(40, start=10**6))  # the appended lines only


@pytest.mark.parametrize("change", ["rewritten", "state"])
def test_a_file_that_did_not_only_grow_or_a_state_that_is_not_one_is_hashed_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    ws, path = _digested_and_saved(tmp_path)
    if change == "rewritten":  # a byte of the prefix changed, the length kept, then lines appended
        data = bytearray(path.read_bytes())
        data[5] ^= 1
        path.write_bytes(bytes(data) + _lines(3))
    else:  # the saved state is not one over the file's bytes (a cache edited by hand, sealed again)
        body = read_sealed(ws.digest_cache_path)
        assert body is not None
        saved = json.loads(body)
        ((*_, state),) = saved["entries"]
        assert state is not None
        saved["entries"][0][-1] = state[:-8] + "00000000"  # its md_len
        write_sealed(ws.digest_cache_path, json.dumps(saved).encode())
        with path.open("ab") as fh:
            fh.write(_lines(3))
    hashed = _Hashed(monkeypatch)
    found = digest_file(ws, path, DigestCache.load(ws.digest_cache_path, clock=ws.clock_path))
    data = path.read_bytes()
    assert found.sha256 == hashlib.sha256(data).hexdigest()
    assert hashed.bytes == len(data)


def test_a_small_file_keeps_no_state(tmp_path: Path) -> None:
    path = tmp_path / "small.jsonl"
    path.write_bytes(b'{"n": 1}\n')
    assert sha256_size_newlines_cut(path, [])[5] is None
    assert os.path.getsize(path) < STATE_MIN_BYTES
