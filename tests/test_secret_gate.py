"""The secret gate finds credentials wherever agent output puts them, and none reaches an export.

- 209 planted credentials (19 kinds x 11 places: diff lines, prose, JSON strings, escaped JSON,
  shell, YAML, code) are each found by distill.secrets.SecretScanner;
- parity: every line detect-secrets' own file scan flags, on the corpus and on the sample
  workspace, the gate flags too (what the gate finds beyond that is counted and must include the
  diff-line leak that used to slip through);
- the whole pipeline on the sample workspace with all 209 planted: no credential in any file
  under exports/ (datasets, TRL/OpenAI views, quarantine, card), and every planted run that would
  otherwise ship is quarantined as secret_detected.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from distill.secrets import SecretScanner, reference_scan
from tests.fixtures_reliability import DISTILL, SAMPLE_KB, run_cli
from tests.secret_corpus import CONTEXTS, GENERATORS, planted_corpus

# stream -> the field holding the model output that ships
TEXT_FIELDS = {
    "scrum_reviews": "review",
    "auto_apply": "patch",
    "audits": "evidence",
    "observer_reviews": "rationale",
    "contract_analyses": "analysis",
    "mode_experiments": "output",
}


def detect_secrets_lines(lines: list[str]) -> set[int]:
    return reference_scan(lines)


def test_corpus_has_200_credentials_of_8_kinds_in_every_kind_of_place() -> None:
    corpus = planted_corpus()
    assert len(corpus) >= 200 and len({p.kind for p in corpus}) >= 8
    assert {p.context for p in corpus} == set(CONTEXTS) and {p.kind for p in corpus} == set(GENERATORS)


def test_every_planted_credential_is_found() -> None:
    corpus = planted_corpus()
    hits = SecretScanner().scan([p.text for p in corpus])
    missed = [f"{p.kind} in {p.context}" for p, h in zip(corpus, hits, strict=True) if not h]
    assert not missed, missed


def test_the_diff_line_leak_is_closed() -> None:
    line = "-    token=AKIA2E0A8F3B244C9986  resp = requests.get(url)"
    assert SecretScanner().scan([line])[0], "a credential on a removed diff line next to a call"
    assert detect_secrets_lines([line]) == set()  # what detect-secrets alone gives: the leak


def _sample_lines() -> list[str]:
    lines: list[str] = []
    for name, fieldname in TEXT_FIELDS.items():
        for raw in (SAMPLE_KB / f"{name}.jsonl").read_bytes().splitlines():
            try:
                row = json.loads(raw)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get(fieldname), str):
                lines.extend(row[fieldname].splitlines())
    return lines


@pytest.mark.parametrize("corpus", ["planted", "sample"])
def test_parity_with_detect_secrets(corpus: str) -> None:
    """Every line detect-secrets flags, the gate flags: 0 missed. Extra findings are counted."""
    lines = [ln for p in planted_corpus() for ln in p.text.splitlines()] if corpus == "planted" else _sample_lines()
    reference = detect_secrets_lines(lines)
    ours = {i for i, hits in enumerate(SecretScanner().scan(lines)) if hits}
    missed = sorted(reference - ours)
    assert not missed, [lines[i][:120] for i in missed[:10]]
    if corpus == "planted":
        assert len(ours) > len(reference)  # the lines detect-secrets misses (diff, escaped JSON, ...)


@pytest.mark.parametrize("corpus", ["planted", "sample"])
def test_prefilter_skips_work_never_a_finding(corpus: str) -> None:
    """The Hyperscan prefilter in front of the detectors gives the same verdict on every line as
    running every detector on every line (0 missed, 0 extra), and the export's default uses it."""
    lines = [ln for p in planted_corpus() for ln in p.text.splitlines()] if corpus == "planted" else _sample_lines()
    fast, full = SecretScanner(memo_lines=0), SecretScanner(memo_lines=0, prefilter=False)
    assert fast.prefiltered and not full.prefiltered
    differ = [ln[:120] for ln in lines if fast.analyse(ln) != full.analyse(ln)]
    assert not differ, differ[:10]


