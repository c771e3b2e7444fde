"""The export's speed/memory measures must not change what it decides.

- SecretScanner's per-line memo (bounded LRU) gives exactly the hits of an unmemoised scan.
- EvidenceIndex holds one evidence partition at a time, as offsets (EvidenceOffsets): every
  lookup finds the record a load of every record would have kept; the fallback index reads
  records back from (file, offset) and joins the same records the full load did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.secrets import SecretScanner
from distill.export.reader import EvidenceIndex, EvidenceOffsets, Joined, evidence_records, iter_scored
from distill.workspace import Workspace, iter_partition_files
from tests.export_helpers import AWS_KEY, GITHUB_TOKEN, PRIVATE_KEY_BLOCK, SLACK_TOKEN, STRIPE_KEY

TEXTS = [
    f"key {AWS_KEY}",
    f"first line\ntoken {GITHUB_TOKEN}\nlast line",
    PRIVATE_KEY_BLOCK,
    f"prose\r\n{SLACK_TOKEN}\r\nprose",
    f'api_key = "{STRIPE_KEY}"\n\nkey {AWS_KEY}',
    "",
    "nul\x00byte line\nfirst line",
    "- Verify the retry budget resets after a partial failure.\nfirst line",
    f"token {GITHUB_TOKEN}\nkey {AWS_KEY}\ntoken {GITHUB_TOKEN}",
    "api_key = os.environ['API_KEY'] is read at start-up.",
    "first line",
]


class CountingScanner(SecretScanner):
    """Records the lines detect-secrets analysed (the analysis itself is real)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.scanned: list[str] = []

    def analyse(self, line):
        self.scanned.append(line)
        return super().analyse(line)


def reference(texts: list[str]):
    """Every line analysed afresh, no memo."""
    scanner = SecretScanner(memo_lines=0)
    return scanner.scan(texts)


@pytest.mark.parametrize("memo_lines", [0, 1, 3, 200_000])
def test_line_memo_matches_unmemoised_scan(memo_lines):
    want = reference(TEXTS)
    assert any(want) and not all(want)  # the corpus has both clean and dirty texts
    scanner = SecretScanner(memo_lines=memo_lines)
    assert scanner.scan(TEXTS) == want
    # again, reversed and in small batches: memo hits, misses and evictions all mixed
    got = []
    rev = TEXTS[::-1]
    for i in range(0, len(rev), 3):
        got.extend(scanner.scan(rev[i : i + 3]))
    assert got == want[::-1]
    assert len(scanner._memo) <= memo_lines


def test_line_memo_scans_each_distinct_line_once():
    scanner = CountingScanner()
    scanner.scan(TEXTS)
    lines = [line for t in TEXTS for line in (t.splitlines() or [""])]
    assert sorted(scanner.scanned) == sorted(set(lines))
    before = len(scanner.scanned)
    scanner.scan(TEXTS + [f"new line\nkey {AWS_KEY}"])
    assert scanner.scanned[before:] == ["new line"]


def test_line_memo_is_bounded():
    scanner = CountingScanner(memo_lines=4)
    texts = [f"line number {i}" for i in range(10)]
    scanner.scan(texts)
    assert list(scanner._memo) == texts[-4:]  # oldest evicted first
    scanner.scan([texts[6]])  # a hit refreshes it
    scanner.scan(["one more"])
    assert list(scanner._memo) == [texts[8], texts[9], texts[6], "one more"]


@pytest.fixture(scope="module")
def sample_ws(tmp_path_factory) -> Workspace:
    from distill.cli.init_cmd import init_workspace
    from distill.collect import run_collect
    from distill.config import Settings
    from distill.score import run_score

    root = tmp_path_factory.mktemp("memsample") / "ws"
    init_workspace(root, sample=True)
    ws = Workspace.resolve(root)
    run_collect(ws, Settings())
    run_score(ws, Settings())
    return ws


