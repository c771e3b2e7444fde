"""A checkpoint's prefix vouched for by the receipts' digest cache: a partition file unchanged
since the last run (same stat key, exactly the checkpointed bytes, the same xxh3-128) is not read
again to check that it still starts with what the checkpoint was made from; every output is the
same as when each prefix is read."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import xxhash

import distill.hashing as hashing
import distill.score as score
from distill.config import load_settings
from distill.export.verify import native_path
from distill.hashing import PrefixHash
from distill.pipeline import execute_run
from distill.receipts import DigestCache, digest_file
from distill.workspace import Workspace, iter_partition_files

DATA = b'{"a": 1}\n{"b": 2}\n'


class PrefixReads:
    """The files `prefix_hash` read (what PrefixHash.resume and file_digest read a prefix with),
    each with its stat as the read found it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[Path] = []
        self.states: list[tuple[Path, os.stat_result | None]] = []
        real = hashing.prefix_hash

        def counting(path: Path, end: int, *args: Any, **kwargs: Any) -> Any:
            self.paths.append(Path(path))
            try:
                self.states.append((Path(path), os.stat(path)))
            except OSError:
                self.states.append((Path(path), None))
            return real(path, end, *args, **kwargs)

        monkeypatch.setattr(hashing, "prefix_hash", counting)


def test_a_vouched_prefix_is_read_only_when_more_bytes_follow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "part.jsonl"
    path.write_bytes(DATA)
    digest = xxhash.xxh3_128_hexdigest(DATA)
    reads = PrefixReads(monkeypatch)

    vouched = PrefixHash.resume(path, len(DATA), digest, known=lambda p: (len(DATA), digest))
    assert vouched is not None and reads.paths == []
    assert (vouched.at, vouched.hexdigest(), vouched.hexdigest_to(path, len(DATA))) == (len(DATA), digest, digest)
    vouched.update(b"")
    assert reads.paths == []
    with open(path, "ab") as fh:
        fh.write(b'{"c": 3}\n')
    vouched.update(b'{"c": 3}\n')  # a reader went on past the prefix: the hash object goes on from its bytes
    assert reads.paths == [path]
    assert vouched.hexdigest() == xxhash.xxh3_128_hexdigest(DATA + b'{"c": 3}\n')


@pytest.mark.parametrize("known", [
    lambda size, digest: None,  # the cache does not know the file as it is now
    lambda size, digest: (size + 1, digest),  # it knows a longer file: the checkpoint covers a prefix only
    lambda size, digest: (size, "0" * 32),  # another content
], ids=["unknown", "longer", "other-digest"])
def test_a_prefix_the_cache_does_not_vouch_for_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, known: Any) -> None:
    path = tmp_path / "part.jsonl"
    path.write_bytes(DATA)
    digest = xxhash.xxh3_128_hexdigest(DATA)
    reads = PrefixReads(monkeypatch)
    hashed = PrefixHash.resume(path, len(DATA), digest, known=lambda p: known(len(DATA), digest))
    assert hashed is not None and reads.paths == [path] and hashed.hexdigest() == digest
    assert PrefixHash.resume(path, len(DATA), "f" * 32, known=lambda p: known(len(DATA), digest)) is None
    # a prefix hashed with another algorithm is never vouched for by the xxh3 of the whole file
    sha = hashlib.sha256(DATA).hexdigest()
    assert PrefixHash.resume(path, len(DATA), sha, new=hashlib.sha256, known=lambda p: (len(DATA), sha)) is not None
    assert reads.paths == [path, path, path]


def test_a_vouched_prefix_that_is_not_in_the_file_never_continues_as_vouched(tmp_path: Path) -> None:
    """Only a cache that lies vouches for bytes a file does not hold (the digest cache is keyed by
    inode, size, mtime and ctime); even then, hashing on gives the digest of the bytes there."""
    path = tmp_path / "part.jsonl"
    path.write_bytes(DATA)
    digest = xxhash.xxh3_128_hexdigest(DATA)
    changed = DATA.replace(b"1", b"7")
    path.write_bytes(changed)
    lied = PrefixHash.resume(path, len(DATA), digest, known=lambda p: (len(DATA), digest))
    assert lied is not None
    lied.update(b"x\n")
    assert lied.hexdigest() == xxhash.xxh3_128_hexdigest(changed + b"x\n")
    path.write_bytes(b"")  # gone short: a digest no prefix has
    short = PrefixHash.resume(path, len(DATA), digest, known=lambda p: (len(DATA), digest))
    assert short is not None
    short.update(b"x\n")
    assert short.hexdigest() not in {xxhash.xxh3_128_hexdigest(DATA + b"x\n"), xxhash.xxh3_128_hexdigest(b"x\n")}


