"""Export checkpoints (RAG, SFT, the preference export's first pass): after score appends, an
export reads, decides and gates only the new scored lines; its files, counters and verdicts are
exactly those of a full pass, whatever happened in between (each case changes one thing in two
twin workspaces, one of which has forgotten its checkpoints, and compares them)."""

from __future__ import annotations

import base64
import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import xxhash

import distill.checkpoint_file as checkpoint_file
import distill.export.preference as preference_module
import distill.export.run as run_module
from distill.collect import run_collect
from distill.config import Settings, load_settings
from distill.export.entry_summary import PartitionSummary
from distill.export.exported import ExportedIds
from distill.export.reader import mirror_text, rel_path
from distill.export.run import run_export
from distill.export.scored_index import key_digest
from distill.firewall import ExportKind
from distill.hashing import sealed, unsealed
from distill.jsonl import dumps as jsonl_dumps
from distill.records.stage import StageReport
from distill.score import run_score
from distill.workspace import Workspace, iter_partition_files
from tests.fixtures_checkpoints import ROWS, Calls, assert_counted_as_written, flip_byte_after

KINDS = [ExportKind.RAG, ExportKind.SFT, ExportKind.PREFERENCE]
# what each export calls once per scored line it reads and decides (not for a replayed one)
PER_ROW = {ExportKind.RAG: (run_module, "decide_rag"), ExportKind.SFT: (run_module, "decide_sft"),
           ExportKind.PREFERENCE: (preference_module, "synthesize_instruction")}


def _calls(monkeypatch: pytest.MonkeyPatch, kind: ExportKind) -> Calls:
    return Calls(monkeypatch, *PER_ROW[kind])


def _export(ws: Workspace, kind: ExportKind, settings: Settings | None = None, **kw: Any) -> StageReport:
    return run_export(ws, settings or load_settings(ws.root), kind, **kw)