def test_evidence_index_holds_one_partition(sample_ws):
    index = EvidenceIndex(sample_ws)
    held: set[Path] = set()
    joined = 0
    for item in iter_scored(sample_ws, index):
        if isinstance(item, Joined):
            joined += 1
        if index._current is not None:
            held.add(index._current.path)
    assert joined > 0
    assert len(held) == len(list(iter_partition_files(sample_ws.scored_dir))) > 1
    assert index._global is None  # every sample run joins in its mirror partition


def _first_valid_records(path: Path) -> dict[tuple[str, str], object]:
    """The reference: every valid record loaded, the first one per key kept (what the index held
    before it held offsets)."""
    records: dict[tuple[str, str], object] = {}
    for _, ev in evidence_records(path):
        records.setdefault((ev.run_id, ev.provenance.sig_hash), ev)
    return records


def test_evidence_offsets_find_the_records_a_full_load_keeps(sample_ws, tmp_path):
    """Offsets instead of records: on every sample partition, and on one with the hostile lines an
    evidence file can hold (a revision whose first copy is invalid, a key that is not a string,
    junk, a blank line, a torn tail), each key finds the same record and no other key finds one."""
    import json

    files = list(iter_partition_files(sample_ws.evidence_dir))
    good = [json.loads(line) for line in max(files, key=lambda f: f.stat().st_size).read_text().splitlines()[:3]]
    assert len(good) == 3
    broken_first = dict(good[1], text=42)  # same key as good[1], not an EvidenceRecord
    not_str = dict(good[2], run_id=7)
    lines = [json.dumps(broken_first), json.dumps(good[0]), "{junk", "", json.dumps(not_str), json.dumps(good[1]),
             json.dumps(dict(good[0], text="a later copy of the same revision")), "[1, 2]", json.dumps(good[2])]
    hostile = tmp_path / "hostile.jsonl"
    hostile.write_text("\n".join(lines) + "\n" + json.dumps(good[2])[:40])
    for path in [*files, hostile]:
        want = _first_valid_records(path)
        offsets = EvidenceOffsets(path)
        try:
            assert {k: offsets.get(k) for k in offsets.keys() if offsets.get(k) is not None} == want
            assert set(want) <= set(offsets.keys())
            assert offsets.get(("nope", "0" * 64)) is None
        finally:
            offsets.close()
    assert len(_first_valid_records(hostile)) == 3


def _hostile_evidence(sample_ws: Workspace, path: Path) -> Path:
    """A copy of the sample's largest evidence partition with hostile lines spliced in: a
    revision whose first copy is invalid and comes before its valid one, a later copy of a
    revision, a key that is not a string, junk, blank lines and a torn tail."""
    import json

    biggest = max(iter_partition_files(sample_ws.evidence_dir), key=lambda f: f.stat().st_size)
    good = [json.loads(line) for line in biggest.read_text().splitlines()]
    lines = [json.dumps(dict(good[1], text=42)), *(json.dumps(g) for g in good), "{junk", "",
             json.dumps(dict(good[2], run_id=7)), json.dumps(dict(good[0], text="a later copy")), "[1, 2]"]
    path.write_text("\n".join(lines) + "\n" + json.dumps(good[2])[:40])
    return path


