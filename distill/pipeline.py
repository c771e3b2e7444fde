"""`distill run`: every stage in order under one run id, with receipts, resume and drift.

Order: collect -> score -> export-rag -> export-sft -> export-preference -> index.

Resume: before a stage runs, its inputs (discovered from the workspace, plus every input its
last successful receipt recorded), the config sections it reads, its code version and a
fingerprint of its source files are compared with that receipt, and so are its outputs on disk.
All equal -> the stage is skipped and a receipt saying so (and which receipt it reuses) is
written. Any difference -> it runs. Outputs that changed on disk while everything else matched
are a determinism finding (tampering, or a write outside `distill run`), never accepted quietly.

Stop-on-failure: a stage that raises or fails validation stops the stages after it (they would
read stale data) unless continue_on_failure is set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import Timeout

from distill import __version__
from distill.config import Settings, config_hash
from distill.drift import compute_drift
from distill.errors import DistillError
from distill.hashing import canonical_json, sha256_hex
from distill.jsonl import lock_for
from distill.receipts import (
    ReceiptBasis,
    build_receipt,
    check_counts,
    check_firewall,
    check_jsonl_integrity,
    DigestCache,
    code_fingerprint,
    count_categories,
    digest_path,
    digest_paths,
    digest_tree_listing,
    git_info,
    last_successful_receipt,
    latest_run_id,
    load_summary,
    new_run_id,
    now_utc,
    receipt_path,
    rel_path,
    run_dir,
    validation_result,
    write_latest,
    write_model,
)
from distill.records.receipts import (
    DeterminismFinding,
    DriftReport,
    FileDigest,
    GitInfo,
    ResumeDecision,
    ReuseRef,
    RunSummary,
    StageReceipt,
    StageSummary,
    StopInfo,
    run_hash,
)
from distill.records.stage import StageReport
from distill.workspace import Workspace, iter_partition_files

EXPORT_KINDS = ("rag", "sft", "preference")
CARD_NAME = "README.md"
CARD_OWNER = "preference"
FIREWALL_NOTE = "firewall violation: "
# Config sections no pipeline stage reads; every other section not claimed below is assumed to
# matter to every stage (a new section reruns stages rather than being silently ignored).
NON_PIPELINE_SECTIONS = frozenset({"runtime", "gate", "drift"})
KNOWN_SECTIONS = frozenset({"collect", "sources", "score", "export", "index"}) | NON_PIPELINE_SECTIONS
MAX_LISTED = 5

EventHook = Callable[[str, str, str], None]
"""on_event(kind, stage, detail): kind is start | skip | done | fail | unavailable | not_run."""


class StageUnavailable(Exception):
    """An optional stage whose code is not installed (index without its extra)."""


@dataclass(frozen=True)
class StageSpec:
    """How the pipeline runs one stage and where that stage reads and writes."""

    name: str
    run: Callable[[Workspace, Settings], StageReport]
    inputs: Callable[[Workspace, Settings], list[Path]]
    outputs: Callable[[Workspace, Settings], list[Path]]
    config_sections: tuple[str, ...]
    packages: tuple[str, ...] = ("distill",)
    version: Callable[[Settings], str] = field(default=lambda s: f"distill {__version__}")
    tree_inputs: Callable[[Workspace, Settings], list[Path]] = field(default=lambda ws, s: [])
    check: Callable[[Workspace], list[str]] | None = None
    categorize: Callable[[Workspace, list[FileDigest]], dict[str, int]] | None = None
    keep_output: Callable[[str], bool] = field(default=lambda p: True)
    available: Callable[[], bool] = field(default=lambda: True)
    rerun_reason: Callable[[Workspace, Settings], str | None] = field(default=lambda ws, s: None)
    """A reason to rerun that receipts cannot see (state outside the tracked outputs)."""


# ---------------------------------------------------------------- default stages


def _kb_files(ws: Workspace, settings: Settings) -> list[Path]:
    if not ws.kb_dir.is_dir():
        return []
    return sorted(p for p in ws.kb_dir.rglob("*") if p.is_file() and not p.name.endswith((".lock", ".tmp")))


def _evidence(ws: Workspace, settings: Settings) -> list[Path]:
    return iter_partition_files(ws.evidence_dir)


def _scored(ws: Workspace, settings: Settings) -> list[Path]:
    return iter_partition_files(ws.scored_dir)


def _files_under(base: Path) -> list[Path]:
    if not base.is_dir():
        return []
    return sorted(p for p in base.rglob("*") if p.is_file() and not p.name.endswith((".lock", ".tmp")) and not p.name.startswith("."))


def _run_collect(ws: Workspace, settings: Settings) -> StageReport:
    from distill.collect import run_collect

    return run_collect(ws, settings)


def _run_score(ws: Workspace, settings: Settings) -> StageReport:
    from distill.score import run_score

    return run_score(ws, settings)


def _export_runner(kind: str) -> Callable[[Workspace, Settings], StageReport]:
    def run(ws: Workspace, settings: Settings) -> StageReport:
        from distill.export import run_export

        return run_export(ws, settings, kind)  # type: ignore[arg-type]

    return run


def _export_inputs(ws: Workspace, settings: Settings) -> list[Path]:
    extra = [ws.absolute(str(p)) for p in settings.export.benchmark_files]
    return _evidence(ws, settings) + _scored(ws, settings) + extra


def _export_trees(ws: Workspace, settings: Settings) -> list[Path]:
    root = settings.export.repo_root
    return [ws.absolute(str(root))] if root is not None else []


def _export_outputs(kind: str) -> Callable[[Workspace, Settings], list[Path]]:
    def outputs(ws: Workspace, settings: Settings) -> list[Path]:
        found = _files_under(ws.exports_dir / kind)
        extra = [ws.quarantine_path(kind)]
        if kind == CARD_OWNER:
            extra.append(ws.exports_dir / CARD_NAME)
        return found + [p for p in extra if p.exists()]

    return outputs


def _export_keep_output(kind: str) -> Callable[[str], bool]:
    # The dataset card is rewritten by every exporter from all three exports; it belongs to the
    # last one, so the earlier ones do not see it "modified" by their successors.
    card = f"exports/{CARD_NAME}"

    def keep(path: str) -> bool:
        return path != card or kind == CARD_OWNER

    return keep


_EXPORT_CATEGORY: dict[str, Callable[[dict[str, Any]], Any]] = {
    "rag": lambda row: row.get("success_score"),
    "sft": lambda row: row.get("quality_score"),
    "preference": lambda row: f"{row.get('chosen_category')}>{row.get('rejected_category')}",
}


def _export_categorize(kind: str) -> Callable[[Workspace, list[FileDigest]], dict[str, int]]:
    def categorize(ws: Workspace, outputs: list[FileDigest]) -> dict[str, int]:
        native = ws.relative({"rag": ws.rag_path, "sft": ws.sft_path, "preference": ws.preference_path}[kind])
        return count_categories(ws, outputs, _EXPORT_CATEGORY[kind], under=native)

    return categorize


def _index_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("index.build") is not None
    except (ImportError, ValueError):
        return False


def _run_index(ws: Workspace, settings: Settings) -> StageReport:
    try:
        from index.build import run_index
    except ModuleNotFoundError as exc:
        if exc.name in ("index", "index.build"):
            raise StageUnavailable("index.build is not installed") from exc
        raise
    result: Any = run_index(ws, settings)
    report = getattr(result, "stage_report", result)
    if not isinstance(report, StageReport):
        raise TypeError(f"run_index returned {type(result).__name__}, not a report with .stage_report")
    return report


INDEX_TRACKED = ("manifest.json", "bm25")


def _index_outputs(ws: Workspace, settings: Settings) -> list[Path]:
    return [p for p in (ws.index_dir / name for name in INDEX_TRACKED) if p.exists()]


def _index_store_missing(ws: Workspace, settings: Settings) -> str | None:
    """The Chroma files are not tracked (see below), so a deleted embedded store would let the
    stage skip on an unchanged manifest; a missing store is a reason to rerun."""
    if settings.index.chroma_url is None and not (ws.index_dir / "chroma").is_dir():
        return "the embedded Chroma store (index/chroma) is missing"
    return None


def _index_keep_output(path: str) -> bool:
    # The Chroma store's own files change when it is merely opened (and live on a server with
    # --chroma-url); the manifest (model, settings, a content hash per id) is the deterministic
    # account of what it holds, next to the BM25 folder.
    return not path.startswith("index/") or path in {f"index/{name}" for name in INDEX_TRACKED}


def _quarantine(stage: str) -> Callable[[Workspace, Settings], list[Path]]:
    def outputs(ws: Workspace, settings: Settings) -> list[Path]:
        q = ws.quarantine_path(stage)
        return [q] if q.exists() else []

    return outputs


def default_stages(*, include_index: bool = True) -> list[StageSpec]:
    stages = [
        StageSpec(
            name="collect",
            run=_run_collect,
            inputs=_kb_files,
            outputs=lambda ws, s: _evidence(ws, s) + _quarantine("collect")(ws, s),
            config_sections=("collect", "sources"),
            categorize=lambda ws, outs: count_categories(ws, outs, "model_role", under="evidence/"),
        ),
        StageSpec(
            name="score",
            run=_run_score,
            inputs=_evidence,
            outputs=lambda ws, s: _scored(ws, s) + _quarantine("score")(ws, s),
            config_sections=("score",),
            version=lambda s: f"distill {__version__}; scorer {s.score.scorer_version}",
            categorize=lambda ws, outs: count_categories(ws, outs, "category", under="scored-runs/"),
        ),
    ]
    for kind in EXPORT_KINDS:
        stage = f"export-{kind}"
        stages.append(
            StageSpec(
                name=stage,
                run=_export_runner(kind),
                inputs=_export_inputs,
                tree_inputs=_export_trees,
                outputs=_export_outputs(kind),
                keep_output=_export_keep_output(kind),
                config_sections=("export",),
                check=lambda ws, stage=stage: check_firewall(ws, stage),
                categorize=_export_categorize(kind),
            )
        )
    if include_index:
        stages.append(
            StageSpec(
                name="index",
                run=_run_index,
                inputs=lambda ws, s: [ws.rag_path] if ws.rag_path.exists() else [],
                outputs=_index_outputs,
                rerun_reason=_index_store_missing,
                config_sections=("index",),
                packages=("distill", "index"),
                keep_output=_index_keep_output,
                available=_index_available,
            )
        )
    return stages


# ---------------------------------------------------------------- pure decisions


def stage_config_hash(settings: Settings, sections: Iterable[str]) -> str:
    dumped = settings.model_dump(mode="json")
    wanted = set(sections) | {k for k in dumped if k not in KNOWN_SECTIONS}
    return sha256_hex(canonical_json({k: dumped.get(k) for k in sorted(wanted)}))


def _diff(before: list[FileDigest], after: list[FileDigest]) -> tuple[list[str], list[str], list[str]]:
    b = {d.path: d.sha256 for d in before}
    a = {d.path: d.sha256 for d in after}
    added = sorted(set(a) - set(b))
    removed = sorted(set(b) - set(a))
    changed = sorted(p for p in set(a) & set(b) if a[p] != b[p])
    return added, removed, changed


def _listed(paths: list[str]) -> str:
    more = f" (+{len(paths) - MAX_LISTED} more)" if len(paths) > MAX_LISTED else ""
    return ", ".join(paths[:MAX_LISTED]) + more


def decide_resume(
    previous: StageReceipt | None,
    basis: ReceiptBasis,
    inputs: list[FileDigest],
    outputs: list[FileDigest],
    *,
    force: bool,
    compare_fingerprint: bool = True,
) -> tuple[ResumeDecision, list[DeterminismFinding]]:
    """Skip only when inputs, config, code and outputs all equal the last successful receipt's.

    Also returns output_modified findings: outputs differ on disk although inputs, config and
    code are the ones that receipt vouched for.
    """
    if previous is None:
        reasons = ["--force"] if force else []
        return ResumeDecision(action="ran", forced=force, reasons=reasons + ["no earlier successful receipt"]), []
    reasons: list[str] = []
    if previous.config_hash != basis.config_hash:
        reasons.append("config changed")
    if previous.code_version != basis.code_version:
        reasons.append(f"code version changed ({previous.code_version} -> {basis.code_version})")
    if compare_fingerprint and previous.code_fingerprint != basis.code_fingerprint:
        reasons.append("code changed (source fingerprint differs)")
    added, removed, changed = _diff(previous.inputs, inputs)
    inputs_same = not (added or removed or changed)
    for label, paths in (("new inputs", added), ("inputs gone", removed), ("inputs changed", changed)):
        if paths:
            reasons.append(f"{label}: {_listed(paths)}")
    o_added, o_removed, o_changed = _diff(previous.outputs, outputs)
    findings: list[DeterminismFinding] = []
    if o_added or o_removed or o_changed:
        parts = [f"{label}: {_listed(paths)}" for label, paths in (("unrecorded outputs", o_added), ("outputs missing", o_removed), ("outputs modified", o_changed)) if paths]
        reasons.append(f"outputs differ from receipt of run {previous.run_id} ({'; '.join(parts)})")
        if inputs_same and not any(r.startswith(("config", "code")) for r in reasons):
            before = {d.path: d.sha256 for d in previous.outputs}
            after = {d.path: d.sha256 for d in outputs}
            # a deleted output is simply rebuilt; an added or altered one is what must not pass quietly
            for path in o_added + o_changed:
                findings.append(
                    DeterminismFinding(
                        stage=previous.stage,
                        kind="output_modified",
                        path=path,
                        expected_sha256=before.get(path),
                        found_sha256=after.get(path),
                        reference_run_id=previous.run_id,
                        detail="output on disk differs from its receipt while inputs, config and code are unchanged "
                        "(modified outside `distill run`)",
                    )
                )
    if force:
        return ResumeDecision(action="ran", forced=True, reference_run_id=previous.run_id, reasons=["--force", *reasons]), findings
    if reasons:
        return ResumeDecision(action="ran", reference_run_id=previous.run_id, reasons=reasons), findings
    return (
        ResumeDecision(
            action="skipped",
            reference_run_id=previous.run_id,
            reasons=[f"inputs, config, code and outputs unchanged since run {previous.run_id}"],
        ),
        [],
    )


def rerun_findings(
    previous: StageReceipt | None, receipt: StageReceipt, *, compare_fingerprint: bool = True
) -> list[DeterminismFinding]:
    """After a rerun on the same inputs/config/code as a trusted receipt: did outputs change?"""
    if previous is None or receipt.error is not None:
        return []
    same_basis = (
        previous.inputs_hash == receipt.inputs_hash
        and previous.config_hash == receipt.config_hash
        and previous.code_version == receipt.code_version
        and (not compare_fingerprint or previous.code_fingerprint == receipt.code_fingerprint)
    )
    if not same_basis or previous.outputs_hash == receipt.outputs_hash:
        return []
    added, removed, changed = _diff(previous.outputs, receipt.outputs)
    before = {d.path: d.sha256 for d in previous.outputs}
    after = {d.path: d.sha256 for d in receipt.outputs}
    return [
        DeterminismFinding(
            stage=receipt.stage,
            kind="rerun_output_differs",
            path=path,
            expected_sha256=before.get(path),
            found_sha256=after.get(path),
            reference_run_id=previous.run_id,
            detail="rerun on identical inputs, config and code produced a different output",
        )
        for path in added + removed + changed
    ]


# ---------------------------------------------------------------- running


@dataclass
class RunResult:
    summary: RunSummary
    drift: DriftReport
    run_dir: Path
    summary_md: Path
    receipts: list[StageReceipt]

    @property
    def exit_code(self) -> int:
        """1 when a stage failed or drift raised an alert (the user must look), else 0."""
        return 0 if self.summary.overall_passed and self.drift.severity != "alert" else 1


def _digest_inputs(
    ws: Workspace, spec: StageSpec, settings: Settings, also: Iterable[FileDigest], exclude: set[str], cache: DigestCache
) -> list[FileDigest]:
    paths = list(spec.inputs(ws, settings))
    trees = {ws.absolute(t).resolve().as_posix() for t in spec.tree_inputs(ws, settings)}
    for d in also:
        if d.kind == "tree":
            trees.add(d.path)
        else:
            paths.append(ws.absolute(d.path))
    digests = [d for d in digest_paths(ws, paths, cache) if d.path not in exclude]
    for tree in sorted(trees):
        if Path(tree).is_dir():
            digests.append(digest_tree_listing(Path(tree)))
    return sorted(digests, key=lambda d: d.path)


def _digest_outputs(
    ws: Workspace, spec: StageSpec, settings: Settings, also: Iterable[str], cache: DigestCache
) -> list[FileDigest]:
    paths = list(spec.outputs(ws, settings)) + [ws.absolute(p) for p in also]
    return [d for d in digest_paths(ws, paths, cache) if spec.keep_output(d.path)]


def _validate_run(ws: Workspace, spec: StageSpec, report: StageReport, outputs: list[FileDigest]) -> list[str]:
    errors = check_counts(report)
    if report.stage != spec.name:
        errors.append(f"stage_mismatch: the {spec.name} stage returned a report for {report.stage!r}")
    if report.dry_run:
        errors.append("stage_dry_run: the stage reported a dry run; nothing was written")
    present = {d.path for d in outputs}
    missing = sorted(p for p in report.outputs if spec.keep_output(p) and rel_path(ws, ws.absolute(p)) not in present)
    if missing:
        errors.append(f"output_missing: {_listed(missing)}")
    errors.extend(check_jsonl_integrity(ws, outputs))
    errors.extend(f"firewall_export: {n[len(FIREWALL_NOTE):]}" for n in report.notes if n.startswith(FIREWALL_NOTE))
    if spec.check is not None:
        errors.extend(spec.check(ws))
    return errors


def _summary_line(receipt: StageReceipt, ws: Workspace) -> StageSummary:
    return StageSummary(
        stage=receipt.stage,
        status=receipt.status,
        passed=receipt.passed,
        receipt=ws.relative(receipt_path(ws, receipt.run_id, receipt.stage)),
        content_hash=receipt.content_hash,
        inputs_hash=receipt.inputs_hash,
        outputs_hash=receipt.outputs_hash,
        config_hash=receipt.config_hash,
        code_version=receipt.code_version,
        code_fingerprint=receipt.code_fingerprint,
        outputs=receipt.outputs,
        totals=receipt.totals,
        by_source=receipt.by_source,
        output_categories=receipt.output_categories,
        errors=receipt.validation.errors,
        error_codes=receipt.validation.codes,
        error=receipt.error,
        reused_from=receipt.reused.run_id if receipt.reused else None,
        determinism=receipt.determinism,
        duration_s=receipt.duration_s,
        note="; ".join(receipt.resume.reasons) or None,
    )


def _run_stage(
    ws: Workspace,
    settings: Settings,
    spec: StageSpec,
    *,
    run_id: str,
    git: GitInfo,
    full_hash: str,
    fingerprints: dict[tuple[str, ...], str],
    cache: DigestCache,
    force: bool,
    emit: EventHook,
) -> StageReceipt | None:
    """Run or skip one stage; returns its (written) receipt, or None when it is unavailable."""
    if not spec.available():
        emit("unavailable", spec.name, "stage code not installed")
        return None
    if spec.packages not in fingerprints:
        fingerprints[spec.packages] = code_fingerprint(spec.packages)
    basis = ReceiptBasis(
        config_hash=stage_config_hash(settings, spec.config_sections),
        full_config_hash=full_hash,
        code_version=spec.version(settings),
        code_fingerprint=fingerprints[spec.packages],
    )
    found = last_successful_receipt(ws, spec.name, exclude_run=run_id)
    previous, previous_path = found if found else (None, None)
    started_at = now_utc()
    t0 = time.perf_counter()
    pre_outputs = _digest_outputs(ws, spec, settings, [d.path for d in previous.outputs] if previous else [], cache)
    exclude = {d.path for d in pre_outputs}
    pre_inputs = _digest_inputs(ws, spec, settings, previous.inputs if previous else [], exclude, cache)
    decision, findings = decide_resume(
        previous, basis, pre_inputs, pre_outputs, force=force, compare_fingerprint=settings.drift.rerun_on_code_change
    )
    if decision.action == "skipped" and (why := spec.rerun_reason(ws, settings)):
        decision = ResumeDecision(action="ran", reference_run_id=decision.reference_run_id, reasons=[why])

    if decision.action == "skipped" and previous is not None and previous_path is not None:
        origin = previous.reused.origin_run_id if previous.reused else previous.run_id
        reused = ReuseRef(
            run_id=previous.run_id,
            receipt=ws.relative(previous_path),
            content_hash=previous.content_hash,
            origin_run_id=origin,
        )
        report = StageReport(stage=spec.name, totals=previous.totals, by_source=previous.by_source)
        report.notes.append(f"skipped: reuses receipt of run {previous.run_id} (stage ran in {origin})")
        receipt = build_receipt(
            run_id=run_id,
            stage=spec.name,
            status="skipped",
            git=git,
            basis=basis,
            inputs=previous.inputs,
            outputs=previous.outputs,
            report=report,
            output_categories=previous.output_categories,
            started_at=started_at,
            finished_at=now_utc(),
            duration_s=time.perf_counter() - t0,
            validation=previous.validation,
            error=None,
            resume=decision,
            reused=reused,
        )
        write_model(receipt_path(ws, run_id, spec.name), receipt)
        emit("skip", spec.name, decision.reasons[0])
        return receipt

    emit("start", spec.name, "; ".join(decision.reasons))
    error: str | None = None
    errors: list[str] = []
    try:
        report = spec.run(ws, settings)
    except StageUnavailable as exc:
        emit("unavailable", spec.name, str(exc))
        return None
    except Exception as exc:  # the orchestration boundary: any failure becomes a failed receipt
        error = f"{type(exc).__name__}: {exc}"
        errors.append(f"stage_raised: {error}")
        report = StageReport(stage=spec.name)
    finished_at = now_utc()
    duration = time.perf_counter() - t0
    outputs = _digest_outputs(ws, spec, settings, report.outputs, cache)
    out_paths = {d.path for d in outputs}
    known = {d.path for d in pre_inputs}
    late = [ws.absolute(p) for p in report.inputs if rel_path(ws, ws.absolute(p)) not in known]
    inputs = sorted(
        [d for d in pre_inputs if d.path not in out_paths]
        + [d for d in digest_paths(ws, late, cache) if d.path not in out_paths],
        key=lambda d: d.path,
    )
    categories: dict[str, int] = {}
    if error is None:
        errors.extend(_validate_run(ws, spec, report, outputs))
        if spec.categorize is not None:
            categories = spec.categorize(ws, outputs)
    receipt_args: dict[str, Any] = dict(
        run_id=run_id,
        stage=spec.name,
        status="ran",
        git=git,
        basis=basis,
        inputs=inputs,
        outputs=outputs,
        report=report,
        output_categories=categories,
        started_at=started_at,
        finished_at=finished_at,
        duration_s=duration,
        validation=validation_result(errors),
        error=error,
        resume=decision,
    )
    receipt = build_receipt(**receipt_args, determinism=findings)
    more = rerun_findings(previous, receipt, compare_fingerprint=settings.drift.rerun_on_code_change)
    rebuilt = previous is not None and bool({d.path for d in previous.outputs} - {d.path for d in pre_outputs})
    if more and rebuilt:
        # Outputs were deleted before this run, so the stage rebuilt them from scratch: a
        # difference is still reported (drift alert), but the rebuild becomes the new reference
        # instead of failing every later run. Deleting an output is the documented way out.
        receipt = build_receipt(**receipt_args, determinism=findings + more)
    elif more:
        # Same inputs, config and code as a trusted receipt, different output: the stage broke
        # determinism (or an append-only output kept a modification). Fail it, so the next run
        # checks against the trusted receipt again instead of adopting this output.
        paths = _listed([f.path or "?" for f in more])
        errors.append(
            f"determinism_violation: output differs from run {previous.run_id if previous else '?'} on identical "
            f"inputs, config and code: {paths} (if it was edited by hand, delete it and rerun to rebuild it)"
        )
        receipt_args["validation"] = validation_result(errors)
        receipt = build_receipt(**receipt_args, determinism=findings + more)
    write_model(receipt_path(ws, run_id, spec.name), receipt)
    if receipt.passed:
        emit("done", spec.name, f"{report.totals.rows_in} in, {report.totals.written} written, {report.totals.quarantined} quarantined")
    else:
        emit("fail", spec.name, receipt.validation.errors[0])
    return receipt


def _datasets(ws: Workspace, receipts: list[StageReceipt]) -> dict[str, int]:
    wanted = {
        ws.relative(ws.rag_path): "rag",
        ws.relative(ws.sft_path): "sft",
        ws.relative(ws.preference_path): "preference",
    }
    out: dict[str, int] = {}
    for r in receipts:
        for d in r.outputs:
            if d.path in wanted and d.records is not None:
                out[wanted[d.path]] = d.records
    return out


def execute_run(
    ws: Workspace,
    settings: Settings,
    *,
    force: bool = False,
    continue_on_failure: bool = False,
    include_index: bool = True,
    stages: list[StageSpec] | None = None,
    on_event: EventHook | None = None,
) -> RunResult:
    """Run the pipeline once and write every report; see the module docstring."""
    emit: EventHook = on_event or (lambda kind, stage, detail: None)
    specs = stages if stages is not None else default_stages(include_index=include_index)
    ws.reports_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = lock_for(ws.reports_dir / "run").acquire(timeout=0)
    except Timeout:
        raise DistillError(f"another `distill run` holds {ws.reports_dir / 'run.lock'}; wait for it to finish") from None
    with lock:
        return _execute_locked(ws, settings, specs, force=force, continue_on_failure=continue_on_failure, include_index=include_index, emit=emit)


def _execute_locked(
    ws: Workspace,
    settings: Settings,
    specs: list[StageSpec],
    *,
    force: bool,
    continue_on_failure: bool,
    include_index: bool,
    emit: EventHook,
) -> RunResult:
    started_at = now_utc()
    t0 = time.perf_counter()
    run_id = new_run_id(started_at)
    previous_id = latest_run_id(ws)
    previous = load_summary(ws, previous_id) if previous_id else None
    run_dir(ws, run_id).mkdir(parents=True, exist_ok=False)
    git = git_info()
    full_hash = config_hash(settings)
    fingerprints: dict[tuple[str, ...], str] = {}
    cache: DigestCache = {}

    receipts: list[StageReceipt] = []
    lines: list[StageSummary] = []
    stopped: StopInfo | None = None
    for spec in specs:
        if stopped is not None:
            lines.append(StageSummary(stage=spec.name, status="not_run", note=f"stopped: {stopped.stage} failed"))
            emit("not_run", spec.name, f"{stopped.stage} failed")
            continue
        receipt = _run_stage(
            ws, settings, spec, run_id=run_id, git=git, full_hash=full_hash, fingerprints=fingerprints, cache=cache,
            force=force, emit=emit,
        )
        if receipt is None:
            lines.append(StageSummary(stage=spec.name, status="unavailable", note="stage code not installed"))
            continue
        receipts.append(receipt)
        lines.append(_summary_line(receipt, ws))
        if not receipt.passed and not continue_on_failure:
            stopped = StopInfo(stage=spec.name, reason=receipt.validation.errors[0])

    finished_at = now_utc()
    passed = stopped is None and all(r.passed for r in receipts)
    summary = RunSummary(
        run_id=run_id,
        root=ws.root.as_posix(),
        previous_run_id=previous.run_id if previous else None,
        started_at=started_at,
        finished_at=finished_at,
        duration_s=round(time.perf_counter() - t0, 6),
        git=git,
        full_config_hash=full_hash,
        code_version=f"distill {__version__}",
        options={"force": force, "continue_on_failure": continue_on_failure, "include_index": include_index},
        stages=lines,
        stopped_by=stopped,
        overall_passed=passed,
        run_hash=run_hash([(s.stage, s.content_hash) for s in lines]),
        datasets=_datasets(ws, receipts),
    )
    drift = compute_drift(previous, summary, threshold_pct=settings.drift.threshold_pct)
    summary = summary.model_copy(update={"drift_severity": drift.severity})

    out_dir = run_dir(ws, run_id)
    write_model(out_dir / "drift.json", drift)
    write_model(out_dir / "summary.json", summary)
    from distill.report_md import write_summary_md

    summary_md = write_summary_md(ws, summary, drift)
    write_latest(ws, summary)
    return RunResult(summary=summary, drift=drift, run_dir=out_dir, summary_md=summary_md, receipts=receipts)


def run_pipeline(
    ws: Workspace,
    settings: Settings,
    *,
    force: bool = False,
    continue_on_failure: bool = False,
    include_index: bool = True,
    stages: list[StageSpec] | None = None,
    on_event: EventHook | None = None,
) -> RunSummary:
    """One `distill run` (for callers such as the demo that want only the summary)."""
    return execute_run(
        ws,
        settings,
        force=force,
        continue_on_failure=continue_on_failure,
        include_index=include_index,
        stages=stages,
        on_event=on_event,
    ).summary


def digest_of(ws: Workspace, path: Path) -> FileDigest | None:
    """Public helper (tests, tools): the digest a receipt would record for `path`."""
    return digest_path(ws, path)
