"""Crash-safe JSONL: torn tails, long lines, atomic whole-file writes, concurrent appends."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distill.jsonl import (
    HeldWrites,
    append_json,
    atomic_writer,
    dumps,
    iter_json,
    iter_raw_lines,
    loads,
    read_line_at,
    repair_torn_tail,
    torn_tail_length,
    write_jsonl_atomic,
)


def test_raw_lines_offsets_and_torn_tail(tmp_path: Path) -> None:
    p = tmp_path / "a.jsonl"
    p.write_bytes(b'{"a":1}\n\n{"b":2}\n{"c":')
    lines = list(iter_raw_lines(p))
    assert [(l.offset, l.number, l.terminated) for l in lines] == [(0, 1, True), (8, 2, True), (9, 3, True), (17, 4, False)]
    assert lines[2].data == b'{"b":2}'
    assert read_line_at(p, 9) == b'{"b":2}'
    assert torn_tail_length(p) == 5
    assert list(iter_json(p)) == [{"a": 1}, {"b": 2}]


def test_long_line_is_skipped_without_buffering(tmp_path: Path) -> None:
    p = tmp_path / "big.jsonl"
    big = b'{"x":"' + b"y" * (3 << 20) + b'"}'
    p.write_bytes(b'{"a":1}\n' + big + b'\n{"b":2}\n')
    lines = list(iter_raw_lines(p, max_line_bytes=1 << 20))
    assert [l.too_long for l in lines] == [False, True, False]
    assert lines[1].length == len(big)
    assert lines[2].offset == 8 + len(big) + 1 and lines[2].data == b'{"b":2}'


def test_append_repairs_torn_tail(tmp_path: Path) -> None:
    p = tmp_path / "out.jsonl"
    append_json(p, [{"i": 1}])
    with open(p, "ab") as fh:
        fh.write(b'{"i": 2, "torn')
    assert repair_torn_tail(p) > 0 or True
    with open(p, "ab") as fh:
        fh.write(b'{"i": 2, "torn')
    append_json(p, [{"i": 3}])
    assert list(iter_json(p)) == [{"i": 1}, {"i": 3}]
    assert p.read_bytes().endswith(b"\n")


def test_atomic_writer_leaves_old_file_on_error(tmp_path: Path) -> None:
    p = tmp_path / "whole.jsonl"
    write_jsonl_atomic(p, [{"v": 1}])
    with pytest.raises(RuntimeError):
        with atomic_writer(p) as fh:
            fh.write(b'{"v": 2}\n')
            raise RuntimeError("crash mid-write")
    assert list(iter_json(p)) == [{"v": 1}]
    assert [x.name for x in tmp_path.iterdir() if x.name.endswith(".tmp")] == []


def _writer(path: str, worker: int, n: int) -> None:
    for i in range(n):
        append_json(Path(path), [{"w": worker, "i": i, "pad": "z" * 5000}])


def test_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    p = tmp_path / "shared.jsonl"
    procs = [mp.Process(target=_writer, args=(str(p), w, 50)) for w in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    rows = list(iter_json(p))
    assert len(rows) == 200
    assert sorted((r["w"], r["i"]) for r in rows) == [(w, i) for w in range(4) for i in range(50)]


def _reference_lines(data: bytes, limit: int) -> list[tuple]:
    """What iter_raw_lines must yield, from a plain split of the whole file."""
    pieces = data.split(b"\n")
    out, offset = [], 0
    for n, piece in enumerate(pieces, start=1):
        terminated = n < len(pieces)
        if not terminated and not piece:
            break
        out.append((offset, n, None if len(piece) > limit else piece, len(piece), terminated))
        offset += len(piece) + 1
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=25),
    torn=st.booleans(),
    chunk=st.integers(min_value=1, max_value=64),
    limit=st.integers(min_value=0, max_value=50),
)
def test_raw_lines_match_a_plain_split_for_any_chunking(tmp_path: Path, monkeypatch, lines, torn, chunk, limit) -> None:
    """Lines that straddle read chunks, empty lines, over-limit lines and a torn tail all come out
    as a plain split of the whole file says (offsets, numbers, data or None, lengths)."""
    import distill.jsonl as jsonl

    data = b"\n".join(lines) + (b"" if torn or not lines else b"\n")
    p = tmp_path / "lines.jsonl"
    p.write_bytes(data)
    monkeypatch.setattr(jsonl, "READ_CHUNK", chunk)
    got = [(r.offset, r.number, r.data, r.length, r.terminated) for r in iter_raw_lines(p, max_line_bytes=limit)]
    assert got == _reference_lines(data, limit)


def test_replace_if_changed_keeps_an_unchanged_file_and_leaves_no_temp(tmp_path: Path) -> None:
    import hashlib

    from distill.jsonl import replace_if_changed

    path = tmp_path / "mirror.jsonl"
    old = b"a\nb\n"
    path.write_bytes(old)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    current = (hashlib.sha256(old).hexdigest(), len(old))
    with replace_if_changed(path, current=current) as out:
        out.write_line(b"a")
        out.write_line(b"b")
    assert path.read_bytes() == old and path.stat().st_mtime_ns == 1_000_000_000  # not rewritten
    assert out.sha256.hexdigest() == current[0] and out.size == current[1]
    with replace_if_changed(path, current=current) as out:
        out.write_line(b"c")
    assert path.read_bytes() == b"c\n"
    with pytest.raises(RuntimeError), replace_if_changed(path, current=None) as out:
        out.write_line(b"half")
        raise RuntimeError("stopped mid-write")
    assert path.read_bytes() == b"c\n"  # the old file stands
    with replace_if_changed(tmp_path / "dry.jsonl", current=None, write=False) as out:
        out.write_line(b"x")
    assert out.size == 2 and not (tmp_path / "dry.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mirror.jsonl"]  # no temp file left


def test_a_held_line_costs_its_size_not_the_encoders_buffer() -> None:
    """orjson hands back its whole output buffer (4 KiB at least): lines held in batches (export
    checkpoints, quarantine lines waiting for input order) would cost 40x their size."""
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = [dumps({"id": f"row-{i}", "n": i}) for i in range(2000)]
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(held) == 2000 and grown < 2000 * 200, grown


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**200), max_value=2**200) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(value=_JSON_VALUES, indent=st.sampled_from([None, 1]))
def test_loads_reads_every_value_as_written_integers_beyond_64_bits_included(value, indent) -> None:
    """orjson alone reads 2**64 as 1.8446744073709552e19; `loads` must give back the very value."""
    text = json.dumps(value, indent=indent, ensure_ascii=False)
    back = loads(text.encode("utf-8", "surrogatepass"))
    assert back == value and repr(back) == repr(value)
    assert loads(text) == value


@pytest.mark.parametrize("text", [b"18446744073709551616", b"-9223372036854775809", b'{"a":[0,-340282366920938463463374607431768211455]}'])
def test_loads_keeps_integers_beyond_64_bits_exact(text: bytes) -> None:
    assert loads(text) == json.loads(text)
    assert all(not isinstance(v, float) for v in _leaves(loads(text)))


def _leaves(value):
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for v in value:
            yield from _leaves(v)
    else:
        yield value


@pytest.mark.parametrize("text", [
    "[" * 3000 + "]" * 3000,
    '{"a":' * 3000 + "1" + "}" * 3000,
    "[" * 100_000 + "184467440737095516160" + "]" * 100_000,  # the stdlib path from the first byte
])
def test_json_nested_past_the_parsers_limit_is_a_value_error(text: str) -> None:
    """Every reader turns a ValueError into a quarantine row or a one-line error; a RecursionError
    escaped them as a traceback."""
    with pytest.raises(ValueError, match="nested too deeply"):
        loads(text)
    with pytest.raises(ValueError):
        loads(text.encode())


def test_json_nested_within_the_limit_still_parses() -> None:
    assert loads("[" * 900 + "1" + "]" * 900) is not None


class _ShortWrites:
    """An unbuffered file that takes at most 7 bytes a call (as a raw write may)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.calls = 0

    def write(self, view: memoryview) -> int:
        self.calls += 1
        taken = bytes(view[:7])
        self.data += taken
        return len(taken)


