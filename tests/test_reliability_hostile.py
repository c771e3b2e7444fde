"""Hostile content (issue 8) through the whole pipeline, from _kb source rows to the exports.

- credentials planted in evidence (detect-secrets' own plugin-test strings plus AWS, GitHub,
  Slack, Stripe and private-key samples, in the text and in the topic that becomes a RAG title)
  never reach a dataset, and each such row is quarantined as secret_detected;
- cited files that escape the configured repo root (`../../etc/passwd`, absolute paths, a
  symlink pointing outside, `..` inside a path) are quarantined as hallucinated_file_path, and
  nothing outside the root is ever opened (an audit hook watches every open());
- a 50 MB line and 100k-level nested JSON in a source are quarantined by a real `distill collect`
  subprocess whose peak RSS stays under a sane bound, and the good rows around them are kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from distill.collect import run_collect
from distill.config import load_settings
from distill.export import run_export
from distill.records import QuarantineReason
from distill.score import run_score
from distill.workspace import Workspace
from tests.export_helpers import AWS_KEY, AWS_SECRET, GITHUB_TOKEN, PRIVATE_KEY_BLOCK, SLACK_TOKEN, STRIPE_KEY
from tests.fixtures_reliability import REPO, cli_env

OPENSSH_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "-----END OPENSSH PRIVATE KEY-----"
)
SECRETS = {
    "aws_access_key": f"export AWS_ACCESS_KEY_ID={AWS_KEY}",
    "aws_secret": f'aws_secret_access_key = "{AWS_SECRET}"',
    "github_token": f"token {GITHUB_TOKEN} was pasted into the CI log",
    "slack_token": f"SLACK_BOT_TOKEN={SLACK_TOKEN}",
    "stripe_key": f"stripe.api_key = '{STRIPE_KEY}'",
    "rsa_private_key": PRIVATE_KEY_BLOCK,
    "openssh_private_key": OPENSSH_KEY,
    "basic_auth_url": "connect with postgres://admin:Sup3rS3cretPassw0rd@db.internal:5432/app",
}
# What must never appear in a dataset file (the distinctive part of each planted credential).
NEEDLES = [AWS_KEY, AWS_SECRET, GITHUB_TOKEN, SLACK_TOKEN, STRIPE_KEY, "c3VwZXIgZHVwZXIgc2VjcmV0",
           "b3BlbnNzaC1rZXktdjEAAAAABG5v", "Sup3rS3cretPassw0rd"]
TRAVERSALS = ["../../etc/passwd", "/etc/passwd", "docs/leak.md", "docs/outdir/secret.md",
              "src/../../outside/secret.md", "src/./../../../etc/passwd"]


def _audit(finding: str, evidence: str, files: list[str], *, topic: str = "retry loop", minute: int = 0) -> bytes:
    row = {"finding_id": finding, "phase": 7, "check": "cloud", "topic": topic, "severity": "low",
           "resolution": "fixed", "files": files, "evidence": evidence, "auditor_model": "gpt-oss:120b",
           "ts": f"2026-03-01T10:{minute:02d}:00Z"}
    return json.dumps(row).encode()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A workspace whose _kb carries planted credentials and escaping paths; the pipeline run on it
    in-process while an audit hook records every file opened."""
    base = tmp_path_factory.mktemp("hostile")
    root = base / "ws"
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("OUTSIDE-SENTINEL: never read me\n")
    repo = root / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "docs").mkdir()
    (repo / "src" / "app.py").write_text("def retry():\n    pass\n")
    os.symlink(outside / "secret.md", repo / "docs" / "leak.md")  # absolute link leaving the root
    os.symlink("../../../outside", repo / "docs" / "outdir")  # relative directory link leaving it
    (root / "_kb").mkdir(parents=True)
    (root / "distill.toml").write_text('[export]\nrepo_root = "repo"\n')

    lines: list[bytes] = []
    kinds: dict[int, str] = {}

    def add(line: bytes, kind: str) -> None:
        lines.append(line)
        kinds[len(lines)] = kind

    for i in range(3):
        add(_audit(f"AF-OK-{i}", f"Finding {i}: the retry loop in src/app.py never backs off (case {i}).\n"
                   "- Verify the retry loop sleeps between attempts.", ["src/app.py"], minute=i), "control")
    for i, (name, secret) in enumerate(sorted(SECRETS.items())):
        add(_audit(f"AF-SEC-{i}", f"Finding {name}: the deploy script in src/app.py embeds a credential:\n{secret}\n"
                   "- Verify the credential is rotated.", ["src/app.py"], minute=10 + i), f"secret:{name}")
    add(_audit("AF-SEC-TOPIC", "Finding: a token sits in the issue title; see src/app.py.", ["src/app.py"],
               topic=f"rotate {GITHUB_TOKEN}", minute=30), "secret:topic")
    for i, path in enumerate(TRAVERSALS):
        add(_audit(f"AF-PATH-{i}", f"Finding path {i}: configuration is read from the cited file.", [path],
                   minute=40 + i), f"path:{path}")
    add(_audit("AF-PATH-TEXT", "Finding: the loader opens ../../etc/passwd when HOME is unset.", ["src/app.py"],
               minute=50), "path:text")
    # A malformed line carrying a credential: collect must quarantine it (its excerpt is checked below).
    add(b'{"finding_id": "AF-BAD", "evidence": "key ' + GITHUB_TOKEN.encode() + b' in', "malformed")
    (root / "_kb" / "audits.jsonl").write_bytes(b"\n".join(lines) + b"\n")

    opened: list[str] = []
    watching = [True]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if watching[0] and event == "open" and args and isinstance(args[0], str | bytes | os.PathLike):
            opened.append(os.fsdecode(args[0]))

    sys.addaudithook(hook)  # audit hooks cannot be removed: `watching` switches this one off
    try:
        ws = Workspace(root)
        settings = load_settings(root)
        reports = {"collect": run_collect(ws, settings), "score": run_score(ws, settings)}
        for kind in ("rag", "sft", "preference"):
            reports[kind] = run_export(ws, settings, kind)  # type: ignore[arg-type]
        reports["trl"] = run_export(ws, settings, "sft", fmt="trl")
        reports["openai"] = run_export(ws, settings, "preference", fmt="openai")
    finally:
        watching[0] = False
    return {"ws": ws, "kinds": kinds, "opened": opened, "outside": outside, "reports": reports}


