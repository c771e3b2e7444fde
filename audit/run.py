"""One audit: read the change, check it, remember what recurs, write the verdict's evidence."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from audit import checks, lessons
from audit.claims import ClaimKind, parse_claims
from audit.diff import parse_diff
from audit.findings import Finding, Severity, signature_of
from audit.gitrange import files_at, read_change, read_file_at, tree_mismatch
from audit.report import AuditReport, audits_row, verdict_of
from audit.testrun import TestRun, run_tests
from distill.config import Settings
from distill.errors import DistillError, IndexUnavailable
from distill.jsonl import append_json
from distill.workspace import Workspace
from index.hits import Searcher

LESSONS = "audit_lessons.jsonl"
AUDITS = "audits.jsonl"


def prior_reviews(ws: Workspace, settings: Settings, files: list[str], k: int = 2,
                  searcher: Searcher | None = None) -> tuple[list[Finding], str | None]:
    """Accepted reviews of the touched files from the index (hybrid search over the RAG export)."""
    if not files:
        return [], None
    if searcher is None:
        try:
            from index.search import open_searcher

            searcher = open_searcher(ws, settings)
        except DistillError as exc:  # no index is a note, not a failure of the audit
            return [], f"prior reviews not searched: {str(exc).splitlines()[0]}"
    found: list[Finding] = []
    for path in files[:10]:
        try:
            hits = searcher.search(f"review of {path}", k=k, mode="hybrid")
        except IndexUnavailable as exc:  # a store dropped by a rebuild, a Chroma server gone: a note, as no index is
            return found, f"prior reviews not searched from {path} on: {str(exc).splitlines()[0]}"
        for hit in hits:
            cited = hit.metadata.get("source_files") or []
            if path not in (cited if isinstance(cited, list) else [cited]) and path not in (hit.text or ""):
                continue
            found.append(Finding(check="prior_review", severity=Severity.INFO, title=f"earlier review of {path}",
                                 checked="the index (hybrid search over the RAG export)",
                                 found=f"{hit.title or hit.id}: {(hit.text or '').strip().splitlines()[0][:200] if hit.text else ''}",
                                 path=path, signature=signature_of("prior_review", hit.id)))
            break
    return found, None


def audit(ws: Workspace, settings: Settings, repo: Path, revision_range: str, *, message: str | None = None,
          use_model: bool = False, backend: str | None = None, record: bool = True, search: bool = True,
          searcher: Searcher | None = None) -> AuditReport:
    change = read_change(repo, revision_range)
    files = parse_diff(change.diff)
    messages = [message] if message is not None else change.messages
    claims = parse_claims("\n\n".join(messages))
    cfg = settings.audit
    notes: list[str] = []

    test_run: TestRun | None = None
    untested: str | None = None  # why a configured test command was not run
    if any(c.kind in (ClaimKind.TEST_COUNT, ClaimKind.ALL_TESTS) for c in claims) and cfg.test_command:
        # the tests run in the checkout: a claim about HEAD is never judged on another tree
        mismatch = tree_mismatch(repo, change.head)
        if mismatch is None:
            test_run = run_tests(cfg.test_command, repo, cfg.test_timeout_s)
        else:
            untested = mismatch

    sources = {f.path: text for f in files if f.path.endswith(".py") and not f.deleted and f.added
               if (text := read_file_at(repo, change.head, f.path)) is not None}
    findings = checks.placeholder_findings(files, settings.gate.placeholder_patterns, sources)
    repo_files = set(files_at(repo, change.head)) | set(files_at(repo, change.base))
    findings += checks.claim_findings(claims, files, test_run, repo_files, untested=untested)

    if use_model:
        from runtime.backends import make_backend
        from audit.model_pass import model_gaps

        rt = settings.runtime
        model = make_backend(backend or rt.backend, rt)  # type: ignore[arg-type]
        gaps, dropped, _ = model_gaps(model, messages, change.diff, max_tokens=rt.max_tokens, timeout=rt.timeout_s)
        findings += gaps
        notes.append(f"model pass ({model.name} / {model.model}): {len(gaps)} gap(s) kept, {dropped} dropped (quote not in the diff or messages)")

    if search:
        context, note = prior_reviews(ws, settings, [f.path for f in files if not f.deleted], searcher=searcher)
        findings += context
        if note:
            notes.append(note)

    lessons_path = ws.kb_dir / LESSONS
    findings += lessons.recurrence_findings(findings, change.range_key, lessons.earlier_ranges(lessons_path), cfg)
    verdict, code = verdict_of(findings)
    report = AuditReport(
        repo=str(repo.resolve()), range=change.range_key, base=change.base, head=change.head, verdict=verdict,
        exit_code=code, findings=findings, claims=claims, test_run=test_run, files=[f.path for f in files], notes=notes,
    )
    if record:
        ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        report.lessons_written = lessons.record(lessons_path, findings, change.range_key, ts)
        row = audits_row(report, ts, "distill audit" + (" + model" if use_model else ""))
        append_json(ws.kb_dir / AUDITS, [row])
        report.audit_row_id = row["finding_id"]
    return report