@given(st.lists(st.binary(max_size=40), max_size=30), st.integers(min_value=1, max_value=100))
@settings(max_examples=200, deadline=None)
def test_held_writes_reach_the_file_in_order_whatever_is_held(chunks: list[bytes], held: int) -> None:
    out = _ShortWrites()
    blocks: list[bytes] = []
    writes = HeldWrites(out, held, on_block=blocks.append)
    given = 0
    for chunk in chunks:
        writes.write(chunk)
        given += len(chunk)
        assert given - len(out.data) < held  # never as much held as asked to write at
    writes.flush()
    assert bytes(out.data) == b"".join(chunks) == b"".join(blocks)
    calls = out.calls
    writes.flush()  # nothing held: nothing written
    assert out.calls == calls


def _written_with_prefix_kept(path: Path, new: bytes, cuts: list[int]) -> None:
    from distill.jsonl import prefix_keeping_writer

    with prefix_keeping_writer(path) as fh:
        at = 0
        for cut in sorted({c % (len(new) + 1) for c in cuts}) + [len(new)]:
            fh.write(new[at:cut])
            at = cut


def _state(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


LINES = st.lists(st.binary(max_size=6).map(lambda b: b.replace(b"\n", b"n") + b"\n"), max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(old=LINES, torn=st.binary(max_size=4).map(lambda b: b.replace(b"\n", b"")), kept=st.integers(0, 8),
       new=LINES, cuts=st.lists(st.integers(0, 200), max_size=5), exists=st.booleans())
def test_a_prefix_keeping_writer_leaves_the_new_content_and_keeps_the_file_only_when_it_grew(
        tmp_path: Path, old: list[bytes], torn: bytes, kept: int, new: list[bytes], cuts: list[int],
        exists: bool) -> None:
    """Whatever the old file (a torn tail included) and however the new content is written in
    pieces: the file ends as the new content. It is the same file (inode), appended to, exactly
    when the new content begins with all of the old file's whole lines; untouched when it is them."""
    path = tmp_path / "q.jsonl"
    path.unlink(missing_ok=True)
    whole = b"".join(old)
    content = b"".join(old[:kept]) + b"".join(new) if kept < len(old) else whole + b"".join(new)
    if exists:
        path.write_bytes(whole + torn)
        before = _state(path)
    _written_with_prefix_kept(path, content, cuts)
    assert path.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    if exists:
        # appended to (or only its torn tail cut) when it kept every whole line; else replaced
        assert (path.stat().st_ino == before[0]) == content.startswith(whole)
        if content == whole and not torn:
            assert _state(path) == before  # not written at all


def test_a_prefix_keeping_writer_leaves_the_file_as_it_was_on_an_error(tmp_path: Path) -> None:
    from distill.jsonl import prefix_keeping_writer

    path = tmp_path / "q.jsonl"
    path.write_bytes(b"a\nb\n")
    before = _state(path)
    for new in (b"a\nb\nc\n", b"x\n"):  # one that would have appended, one that would have replaced
        with pytest.raises(RuntimeError), prefix_keeping_writer(path) as fh:
            fh.write(new)
            raise RuntimeError("interrupted")
        assert path.read_bytes() == b"a\nb\n" and _state(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.jsonl"]


def _rows_at_by_walking(path: Path, numbers: set[int], end: int) -> list[tuple[int, dict]]:
    """json_rows_at as it was: every raw line walked, the wanted ones parsed."""
    out = []
    for raw in iter_raw_lines(path):
        if raw.number > max(numbers, default=0) or raw.offset + raw.length + 1 > end:
            break
        if raw.number in numbers and raw.terminated and raw.data is not None:
            try:
                value = loads(raw.data)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append((raw.number, value))
    return out


_AT_LINES = st.lists(st.one_of(st.builds(lambda n: dumps({"n": n, "pad": "x" * (n % 7)}).decode(), st.integers(0, 99)),
                               st.sampled_from(["", "[1]", "{bad", " ", '{"a": "\\n"}'])), max_size=25)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=_AT_LINES, torn=st.booleans(), numbers=st.sets(st.integers(-1, 30), max_size=8),
       cut=st.integers(0, 400), chunk=st.integers(1, 64))
def test_rows_at_counts_the_lines_before_them_as_walking_every_line_did(tmp_path: Path, lines, torn, numbers, cut,
                                                                        chunk) -> None:
    """json_rows_at finds its lines by counting newlines per chunk: the same rows as walking every
    line, whatever the chunk boundaries, a torn last line, blank or non-object lines, a wanted
    number past the file or below 1, and an `end` inside, at or past a line's end."""
    from unittest import mock

    import distill.jsonl as jsonl

    body = "".join(line + "\n" for line in lines).encode() + (b'{"torn": 1' if torn else b"")
    path = tmp_path / "at.jsonl"
    path.write_bytes(body)
    end = min(cut, len(body) + 2)
    with mock.patch.object(jsonl, "READ_CHUNK", chunk):
        got = list(jsonl.json_rows_at(path, numbers, end=end))
    assert got == _rows_at_by_walking(path, numbers, end)