def _quarantined(ws: Workspace, stage: str) -> dict[int, str]:
    out = {}
    for line in ws.quarantine_path(stage).read_text().splitlines():
        row = json.loads(line)
        out[row["source_ref"]["line_number"]] = row["reason"]
    return out


def _dataset_files(ws: Workspace) -> list[Path]:
    return [p for p in ws.exports_dir.rglob("*") if p.is_file() and "quarantine" not in p.parts
            and not p.name.endswith(".lock")]


def test_every_stage_balances(hostile: dict[str, Any]) -> None:
    for name, report in hostile["reports"].items():
        assert report.balanced, name


def test_controls_ship_so_the_gates_are_not_just_closed(hostile: dict[str, Any]) -> None:
    ws: Workspace = hostile["ws"]
    rag = [json.loads(x) for x in ws.rag_path.read_text().splitlines()]
    shipped = {r["provenance"]["line_number"] for r in rag}
    controls = {n for n, k in hostile["kinds"].items() if k == "control"}
    topic = {n for n, k in hostile["kinds"].items() if k == "secret:topic"}
    # Nothing hostile shipped. The row whose *topic* holds a token may ship: the topic is metadata that
    # no dataset carries (the needle check over every dataset file proves the token stayed out).
    assert shipped == controls | topic


def test_planted_credentials_never_reach_a_dataset(hostile: dict[str, Any]) -> None:
    ws: Workspace = hostile["ws"]
    files = _dataset_files(ws)
    assert any(p.name == "playbooks.jsonl" for p in files) and any(p.name == "README.md" for p in files)
    for p in files:
        data = p.read_bytes()
        for needle in NEEDLES:
            assert needle.encode() not in data, (p, needle)
    rag_q = _quarantined(ws, "rag")
    for n, kind in hostile["kinds"].items():
        if kind.startswith("secret:") and kind != "secret:topic":
            assert rag_q.get(n) == QuarantineReason.SECRET_DETECTED.value, (kind, rag_q.get(n))


def test_planted_credentials_never_reach_the_export_stage_quarantine_files(hostile: dict[str, Any]) -> None:
    ws: Workspace = hostile["ws"]
    for stage in ("rag", "sft", "preference"):
        data = ws.quarantine_path(stage).read_bytes()
        for needle in NEEDLES:
            assert needle.encode() not in data, (stage, needle)


