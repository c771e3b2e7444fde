"""distill.fold_cache: a tally resumed after an append equals a full re-read, whatever happened to
the file in between (appended, edited in place, shortened, torn, the cache itself damaged)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import xxhash
from hypothesis import example, given, settings
from hypothesis import strategies as st

from distill import fold_cache
from distill.fold_cache import FoldCache, Tally, fold_lines
from distill.hashing import sealed, unsealed
from distill.receipts import check_jsonl_integrity, count_categories, digest_paths, quarantine_reason
from distill.workspace import Workspace


def _kind(row: dict[str, Any]) -> str | None:
    value = row.get("kind")
    return value if isinstance(value, str) else None


def _fresh(path: Path) -> Tally:
    return fold_lines(path, _kind)


def _rows(*kinds: str) -> bytes:
    return b"".join(json.dumps({"kind": k}).encode() + b"\n" for k in kinds)


def _read_cache(path: Path) -> Any:
    """A saved cache file's JSON (its seal checked)."""
    data = unsealed(path.read_bytes())
    assert data is not None, path
    return json.loads(data)


def _write_cache(path: Path, saved: Any) -> None:
    """A cache file as distill writes one (sealed), with what a test planted in it."""
    path.write_bytes(sealed(json.dumps(saved).encode()))


def test_an_appended_file_is_folded_from_where_the_last_tally_stopped(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_bytes(_rows("a", "b", "a"))
    cache_path = tmp_path / "folds.json"
    first = FoldCache.load(cache_path)
    assert first.tally(data, "kind", _kind).values == {"a": 2, "b": 1}
    first.save()

    # the saved tally is what the next run starts from: plant a count it could not have read
    saved = _read_cache(cache_path)
    saved["entries"][0][-1]["planted"] = 7  # [path, fold, sha256, end, lines, nonblank, bad, first_bad, values]
    _write_cache(cache_path, saved)
    with data.open("ab") as fh:
        fh.write(_rows("b", "c"))
    again = FoldCache.load(cache_path).tally(data, "kind", _kind)
    assert again.values == {"a": 2, "b": 2, "c": 1, "planted": 7}  # the prefix was not re-read
    assert (again.lines, again.nonblank, again.end) == (5, 5, data.stat().st_size)


def test_a_prefix_edited_in_place_is_folded_again_from_the_start(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_bytes(_rows("a", "b"))
    cache = FoldCache.load(tmp_path / "folds.json")
    cache.tally(data, "kind", _kind)
    cache.save()
    data.write_bytes(data.read_bytes().replace(b'"a"', b'"z"'))  # same size, other content
    with data.open("ab") as fh:
        fh.write(_rows("c"))
    assert FoldCache.load(tmp_path / "folds.json").tally(data, "kind", _kind) == _fresh(data)


def test_a_torn_tail_is_reported_and_never_cached(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_bytes(_rows("a") + b'{"kind": "b"')
    cache = FoldCache.load(tmp_path / "folds.json")
    torn = cache.tally(data, "kind", _kind)
    assert torn.torn == len(b'{"kind": "b"') and torn.values == {"a": 1}
    cache.save()
    with data.open("ab") as fh:
        fh.write(b"}\n")
    done = FoldCache.load(tmp_path / "folds.json").tally(data, "kind", _kind)
    assert done.torn is None and done.values == {"a": 1, "b": 1}


def test_a_damaged_cache_costs_a_re_read_not_a_wrong_count(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_bytes(_rows("a") + b"not json\n\n")
    cache_path = tmp_path / "folds.json"
    lying = json.dumps({"version": 2, "entries": [["d.jsonl", "kind", "0" * 64, 3, 1, 1, 0, None, {"a": 5}]]})
    for junk in (b"", b"{", b'{"version": 99, "entries": []}', b'{"version": 2, "entries": [{"path": 1}]}',
                 b'{"version": 2, "entries": [["p", "kind", "x", -1, 0, 0, 0, null, {}]]}', lying.encode()):
        cache_path.write_bytes(junk)
        got = FoldCache.load(cache_path).tally(data, "kind", _kind)
        assert got == _fresh(data) and (got.bad, got.first_bad, got.nonblank) == (1, 2, 2)


def test_folds_of_one_file_are_kept_apart(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_bytes(_rows("a", "b"))
    cache = FoldCache.load(tmp_path / "folds.json")
    assert cache.tally(data, "kind", _kind).values == {"a": 1, "b": 1}
    assert cache.tally(data, "lines").values == {}
    cache.save()
    assert FoldCache.load(tmp_path / "folds.json").tally(data, "lines").values == {}


_LINE = st.one_of(
    st.sampled_from(["a", "b", "é"]).map(lambda k: json.dumps({"kind": k}).encode()),
    st.sampled_from([b"", b"   ", b"not json", b"[1]", b'{"kind": 3}', b'{"other": "x"}']),
)
_OP = st.one_of(
    st.tuples(st.just("append"), st.lists(_LINE, max_size=4), st.booleans()),
    st.tuples(st.just("edit"), st.integers(0, 200), st.binary(min_size=1, max_size=3)),
    st.tuples(st.just("truncate"), st.integers(0, 200), st.just(b"")),
)


def _apply(data: Path, step: tuple[Any, ...]) -> None:
    """One _OP: lines appended (the last one torn or not), bytes edited in place, the file cut."""
    op, arg, extra = step
    body = data.read_bytes()
    if op == "append":
        data.write_bytes(body + b"\n".join(arg) + (b"\n" if arg and extra else b""))
    elif op == "edit" and body:
        at = arg % len(body)
        data.write_bytes(body[:at] + extra + body[at + len(extra):])
    elif op == "truncate":
        data.write_bytes(body[: arg % (len(body) + 1)])


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(_OP, min_size=1, max_size=8))
def test_a_cached_tally_always_equals_a_full_re_read(tmp_path_factory: Any, ops: list[tuple[Any, ...]]) -> None:
    tmp = tmp_path_factory.mktemp("fold")
    data, cache_path = tmp / "d.jsonl", tmp / "folds.json"
    data.write_bytes(b"")
    for op in ops:
        _apply(data, op)
        cache = FoldCache.load(cache_path)
        assert cache.tally(data, "kind", _kind) == _fresh(data)
        cache.save()


def test_receipt_checks_still_catch_a_bad_line_written_into_a_counted_prefix(tmp_path: Path) -> None:
    ws = Workspace.resolve(tmp_path)
    out = ws.root / "evidence" / "x.jsonl"
    out.parent.mkdir(parents=True)
    out.write_bytes(_rows("a", "b"))
    assert check_jsonl_integrity(ws, digest_paths(ws, [out])) == []
    assert count_categories(ws, digest_paths(ws, [out]), "kind", under="evidence/") == {"a": 1, "b": 1}
    out.write_bytes(out.read_bytes().replace(b'{"kind": "a"}', b'{"kind": "a"!'))
    with out.open("ab") as fh:
        fh.write(_rows("c"))
    errors = check_jsonl_integrity(ws, digest_paths(ws, [out]))
    assert errors == ["output_unparseable: evidence/x.jsonl: 1 line(s) are not JSON objects (first at line 1)"]
    assert count_categories(ws, digest_paths(ws, [out]), "kind", under="evidence/") == {"b": 1, "c": 1}


def test_a_moved_workspace_keeps_its_tallies(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    (old / "d.jsonl").write_bytes(_rows("a", "b"))
    cache = FoldCache.load(old / "folds.json")
    cache.tally(old / "d.jsonl", "kind", _kind)
    cache.save()
    saved = _read_cache((old / "folds.json"))
    saved["entries"][0][-1]["planted"] = 7  # a count only the saved tally holds
    _write_cache((old / "folds.json"), saved)
    old.rename(new)
    with (new / "d.jsonl").open("ab") as fh:
        fh.write(_rows("c"))
    assert FoldCache.load(new / "folds.json").tally(new / "d.jsonl", "kind", _kind).values == {
        "a": 1, "b": 1, "c": 1, "planted": 7}


def test_a_line_count_is_taken_from_another_fold_of_the_same_bytes_only(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_bytes(_rows("a") + b"not json\n")
    cache = FoldCache.load(tmp_path / "folds.json")
    cache.tally(data, "kind", _kind)
    cache.save()
    saved = _read_cache((tmp_path / "folds.json"))
    saved["entries"][0][5] = 40  # nonblank: a count only the saved "kind" tally holds
    _write_cache((tmp_path / "folds.json"), saved)
    whole = digest_paths(Workspace.resolve(tmp_path), [data])[0].sha256
    lines = FoldCache.load(tmp_path / "folds.json").tally(data, "lines", sha256=whole)
    assert (lines.nonblank, lines.bad, lines.first_bad, lines.values) == (40, 1, 2, {})  # not read again
    # other bytes (or no digest from the caller): read, never borrowed
    with data.open("ab") as fh:
        fh.write(_rows("b"))
    whole = digest_paths(Workspace.resolve(tmp_path), [data])[0].sha256
    assert FoldCache.load(tmp_path / "folds.json").tally(data, "lines", sha256=whole) == fold_lines(data, None)
    assert FoldCache.load(tmp_path / "folds.json").tally(data, "lines") == fold_lines(data, None)


def test_the_line_check_after_the_category_count_still_catches_a_bad_line(tmp_path: Path) -> None:
    ws = Workspace.resolve(tmp_path)
    out = ws.root / "evidence" / "x.jsonl"
    out.parent.mkdir(parents=True)
    out.write_bytes(_rows("a", "b"))
    assert count_categories(ws, digest_paths(ws, [out]), "kind", under="evidence/") == {"a": 1, "b": 1}
    assert check_jsonl_integrity(ws, digest_paths(ws, [out])) == []
    with out.open("ab") as fh:
        fh.write(b'{"kind": "c"\n' + _rows("d"))
    assert count_categories(ws, digest_paths(ws, [out]), "kind", under="evidence/") == {"a": 1, "b": 1, "d": 1}
    errors = check_jsonl_integrity(ws, digest_paths(ws, [out]))
    assert errors == ["output_unparseable: evidence/x.jsonl: 1 line(s) are not JSON objects (first at line 3)"]


def test_the_line_check_of_a_quarantine_file_counts_the_reasons_the_card_shows(tmp_path: Path) -> None:
    from distill.export.card import quarantine_summary

    ws = Workspace.resolve(tmp_path)
    out = ws.quarantine_path("rag")
    out.parent.mkdir(parents=True)
    out.write_bytes(b'{"reason": "empty_content"}\n{"reason": "secret_detected"}\n{"reason": "empty_content"}\n')
    assert check_jsonl_integrity(ws, digest_paths(ws, [out])) == []
    saved = _read_cache(ws.fold_cache_path)
    assert [e[:2] for e in saved["entries"]] == [["exports/quarantine/rag.jsonl", "quarantine-reason/1"]]
    saved["entries"][0][-1]["planted"] = 1  # a count only the line check's tally holds
    _write_cache(ws.fold_cache_path, saved)
    folds = FoldCache.load(ws.fold_cache_path)
    assert quarantine_summary(ws, folds) == {"rag": {"empty_content": 2, "planted": 1, "secret_detected": 1}}
    out.write_bytes(b'{"reason": "x"}\nnot json\n')  # rewritten: read again, and the bad line still fails
    assert quarantine_summary(ws, FoldCache.load(ws.fold_cache_path)) == {"rag": {"x": 1}}
    assert check_jsonl_integrity(ws, digest_paths(ws, [out])) == [
        "output_unparseable: exports/quarantine/rag.jsonl: 1 line(s) are not JSON objects (first at line 2)"]


def test_one_cache_saved_after_each_stage_keeps_what_another_process_saved_meanwhile(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run loads the cache once and saves it after each stage's receipt; it reads the file again
    only when someone else wrote it since, and then keeps their tallies beside its own."""
    one, two, three = (tmp_path / f"{n}.jsonl" for n in ("one", "two", "three"))
    for path, kinds in ((one, "ab"), (two, "bc"), (three, "cd")):
        path.write_bytes(_rows(*kinds))
    cache_path = tmp_path / "folds.json"
    run = FoldCache.load(cache_path)
    run.tally(one, "kind", _kind)
    run.save()

    worker = FoldCache.load(cache_path)  # another process (the dataset card's worker) saves its own
    worker.tally(two, "kind", _kind)
    worker.save()

    run.tally(three, "kind", _kind)
    run.save()
    names = {entry[0] for entry in _read_cache(cache_path)["entries"]}
    assert names == {"one.jsonl", "two.jsonl", "three.jsonl"}
    assert run.tally(two, "kind", _kind).values == {"b": 1, "c": 1}  # adopted, not lost

    # nobody else wrote it since: the next save writes what the run holds without reading it again
    saved = _read_cache(cache_path)
    reads = []
    real_read = fold_cache._read
    monkeypatch.setattr(fold_cache, "_read", lambda path: reads.append(path) or real_read(path))
    run.tally(one, "other", _kind)
    run.save()
    assert reads == []
    assert {(e[0], e[1]) for e in _read_cache(cache_path)["entries"]} == {
        (e[0], e[1]) for e in saved["entries"]} | {("one.jsonl", "other")}


# --- line memos: a file rewritten whole is folded again by line digests ------------------------------

_REWRITE = st.one_of(
    st.tuples(st.just("insert"), st.integers(0, 50), st.lists(_LINE, min_size=1, max_size=4)),
    st.tuples(st.just("drop"), st.integers(0, 50), st.integers(1, 3)),
    st.tuples(st.just("append"), st.just(0), st.lists(_LINE, max_size=3)),
    st.tuples(st.just("edit"), st.integers(0, 400), st.binary(min_size=1, max_size=3)),
    st.tuples(st.just("reverse"), st.just(0), st.just(0)),
)


def _rewrite(data: Path, op: str, at: int, arg: Any) -> None:
    """Rewrite `data` whole (a new file renamed over it, as the exports write their quarantine files)."""
    body = data.read_bytes()
    lines = body.split(b"\n")[:-1] if body.endswith(b"\n") else body.split(b"\n")
    at = at % (len(lines) + 1)
    if op == "insert":
        lines[at:at] = arg
    elif op == "drop":
        del lines[at:at + arg]
    elif op == "append":
        lines += arg
    elif op == "reverse":
        lines.reverse()
    new = b"".join(line + b"\n" for line in lines)
    if op == "edit" and new:
        pos = at % len(new)
        new = new[:pos] + arg + new[pos + len(arg):]
    tmp = data.with_suffix(".tmp")
    tmp.write_bytes(new)
    tmp.replace(data)


@settings(max_examples=200, deadline=None)
@given(first=st.lists(_LINE, max_size=8), ops=st.lists(_REWRITE, min_size=1, max_size=6),
       with_digest=st.lists(st.booleans(), min_size=6, max_size=6), chunk=st.sampled_from([1, 3, 7, 64, 1 << 20]))
def test_a_rewritten_file_folded_with_its_line_memo_equals_a_full_re_read(
        tmp_path_factory: Any, first: list[bytes], ops: list[tuple[Any, ...]], with_digest: list[bool],
        chunk: int) -> None:
    """Whatever the rewrite (lines inserted, dropped, reordered, bytes edited into new or bad
    lines, a torn last line), whether or not the caller has the file's digest, and wherever the
    read's chunks cut the lines, the memo gives a full read's tally."""
    import hashlib

    tmp = tmp_path_factory.mktemp("memo")
    data, cache_path = tmp / "q.jsonl", tmp / "folds.json"
    data.write_bytes(b"".join(line + b"\n" for line in first))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fold_cache, "READ_CHUNK", chunk)  # the memo fold's reads only
        for (op, at, arg), digest in zip(ops, with_digest, strict=False):
            cache = FoldCache.load(cache_path)
            sha = hashlib.sha256(data.read_bytes()).hexdigest() if digest else None
            assert cache.tally(data, "kind", _kind, sha256=sha, rewritten=True) == _fresh(data)
            assert cache.tally(data, "lines", sha256=sha) == fold_lines(data, None)
            cache.save()
            _rewrite(data, op, at, arg)
        assert FoldCache.load(cache_path).tally(data, "kind", _kind) == _fresh(data)


def _parses(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The lines folds parse from now on."""
    parsed: list[bytes] = []
    real = fold_cache._outcome

    def counting(data: bytes, key: Any) -> Any:
        parsed.append(data)
        return real(data, key)

    monkeypatch.setattr(fold_cache, "_outcome", counting)
    return parsed


def test_a_rewritten_file_has_only_its_new_lines_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    data, cache_path = tmp_path / "q.jsonl", tmp_path / "folds.json"
    old = [json.dumps({"kind": k, "n": n}).encode() for n, k in enumerate("abcabcabc")]
    data.write_bytes(b"".join(line + b"\n" for line in old))
    cache = FoldCache.load(cache_path)
    cache.tally(data, "kind", _kind)
    cache.save()
    assert not fold_cache.memo_dir(cache_path).exists()  # a file only appended to needs no memo

    # rewritten: two lines inside, one bad line; the fold learns a memo (everything parsed once)
    lines = old[:3] + [b'{"kind": "z"}', b"not json"] + old[3:]
    data.write_bytes(b"".join(line + b"\n" for line in lines))
    parsed = _parses(monkeypatch)
    cache = FoldCache.load(cache_path)
    assert cache.tally(data, "kind", _kind) == _fresh(data)
    cache.save()
    assert len(parsed) == 2 * len(lines)  # hashed and refused as a prefix, then read: the fold's and _fresh's
    assert len(list(fold_cache.memo_dir(cache_path).iterdir())) == 1

    # rewritten again: only the line the memo has not seen is parsed, by the fold
    lines = [b'{"kind": "new"}'] + lines[::-1]
    data.write_bytes(b"".join(line + b"\n" for line in lines))
    parsed.clear()
    cache = FoldCache.load(cache_path)
    got = cache.tally(data, "kind", _kind, sha256=hashlib.sha256(data.read_bytes()).hexdigest())
    assert parsed == [b'{"kind": "new"}']
    assert got == _fresh(data) and got.bad == 1 and got.first_bad == lines.index(b"not json") + 1
    cache.save()


def test_a_damaged_line_memo_costs_a_parse_not_a_wrong_count(tmp_path: Path) -> None:
    data, cache_path = tmp_path / "q.jsonl", tmp_path / "folds.json"
    data.write_bytes(_rows("a", "b"))
    for _ in range(2):  # the second fold finds the file rewritten and leaves a memo
        cache = FoldCache.load(cache_path)
        cache.tally(data, "kind", _kind)
        cache.save()
        data.write_bytes(_rows("b", "a", "c"))
    (memo_path,) = fold_cache.memo_dir(cache_path).iterdir()
    good = memo_path.read_bytes()
    assert fold_cache.LineMemo.from_bytes(good) is not None
    inner = unsealed(good)
    assert inner is not None
    head, _, body = inner.partition(b"\n")[2].partition(b"\n")
    header = json.loads(head)
    header["values"] = ["c", "b", "a"]  # the counts a line would be taken under, swapped
    forged = fold_cache.LineMemo.MAGIC + json.dumps(header).encode() + b"\n" + body
    codes_out_of_range = sealed(fold_cache.LineMemo.MAGIC + json.dumps({**header, "values": []}).encode() + b"\n" + body)
    for junk in (b"", good[:-1], good[:-3] + b"\xff\xff\xff", b"x" + good[1:], codes_out_of_range,
                 good.replace(b'"lines":', b'"lines":1', 1), forged, forged + good[-34:]):
        assert fold_cache.LineMemo.from_bytes(junk) is None
        memo_path.write_bytes(junk)
        assert FoldCache.load(cache_path).tally(data, "kind", _kind) == _fresh(data)
    # its seal covers the header too (the values the counts are taken under); a memo sealed as
    # distill seals it is trusted as the fold cache is (both are ours, in the workspace)
    assert fold_cache.LineMemo.from_bytes(sealed(forged)) is not None


def test_memo_lookup_needs_both_halves_of_the_digest() -> None:
    import numpy as np

    memo = fold_cache.LineMemo(np.array([[7, 1], [7, 3], [9, 0]], dtype=np.uint64),
                               np.array([0, -1, -2], dtype=np.int32), ["a"])
    asked = b"".join(int(hi).to_bytes(8, "big") + int(lo).to_bytes(8, "big")
                     for hi, lo in ((7, 1), (7, 3), (7, 2), (9, 0), (8, 0), (10, 0)))
    # (7, 3) shares its high half with (7, 1), which sorts first: a miss, parsed, never a wrong code
    miss = fold_cache._MISS
    assert memo.codes_of(asked).tolist() == [0, miss, miss, -2, miss, miss]


def test_force_removes_the_line_memos_with_the_cache(tmp_path: Path) -> None:
    data, cache_path = tmp_path / "q.jsonl", tmp_path / "folds.json"
    data.write_bytes(_rows("a"))
    for rows in (("b", "a"), ("a",)):
        cache = FoldCache.load(cache_path)
        cache.tally(data, "kind", _kind)
        cache.save()
        data.write_bytes(_rows(*rows))
    assert fold_cache.memo_dir(cache_path).is_dir()
    FoldCache.remove(cache_path)
    assert not cache_path.exists() and not fold_cache.memo_dir(cache_path).exists()


def test_a_quarantine_file_keeps_a_memo_from_its_first_line_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The receipts know a quarantine file is rewritten whole by every run: the first run's line
    check leaves the memo, so the first run after an append already parses only the new lines."""
    ws = Workspace.resolve(tmp_path)
    out = ws.quarantine_path("sft")
    out.parent.mkdir(parents=True)
    old = [json.dumps({"reason": r, "n": n}).encode() for n, r in enumerate(["empty_content", "secret_detected"] * 3)]
    out.write_bytes(b"".join(line + b"\n" for line in old))
    assert check_jsonl_integrity(ws, digest_paths(ws, [out])) == []
    assert fold_cache.memo_dir(ws.fold_cache_path).is_dir()
    parsed = _parses(monkeypatch)
    new = old[:2] + [b'{"reason": "x"}'] + old[2:]
    out.write_bytes(b"".join(line + b"\n" for line in new))
    assert check_jsonl_integrity(ws, digest_paths(ws, [out])) == []
    assert parsed == [b'{"reason": "x"}']
    from distill.export.card import quarantine_summary
    memo_reads: list[Path] = []
    read_memo = fold_cache._read_memo
    monkeypatch.setattr(fold_cache, "_read_memo", lambda path: memo_reads.append(path) or read_memo(path))
    assert quarantine_summary(ws, FoldCache.load(ws.fold_cache_path)) == {
        "sft": {"empty_content": 3, "secret_detected": 3, "x": 1}}
    assert memo_reads == []  # the file is as the line check left it: its memo is not needed


def test_the_memo_of_a_file_that_is_gone_goes_with_its_entry(tmp_path: Path) -> None:
    kept, gone, cache_path = tmp_path / "kept.jsonl", tmp_path / "gone.jsonl", tmp_path / "folds.json"
    for path in (kept, gone):
        path.write_bytes(_rows("a"))
    cache = FoldCache.load(cache_path)
    for path in (kept, gone):
        cache.tally(path, "kind", _kind, rewritten=True)
    cache.save()
    assert len(list(fold_cache.memo_dir(cache_path).iterdir())) == 2
    gone.unlink()
    kept.write_bytes(_rows("b", "a"))
    cache = FoldCache.load(cache_path)
    assert cache.tally(kept, "kind", _kind, rewritten=True) == _fresh(kept)
    cache.save()
    assert [e[0] for e in _read_cache(cache_path)["entries"]] == ["kept.jsonl"]
    assert len(list(fold_cache.memo_dir(cache_path).iterdir())) == 1


# ---------------------------------------------------------------- the digest pass hands its hash state over


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 320), max_size=5),
       chunk=st.sampled_from([1, 2, 7, 64, 1 << 20]))
def test_the_digest_pass_keeps_the_hash_state_at_each_cut(
        tmp_path_factory: Any, data: bytes, cuts: list[int], chunk: int) -> None:
    import hashlib

    from distill import receipts

    path = tmp_path_factory.mktemp("cut") / "f.jsonl"
    path.write_bytes(data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(receipts, "CHUNK", chunk)
        size, sha, newlines, states, whole, _ = receipts.sha256_size_newlines_cut(path, sorted(set(cuts)))
    assert (size, sha, newlines) == (len(data), hashlib.sha256(data).hexdigest(), data.count(b"\n"))
    assert whole == xxhash.xxh3_128_hexdigest(data)
    assert set(states) == {c for c in cuts if c <= len(data)}
    for cut, state in states.items():
        assert state.hexdigest() == hashlib.sha256(data[:cut]).hexdigest()


@settings(max_examples=120, deadline=None)
# always tried: a counted line, then the file rewritten after its digest with its length kept
@example(ops=[("append", [b'{"kind": "a"}'], True), ("append", [], False)],
         touch_after_digest=[False, True, False, False, False, False], chunk=1 << 20)
@given(ops=st.lists(_OP, min_size=1, max_size=6), touch_after_digest=st.lists(st.booleans(), min_size=6, max_size=6),
       chunk=st.sampled_from([1, 5, 64, 1 << 20]))
def test_a_tally_resumed_from_the_receipts_hash_state_equals_a_full_re_read(
        tmp_path_factory: Any, ops: list[tuple[Any, ...]], touch_after_digest: list[bool], chunk: int) -> None:
    """The run's digest cache and fold cache wired as a run wires them: the receipt's digest of a
    grown file keeps the sha256 state at the counted prefix's end and the count resumes from it.
    Whatever happened to the file (appended, edited inside the prefix, cut), and also when it
    changes again between its digest and its count (the state is then not used), the count is a
    full read's."""
    import hashlib

    from distill import receipts
    from distill.receipts import DigestCache, digest_file

    tmp = tmp_path_factory.mktemp("wired")
    ws = Workspace(tmp)
    data, cache_path = tmp / "d.jsonl", tmp / "folds.json"
    data.write_bytes(b"")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(receipts, "CHUNK", chunk)
        for op, touch in zip(ops, touch_after_digest, strict=False):
            _apply(data, op)
            folds, digests = FoldCache.load(cache_path), DigestCache()
            digests.cuts, folds.prefix_state = folds.ends, digests.prefix_state
            sha256 = digest_file(ws, data, digests).sha256
            if touch and data.stat().st_size:
                # changed after the digest pass kept its hash states: the caller's digest is of the
                # file as it is now (the contract of `sha256=`), the kept states are stale
                # written to a new file renamed over it: another inode, so another stat key even
                # where the file system's clock is too coarse to give it another mtime
                tmp_copy = data.with_suffix(".new")
                tmp_copy.write_bytes(b"x" + data.read_bytes()[1:])
                tmp_copy.replace(data)
                sha256 = hashlib.sha256(data.read_bytes()).hexdigest()
            assert folds.tally(data, "kind", _kind, sha256=sha256) == _fresh(data)
            folds.save()


def test_a_grown_file_s_prefix_is_not_hashed_again_after_its_receipt(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from distill.hashing import PrefixHash
    from distill.receipts import DigestCache, digest_file

    data, cache_path = tmp_path / "d.jsonl", tmp_path / "folds.json"
    data.write_bytes(_rows("a", "b"))
    first = FoldCache.load(cache_path)
    first.tally(data, "kind", _kind)
    first.save()
    with data.open("ab") as fh:
        fh.write(_rows("c"))
    resumed: list[int] = []
    real = PrefixHash.resume
    monkeypatch.setattr(PrefixHash, "resume", staticmethod(lambda *a, **k: resumed.append(1) or real(*a, **k)))

    def count(wired: bool) -> Tally:
        folds, digests = FoldCache.load(cache_path), DigestCache()
        if wired:
            digests.cuts, folds.prefix_state = folds.ends, digests.prefix_state
        return folds.tally(data, "kind", _kind, sha256=digest_file(Workspace(tmp_path), data, digests).sha256)

    assert count(wired=False) == count(wired=True) == _fresh(data)
    assert len(resumed) == 1  # the unwired count only


def test_the_card_takes_counts_the_receipts_made_of_files_it_would_read(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """In `distill run` each export's receipt digests its files and counts their lines; the card
    (the last stage) then finds each file's digest in the saved digest cache and takes the count
    made of exactly those bytes, reading no file. A file changed since its digest is read."""
    import time as clock

    from distill.export import card
    from distill.receipts import DigestCache

    ws = Workspace.resolve(tmp_path)
    native, quarantine = ws.rag_path, ws.quarantine_path("rag")
    native.parent.mkdir(parents=True)
    quarantine.parent.mkdir(parents=True)
    native.write_bytes(_rows("a", "b"))
    quarantine.write_bytes(b'{"reason": "empty_content"}\n')
    plain = card.render_card(ws, FoldCache.load(ws.fold_cache_path))
    with native.open("ab") as fh:  # an append the receipts below hash and count
        fh.write(_rows("c"))
    # a digest is kept only of a file whose last change the file system's clock shows as earlier
    # than the hashing (receipts.RACY_MARGIN_NS): wait until that clock has passed the append
    for _ in range(1000):
        ws.clock_path.touch()
        if ws.clock_path.stat().st_ctime_ns > max(native.stat().st_mtime_ns, native.stat().st_ctime_ns):
            break
        clock.sleep(0.005)
    digests = DigestCache(clock=ws.clock_path)
    folds = FoldCache.load(ws.fold_cache_path)
    assert check_jsonl_integrity(ws, digest_paths(ws, [native, quarantine], digests), folds) == []
    folds.save()
    digests.save(ws.digest_cache_path)

    reads: list[str] = []
    real = fold_cache.fold_lines
    monkeypatch.setattr(fold_cache, "fold_lines", lambda path, *a, **k: reads.append(path.name) or real(path, *a, **k))
    shown = card.render_card(ws, FoldCache.load(ws.fold_cache_path), DigestCache.load(ws.digest_cache_path))
    assert reads == []
    assert shown != plain and "| rag | `rag/playbooks.jsonl` | 3 |" in shown
    assert shown == card.render_card(ws, FoldCache())  # a card counted from nothing
    native.write_bytes(_rows("z"))  # changed after its digest (another size): read
    reads.clear()
    shown = card.render_card(ws, FoldCache.load(ws.fold_cache_path), DigestCache.load(ws.digest_cache_path))
    assert reads == ["playbooks.jsonl"] and "| rag | `rag/playbooks.jsonl` | 1 |" in shown


def _hashed_after_it_settled(tmp_path: Path, path: Path) -> tuple[Any, str]:
    """A digest cache with a clock file, and `path`'s sha256 taken once the file system's clock
    has moved past the file's last change (so the digest counts as settled, as a run's would)."""
    import time

    from distill.receipts import DigestCache, digest_file

    clock = tmp_path / ".clock"
    deadline = time.monotonic() + 5
    while (clock.touch() or clock.stat().st_ctime_ns <= path.stat().st_ctime_ns) and time.monotonic() < deadline:
        time.sleep(0.001)
    digests = DigestCache(clock=clock)
    return digests, digest_file(Workspace(tmp_path), path, digests).sha256


def _hashed_by_folds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from distill.hashing import PrefixHash

    hashed: list[int] = []
    real = PrefixHash.update
    monkeypatch.setattr(PrefixHash, "update", lambda self, chunk: hashed.append(len(chunk)) or real(self, chunk))
    return hashed


def test_a_rewritten_file_its_receipt_just_hashed_is_not_hashed_again_by_its_fold(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quarantine file is rewritten whole by each run, so its fold starts from the first byte;
    the receipt has just hashed it, and the run's digest cache confirms the file is still in that
    state: the fold keeps that digest with its tally instead of a second sha256 pass, and the
    entry is the one a hashing fold keeps."""
    import hashlib

    out = tmp_path / "quarantine.jsonl"
    out.write_bytes(_rows("a", "b", "a"))
    first = FoldCache.load(tmp_path / "folds.json")
    first.tally(out, "kind", _kind, sha256=hashlib.sha256(out.read_bytes()).hexdigest(), rewritten=True)
    first.save()
    out.write_bytes(_rows("a", "c", "b", "a"))  # rewritten: a new line inside
    digests, sha = _hashed_after_it_settled(tmp_path, out)

    hashed = _hashed_by_folds(monkeypatch)
    folds = FoldCache.load(tmp_path / "folds.json")
    folds.known_sha256 = digests.settled_sha256_of
    assert folds.tally(out, "kind", _kind, sha256=sha, rewritten=True) == _fresh(out)
    assert hashed == []  # no byte hashed a second time
    folds.save()

    plain = FoldCache.load(tmp_path / "plain.json")  # unwired: hashes as it folds
    plain.tally(out, "kind", _kind, sha256=sha, rewritten=True)
    plain.save()
    assert hashed  # (the counter sees a hashing fold)
    assert _read_cache(tmp_path / "folds.json")["entries"] == _read_cache(tmp_path / "plain.json")["entries"]
    monkeypatch.undo()
    assert FoldCache.load(tmp_path / "folds.json").tally(out, "kind", _kind, sha256=sha) == _fresh(out)


def test_a_file_changed_since_its_digest_is_hashed_by_its_fold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's digest is taken only for the bytes the cache saw hashed: a file written again
    after it (another stat key), or hashed before it had settled, is hashed as it is folded, and its
    entry holds the digest of what was folded."""
    import hashlib

    out = tmp_path / "quarantine.jsonl"
    out.write_bytes(_rows("a", "b"))
    digests, stale = _hashed_after_it_settled(tmp_path, out)
    out.write_bytes(_rows("b", "b", "c"))  # changed after its digest
    hashed = _hashed_by_folds(monkeypatch)
    folds = FoldCache.load(tmp_path / "folds.json")
    folds.known_sha256 = digests.settled_sha256_of
    assert folds.tally(out, "kind", _kind, sha256=stale, rewritten=True) == _fresh(out)
    assert sum(hashed) == out.stat().st_size
    folds.save()
    (entry,) = _read_cache(tmp_path / "folds.json")["entries"]
    assert entry[2] == hashlib.sha256(out.read_bytes()).hexdigest() != stale

    from distill.receipts import DigestCache, digest_file

    unsettled = DigestCache()  # the system clock, hashed right after the write: within the margin
    sha = digest_file(Workspace(tmp_path), out, unsettled).sha256
    assert unsettled.sha256_of(out) == sha and unsettled.settled_sha256_of(out) is None
    hashed.clear()
    again = FoldCache(None)
    again.known_sha256 = unsettled.settled_sha256_of
    again.tally(out, "kind", _kind, sha256=sha, rewritten=True)
    assert sum(hashed) == out.stat().st_size


def test_a_run_wires_the_folds_to_its_digests() -> None:
    from distill.pipeline import _RunContext

    ctx = _RunContext(None, None, "r", None, "h", False, None)  # type: ignore[arg-type]
    assert ctx.folds.known_sha256 == ctx.cache.settled_sha256_of
    assert ctx.folds.known_xxh3 == ctx.cache.settled_xxh3_of
    assert ctx.folds.prefix_state == ctx.cache.prefix_state


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(-3, 5)), max_size=60))
def test_the_memo_sorts_its_digests_as_a_two_key_sort_does(rows: list[tuple[int, int, int]]) -> None:
    """High halves shared by other low halves, identical lines, any order: the digests come out
    sorted by (high, low), each code still beside its digest."""
    import numpy as np

    digests = np.array([(h, low) for h, low, _ in rows], dtype=np.uint64).reshape(-1, 2)
    codes = np.array([c for _, _, c in rows], dtype=np.int32)
    got_digests, got_codes = fold_cache._by_digest(digests, codes)
    order = np.lexsort((digests[:, 1], digests[:, 0]))
    assert np.array_equal(got_digests, digests[order])
    assert sorted(zip(map(tuple, got_digests.tolist()), got_codes.tolist())) == sorted(
        zip(map(tuple, digests.tolist()), codes.tolist()))


def test_a_rewritten_file_grown_in_place_is_folded_from_its_counted_lines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quarantine file that kept its lines and had new ones appended: when the receipt hashed it
    on from the counted prefix (its state there handed over), the fold goes on from there too;
    without that state it is folded with its memo from the start, its prefix not hashed to check."""
    from distill.receipts import DigestCache, digest_file

    out, cache_path = tmp_path / "quarantine.jsonl", tmp_path / "folds.json"
    out.write_bytes(_rows("a", "b", "a"))
    first = FoldCache.load(cache_path)
    first.tally(out, "kind", _kind, sha256=digest_file(Workspace(tmp_path), out).sha256, rewritten=True)
    first.save()
    counted = out.stat().st_size
    with out.open("ab") as fh:
        fh.write(_rows("c"))
    starts: list[int] = []
    real = fold_cache.fold_lines
    monkeypatch.setattr(fold_cache, "fold_lines", lambda path, key, start=None, **kw: (
        starts.append(start.end if start is not None else 0), real(path, key, start, **kw))[1])

    def count(wired: bool) -> Tally:
        folds, digests = FoldCache.load(cache_path), DigestCache()
        if wired:
            digests.cuts, folds.prefix_state = folds.ends, digests.prefix_state
        return folds.tally(out, "kind", _kind, sha256=digest_file(Workspace(tmp_path), out, digests).sha256,
                           rewritten=True)

    assert count(wired=True) == count(wired=False) == _fresh(out)
    assert starts == [counted, 0]


def _written_quarantine(tmp_path: Path, data: bytes, values: dict[str, int] | None = None) -> tuple[Workspace, Path]:
    """A workspace whose rag quarantine file holds `data`, with its writer's count (`values`: the
    reasons it says it wrote, the file's own by default)."""
    from distill.fold_cache import WriterTally

    ws = Workspace.resolve(tmp_path)
    out = ws.quarantine_path("rag")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    if values is None:
        values = dict(fold_lines(out, quarantine_reason).values)
    WriterTally(len(data), xxhash.xxh3_128_hexdigest(data), data.count(b"\n"), values).save(
        ws.quarantine_tally_path("rag"))
    return ws, out


def _receipt_folds(ws: Workspace, out: Path, digests: Any) -> tuple[FoldCache, list[str]]:
    """The line check as a run makes it: the folds wired to the run's digests."""
    outputs = digest_paths(ws, [out], digests)
    folds = FoldCache.load(ws.fold_cache_path)
    folds.known_sha256, folds.known_xxh3 = digests.settled_sha256_of, digests.settled_xxh3_of
    return folds, check_jsonl_integrity(ws, outputs, folds)


def test_a_quarantine_file_its_export_counted_is_not_read_by_its_line_check(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The export counts its quarantine file's lines and reasons as it writes them; the receipt,
    having just hashed the file and found exactly those bytes (size, xxh3-128, line count), takes
    that count instead of reading the file, and the dataset card shows it."""
    from distill.export.card import quarantine_summary

    data = b'{"reason": "empty_content"}\n{"reason": "secret_detected"}\n{"reason": "empty_content"}\n'
    # a count only the writer's tally holds (same lines): seen in the card only if it was taken
    ws, out = _written_quarantine(tmp_path, data, {"empty_content": 1, "planted": 2})
    digests, _ = _hashed_after_it_settled(tmp_path, out)
    monkeypatch.setattr(fold_cache, "fold_lines", lambda *a, **k: pytest.fail("the file was read"))
    folds, errors = _receipt_folds(ws, out, digests)
    assert errors == []
    folds.save()
    monkeypatch.undo()
    assert quarantine_summary(ws, FoldCache.load(ws.fold_cache_path)) == {"rag": {"empty_content": 1, "planted": 2}}


@pytest.mark.parametrize("change", ["edited after it was counted", "another line count", "its count damaged",
                                    "hashed before it settled", "not wired"])
def test_a_quarantine_file_that_is_not_what_its_export_counted_is_read(tmp_path: Path, change: str) -> None:
    """Anything but the very bytes the writer counted, seen by a settled digest of this run, is
    folded as before: a bad line written after the count still fails the check, and the card's
    reasons are the file's."""
    from distill.export.card import quarantine_summary
    from distill.receipts import DigestCache

    data = b'{"reason": "empty_content"}\n{"reason": "secret_detected"}\n'
    ws, out = _written_quarantine(tmp_path, data, {"planted": 2})
    expected: list[str] = []
    if change == "edited after it was counted":
        out.write_bytes(b'{"reason": "empty_content"}\n{"reason": "secret_detecteQ"\n')  # same size, a bad line
        expected = ["output_unparseable: exports/quarantine/rag.jsonl: 1 line(s) are not JSON objects (first at line 2)"]
    elif change == "another line count":
        from distill.fold_cache import WriterTally

        WriterTally(len(data), xxhash.xxh3_128_hexdigest(data), 1, {"planted": 1}).save(ws.quarantine_tally_path("rag"))
    elif change == "its count damaged":
        saved = bytearray(ws.quarantine_tally_path("rag").read_bytes())
        saved[saved.index(b"planted")] = ord("q")
        ws.quarantine_tally_path("rag").write_bytes(bytes(saved))
    if change == "hashed before it settled":
        digests = DigestCache()  # the system clock, right after the write: within the racy margin
        assert digest_paths(ws, [out], digests) and digests.settled_xxh3_of(out) is None
    else:
        digests, _ = _hashed_after_it_settled(tmp_path, out)
    if change == "not wired":
        outputs = digest_paths(ws, [out], digests)
        folds = FoldCache.load(ws.fold_cache_path)  # no digests behind it (a command's receipt)
        errors = check_jsonl_integrity(ws, outputs, folds)
    else:
        folds, errors = _receipt_folds(ws, out, digests)
    assert errors == expected
    folds.save()
    reasons = dict(fold_lines(out, quarantine_reason).values)
    assert quarantine_summary(ws, FoldCache.load(ws.fold_cache_path)) == {"rag": reasons}
    assert "planted" not in reasons


@pytest.mark.parametrize("body", [
    {"size": 10, "xxh3": "ab", "lines": 2, "values": {"a": 1}},  # does not add up
    {"size": 10, "xxh3": "ab", "lines": 2, "values": {"a": 2, "b": 0}},  # a value with no line
    {"size": 10, "xxh3": "ab", "lines": -1, "values": {}},
    {"size": 10, "xxh3": "ab", "lines": 2, "values": {"a": 2}, "version": 2},
    {"size": 10, "xxh3": 5, "lines": 2, "values": {"a": 2}},
    [1, 2],
])
def test_a_writer_tally_that_is_not_one_is_none(tmp_path: Path, body: Any) -> None:
    from distill.fold_cache import WriterTally

    path = tmp_path / "tally.json"
    if isinstance(body, dict):
        body = {"version": 1, **body}
    _write_cache(path, body)
    assert WriterTally.load(path) is None
    WriterTally(10, "ab", 2, {"a": 2}).save(path)
    assert WriterTally.load(path) == WriterTally(10, "ab", 2, {"a": 2})