_FRAGMENTS = [p.text for p in planted_corpus()[::7]] + [
    "api_key", "password", "secret", "token", "=", ": ", '"', "'", "-", "+", " ", "\\n", "\\\"", "ghp_", "AKIA",
    "xoxb-", "-----BEGIN RSA PRIVATE KEY-----", "https://user:pw@host/x", "\x1c", "é", "sk-", "eyJ", "0123456789",
]


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(min_size=0, max_size=40)), min_size=1, max_size=8))
def test_prefilter_parity_on_arbitrary_credential_shaped_lines(parts: list[str]) -> None:
    line = "".join(parts)
    assert _FAST.analyse(line) == _FULL.analyse(line)


_FAST, _FULL = SecretScanner(memo_lines=0), SecretScanner(memo_lines=0, prefilter=False)


# ------------------------------------------------------------------------- the whole pipeline


def _plant(kb: Path) -> list[str]:
    """Plant every corpus credential into the output field of a sample row; returns the needles."""
    corpus = planted_corpus()
    needles: list[str] = []
    slots: list[tuple[Path, int]] = []
    docs: dict[Path, list[bytes]] = {}
    for name, fieldname in TEXT_FIELDS.items():
        path = kb / f"{name}.jsonl"
        docs[path] = path.read_bytes().splitlines(keepends=True)
        for n, raw in enumerate(docs[path]):
            try:
                row = json.loads(raw)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get(fieldname), str) and row[fieldname].strip():
                slots.append((path, n))
    assert len(slots) >= len(corpus)
    # spread the plants over the streams: every stream gets some
    slots.sort(key=lambda s: (s[1], s[0].name))
    for planted, (path, n) in zip(corpus, slots, strict=False):
        fieldname = TEXT_FIELDS[path.stem]
        row = json.loads(docs[path][n])
        row[fieldname] = row[fieldname] + "\n\n" + planted.text
        docs[path][n] = json.dumps(row).encode() + b"\n"
        needles.extend(planted.needles)
    for path, lines in docs.items():
        path.write_bytes(b"".join(lines))
    return needles


