"""Builders for export tests: evidence + scored runs written into their partitions.

Used until (and alongside) the real collect/score stages: rows are real EvidenceRecord /
ScoredRun objects, written with distill.jsonl into ROOT/evidence and ROOT/scored-runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from distill.hashing import sig_hash
from distill.jsonl import append_json, append_lines
from distill.records import Category, EvidenceRecord, ModelRole, Provenance, ScoreClass, ScoredRun
from distill.workspace import Workspace, partition_path

BASE_TIME = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# Credentials as detect-secrets' own plugin tests write them, plus the usual planted ones.
AWS_KEY = "AKIAZZZZZZZZZZZZZZZZ"
GITHUB_TOKEN = "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"
SLACK_TOKEN = "xoxb-34532454-e039d02840a0b9379c"
STRIPE_KEY = "sk_live_ReTllpYQYfIZu2Jnf2lAPFjD"
PRIVATE_KEY_BLOCK = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "c3VwZXIgZHVwZXIgc2VjcmV0IHBhc3N3b3JkLCBzdXBlciBkdXBlciBzZWNyZXQgcGFzc3\n"
    "-----END RSA PRIVATE KEY-----"
)
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
PLANTED = [AWS_KEY, GITHUB_TOKEN, SLACK_TOKEN, STRIPE_KEY, "BEGIN RSA PRIVATE KEY", AWS_SECRET]


@dataclass
class Row:
    """One evidence row and its score."""

    run_id: str
    task_id: str
    source: str
    category: Category
    text: str
    score_class: ScoreClass = ScoreClass.VERDICT
    role: ModelRole = ModelRole.EXECUTOR
    instruction: str | None = None
    source_files: list[str] = field(default_factory=list)
    revision: int = 0
    minutes: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    def source_row(self) -> dict[str, Any]:
        return {"id": self.run_id, "rev": self.revision, "text": self.text, "task": self.task_id,
                "files": self.source_files}

    def evidence(self, line_number: int) -> EvidenceRecord:
        created = BASE_TIME + timedelta(minutes=self.minutes)
        return EvidenceRecord(
            run_id=self.run_id,
            task_id=self.task_id,
            source=self.source,
            score_class=self.score_class,
            model_role=self.role,
            model_name="test-model",
            text=self.text,
            instruction=self.instruction,
            source_files=self.source_files,
            metadata=self.metadata,
            created_at=created,
            provenance=Provenance(
                source_file=f"_kb/{self.source}.jsonl",
                line_offset=(line_number - 1) * 100,
                line_number=line_number,
                sig_hash=sig_hash(self.source_row()),
                recorded_at=created,
            ),
        )

    def scored(self, ev: EvidenceRecord) -> ScoredRun:
        return ScoredRun(
            evidence_run_id=ev.run_id,
            task_id=ev.task_id,
            source=ev.source,
            category=self.category,
            reasons=[f"test: {self.category.value}"],
            score_class=self.score_class,
            scorer_version="test-1",
            created_at=ev.created_at,
            provenance=ev.provenance,
        )


def write_rows(ws: Workspace, rows: list[Row], *, score: bool = True) -> list[EvidenceRecord]:
    """Evidence and scored runs for `rows`, partitioned by created_at like collect/score do."""
    out: list[EvidenceRecord] = []
    for n, row in enumerate(rows, start=1):
        ev = row.evidence(n)
        append_json(partition_path(ws.evidence_dir, ev.created_at, ev.source), [ev.to_json_dict()])
        if score:
            sc = row.scored(ev)
            append_json(partition_path(ws.scored_dir, sc.created_at, sc.source), [sc.to_json_dict()])
        out.append(ev)
    return out


def append_raw_scored(ws: Workspace, source: str, lines: list[bytes], *, torn_tail: bytes | None = None) -> Path:
    """Raw (possibly broken) lines into a scored-run partition."""
    path = partition_path(ws.scored_dir, BASE_TIME, source)
    append_lines(path, lines)
    if torn_tail is not None:
        with open(path, "ab") as fh:  # a crash mid-write: deliberately not through append_lines
            fh.write(torn_tail)
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    from distill.jsonl import iter_json

    return list(iter_json(path))


# ---------------------------------------------------------------------------------------------
# the generated adversarial workspace

BENCH_TASK = (
    "Given the following configuration loader, identify the exact line where the retry budget is reset "
    "incorrectly after a partial failure and explain why the exponential backoff never reaches its ceiling"
)


def review_text(file: str, finding: str, extra: str = "") -> str:
    return (
        f"# Review: `{file}`\n\n## Findings\n\n1. {finding} — severity: medium\n\n"
        f"- Verify the fix in `{file}` with a unit test.\n- Check the error path returns early.\n{extra}"
    )


@dataclass
class Adversarial:
    ws: Workspace
    repo: Path
    bench: Path
    rows: list[Row]
    scored_lines: int  # every scored-run line written (the rows in of each exporter)
    expect: dict[str, str]  # run_id -> the reason some exporter must quarantine it with


def build_adversarial(tmp: Path) -> Adversarial:
    """A workspace full of rows each exporter must refuse, next to rows it must ship."""
    import os

    ws = Workspace(tmp / "ws")
    ws.root.mkdir(parents=True)
    repo = tmp / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "docs").mkdir()
    for rel in ("src/app.py", "src/util.py", "src/store.py", "docs/guide.md"):
        (repo / rel).write_text("# real file\n")
    outside = tmp / "outside_secret.txt"
    outside.write_text("not yours\n")
    os.symlink(outside, repo / "src" / "escape.py")
    bench = tmp / "bench.jsonl"
    bench.write_text('{"task_id": "B-1", "question": "%s"}\n' % BENCH_TASK)

    A, P, R, H = Category.ACCEPTED, Category.PARTIALLY_ACCEPTED, Category.REJECTED, Category.NEEDS_HUMAN_REVIEW
    S = "scrum_reviews"
    rows: list[Row] = []
    expect: dict[str, str] = {}

    def add(run_id: str, task: str, cat: Category, text: str, *, expect_reason: str | None = None, **kw: Any) -> None:
        rows.append(Row(run_id=run_id, task_id=task, source=kw.pop("source", S), category=cat, text=text,
                        minutes=len(rows), **kw))
        if expect_reason:
            expect[run_id] = expect_reason

    # a normal task: accepted, rejected, partial
    add("sr-app-1", "review:src/app.py", A, review_text("src/app.py", "Unchecked None in handler"),
        source_files=["src/app.py"])
    add("sr-app-2", "review:src/app.py", R, review_text("src/app.py", "Claims a race that cannot happen"),
        source_files=["src/app.py"])
    add("sr-app-3", "review:src/app.py", P, review_text("src/app.py", "Right bug, wrong patch"),
        source_files=["src/app.py"])
    # a hot task: 4 accepted x 3 rejected = 12 candidate pairs, capped at 5
    for k in range(4):
        add(f"sr-hot-a{k}", "review:src/store.py", A, review_text("src/store.py", f"Accepted finding {k}"),
            source_files=["src/store.py"])
    for k in range(3):
        add(f"sr-hot-r{k}", "review:src/store.py", R, review_text("src/store.py", f"Rejected finding {k}"),
            source_files=["src/store.py"])
    # two revisions of one run: accepted then rejected -> only a self-pair is possible
    add("sr-self", "review:self", A, "Revision one of the run, accepted.", revision=0, expect_reason="self_pairing")
    add("sr-self", "review:self", R, "Revision two of the run, rejected.", revision=1)
    # identical texts across categories
    add("sr-same-a", "review:same", A, "Exactly the same words.", expect_reason="invalid_preference_pairing")
    add("sr-same-r", "review:same", R, "Exactly the same words.")
    # credentials (all accepted: only the secret gate stands in their way)
    planted = {
        "sec-aws": f"Found the key {AWS_KEY} in the config loader.",
        "sec-gh": f"export GITHUB_TOKEN={GITHUB_TOKEN}",
        "sec-pk": f"The deploy script embeds a key:\n{PRIVATE_KEY_BLOCK}\nRemove it.",
        "sec-slack": f"webhook token {SLACK_TOKEN} is hard-coded",
        "sec-stripe": f'stripe.api_key = "{STRIPE_KEY}"',
        "sec-pragma": f"aws_access_key_id = {AWS_KEY}  # pragma: allowlist secret",
        "sec-unquoted": f"aws_secret_access_key={AWS_SECRET}",
    }
    for run_id, text in planted.items():
        add(run_id, f"task:{run_id}", A, text, expect_reason="secret_detected")
    add("sec-rej", "task:sec-rej", R, f"rejected and leaking {GITHUB_TOKEN}")
    add("sec-task", f"deploy:{STRIPE_KEY}", A, "A clean answer; the task id carries the credential.",
        expect_reason="secret_detected")
    # cited files
    add("path-escape", "task:path-escape", A, "Look at ../../etc/passwd for the users.",
        expect_reason="hallucinated_file_path")
    add("path-abs", "task:path-abs", A, "Reviewed the system file.", source_files=["/etc/passwd"],
        expect_reason="hallucinated_file_path")
    add("path-missing", "task:path-missing", A, "The bug is in src/missing_module.py line 3.",
        expect_reason="hallucinated_file_path")
    add("path-symlink", "task:path-symlink", A, "Reviewed the escape hatch.", source_files=["src/escape.py"],
        expect_reason="hallucinated_file_path")
    add("path-ok", "task:path-ok", A,
        "--- a/src/util.py\n+++ b/src/util.py\n@@ -1 +1 @@\n-x\n+y\nSee docs/guide.md for context.",
        source_files=["src/util.py"])
    # benchmark contamination
    add("contam", "task:contam", A, f"Solution notes. {BENCH_TASK}. The answer is line 42.",
        expect_reason="eval_contamination")
    # unreviewed, extraction-class, empty
    add("nhr-1", "task:nhr", H, "A claim nobody checked yet.", score_class=ScoreClass.EXTRACTION,
        role=ModelRole.EXTRACTOR, source="distilled_facts")
    add("fact-acc", "review:src/app.py", A, "Facts: the handler in src/app.py retries three times.",
        score_class=ScoreClass.EXTRACTION, role=ModelRole.EXTRACTOR, source="distilled_facts")
    add("empty-acc", "task:empty", A, "   ")
    # cross-source disagreement on one question (different tasks, same instruction)
    add("sr-util", "review:src/util.py", A, review_text("src/util.py", "Off-by-one in the slicer"),
        source_files=["src/util.py"], instruction="Review src/util.py for defects and give the fix.")
    add("obs-util", "audit:src/util.py", R, "Critical: src/util.py slices past the end of the buffer.",
        source="audits", role=ModelRole.REVIEWER, source_files=["src/util.py"],
        instruction="Review src/util.py for defects and give the fix.")
    # two answers about one file that answered different questions: never a pair
    add("sr-other", "review:src/util2.py", A, review_text("src/util.py", "Slicer bounds"),
        source_files=["src/util.py"], instruction="Review src/util.py for style.")

    evidence = write_rows(ws, rows)
    scored_lines = len(rows)
    # a duplicated scored line (same revision scored twice)
    dup = rows[0].scored(evidence[0])
    append_json(partition_path(ws.scored_dir, dup.created_at, dup.source), [dup.to_json_dict()])
    scored_lines += 1
    expect["sr-app-1#dup"] = "duplicate_id"
    # a score with no evidence behind it
    ghost = Row("ghost-run", "task:ghost", S, A, "never collected", minutes=500)
    gev = ghost.evidence(999)
    append_json(partition_path(ws.scored_dir, gev.created_at, S), [ghost.scored(gev).to_json_dict()])
    scored_lines += 1
    expect["ghost-run"] = "missing_source_run_id"
    # broken scored lines
    no_prov = rows[0].scored(evidence[0]).to_json_dict()
    no_prov.pop("provenance")
    import orjson

    append_raw_scored(ws, S, [b"{not json", orjson.dumps(no_prov)], torn_tail=b'{"evidence_run_id": "torn')
    scored_lines += 3
    return Adversarial(ws=ws, repo=repo, bench=bench, rows=rows, scored_lines=scored_lines, expect=expect)


def adversarial_settings(adv: Adversarial, **export: Any) -> Any:
    from distill.config import ExportSettings, Settings

    return Settings(export=ExportSettings(repo_root=adv.repo, benchmark_files=[adv.bench], **export))


def sample_scored(root: Path, *export_kinds: str) -> Workspace:
    """The sample workspace at `root`, collected and scored by the real stages, then exported for
    each kind given (each export must pass its firewall)."""
    from distill.cli.init_cmd import init_workspace
    from distill.collect import run_collect
    from distill.config import Settings
    from distill.export.run import run_export
    from distill.score import run_score

    init_workspace(root, sample=True)
    ws = Workspace.resolve(root)
    run_collect(ws, Settings())
    run_score(ws, Settings())
    for kind in export_kinds:
        report = run_export(ws, Settings(), kind)  # type: ignore[arg-type]
        assert not report.violations, report.violations
    return ws