@settings(max_examples=40, deadline=None)
@given(order=st.randoms(use_true_random=False), repeat=st.integers(0, 3), stop=st.integers(0, 40))
def test_evidence_offsets_read_forward_find_what_a_full_read_finds(sample_ws, tmp_path_factory, order, repeat, stop):
    """A lookup reads the file forward only as far as it needs (the scored partition mirrors it
    line for line); lookups in any order, repeated, interleaved with keys no line names, or
    stopped early, find the records a full load keeps, and `keys` and the reader's hash then
    cover the whole file."""
    import xxhash

    from distill.hashing import LineEndHash, PrefixHash

    path = _hostile_evidence(sample_ws, tmp_path_factory.mktemp("ev") / "hostile.jsonl")
    want = _first_valid_records(path)
    full = EvidenceOffsets(path)
    every_key = full.keys()
    full.close()
    asked = [*every_key, *(("nope", f"{i:064x}") for i in range(3))]
    order.shuffle(asked)
    asked = asked[:stop] + asked[:repeat] + asked[stop:]
    read = LineEndHash(PrefixHash())
    offsets = EvidenceOffsets(path, on_chunk=read)
    try:
        for n, key in enumerate(asked):
            assert offsets.get(key) == want.get(key), key
            if n == stop:
                break
        assert offsets.keys() == every_key  # file order, whatever was asked first
        whole_lines = path.read_bytes()[:path.read_bytes().rfind(b"\n") + 1]
        # the checkpoints' prefix hash (distill.hashing.PREFIX_HASH) of exactly the whole lines
        assert (read.end, read.hexdigest(path)) == (len(whole_lines), xxhash.xxh3_128(whole_lines).hexdigest())
    finally:
        offsets.close()


def test_evidence_fallback_reads_the_same_record(sample_ws):
    files = list(iter_partition_files(sample_ws.evidence_dir))
    full = EvidenceIndex(sample_ws)
    a, b = files[0], files[1]
    key = full._load(b).keys()[0]
    rec_b = full._load(b).get(key)
    assert rec_b is not None and (rec_b.run_id, rec_b.provenance.sig_hash) == key
    index = EvidenceIndex(sample_ws)
    # asked under the wrong mirror: the fallback finds it in b by offset
    got = index.get(a, *key)
    assert got == rec_b
    assert isinstance(index._global[key], tuple)  # (file, offset), not the record
    assert index.revisions(rec_b.run_id) == [rec_b.provenance.sig_hash]
    assert index.get(a, rec_b.run_id, "0" * 64) is None
    assert {p for p in index.files_read} == set(files)


def test_gate_batch_size_changes_nothing(tmp_path, monkeypatch):
    """Firewall checks in batches of 1, rows handed to the sinks after every row, preference rows
    spilled to 7 buckets, give the same files and the same report as one batch holding everything
    in one bucket; no staged file or spill folder is left behind."""
    import hashlib

    from distill.export import preference, quarantine, run_export, spill
    from tests.export_helpers import adversarial_settings, build_adversarial

    def export(root: Path, batch: int):
        monkeypatch.setattr(quarantine, "GATE_BATCH", batch)
        monkeypatch.setattr(quarantine, "MAX_HELD", batch)
        monkeypatch.setattr(preference, "GATE_BATCH", batch)
        monkeypatch.setattr(spill, "BUCKET_BYTES", 1 if batch == 1 else 2**62)
        monkeypatch.setattr(spill, "MAX_BUCKETS", 7)
        adv = build_adversarial(root)
        settings = adversarial_settings(adv)
        reports = [run_export(adv.ws, settings, k, fmt="trl").model_dump_json() for k in ("rag", "sft", "preference")]
        exports = adv.ws.root / "exports"
        files = {p.relative_to(exports).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted(exports.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}
        return reports, files

    one = export(tmp_path / "one", 1)
    whole = export(tmp_path / "whole", 10**9)
    assert one[1] == whole[1] and len(one[1]) >= 6
    assert not [p for p in tmp_path.rglob("*.tmp")], "a staged export file was left behind"
    assert not [p for p in tmp_path.rglob(".spill-*")], "a spill folder was left behind"
    assert whole[1]["preference/chosen_rejected.jsonl"] != hashlib.sha256(b"").hexdigest(), "no pairs to compare"
    # reports name their own workspace paths only relatively, so they compare as text
    assert one[0] == whole[0]


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from(["r1", "r2", "r3", "r\x00", ""]),
                               st.one_of(st.none(), st.sampled_from(["s1", "s2", "s\x001"])),
                               st.sampled_from(["accepted", "rejected", "needs_human_review", "x"])), max_size=30),
       probes=st.lists(st.tuples(st.one_of(st.none(), st.integers(), st.sampled_from(["r1", "r2", "r3", "r\x00", "r9", ""])),
                                 st.one_of(st.none(), st.integers(), st.sampled_from(["s1", "s2", "s\x001", "s9"]))),
                       max_size=20))