def test_the_digest_cache_knows_a_file_s_prefix_hash_until_the_file_changes(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    ws.root.mkdir()
    path = ws.root / "part.jsonl"
    path.write_bytes(DATA)
    # a digest is saved only once the file system's clock is past the file's last change
    # (receipts.RACY_MARGIN_NS): wait for its next tick
    deadline = time.monotonic() + 5
    while (ws.clock_path.touch() or ws.clock_path.stat().st_ctime_ns <= path.stat().st_ctime_ns) \
            and time.monotonic() < deadline:
        time.sleep(0.001)
    cache = DigestCache(clock=ws.clock_path)
    d = digest_file(ws, path, cache)
    assert d.sha256 == hashlib.sha256(DATA).hexdigest()
    assert cache.xxh3_of(path) == (len(DATA), xxhash.xxh3_128_hexdigest(DATA))
    saved = tmp_path / "digests.json"
    cache.save(saved)
    assert DigestCache.load(saved).xxh3_of(path) == (len(DATA), xxhash.xxh3_128_hexdigest(DATA))
    path.write_bytes(DATA.replace(b"1", b"7"))  # the same size, rewritten
    assert DigestCache.load(saved).xxh3_of(path) is None
    assert DigestCache.load(saved).xxh3_of(tmp_path / "gone.jsonl") is None


def _outputs(ws: Workspace) -> dict[str, str]:
    return {p.relative_to(ws.root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(ws.exports_dir.rglob("*.jsonl")) if p.is_file()}


def _same(now: os.stat_result, then: os.stat_result) -> bool:
    """The file was not written in between (inode, size, mtime, ctime: not its access time)."""
    return (now.st_ino, now.st_size, now.st_mtime_ns, now.st_ctime_ns) == (
        then.st_ino, then.st_size, then.st_mtime_ns, then.st_ctime_ns)


def _counters(summary: Any) -> list[tuple[str, str, Any, Any]]:
    return [(s.stage, s.status, s.totals, s.by_source) for s in summary.stages]


def test_a_run_after_an_append_reads_no_unchanged_partition_to_check_it(
        tmp_path: Path, generated: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows appended on a new day add partitions and leave the others as they were: the next run
    checks the checkpoints of the untouched ones (every stage asks) by the digests the last run
    saved, reading none of them (nor hashing their scored mirrors to see they are as score
    wrote them), and writes what a `--force` run of the same input writes. (A
    copy of a workspace has new inodes, so its saved digests vouch for nothing: the twin is the
    reference, not a second measure.)"""
    from benchmarks.rerun import onto_new_day

    small, grown = generated
    streams = tmp_path / "grown"
    shutil.copytree(grown, streams)
    onto_new_day(small, streams)
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(small, ws.kb_dir)
    execute_run(ws, load_settings(ws.root), include_index=False)
    before = {p: p.stat() for d in (ws.evidence_dir, ws.scored_dir) for p in iter_partition_files(d)}
    # a digest is saved only of a file whose last change the file system's clock shows as before
    # the hashing (receipts.RACY_MARGIN_NS): with coarse timestamps the last files a stage wrote
    # can miss it. Once the clock has moved on, an unchanged run (every stage skipped) digests
    # them settled and saves them, as the next periodic run would
    latest = max(st.st_ctime_ns for st in before.values())
    deadline = time.monotonic() + 5
    while (ws.clock_path.touch() or ws.clock_path.stat().st_ctime_ns <= latest) and time.monotonic() < deadline:
        time.sleep(0.001)
    execute_run(ws, load_settings(ws.root), include_index=False)
    assert all(_same(p.stat(), before[p]) for p in before)  # the unchanged run wrote none of them
    # each export and its quarantine file as the last run left them (this run appends to the one
    # and rewrites the other)
    left = {p: p.stat() for kind in ("preference", "rag", "sft")
            for p in (native_path(ws, kind), ws.quarantine_path(kind)) if p.is_file()}
    assert len(left) == 6
    quarantined_before = {p: p.read_bytes() for p in left if p.parent == ws.quarantine_dir}
    for src in streams.glob("*.jsonl"):
        shutil.copyfile(src, ws.kb_dir / src.name)
    shutil.copytree(ws.root, tmp_path / "twin")
    twin = Workspace(tmp_path / "twin")

    reads = PrefixReads(monkeypatch)
    asked: list[Path] = []
    resume = PrefixHash.resume.__func__  # type: ignore[attr-defined]

    def asking(cls: type[PrefixHash], path: Path, *args: Any, **kwargs: Any) -> PrefixHash | None:
        asked.append(Path(path))
        return resume(cls, path, *args, **kwargs)

    monkeypatch.setattr(PrefixHash, "resume", classmethod(asking))
    hashed: list[Path] = []  # the mirrors score hashed whole to see whether they are as it wrote them
    whole = score.sha256_size_newlines

    def hashing_whole(path: Path) -> tuple[int, str, int]:
        hashed.append(Path(path))
        return whole(path)

    monkeypatch.setattr(score, "sha256_size_newlines", hashing_whole)
    summary = execute_run(ws, load_settings(ws.root), include_index=False).summary
    monkeypatch.undo()
    forced = execute_run(twin, load_settings(twin.root), include_index=False, force=True).summary

    untouched = {p for p in iter_partition_files(ws.evidence_dir) + iter_partition_files(ws.scored_dir)
                 if p in before and _same(p.stat(), before[p])}
    assert len(untouched) > len(before) // 2  # the append touched few partitions
    assert untouched <= set(asked)  # each one's checkpoint was checked ...
    assert not untouched & set(reads.paths)  # ... and none of them read to check it
    assert not untouched & set(hashed)  # an untouched mirror's digest came from the receipts' cache
    assert reads.paths  # what did change is still read
    # an export's ids, its kept decisions and its last quarantine lines are checked against the
    # files as the receipts last hashed them: none of the six is read while it is as it was
    assert not [p for p, st in reads.states if p in left and st is not None and _same(st, left[p])]
    # an export's quarantine file is the same file, grown, exactly when its new content begins
    # with all of its old lines; here a late verdict re-scores old rows, and the files it reaches
    # inside are replaced (the next test appends rows that reach none)
    for kind in ("preference", "rag", "sft"):
        q = ws.quarantine_path(kind)
        assert (q.stat().st_ino == left[q].st_ino) == q.read_bytes().startswith(quarantined_before[q]), kind
    assert _outputs(ws) == _outputs(twin)
    assert _counters(summary) == _counters(forced)


def _settle(ws: Workspace) -> None:
    """Let the file system's clock move past every file the last run wrote, then run unchanged:
    its digests are then saved (receipts.RACY_MARGIN_NS), as a periodic run's would be."""
    latest = max(p.stat().st_ctime_ns for p in ws.root.rglob("*") if p.is_file())
    deadline = time.monotonic() + 5
    while (ws.clock_path.touch() or ws.clock_path.stat().st_ctime_ns <= latest) and time.monotonic() < deadline:
        time.sleep(0.001)
    execute_run(ws, load_settings(ws.root), include_index=False)


def test_rows_that_change_no_earlier_decision_grow_each_quarantine_file_in_place(
        tmp_path: Path, generated: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Extraction facts of a new phase, on a new day: they join no verdict and no old row joins
    them, so every export decides its old rows as before and quarantines the new ones after
    them. Each quarantine file then keeps its bytes in place and has the new lines appended: its
    receipt's sha256 goes on from the kept state and its line check takes its export's count (or
    goes on from the counted lines: neither reads it whole), and the exports are those of a `--force` run."""
    import distill.fold_cache as fold_cache
    import distill.receipts as receipts

    small, _ = generated
    monkeypatch.setattr(receipts, "STATE_MIN_BYTES", 0)  # states of these small files kept too
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(small, ws.kb_dir)
    execute_run(ws, load_settings(ws.root), include_index=False)
    _settle(ws)
    quarantine = [ws.quarantine_path(kind) for kind in ("preference", "rag", "sft")]
    before = {q: (q.stat(), q.read_bytes()) for q in quarantine}
    facts = ws.kb_dir / "audit_facts.jsonl"
    with facts.open("ab") as fh:
        for n in range(3):
            fh.write(json.dumps({"fact_id": f"afx-new-{n}", "phase": 999, "finding": None,
                                 "fact": f"Phase 999: a new fact number {n} about the cache layer.",
                                 "extractor_model": "qwen2.5:7b-instruct",
                                 "ts": f"2026-12-01T0{n}:00:00.000Z"}).encode() + b"\n")
    shutil.copytree(ws.root, tmp_path / "twin")
    twin = Workspace(tmp_path / "twin")

    resumed_digests: list[str] = []  # files whose sha256 went on from a kept state
    grown_from = receipts._grown_from
    monkeypatch.setattr(receipts, "_grown_from", lambda fh, earlier: (
        (found := grown_from(fh, earlier)) is not None and resumed_digests.append(fh.name)) and found or found)
    folded_from: dict[Path, int] = {}  # where each fold of a file started
    fold_lines = fold_cache.fold_lines
    monkeypatch.setattr(fold_cache, "fold_lines", lambda path, key, start=None, **kw: (
        folded_from.setdefault(Path(path), start.end if start is not None else 0), fold_lines(path, key, start, **kw))[1])
    summary = execute_run(ws, load_settings(ws.root), include_index=False).summary
    monkeypatch.undo()
    forced = execute_run(twin, load_settings(twin.root), include_index=False, force=True).summary

    for q in quarantine:
        st, old = before[q]
        new = q.read_bytes()
        assert len(new) > len(old) and new.startswith(old), q.name  # the new rows' lines, after the old ones
        assert q.stat().st_ino == st.st_ino, q.name  # the same file, appended to
        assert os.fspath(q) in resumed_digests, q.name
        # its export's count taken (not read), or, when its digest had not settled, folded from the counted lines
        assert folded_from.get(q, len(old)) == len(old), q.name
    assert _outputs(ws) == _outputs(twin)
    assert _counters(summary) == _counters(forced)


def test_each_export_s_count_of_its_rewritten_quarantine_file_spares_the_receipt_a_read(
        tmp_path: Path, generated: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The grown streams add rows that land in old partitions, so each export rewrites its
    quarantine file from inside: the receipt, finding the file to be the bytes its export counted,
    takes that count and reads none of the three (the card needs no read either), and the exports,
    card and counters are those of a `--force` run."""
    import distill.fold_cache as fold_cache
    import distill.pipeline as pipeline
    from tests.fixtures_checkpoints import assert_counted_as_written

    small, grown = generated
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(small, ws.kb_dir)
    execute_run(ws, load_settings(ws.root), include_index=False)
    quarantine = [ws.quarantine_path(kind) for kind in ("preference", "rag", "sft")]
    before = {q: q.read_bytes() for q in quarantine}
    for src in grown.glob("*.jsonl"):
        shutil.copyfile(src, ws.kb_dir / src.name)
    shutil.copytree(ws.root, tmp_path / "twin")
    twin = Workspace(tmp_path / "twin")

    digest_outputs = pipeline._digest_outputs

    def after_a_clock_tick(ctx: Any, stage: Any, also: Any) -> Any:
        # a receipt hashes what its stage wrote once the file system's clock has moved on (one
        # tick: a run's stages take longer); only then is a digest settled enough to trust
        latest = max((p.stat().st_ctime_ns for p in stage.outputs(ctx.ws, ctx.settings) if p.is_file()), default=0)
        deadline = time.monotonic() + 5
        while (ws.clock_path.touch() or ws.clock_path.stat().st_ctime_ns <= latest) and time.monotonic() < deadline:
            time.sleep(0.001)
        return digest_outputs(ctx, stage, also)

    monkeypatch.setattr(pipeline, "_digest_outputs", after_a_clock_tick)
    folded: list[Path] = []
    fold_lines = fold_cache.fold_lines
    monkeypatch.setattr(fold_cache, "fold_lines", lambda path, *a, **kw: (folded.append(Path(path)),
                                                                          fold_lines(path, *a, **kw))[1])
    summary = execute_run(ws, load_settings(ws.root), include_index=False).summary
    monkeypatch.undo()
    forced = execute_run(twin, load_settings(twin.root), include_index=False, force=True).summary

    for q in quarantine:
        new = q.read_bytes()
        assert new != before[q] and not new.startswith(before[q]), q.name  # rewritten, not appended to
        assert q not in folded, q.name
        assert_counted_as_written(ws, q.stem)
    assert folded  # (the spy sees the folds of the other outputs)
    assert _outputs(ws) == _outputs(twin)
    assert (ws.exports_dir / "README.md").read_bytes() == (twin.exports_dir / "README.md").read_bytes()
    assert _counters(summary) == _counters(forced)