def _state(ws: Workspace, kind: ExportKind, report: StageReport) -> tuple[dict[str, Any], dict[str, str]]:
    assert_counted_as_written(ws, kind.value)
    files = {p.relative_to(ws.root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted([*(ws.exports_dir / kind.value).rglob("*.jsonl"), ws.quarantine_path(kind.value),
                              ws.exports_dir / "README.md"]) if p.exists()}
    dumped = report.model_dump(exclude={"inputs", "outputs"})
    # the preference export says how much its first pass took from the checkpoint and how many
    # rows it gated: work done, which differs
    dumped["notes"] = [n for n in dumped["notes"] if not n.startswith(("first pass:", "firewall: "))]
    return dumped, files


@pytest.fixture(scope="module")
def exported_once(generated: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[ExportKind, Path]:
    """Per kind, a workspace of the small streams collected, scored and exported once (copied by
    each test, so the collect and score runs are paid once per module)."""
    small, _ = generated
    roots: dict[ExportKind, Path] = {}
    for kind in KINDS:
        ws = Workspace(tmp_path_factory.mktemp(f"exported-{kind.value}") / "ws")
        shutil.copytree(small, ws.kb_dir)
        run_collect(ws, load_settings(ws.root))
        run_score(ws, load_settings(ws.root))
        assert not _export(ws, kind).violations
        assert ws.export_checkpoint_path(kind.value).is_file()
        roots[kind] = ws.root
    return roots


def _twins(tmp_path: Path, exported: dict[ExportKind, Path], kind: ExportKind,
           change: Callable[[Workspace], None]) -> tuple[Workspace, Workspace]:
    """Two copies of a workspace exported once, changed alike; the second forgets its export
    checkpoint."""
    shutil.copytree(exported[kind], tmp_path / "a")
    shutil.copytree(exported[kind], tmp_path / "b")
    a, b = Workspace(tmp_path / "a"), Workspace(tmp_path / "b")
    b.export_checkpoint_path(kind.value).unlink()
    change(a)
    change(b)
    return a, b


def _grow(grown: Path) -> Callable[[Workspace], None]:
    def change(ws: Workspace) -> None:
        for src in grown.glob("*.jsonl"):
            shutil.copyfile(src, ws.kb_dir / src.name)
        run_collect(ws, load_settings(ws.root))
        run_score(ws, load_settings(ws.root))

    return change


def _compare(a: Workspace, b: Workspace, kind: ExportKind, monkeypatch: pytest.MonkeyPatch,
             settings: Settings | None = None) -> tuple[int, int]:
    """Export both; assert the same files and counters; the rows each decided."""
    calls_a = _calls(monkeypatch, kind)
    got_a = _state(a, kind, _export(a, kind, settings))
    monkeypatch.undo()
    calls_b = _calls(monkeypatch, kind)
    got_b = _state(b, kind, _export(b, kind, settings))
    monkeypatch.undo()
    assert got_a == got_b
    return calls_a.rows, calls_b.rows


@pytest.mark.slow
@pytest.mark.parametrize("spill", ["memory", "file"])
@pytest.mark.parametrize("kind", KINDS)
def test_after_an_append_only_the_new_scored_lines_are_decided(tmp_path: Path, generated: tuple[Path, Path],
                                                               exported_once: dict[ExportKind, Path],
                                                               kind: ExportKind, spill: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`spill`: each partition's checkpoint entries held in memory (the default for a small
    partition) or all written to the temporary file, as a busy partition's are."""
    if spill == "file":
        monkeypatch.setattr(checkpoint_file, "SPILL_BYTES", 0)
    _, grown = generated
    a, b = _twins(tmp_path, exported_once, kind, _grow(grown))
    done_a, done_b = _compare(a, b, kind, monkeypatch)
    assert done_b >= ROWS // 2  # the full pass decided (nearly) every row
    assert 0 < done_a <= ROWS // 20  # the resumed one about the 2 % appended
    # and a run over nothing new decides nothing
    calls = _calls(monkeypatch, kind)
    _export(a, kind)
    assert calls.rows == 0


def _checkpoint_lines(ws: Workspace, kind: ExportKind) -> dict[str, bytes]:
    """The checkpoint file's partition lines by partition (the header is the line that does not
    start with a quote), each without its seal (checked)."""
    lines = [_unsealed(line) for line in ws.export_checkpoint_path(kind.value).read_bytes().splitlines(keepends=True)]
    return {orjson.loads(line.split(b"\t", 1)[0]): line for line in lines if line.startswith(b'"')}


def _unsealed(line: bytes) -> bytes:
    content = unsealed(line)
    assert content is not None, line[:200]
    return content


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_partition_that_did_not_grow_keeps_its_checkpoint_as_it_was_and_is_replayed_next_time(
        tmp_path: Path, generated: tuple[Path, Path], exported_once: dict[ExportKind, Path], kind: ExportKind,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, grown = generated
    a, b = _twins(tmp_path, exported_once, kind, lambda ws: None)
    before = _checkpoint_lines(a, kind)
    scored = {p.relative_to(a.root).as_posix(): p.read_bytes() for p in iter_partition_files(a.scored_dir)}
    _grow(grown)(a)
    _grow(grown)(b)
    _compare(a, b, kind, monkeypatch)
    after = _checkpoint_lines(a, kind)
    same = [rel for rel, data in scored.items() if (a.root / rel).read_bytes() == data and rel in before]
    grew = [rel for rel in scored if rel not in same]
    assert same and grew  # the append grows (or score rewrites) some partitions and leaves others
    assert all(after[rel] == before[rel] for rel in same)  # carried over, not written anew
    assert all(after.get(rel) != before.get(rel) for rel in grew if rel in after)
    # and the next run takes every partition from its checkpoint, with a full pass's result
    shutil.rmtree(b.root)
    shutil.copytree(a.root, b.root)
    b.export_checkpoint_path(kind.value).unlink()
    done_a, done_b = _compare(a, b, kind, monkeypatch)
    assert done_a == 0 and done_b >= ROWS // 2


def _flip_evidence(ws: Workspace) -> None:
    flip_byte_after(iter_partition_files(ws.evidence_dir)[3], b'"text":"')


def _flip_scored(ws: Workspace) -> None:
    path = iter_partition_files(ws.scored_dir)[2]
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    rows[0]["category"] = "rejected" if rows[0]["category"] != "rejected" else "accepted"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def _drop_exported_rows(kind: ExportKind) -> Callable[[Workspace], None]:
    def change(ws: Workspace) -> None:
        path = {ExportKind.RAG: ws.rag_path, ExportKind.SFT: ws.sft_path, ExportKind.PREFERENCE: ws.preference_path}[kind]
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(b"".join(lines[: len(lines) // 2]))

    return change


def _junk_checkpoint(kind: ExportKind) -> Callable[[Workspace], None]:
    def change(ws: Workspace) -> None:
        path = ws.export_checkpoint_path(kind.value)
        if path.exists():  # the twin without one stays without one
            body = path.read_bytes().splitlines(keepends=True)
            path.write_bytes(body[0] + b'"x"\tnot json\n' + body[1][: len(body[1]) // 2] + b"\n" + b"".join(body[2:]))

    return change


def _unknown_entry(kind: ExportKind) -> Callable[[Workspace], None]:
    """A checkpoint line that is valid JSON but holds an entry no exporter writes."""

    def change(ws: Workspace) -> None:
        path = ws.export_checkpoint_path(kind.value)
        if path.exists():
            lines = path.read_bytes().splitlines(keepends=True)
            rel, _, body = _unsealed(lines[1]).partition(b"\t")
            checkpoint = orjson.loads(body)
            checkpoint["entries"][0] = ["z", *checkpoint["entries"][0][1:]]
            lines[1] = sealed(rel + b"\t" + orjson.dumps(checkpoint))  # a line distill could have written
            path.write_bytes(b"".join(lines))

    return change


def _edited_entry(ws: Workspace) -> None:
    """One character of a checkpoint entry changed, the line still JSON of the same length."""
    for kind in KINDS:
        path = ws.export_checkpoint_path(kind.value)
        if path.exists():
            data = bytearray(path.read_bytes())
            at = data.index(b'"audits"') + 1  # a source name inside the first partition's entries
            data[at] = ord("b") if data[at] != ord("b") else ord("c")
            path.write_bytes(bytes(data))


def _torn_scored_tail(ws: Workspace) -> None:
    path = iter_partition_files(ws.scored_dir)[5]
    with open(path, "ab") as fh:
        fh.write(b'{"evidence_run_id": "half a li')


def _largest_partition(ws: Workspace) -> Path:
    return max(iter_partition_files(ws.scored_dir), key=lambda p: (p.stat().st_size, p.as_posix()))


def _rescore_in_place(ws: Workspace) -> None:
    """What score does when late verdicts re-score runs: lines rewritten where they stand (one
    longer, one of the same length), one appended."""
    path = _largest_partition(ws)
    lines = path.read_bytes().splitlines(keepends=True)
    first, middle = orjson.loads(lines[1]), orjson.loads(lines[len(lines) // 2])
    first["category"] = "partially_accepted" if first["category"] != "partially_accepted" else "accepted"
    middle["reasons"] = [r[::-1] for r in middle["reasons"]]  # same length, other bytes
    lines[1], lines[len(lines) // 2] = orjson.dumps(first) + b"\n", orjson.dumps(middle) + b"\n"
    path.write_bytes(b"".join(lines) + lines[-1])


def _insert_line(kind_of_line: str) -> Callable[[Workspace], None]:
    """A line put into the largest partition's middle: every later line moves (number, offset)."""

    def change(ws: Workspace) -> None:
        path = _largest_partition(ws)
        lines = path.read_bytes().splitlines(keepends=True)
        at = len(lines) // 2
        extra = {"blank": b"\n", "junk": b"{not json\n", "repeat": lines[at - 1]}[kind_of_line]
        path.write_bytes(b"".join([*lines[:at], extra, *lines[at:]]))

    return change


def _junk_in_place(ws: Workspace) -> None:
    """A line replaced by one the reader cannot join, shorter: later lines keep their numbers, not offsets."""
    path = _largest_partition(ws)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"evidence_run_id": 7}\n'
    path.write_bytes(b"".join(lines))


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("change", ["evidence edited", "scored edited", "export shortened", "junk checkpoint",
                                    "unknown entry", "entry edited, still JSON", "torn scored tail", "scored partition deleted",
                                    "re-scored in place", "blank line inserted", "junk line inserted",
                                    "repeated line inserted", "junk in place"])
def test_a_resumed_export_is_a_full_export_whatever_changed(tmp_path: Path, exported_once: dict[ExportKind, Path],
                                                            kind: ExportKind, change: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    changes: dict[str, Callable[[Workspace], None]] = {
        "evidence edited": _flip_evidence,
        "scored edited": _flip_scored,
        "export shortened": _drop_exported_rows(kind),
        "junk checkpoint": _junk_checkpoint(kind),
        "unknown entry": _unknown_entry(kind),
        "entry edited, still JSON": _edited_entry,
        "torn scored tail": _torn_scored_tail,
        "scored partition deleted": lambda ws: iter_partition_files(ws.scored_dir)[1].unlink(),
        "re-scored in place": _rescore_in_place,
        "blank line inserted": _insert_line("blank"),
        "junk line inserted": _insert_line("junk"),
        "repeated line inserted": _insert_line("repeat"),
        "junk in place": _junk_in_place,
    }
    a, b = _twins(tmp_path, exported_once, kind, changes[change])
    _compare(a, b, kind, monkeypatch)
    _compare(a, b, kind, monkeypatch)  # and again, from the checkpoints the first pass wrote


@pytest.mark.parametrize("kind", KINDS)
def test_a_partition_rewritten_in_place_reads_only_its_changed_lines(
        tmp_path: Path, exported_once: dict[ExportKind, Path], kind: ExportKind,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Late verdicts make score rewrite a partition with a few lines changed: the export replays
    the entries of the lines that are as they were and reads the changed and the appended ones."""
    a, b = _twins(tmp_path, exported_once, kind, _rescore_in_place)
    lines = len(_largest_partition(a).read_bytes().splitlines())
    assert lines >= 10  # the largest partition of the 1,500-row workspace
    done_a, done_b = _compare(a, b, kind, monkeypatch)
    assert done_b >= ROWS // 2
    assert done_a <= 3  # two lines rewritten, one appended; the others replayed
    if kind is not ExportKind.PREFERENCE:
        assert done_a == 3
    done_again, _ = _compare(a, b, kind, monkeypatch)  # from the checkpoint the patched pass wrote
    assert done_again == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_junk_line_after_a_line_that_grew_is_read_again(tmp_path: Path, exported_once: dict[ExportKind, Path],
                                                          kind: ExportKind, monkeypatch: pytest.MonkeyPatch) -> None:
    """A line the reader cannot join is quarantined with its byte offset: when an earlier line is
    rewritten longer, its number stays and its offset moves, so its recorded entry is stale."""
    shutil.copytree(exported_once[kind], tmp_path / "a")
    a = Workspace(tmp_path / "a")
    path = _largest_partition(a)
    with open(path, "ab") as fh:
        fh.write(b"{not json\n")
    _export(a, kind)  # the checkpoint now holds the junk line's entry, offset included
    shutil.copytree(a.root, tmp_path / "b")
    b = Workspace(tmp_path / "b")
    b.export_checkpoint_path(kind.value).unlink()
    for ws in (a, b):
        lines = _largest_partition(ws).read_bytes().splitlines(keepends=True)
        row = orjson.loads(lines[0])
        row["reasons"] = [*row["reasons"], "re-scored"]
        lines[0] = orjson.dumps(row) + b"\n"
        _largest_partition(ws).write_bytes(b"".join(lines))
    _compare(a, b, kind, monkeypatch)
    quarantined = a.quarantine_path(kind.value).read_bytes()
    assert b"not JSON" in quarantined


@pytest.mark.parametrize("kind", [ExportKind.RAG, ExportKind.SFT])
def test_a_run_re_scored_as_rejected_is_still_stale_after_a_resume(tmp_path: Path, exported_once: dict[ExportKind, Path],
                                                                    kind: ExportKind, monkeypatch: pytest.MonkeyPatch) -> None:
    def reject_a_shipped_run(ws: Workspace) -> None:
        shipped = orjson.loads({ExportKind.RAG: ws.rag_path, ExportKind.SFT: ws.sft_path}[kind].read_bytes().splitlines()[0])
        for path in iter_partition_files(ws.scored_dir):
            lines = path.read_bytes().splitlines(keepends=True)
            for i, line in enumerate(lines):
                row = orjson.loads(line)
                if row["evidence_run_id"] == shipped["source_run_id"]:
                    row["category"] = "rejected"
                    lines[i] = orjson.dumps(row) + b"\n"
                    path.write_bytes(b"".join(lines))
                    return
        raise AssertionError("no scored line for a shipped row")

    a, b = _twins(tmp_path, exported_once, kind, reject_a_shipped_run)
    report = _export(a, kind)
    assert any(v.code.value == "stale_row" for v in report.violations)
    assert _state(a, kind, report) == _state(b, kind, _export(b, kind))


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_changed_setting_or_flag_starts_over(tmp_path: Path, generated: tuple[Path, Path],
                                               exported_once: dict[ExportKind, Path], kind: ExportKind,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    _, grown = generated
    a, b = _twins(tmp_path, exported_once, kind, _grow(grown))
    changed = Settings(export={"contamination_threshold": 0.9})
    done_a, done_b = _compare(a, b, kind, monkeypatch, settings=changed)
    assert done_a == done_b  # another basis: every row decided again
    if kind is ExportKind.PREFERENCE:
        return  # the preference export has no flags
    flag = {"include_review": True} if kind is ExportKind.RAG else {"include_partial": True}
    calls = _calls(monkeypatch, kind)
    report_a = _export(a, kind, changed, **flag)
    assert calls.rows == done_b
    monkeypatch.undo()
    assert _state(a, kind, report_a) == _state(b, kind, _export(b, kind, changed, **flag))


@pytest.mark.parametrize("kind", KINDS)
def test_a_dry_run_keeps_no_checkpoint(tmp_path: Path, exported_once: dict[ExportKind, Path], kind: ExportKind) -> None:
    shutil.copytree(exported_once[kind], tmp_path / "ws")
    ws = Workspace(tmp_path / "ws")
    ws.export_checkpoint_path(kind.value).unlink()
    _export(ws, kind, dry_run=True)
    assert not ws.export_checkpoint_path(kind.value).exists()
    assert not list(ws.root.glob("*.tmp"))


@pytest.mark.parametrize("kind", KINDS)
def test_a_new_line_whose_evidence_key_the_prefix_has_joins_the_prefix_record(
        tmp_path: Path, exported_once: dict[ExportKind, Path], kind: ExportKind,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror's first valid record of a key wins: an appended record with the same key (here one
    that would be decided differently) must not be what a resumed export joins."""

    def append_a_second_record_of_a_known_key(ws: Workspace) -> None:
        for scored in iter_partition_files(ws.scored_dir):
            mirror = ws.evidence_dir / scored.relative_to(ws.scored_dir)
            lines = scored.read_bytes().splitlines(keepends=True)
            row = orjson.loads(lines[0])
            if row["category"] != "accepted" or row["score_class"] == "C":
                continue
            for ev_line in mirror.read_bytes().splitlines():
                ev = orjson.loads(ev_line)
                if ev["run_id"] == row["evidence_run_id"] and ev["provenance"]["sig_hash"] == row["provenance"]["sig_hash"]:
                    other = {**ev, "text": "   ", "model_role": "extractor"}  # empty for RAG, no shape for SFT
                    with open(mirror, "ab") as fh:
                        fh.write(orjson.dumps(other) + b"\n")
                    with open(scored, "ab") as fh:
                        fh.write(lines[0])
                    return
        raise AssertionError("no accepted verdict row to copy")

    a, b = _twins(tmp_path, exported_once, kind, append_a_second_record_of_a_known_key)
    _compare(a, b, kind, monkeypatch)


def test_a_pair_side_is_read_from_its_mirror_only(exported_once: dict[ExportKind, Path]) -> None:
    """A replayed row's text comes from the evidence mirror of its own scored partition; a name
    that is not one (a damaged checkpoint) finds nothing, and the export says so in one line."""
    ws = Workspace(exported_once[ExportKind.PREFERENCE])
    scored = iter_partition_files(ws.scored_dir)[0]
    row = orjson.loads(scored.read_bytes().splitlines()[0])
    key = (row["evidence_run_id"], row["provenance"]["sig_hash"])
    rel = scored.relative_to(ws.root).as_posix()
    text = mirror_text(ws, rel, key)
    assert isinstance(text, str) and text
    assert mirror_text(ws, rel, (key[0], "0" * 64)) is None
    for elsewhere in ("scored/../evidence/" + rel.split("/", 1)[1], "../outside.jsonl", "scored", "/etc/passwd",
                      "scored/2099/01/01/no_such_source.jsonl"):
        assert mirror_text(ws, elsewhere, key) is None


@pytest.mark.parametrize("kind", KINDS)
def test_a_rewritten_partition_reads_its_changed_lines_evidence_by_offset(
        tmp_path: Path, exported_once: dict[ExportKind, Path], kind: ExportKind,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The changed lines of a rewritten partition name keys the mirror's checkpointed prefix holds:
    each is read at the offset of the first line naming it, and the mirror's prefix is not parsed
    up to it (what a late verdict in a busy partition cost: most of its mirror parsed as JSON)."""
    import distill.export.checkpoints as checkpoints_module

    a, b = _twins(tmp_path, exported_once, kind, _rescore_in_place)
    prefix_scans: list[Path] = []
    real = checkpoints_module.EvidenceOffsets

    def spying(path: Path, **kw: Any) -> Any:
        if kw.get("end") is not None:
            prefix_scans.append(path)
        return real(path, **kw)

    monkeypatch.setattr(checkpoints_module, "EvidenceOffsets", spying)
    got_a = _state(a, kind, _export(a, kind))
    monkeypatch.undo()
    assert prefix_scans == []
    assert got_a == _state(b, kind, _export(b, kind))


def test_a_key_whose_first_line_is_not_a_valid_record_is_found_as_a_full_read_finds_it(
        tmp_path: Path, exported_once: dict[ExportKind, Path]) -> None:
    """The offset a checkpoint keeps is the first line naming a key; when that line is not a valid
    record, the first valid one after it is the record (as a full read joins), not nothing."""
    from distill.export.checkpoints import MirrorKeys, TailEvidence
    from distill.export.reader import EvidenceIndex
    from distill.export.scored_index import key_digest
    from distill.hashing import PrefixHash

    ws = Workspace(exported_once[ExportKind.RAG])
    source = next(p for p in iter_partition_files(ws.evidence_dir) if p.stat().st_size)
    record = orjson.loads(source.read_bytes().splitlines()[0])
    key = (record["run_id"], record["provenance"]["sig_hash"])
    broken = orjson.dumps({**record, "created_at": "not a time"}) + b"\n"  # names the key, fails validation
    mirror = tmp_path / "mirror.jsonl"
    mirror.write_bytes(broken + orjson.dumps(record) + b"\n")
    known = MirrorKeys.of(np.array([key_digest(*key)], dtype="S16"), np.array([0]))
    tail = TailEvidence(EvidenceIndex(ws), mirror, known, mirror.stat().st_size, PrefixHash())
    try:
        found = tail.get(mirror, *key)
    finally:
        tail.close()
    assert found is not None and found.run_id == key[0] and not tail.unsure
    assert known.offset(key_digest("no such run", "sig")) is None


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_a_grown_partition_s_next_checkpoint_copies_its_replayed_entries(
        tmp_path: Path, generated: tuple[Path, Path], exported_once: dict[ExportKind, Path], kind: ExportKind,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A partition that grew is replayed from its checkpoint and its new lines read: its next
    checkpoint takes the replayed entries' JSON as it was written instead of writing each entry
    again (as it still does for a partition too big to keep that JSON), and holds what a full
    read writes."""
    import distill.export.checkpoints as checkpoints_module

    _, grown = generated
    a, b = _twins(tmp_path, exported_once, kind, _grow(grown))
    c = Workspace(tmp_path / "c")
    shutil.copytree(exported_once[kind], c.root)
    _grow(grown)(c)
    real = checkpoint_file.JsonEntries.add_json

    def entries_made(ws: Workspace, keep_raw_bytes: int) -> int:
        """Entries handed to the next checkpoint one at a time (made again, or sliced from the
        old checkpoint's bytes), not as the replayed body in one piece."""
        made = 0

        def counting(self: Any, index: int, data: bytes) -> None:
            nonlocal made
            made += 1
            real(self, index, data)

        monkeypatch.setattr(checkpoint_file.JsonEntries, "add_json", counting)
        monkeypatch.setattr(checkpoints_module, "KEEP_RAW_BYTES", keep_raw_bytes)
        _export(ws, kind)
        monkeypatch.undo()
        return made

    copied, written = entries_made(a, checkpoints_module.KEEP_RAW_BYTES), entries_made(c, 0)
    assert 0 < copied < written - 20  # the grown partitions' replayed entries were not made again
    _export(b, kind)

    def entries(ws: Workspace) -> dict[str, Any]:
        return {rel: [orjson.loads(line.split(b"\t", 1)[1])[k]
                      for k in (checkpoint_file.ENTRIES_KEY, checkpoint_file.ENTRY_LENGTHS_KEY)]
                for rel, line in _checkpoint_lines(ws, kind).items()}

    assert entries(a) == entries(b) == entries(c)


def test_a_cut_that_is_not_an_entry_is_refused() -> None:
    """An entry read alone by its length must start an entry and end where the next one starts."""
    import numpy as np

    from distill.errors import UsageError
    from distill.export.checkpoints import LazyEntries

    body = b'["r",1],["q","x"]'
    assert LazyEntries(body, np.array([7, 9]))[1] == ["q", "x"]
    assert LazyEntries(body, np.array([7, 9]))[-2] == ["r", 1]
    for wrong in ([6, 10], [8, 8]):
        with pytest.raises(UsageError):
            LazyEntries(body, np.array(wrong))[1]
    with pytest.raises(IndexError):
        LazyEntries(body, np.array([7, 9]))[2]


def _quarantine_edited(kind: ExportKind) -> Callable[[Workspace], None]:
    """One letter of the quarantine file changed: the same size, not the bytes the run wrote."""

    def change(ws: Workspace) -> None:
        path = ws.quarantine_path(kind.value)
        data = path.read_bytes()
        at = data.index(b'"reason":"') + len(b'"reason":"')
        path.write_bytes(data[:at] + bytes([data[at] ^ 0x20]) + data[at + 1:])

    return change


@pytest.mark.slow
@pytest.mark.parametrize("kind", [ExportKind.RAG, ExportKind.SFT])
@pytest.mark.parametrize("change", ["edited", "removed", "cut short"])
def test_rag_sft_lines_are_read_back_only_from_the_quarantine_file_their_run_wrote(
        tmp_path: Path, exported_once: dict[ExportKind, Path], kind: ExportKind, change: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A RAG/SFT checkpoint keeps each quarantine line's length, not the line (one copy on disk:
    the quarantine file); when that file is not what the checkpoint's run left, every row is read
    again, and the outputs are a full export's."""
    assert b"schema_version" not in exported_once[kind].joinpath(f".distill.export-{kind.value}.json").read_bytes()

    def cut(ws: Workspace) -> None:
        path = ws.quarantine_path(kind.value)
        path.write_bytes(path.read_bytes()[:-100])

    changes: dict[str, Callable[[Workspace], None]] = {
        "edited": _quarantine_edited(kind),
        "removed": lambda ws: ws.quarantine_path(kind.value).unlink(),
        "cut short": cut,
    }
    a, b = _twins(tmp_path, exported_once, kind, changes[change])
    done_a, done_b = _compare(a, b, kind, monkeypatch)
    assert done_a == done_b >= ROWS // 2  # nothing replayed
    done_a, _ = _compare(a, b, kind, monkeypatch)  # and the next run replays again
    assert done_a == 0


def test_a_partition_summary_answers_what_its_entries_would() -> None:
    """What a whole partition's replay asks of its summary, against the entries it sums."""
    entries = [["c", "s", "accepted", None, "id-1", None, None],
               ["g", "s", "accepted", "secret_detected", "id-2", None, 40],
               ["d", "s", "rejected", "unsafe_rag_category", "id-3", "run-3", 50],
               ["b", "s", None, "invalid_json", None, None, 30]]
    summary = PartitionSummary.of(entries)
    assert (summary.line_bytes, summary.lines) == (41 + 51 + 31, 3)
    assert summary.stale == [("id-3", "run-3", "rejected", "unsafe_rag_category")]
    again = PartitionSummary.from_fields(summary.fields(), len(entries))
    assert again is not None and again.fields() == summary.fields()
    assert PartitionSummary.from_fields(summary.fields(), len(entries) + 1) is None  # not these entries' sum
    existing = ExportedIds({key_digest("id-1")})
    assert summary.replays_against(set(), existing)
    assert not summary.replays_against({key_digest("id-2")}, existing)  # an id produced earlier in this input
    assert not summary.replays_against(set(), ExportedIds(set()))  # a shipped row left the export
    assert not summary.replays_against(set(), ExportedIds({key_digest("id-1"), key_digest("id-2")}))  # a refused one is in it
    assert not PartitionSummary.of([*entries, entries[0]]).replays_against(set(), existing)  # one id twice
    assert not PartitionSummary.of([["x", "s", "accepted", None, "id-4", None, 60]]).replays_against(set(), existing)
    # an unsafe drop is stale only while the export holds its id, found by the kept digest
    assert summary.stale_in(existing) == []
    assert summary.stale_in(ExportedIds({key_digest("id-1"), key_digest("id-3")})) == summary.stale
    for digests, kept in ((base64.b64encode(key_digest("id-3")).decode(), True), ("", False)):
        fields = summary.fields()
        fields["summary"]["stale_digests"] = digests  # (the empty one: not the drops' digests)
        fields["summary_digest"] = xxhash.xxh3_128(jsonl_dumps(fields["summary"])).hexdigest()  # one that matches
        assert (PartitionSummary.from_fields(fields, len(entries)) is not None) == kept
    fields = summary.fields()
    fields["summary"]["stale"][0][1] = 3  # a run id that is not a string
    fields["summary_digest"] = xxhash.xxh3_128(jsonl_dumps(fields["summary"])).hexdigest()
    assert PartitionSummary.from_fields(fields, len(entries)) is None


@pytest.mark.parametrize("kind", [ExportKind.RAG, ExportKind.SFT])
@pytest.mark.parametrize("redigest", [False, True])
def test_a_summary_that_is_not_its_partition_s_entries_is_no_checkpoint(
        tmp_path: Path, exported_once: dict[ExportKind, Path], kind: ExportKind, redigest: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A partition replayed whole is counted from the summary beside its entries: a summary that
    is not the bytes written, or (`redigest`: its digest made to match) that does not add up to
    its entries, is no checkpoint; that partition is read and the outputs are a full export's."""
    edited: list[int] = []

    def change(ws: Workspace) -> None:
        path = ws.export_checkpoint_path(kind.value)
        if not path.exists():
            return
        lines = path.read_bytes().splitlines(keepends=True)
        head = orjson.dumps(rel_path(ws, _largest_partition(ws))) + b"\t"
        at = next(k for k, line in enumerate(lines) if line.startswith(head))
        body = _unsealed(lines[at])[len(head):]
        found = orjson.loads(body)
        summary = found["summary"]
        old = orjson.dumps(summary)
        row = max(summary["counts"], key=lambda r: r[-1])
        assert row[-1] >= 2
        row[-1] = row[-1] + 1 if row[-1] % 10 != 9 else row[-1] - 1  # one count off, the line as long
        new = orjson.dumps(summary)
        assert len(new) == len(old) and body.count(old) == 1
        body = body.replace(old, new)
        if redigest:
            body = body.replace(found["summary_digest"].encode(), xxhash.xxh3_128(new).hexdigest().encode())
        lines[at] = sealed(head + body)  # sealed as distill seals a line: what is inside is wrong
        path.write_bytes(b"".join(lines))
        edited.append(len(found["entries"]))

    a, b = _twins(tmp_path, exported_once, kind, change)
    assert edited
    done_a, done_b = _compare(a, b, kind, monkeypatch)
    assert 0 < done_a <= edited[0] < done_b  # that partition's rows alone were read
    done_a, _ = _compare(a, b, kind, monkeypatch)  # and its next checkpoint is replayed
    assert done_a == 0