@pytest.mark.slow
def test_no_planted_credential_reaches_any_export(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(SAMPLE_KB, root / "_kb")
    needles = _plant(root / "_kb")
    assert len(needles) >= 200
    done = run_cli([*DISTILL, "run", "--no-index", "--root", str(root)])
    assert done.returncode == 0, done.stdout + done.stderr
    for fmt in ("trl", "openai"):
        views = run_cli([*DISTILL, "export", "all", "--format", fmt, "--root", str(root)])
        assert views.returncode == 0, views.stdout + views.stderr
    leaked = []
    for path in sorted((root / "exports").rglob("*")):
        if path.is_file():
            data = path.read_text(errors="replace")
            leaked += [f"{path.relative_to(root)}: {n[:24]}..." for n in needles if n in data]
    assert not leaked, leaked[:20]

    # every planted run that would otherwise ship to RAG was stopped by the secret gate
    planted_runs: set[str] = set()
    for path in (root / "evidence").rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            ev = json.loads(line)
            if any(n in ev["text"] for n in needles):
                planted_runs.add(ev["run_id"])
    shippable: set[str] = set()
    for path in (root / "scored-runs").rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            sc = json.loads(line)
            if sc["evidence_run_id"] in planted_runs and sc["category"] in ("accepted", "partially_accepted"):
                shippable.add(sc["evidence_run_id"])
    reasons: dict[str, Counter[str]] = {}
    for line in (root / "exports" / "quarantine" / "rag.jsonl").read_text().splitlines():
        q = json.loads(line)
        reasons.setdefault(q["detail"].get("evidence_run_id", ""), Counter())[q["reason"]] += 1
    assert len(shippable) >= 100, len(shippable)
    not_caught = sorted(r for r in shippable if "secret_detected" not in reasons.get(r, {}))
    assert not not_caught, not_caught[:10]


def test_a_pattern_hyperscan_cannot_take_makes_its_detector_run_always() -> None:
    from distill.secrets import _Prefilter

    pre = _Prefilter([("broken", "(unclosed", 0), ("aws", "AKIA[0-9A-Z]{16}", 0), ("always", "", 0)])
    assert pre.always == {"broken", "always"}
    assert pre.groups("nothing here") == {"broken", "always"}
    assert pre.groups("key AKIA2E0A8F3B244C9986") == {"broken", "always", "aws"}


# ------------------------------------------------------------------------- the compiled prefilter kept on disk


def _compiles(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts Hyperscan compiles from now on (each call of _Prefilter._compile)."""
    from distill.secrets import _Prefilter

    calls: list[int] = []
    real = _Prefilter._compile

    def counted(hyperscan: object, patterns: list) -> object:
        calls.append(len(patterns))
        return real(hyperscan, patterns)

    monkeypatch.setattr(_Prefilter, "_compile", staticmethod(counted))
    return calls


def _verdicts(scanner: SecretScanner, lines: list[str]) -> list[tuple[str, ...]]:
    return [scanner.analyse(ln) for ln in lines]


def test_a_kept_prefilter_is_loaded_not_compiled_and_judges_every_line_the_same(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = [ln for p in planted_corpus() for ln in p.text.splitlines()] + _sample_lines()[:2000]
    cache = tmp_path / ".distill.secret-prefilter.hs"
    calls = _compiles(monkeypatch)
    first = SecretScanner(memo_lines=0, prefilter_cache=cache)
    expected = _verdicts(first, lines)
    assert len(calls) == 1 and cache.is_file()  # compiled once, then kept
    assert expected == _verdicts(SecretScanner(memo_lines=0), lines)
    calls.clear()
    second = SecretScanner(memo_lines=0, prefilter_cache=cache)
    assert _verdicts(second, lines) == expected and second.prefiltered
    assert calls == [], "loaded from the file, not compiled"


@pytest.mark.parametrize("damage", ["a byte of the database", "the header", "a refused database", "other patterns"])
def test_a_kept_prefilter_that_does_not_match_is_compiled_again_and_rewritten(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    import hashlib

    import orjson

    lines = [ln for p in planted_corpus() for ln in p.text.splitlines()]
    cache = tmp_path / ".distill.secret-prefilter.hs"
    expected = _verdicts(SecretScanner(memo_lines=0, prefilter_cache=cache), lines)
    good = cache.read_bytes()
    header, _, data = good.partition(b"\n")
    fields = orjson.loads(header)
    if damage == "a byte of the database":
        at = len(data) // 2
        cache.write_bytes(header + b"\n" + data[:at] + bytes([data[at] ^ 1]) + data[at + 1:])
    elif damage == "the header":
        cache.write_bytes(b"{not json\n" + data)
    elif damage == "a refused database":  # the digest matches, Hyperscan refuses the bytes
        junk = b"\0" * 64
        fields["sha256"] = hashlib.sha256(junk).hexdigest()
        cache.write_bytes(orjson.dumps(fields) + b"\n" + junk)
    else:
        fields["key"] = "0" * 64  # kept for other patterns or another Hyperscan
        cache.write_bytes(orjson.dumps(fields) + b"\n" + data)
    calls = _compiles(monkeypatch)
    again = SecretScanner(memo_lines=0, prefilter_cache=cache)
    assert _verdicts(again, lines) == expected
    assert calls, "compiled again"
    assert cache.read_bytes() == good  # and the file rewritten


def test_a_kept_prefilter_for_other_limits_is_not_used(tmp_path: Path) -> None:
    cache = tmp_path / ".distill.secret-prefilter.hs"
    SecretScanner(memo_lines=0, prefilter_cache=cache).analyse("x")
    before = cache.read_bytes()
    SecretScanner(entropy_limit=3.0, memo_lines=0, prefilter_cache=cache).analyse("x")  # another unquoted pattern
    assert cache.read_bytes() != before


def test_an_unwritable_prefilter_file_costs_a_compile_not_an_error(tmp_path: Path) -> None:
    scanner = SecretScanner(memo_lines=0, prefilter_cache=tmp_path / "missing-dir" / "prefilter.hs")
    assert scanner.analyse('aws_key = "AKIA2E0A8F3B244C9986"') and scanner.prefiltered