def test_a_credential_in_a_malformed_source_line_is_not_copied_under_exports(hostile: dict[str, Any]) -> None:
    ws: Workspace = hostile["ws"]
    bad = [n for n, k in hostile["kinds"].items() if k == "malformed"]
    assert _quarantined(ws, "collect") == {bad[0]: QuarantineReason.MALFORMED_JSON.value}
    for p in ws.exports_dir.rglob("*.jsonl"):
        assert GITHUB_TOKEN.encode() not in p.read_bytes(), p


def test_paths_escaping_the_repo_root_are_quarantined(hostile: dict[str, Any]) -> None:
    ws: Workspace = hostile["ws"]
    rag_q = _quarantined(ws, "rag")
    rows = {json.loads(x)["source_ref"]["line_number"]: json.loads(x) for x in ws.quarantine_path("rag").read_text().splitlines()}
    for n, kind in hostile["kinds"].items():
        if kind.startswith("path:"):
            assert rag_q.get(n) == QuarantineReason.HALLUCINATED_FILE_PATH.value, kind
            assert any("repo root" in e or "no such file" in e for e in rows[n]["errors"]), rows[n]["errors"]


def test_nothing_outside_the_repo_root_is_opened(hostile: dict[str, Any]) -> None:
    outside = str(hostile["outside"])
    opened = hostile["opened"]
    assert opened, "the audit hook saw no open() at all"
    bad = [p for p in opened if p.startswith(outside) or p.startswith("/etc/passwd") or "secret.md" in p]
    assert bad == []


# ------------------------------------------------------------------------------------ huge input

RSS_LIMIT_MB = 150  # a buffered 50 MB line (plus its decoded copy) would exceed it


# Peak RSS of the collect process itself: VmHWM read at exit. os.wait4's ru_maxrss would carry
# the high-water mark of the pytest image the child was forked from (1 GB once torch is loaded).
_PEAK_WRAPPER = """
import atexit, os, sys
def _report():
    with open("/proc/self/status") as fh:
        hwm = next(line.split()[1] for line in fh if line.startswith("VmHWM:"))
    with open(os.environ["TEST_DISTILL_PEAK_FILE"], "w") as out:
        out.write(hwm)
atexit.register(_report)
sys.argv = ["distill", *sys.argv[1:]]
from distill.cli import main
main()
"""


def _collect_peak_rss(root: Path) -> tuple[int, float, str]:
    """Run `distill collect --json` in a child and return (exit code, peak RSS in MB, stdout)."""
    peak_file = root.parent / "peak_rss_kb"
    env = {**cli_env(), "TEST_DISTILL_PEAK_FILE": str(peak_file)}
    proc = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, "collect", "--root", str(root), "--json"],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
    return proc.returncode, int(peak_file.read_text()) / 1024, proc.stdout.decode()


def test_a_50mb_line_and_100k_deep_json_are_quarantined_within_bounded_memory(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "_kb").mkdir(parents=True)
    good = [_audit(f"AF-G-{i}", f"Finding {i}: the retry loop never backs off.", [], minute=i) for i in range(3)]
    huge = b'{"finding_id": "AF-HUGE", "evidence": "' + b"A" * (50 << 20) + b'"}'
    deep_list = b'{"finding_id": "AF-DEEP", "evidence": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep_obj = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    with open(root / "_kb" / "audits.jsonl", "wb") as fh:
        fh.write(b"\n".join([good[0], huge, good[1], deep_list, deep_obj, good[2]]) + b"\n")
    code, peak_mb, out = _collect_peak_rss(root)
    assert code == 0, out[-2000:]
    report = json.loads(out)
    audits = report["by_source"]["audits"]
    assert audits["rows_in"] == 6 and audits["written"] == 3 and audits["quarantined"] == 3
    assert audits["by_reason"] == {"line_too_long": 1, "malformed_json": 2}
    assert peak_mb < RSS_LIMIT_MB, f"collect peaked at {peak_mb:.0f} MB"
    print(f"\ncollect over a 50 MB line + 2 x 100k-deep JSON: peak RSS {peak_mb:.0f} MB (limit {RSS_LIMIT_MB})")
    q = [json.loads(x) for x in (root / "exports" / "quarantine" / "collect.jsonl").read_text().splitlines()]
    assert sorted(r["source_ref"]["line_number"] for r in q) == [2, 4, 5]
    assert all(len(json.dumps(r)) < 4000 for r in q)  # the huge line is not copied into its quarantine row