def test_scored_index_answers_as_a_mapping_would(rows, probes) -> None:
    """The compact index (sorted digests + codes) gives what the dict it replaced gave: the last
    category of a revision, else the run's only category, else None."""
    from distill.export.scored_index import ScoredIndex

    by_version: dict[tuple[str, str], str] = {}
    by_run: dict[str, set[str]] = {}
    index = ScoredIndex()
    for run_id, sig, cat in rows:
        by_run.setdefault(run_id, set()).add(cat)
        if sig is not None:
            by_version[(run_id, sig)] = cat
        index.add(run_id, sig, cat)
    index.freeze()

    def expected(run_id, sig):
        if not isinstance(run_id, str):
            return None
        if isinstance(sig, str) and (run_id, sig) in by_version:
            return by_version[(run_id, sig)]
        cats = by_run.get(run_id)
        return next(iter(cats)) if cats and len(cats) == 1 else None

    asks = probes + [(r, s) for r, s, _ in rows]
    for run_id, sig in asks:
        assert index.category(run_id, sig) == expected(run_id, sig)
    # many lookups at once (what a verification re-asks) answer the same
    from distill.export.scored_index import lookup_keys

    keys = [lookup_keys(r, s) for r, s in asks]
    codes = index.codes(np.array([k[0] for k in keys], dtype=np.uint8), np.array([k[1] for k in keys], dtype="S16"),
                        np.array([k[2] for k in keys], dtype="S16"))
    assert [index.names[c] if c >= 0 else None for c in codes.tolist()] == [expected(r, s) for r, s in asks]


def test_the_cross_source_phase_holds_rows_not_their_decisions(tmp_path: Path) -> None:
    """20,000 verdict-bearing reviews of one source, all answering one template instruction: they
    all land in one cross bucket and none can pair. Deciding them held every row and its
    quarantine line until the bucket was done (1,300 B a row at the peak under tracemalloc on the
    code before 4104e5f; ~590 B once decisions went straight to their run). A question that cannot
    have a cross-source pair (one source, or one task) is now found in a first read of the bucket
    and its rows are decided as they are read again, so memory no longer grows with them."""
    import hashlib
    import tracemalloc
    from collections import Counter

    from distill.export import preference as P
    from distill.export.spill import IN_ORDER_BATCH, Spill
    from distill.records import Category

    n = 20_000
    categories = [Category.ACCEPTED, Category.REJECTED, Category.PARTIALLY_ACCEPTED]
    prompt = "Review this change and say whether it fixes the failing test, with the reasons."
    with Spill(tmp_path) as spill:
        payload = P._Payload(spill.records("payload"), lambda _f, _k: None)
        bucket = spill.records("task-0", batch=IN_ORDER_BATCH)
        for i in range(n):
            sig = hashlib.sha256(str(i).encode()).hexdigest()
            run_id, category = f"reviewer:run-{i:06d}", categories[i % 3]
            detail = {"category": category.value, "evidence_run_id": run_id, "score_class": "B",
                      "scored_file": "scored-runs/2026/03/01/reviewer.jsonl", "scored_line": i + 1}
            provenance = {"source_file": "_kb/reviewer.jsonl", "unit": "line", "line_offset": i * 400,
                          "line_number": i + 1, "sig_hash": sig, "recorded_at": "2026-03-01T00:00:00Z"}
            offset = payload.put(((run_id, sig), "reviewer", f"verdict {i}", "2026-03-01T00:00:00+00:00", provenance,
                                  category.value, "verdict", "reviewer", detail))
            row = P.Row(i, (run_id, sig), f"T-{i % 50}", prompt, category, "reviewer",
                        P._text_digest(f"verdict {i}"), True, None, offset)
            bucket.append(row.as_tuple())
        bucket.seal()
        pairer = P._Pairer(set(), Counter(), 5, payload, spill.records("pairs", batch=IN_ORDER_BATCH))
        cross = spill.buckets("cross", 1, batch=IN_ORDER_BATCH)
        P._pair_task_bucket(P._rows(bucket), pairer, spill.records("refused", batch=IN_ORDER_BATCH),
                            spill.records("decided", batch=IN_ORDER_BATCH), cross, {})

        tracemalloc.start()
        try:
            unpaired = spill.records("cross-unpaired", batch=IN_ORDER_BATCH)
            decided = spill.records("cross-decided", batch=IN_ORDER_BATCH)
            cross_pairer = P._Pairer(set(), Counter(), 5, payload, spill.records("cross-pairs", batch=IN_ORDER_BATCH))
            made = P._pair_cross_bucket([cross[0]], cross_pairer, unpaired, decided)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        decisions = list(unpaired)
        assert not list(decided)  # nothing held for pairing
    assert made == 0
    assert [d[0] for d in decisions] == sorted(d[0] for d in decisions)  # a sorted run, as the merge needs
    assert {d[0] for d in decisions} == set(range(n))  # every row decided once (none refused before pairing)
    assert peak / n < 100, f"{peak / n:.0f} B per row"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([bytes(8), b"\x00" * 7 + b"\x01", b"\xff" * 8, b"a\x00\x00\x00\x00\x00\x00\x00"]),
                          st.binary(min_size=8, max_size=8) | st.sampled_from([bytes(8), b"\xff" * 8])),
                max_size=40))
