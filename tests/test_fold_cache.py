"""distill.fold_cache: a tally resumed after an append equals a full re-read, whatever happened to
the file in between (appended, edited in place, shortened, torn, the cache itself damaged)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distill import fold_cache
from distill.fold_cache import FoldCache, Tally, fold_lines
from distill.receipts import check_jsonl_integrity, count_categories, digest_paths
from distill.workspace import Workspace


def _kind(row: dict[str, Any]) -> str | None:
    value = row.get("kind")
    return value if isinstance(value, str) else None


def _fresh(path: Path) -> Tally:
    return fold_lines(path, _kind)


def _rows(*kinds: str) -> bytes:
    return b"".join(json.dumps({"kind": k}).encode() + b"\n" for k in kinds)


def test_an_appended_file_is_folded_from_where_the_last_tally_stopped(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_bytes(_rows("a", "b", "a"))
    cache_path = tmp_path / "folds.json"
    first = FoldCache.load(cache_path)
    assert first.tally(data, "kind", _kind).values == {"a": 2, "b": 1}
    first.save()

    # the saved tally is what the next run starts from: plant a count it could not have read
    saved = json.loads(cache_path.read_bytes())
    saved["entries"][0][-1]["planted"] = 7  # [path, fold, sha256, end, lines, nonblank, bad, first_bad, values]
    cache_path.write_text(json.dumps(saved))
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


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(_OP, min_size=1, max_size=8))
def test_a_cached_tally_always_equals_a_full_re_read(tmp_path_factory: Any, ops: list[tuple[Any, ...]]) -> None:
    tmp = tmp_path_factory.mktemp("fold")
    data, cache_path = tmp / "d.jsonl", tmp / "folds.json"
    data.write_bytes(b"")
    for op, arg, extra in ops:
        body = data.read_bytes()
        if op == "append":
            data.write_bytes(body + b"\n".join(arg) + (b"\n" if arg and extra else b""))
        elif op == "edit" and body:
            at = arg % len(body)
            data.write_bytes(body[:at] + extra + body[at + len(extra):])
        elif op == "truncate":
            data.write_bytes(body[: arg % (len(body) + 1)])
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
    saved = json.loads((old / "folds.json").read_bytes())
    saved["entries"][0][-1]["planted"] = 7  # a count only the saved tally holds
    (old / "folds.json").write_text(json.dumps(saved))
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
    saved = json.loads((tmp_path / "folds.json").read_bytes())
    saved["entries"][0][5] = 40  # nonblank: a count only the saved "kind" tally holds
    (tmp_path / "folds.json").write_text(json.dumps(saved))
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
    saved = json.loads(ws.fold_cache_path.read_bytes())
    assert [e[:2] for e in saved["entries"]] == [["exports/quarantine/rag.jsonl", "quarantine-reason/1"]]
    saved["entries"][0][-1]["planted"] = 1  # a count only the line check's tally holds
    ws.fold_cache_path.write_text(json.dumps(saved))
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
    names = {entry[0] for entry in json.loads(cache_path.read_bytes())["entries"]}
    assert names == {"one.jsonl", "two.jsonl", "three.jsonl"}
    assert run.tally(two, "kind", _kind).values == {"b": 1, "c": 1}  # adopted, not lost

    # nobody else wrote it since: the next save writes what the run holds without reading it again
    saved = json.loads(cache_path.read_bytes())
    reads = []
    real_read = fold_cache._read
    monkeypatch.setattr(fold_cache, "_read", lambda path: reads.append(path) or real_read(path))
    run.tally(one, "other", _kind)
    run.save()
    assert reads == []
    assert {(e[0], e[1]) for e in json.loads(cache_path.read_bytes())["entries"]} == {
        (e[0], e[1]) for e in saved["entries"]} | {("one.jsonl", "other")}