def test_the_digest_sort_is_a_stable_string_argsort(halves) -> None:
    """The index's keys must be in the order numpy's string search expects (searchsorted on S16):
    the integer sort gives exactly the stable string argsort, also for keys that share their first
    half, keys with zero bytes and repeated keys."""
    from distill.export.scored_index import sort_digests

    keys = np.array([high + low for high, low in halves], dtype="S16")
    assert sort_digests(keys).tolist() == np.argsort(keys, kind="stable").tolist()


@settings(max_examples=300, deadline=None)
@given(keys=st.lists(st.tuples(st.sampled_from([bytes(8), b"\x00" * 7 + b"\x01", b"\xff" * 8, b"a" + bytes(7)]),
                               st.sampled_from([bytes(8), b"\x01" * 8, b"\xff" * 8, b"b" + bytes(7)])), max_size=30),
       probes=st.lists(st.tuples(st.sampled_from([bytes(8), b"\x00" * 7 + b"\x01", b"\xff" * 8, b"c" + bytes(7)]),
                                 st.sampled_from([bytes(8), b"\x01" * 8, b"\xff" * 8, b"b" + bytes(7)])), max_size=30))
def test_many_lookups_find_keys_that_share_their_first_half(keys, probes) -> None:
    """The batched lookup searches the keys' first halves as integers: a key sharing its first
    half with others (or with a probe that is no key) is still found exactly, and no other."""
    from distill.export.scored_index import _SortedCodes

    index = _SortedCodes()
    for n, (high, low) in enumerate(keys):
        index.add(high + low, n)
    index.freeze()
    asked = np.array([high + low for high, low in probes], dtype="S16")
    found, at = index.find(asked)
    wanted = {high + low for high, low in keys}
    assert found.tolist() == [high + low in wanted for high, low in probes]
    assert all(index.keys.astype("S16").tobytes()[16 * a:16 * a + 16] == probe
               for a, probe, hit in zip(at.tolist(), (h + lo for h, lo in probes), found.tolist(), strict=True) if hit)
