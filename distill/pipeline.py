"""`distill run`: every registered stage in order under one run id, with receipts, resume and drift.

The stages (distill.stage.Stage, registered through entry points; see distill.plugins) own what
they read, write and count. This module only orders and runs them: a stage starts once the
stages it reads are done, beside others in worker processes when [run] jobs allows
(distill.stage_workers; see run_stages). For each stage:

1. plan: digest its inputs and outputs and decide, against its last successful receipt, whether
   it can be skipped (distill.resume);
2. skip: write a receipt that reuses the earlier one; or
3. execute: run it (any exception becomes a failed receipt, never a crash of the run);
4. validate: conservation, JSONL integrity, declared outputs present, firewall violations, and
   determinism against the trusted receipt; then write the receipt.

Stop-on-failure: after a stage that raises or fails validation no further stage starts (it
would read stale data; a stage already running beside it finishes) unless continue_on_failure
is set. Ctrl-C or SIGTERM abandons the stage in
progress: every output is written crash-safely, the workspace lock is released, and the next run
resumes.
"""

from __future__ import annotations

import multiprocessing.connection
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from distill import __version__
from distill.config import Settings, config_hash
from distill.drift import compute_drift
from distill.errors import StageUnavailable
from distill.fold_cache import FoldCache
from distill.receipts import (
    DigestCache,
    ReceiptBasis,
    build_receipt,
    check_counts,
    check_jsonl_integrity,
    code_fingerprint,
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
    vouched_outputs,
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
from distill.resume import decide_resume, listed, rerun_findings, stage_config_hash
from distill.stage import Stage
from distill.stage_workers import StageWorker, effective_jobs, run_guarded
from distill.workspace import Workspace

EventHook = Callable[[str, str, str], None]
"""on_event(kind, stage, detail): kind is start | skip | done | fail | unavailable | not_run."""


def pipeline_stages(*, include_index: bool = True) -> list[Stage]:
    """The registered stages in run order (`--no-index` leaves the index stage out)."""
    from distill.plugins import registered_stages

    return [s for s in registered_stages() if include_index or s.name != "index"]


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


@dataclass
class _RunContext:
    """What every stage of one run shares."""

    ws: Workspace
    settings: Settings
    run_id: str
    git: GitInfo
    full_hash: str
    force: bool
    emit: EventHook
    cache: DigestCache = field(default_factory=DigestCache)
    folds: FoldCache = field(default_factory=FoldCache)  # the receipts' line and category counts
    fingerprints: dict[tuple[str, ...], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # a grown output is hashed whole for its receipt, then its lines are checked and counted
        # from where the last count ended: the count takes the hash state there from the digest
        self.cache.cuts = self.folds.ends
        self.folds.prefix_state = self.cache.prefix_state
        self.folds.known_sha256 = self.cache.settled_sha256_of
        self.folds.known_xxh3 = self.cache.settled_xxh3_of  # an export's quarantine file, as it counted it

    def fingerprint(self, packages: tuple[str, ...]) -> str:
        if packages not in self.fingerprints:
            self.fingerprints[packages] = code_fingerprint(packages)
        return self.fingerprints[packages]

    @property
    def compare_fingerprint(self) -> bool:
        return self.settings.drift.rerun_on_code_change


@dataclass
class _Plan:
    """A stage's state before it runs, and whether it may be skipped."""

    basis: ReceiptBasis
    previous: StageReceipt | None
    previous_path: Path | None
    inputs: list[FileDigest]
    outputs: list[FileDigest]
    decision: ResumeDecision
    findings: list[DeterminismFinding]


# ---------------------------------------------------------------- digests


def _digest_inputs(ctx: _RunContext, stage: Stage, also: Iterable[FileDigest], exclude: set[str]) -> list[FileDigest]:
    ws, settings = ctx.ws, ctx.settings
    paths = list(stage.inputs(ws, settings))
    # a tree is named as other inputs are (relative to the root when inside it), so a moved
    # workspace still skips
    trees = {ws.relative(ws.absolute(str(t))) for t in stage.input_trees(ws, settings)}
    for d in also:
        if d.kind == "tree":
            trees.add(ws.relative(ws.absolute(d.path)))
        else:
            paths.append(ws.absolute(d.path))
    digests = [d for d in digest_paths(ws, paths, ctx.cache) if d.path not in exclude]
    for tree in sorted(trees):
        if ws.absolute(tree).is_dir():
            digests.append(digest_tree_listing(ws.absolute(tree), stored=tree))
    return sorted(digests, key=lambda d: d.path)


def _digest_outputs(ctx: _RunContext, stage: Stage, also: Iterable[str]) -> list[FileDigest]:
    paths = list(stage.outputs(ctx.ws, ctx.settings)) + [ctx.ws.absolute(p) for p in also]
    return [d for d in digest_paths(ctx.ws, paths, ctx.cache) if stage.tracks(d.path)]


# ---------------------------------------------------------------- the four steps


def plan_stage(ctx: _RunContext, stage: Stage) -> _Plan:
    """Digest what the stage would read and what it owns, and decide whether it may skip."""
    basis = ReceiptBasis(
        config_hash=stage_config_hash(ctx.settings, stage.config_sections),
        full_config_hash=ctx.full_hash,
        code_version=stage.version(ctx.settings),
        code_fingerprint=ctx.fingerprint(stage.packages),
    )
    found = last_successful_receipt(ctx.ws, stage.name, exclude_run=ctx.run_id)
    previous, previous_path = found if found else (None, None)
    outputs = _digest_outputs(ctx, stage, [d.path for d in previous.outputs] if previous else [])
    inputs = _digest_inputs(ctx, stage, previous.inputs if previous else [], {d.path for d in outputs})
    decision, findings = decide_resume(
        previous, basis, inputs, outputs, force=ctx.force, compare_fingerprint=ctx.compare_fingerprint,
        written_by_command=vouched_outputs(ctx.ws, stage.name),
    )
    if decision.action == "skipped" and (why := stage.rerun_reason(ctx.ws, ctx.settings)):
        decision = ResumeDecision(action="ran", reference_run_id=decision.reference_run_id, reasons=[why])
    return _Plan(basis, previous, previous_path, inputs, outputs, decision, findings)


def skip_stage(ctx: _RunContext, stage: Stage, plan: _Plan, t0: float, started_at: datetime) -> StageReceipt:
    """A receipt that stands on the earlier one: same inputs, config, code and outputs."""
    previous, previous_path = plan.previous, plan.previous_path
    assert previous is not None and previous_path is not None
    origin = previous.reused.origin_run_id if previous.reused else previous.run_id
    reused = ReuseRef(
        run_id=previous.run_id,
        receipt=ctx.ws.relative(previous_path),
        content_hash=previous.content_hash,
        origin_run_id=origin,
    )
    report = StageReport(stage=stage.name, totals=previous.totals, by_source=previous.by_source)
    report.notes.append(f"skipped: reuses receipt of run {previous.run_id} (stage ran in {origin})")
    receipt = build_receipt(
        run_id=ctx.run_id,
        stage=stage.name,
        status="skipped",
        git=ctx.git,
        basis=plan.basis,
        inputs=previous.inputs,
        outputs=previous.outputs,
        report=report,
        output_categories=previous.output_categories,
        started_at=started_at,
        finished_at=now_utc(),
        duration_s=time.perf_counter() - t0,
        validation=previous.validation,
        error=None,
        resume=plan.decision,
        reused=reused,
    )
    write_model(receipt_path(ctx.ws, ctx.run_id, stage.name), receipt)
    ctx.emit("skip", stage.name, plan.decision.reasons[0])
    return receipt


def execute_stage(ctx: _RunContext, stage: Stage) -> tuple[StageReport, str | None]:
    """Run the stage here; an exception is the stage's failure, reported as its error, not raised.
    (KeyboardInterrupt and Terminated are not exceptions of the stage: they stop the run.)"""
    return run_guarded(stage, ctx.ws, ctx.settings)


def validate_stage(ctx: _RunContext, stage: Stage, report: StageReport, outputs: list[FileDigest]) -> list[str]:
    """Everything that fails a stage that ran: counts, outputs, integrity, the firewall."""
    ws = ctx.ws
    errors = check_counts(report)
    if report.stage != stage.name:
        errors.append(f"stage_mismatch: the {stage.name} stage returned a report for {report.stage!r}")
    if report.dry_run:
        errors.append("stage_dry_run: the stage reported a dry run; nothing was written")
    present = {d.path for d in outputs}
    missing = sorted(p for p in report.outputs if stage.tracks(p) and rel_path(ws, ws.absolute(p)) not in present)
    if missing:
        errors.append(f"output_missing: {listed(missing)}")
    errors.extend(check_jsonl_integrity(ws, outputs, ctx.folds))
    errors.extend(v.message() for v in report.violations)
    return errors


def _ran_receipt(
    ctx: _RunContext, stage: Stage, plan: _Plan, report: StageReport, error: str | None, duration: float,
    started_at: datetime,
) -> StageReceipt:
    ws = ctx.ws
    finished_at = now_utc()
    outputs = _digest_outputs(ctx, stage, report.outputs)
    out_paths = {d.path for d in outputs}
    known = {d.path for d in plan.inputs}
    late = [ws.absolute(p) for p in report.inputs if rel_path(ws, ws.absolute(p)) not in known]
    inputs = sorted(
        [d for d in plan.inputs if d.path not in out_paths]
        + [d for d in digest_paths(ws, late, ctx.cache) if d.path not in out_paths],
        key=lambda d: d.path,
    )
    errors = [f"stage_raised: {error}"] if error else []
    categories: dict[str, int] = {}
    if error is None:
        # categories first: the line check then takes its counts from the same fold of each output
        categories = stage.output_categories(ws, outputs, ctx.folds)
        errors.extend(validate_stage(ctx, stage, report, outputs))
        ctx.folds.save()  # before the next stage: the dataset card's worker reads the counts
        ctx.cache.save(ws.digest_cache_path)  # and the digests of the exports it counts (~7 ms)

    def receipt(determinism: list[DeterminismFinding]) -> StageReceipt:
        return build_receipt(
            run_id=ctx.run_id, stage=stage.name, status="ran", git=ctx.git, basis=plan.basis,
            inputs=inputs, outputs=outputs, report=report, output_categories=categories,
            started_at=started_at, finished_at=finished_at, duration_s=duration,
            validation=validation_result(errors), error=error, resume=plan.decision, determinism=determinism,
        )

    built = receipt(plan.findings)
    previous = plan.previous
    # after a `distill export` with other flags the rerun is meant to differ from the last receipt
    more = ([] if plan.decision.outputs_by_command
            else rerun_findings(previous, built, compare_fingerprint=ctx.compare_fingerprint))
    rebuilt = previous is not None and bool({d.path for d in previous.outputs} - {d.path for d in plan.outputs})
    if more and not rebuilt:
        # Same inputs, config and code as a trusted receipt, different output: the stage broke
        # determinism (or an append-only output kept a modification). Fail it, so the next run
        # checks against the trusted receipt again instead of adopting this output.
        errors.append(
            f"determinism_violation: output differs from run {previous.run_id if previous else '?'} on identical "
            f"inputs, config and code: {listed([f.path or '?' for f in more])} "
            "(if it was edited by hand, delete it and rerun to rebuild it)"
        )
    # When outputs were deleted before this run, the stage rebuilt them from scratch: a difference
    # is still reported (drift alert) but the rebuild becomes the new reference instead of failing
    # every later run. Deleting an output is the documented way out.
    return receipt(plan.findings + more) if more else built


@dataclass
class _Started:
    """A stage planned to run: what its receipt needs once its work is done."""

    stage: Stage
    plan: _Plan
    started_at: datetime
    planning_s: float


def begin_stage(ctx: _RunContext, stage: Stage) -> StageReceipt | _Started | None:
    """Plan one stage: its skip receipt (written), a _Started to execute, or None when the stage
    cannot run in this installation."""
    why = stage.unavailable()
    if why:
        ctx.emit("unavailable", stage.name, why)
        return None
    started_at = now_utc()
    t0 = time.perf_counter()
    plan = plan_stage(ctx, stage)
    if plan.decision.action == "skipped" and plan.previous is not None:
        return skip_stage(ctx, stage, plan, t0, started_at)
    # the digests just taken of what the stage reads and owns, on disk before it runs: a stage
    # resuming from its checkpoints asks them instead of reading an unchanged file (score's
    # mirrors are first looked up here, after the last save)
    ctx.cache.save(ctx.ws.digest_cache_path)
    return _Started(stage, plan, started_at, time.perf_counter() - t0)


def finish_stage(ctx: _RunContext, started: _Started, outcome: tuple[StageReport, str | None],
                 work_s: float) -> StageReceipt:
    """Validate what the stage did and write its receipt. Its duration is its planning and its
    work: not the time it waited for a stage that ran beside it."""
    report, error = outcome
    stage, plan = started.stage, started.plan
    receipt = _ran_receipt(ctx, stage, plan, report, error, started.planning_s + work_s, started.started_at)
    write_model(receipt_path(ctx.ws, ctx.run_id, stage.name), receipt)
    if receipt.passed:
        # this receipt is the stage's reference now: what a command wrote before it is history
        ctx.ws.written_by_command_path(stage.name).unlink(missing_ok=True)
        t = report.totals
        ctx.emit("done", stage.name, f"{t.rows_in} in, {t.written} written, {t.quarantined} quarantined")
    else:
        ctx.emit("fail", stage.name, receipt.validation.errors[0])
    return receipt


def run_stage_started(ctx: _RunContext, started: _Started) -> StageReceipt | None:
    """Execute and validate a stage planned to run."""
    ctx.emit("start", started.stage.name, "; ".join(started.plan.decision.reasons))
    t_work = time.perf_counter()
    try:
        outcome = execute_stage(ctx, started.stage)
    except StageUnavailable as exc:
        ctx.emit("unavailable", started.stage.name, str(exc))
        return None
    return finish_stage(ctx, started, outcome, time.perf_counter() - t_work)


# ---------------------------------------------------------------- the run


@dataclass
class _Outcomes:
    """The receipts of a run's stages so far (None: unavailable here), and what stopped it."""

    receipts: dict[str, StageReceipt | None] = field(default_factory=dict)
    stopped: StopInfo | None = None


def run_stages(ctx: _RunContext, stages: list[Stage], *, continue_on_failure: bool) -> _Outcomes:
    """Every stage once its `after` stages are done. A stage starts as soon as it is ready and
    fewer than [run] jobs are running: in this process when nothing else could run beside it
    (jobs = 1, or it is the only stage ready and none is running) or when it reads less than
    [run] parallel_min_input_mib, else in a worker process (distill.stage_workers; one that
    finished a stage takes the next). Planning, validation and receipts are done here either way,
    so the outputs are those of a one-process run. After a failure no further stage starts (the
    ones running finish); Ctrl-C or SIGTERM stops the workers before the workspace lock is
    released."""
    done = _Outcomes()
    names = {s.name for s in stages}
    pending = list(stages)
    running: list[tuple[StageWorker, _Started]] = []
    idle: list[StageWorker] = []  # workers done with a stage, waiting for another
    jobs = effective_jobs(ctx.settings.run.jobs)
    threshold = ctx.settings.run.parallel_min_input_mib * 2**20

    def record(stage: Stage, receipt: StageReceipt | None) -> None:
        done.receipts[stage.name] = receipt
        if receipt is not None and not receipt.passed and not continue_on_failure and done.stopped is None:
            done.stopped = StopInfo(stage=stage.name, reason=receipt.validation.errors[0])

    try:
        while pending or running:
            if idle and (not pending or done.stopped):
                while idle:  # no stage left to hand them: end them now, not after the run's last receipt
                    idle.pop().close()
            ready = [] if done.stopped else [
                s for s in pending if all(d in done.receipts or d not in names for d in s.after)]
            if ready and len(running) < jobs:
                stage = ready[0]
                pending.remove(stage)
                begun = begin_stage(ctx, stage)
                if not isinstance(begun, _Started):
                    record(stage, begun)
                elif jobs == 1 or (not running and len(ready) == 1) or _input_bytes(ctx, stage) < threshold:
                    record(stage, run_stage_started(ctx, begun))
                else:
                    ctx.emit("start", stage.name, "; ".join([*begun.plan.decision.reasons, "in a worker process"]))
                    running.append((_worker_for(stage, idle, ctx), begun))
                continue
            if not running:
                break  # stopped: what is pending does not start
            at = _first_finished([w for w, _ in running])
            worker, begun = running[at]
            # popped only once its process is reaped: an interrupt before that still stops it
            try:
                outcome, elapsed = worker.outcome()
            except StageUnavailable as exc:
                running.pop(at)
                idle.append(worker)
                ctx.emit("unavailable", begun.stage.name, str(exc))
                record(begun.stage, None)
                continue
            running.pop(at)
            idle.append(worker)
            record(begun.stage, finish_stage(ctx, begun, outcome, elapsed))
    finally:
        for worker, _ in running:  # after Ctrl-C or SIGTERM: no worker outlives the workspace lock
            worker.stop()
        for worker in idle:
            worker.close()
    return done


def _worker_for(stage: Stage, idle: list[StageWorker], ctx: _RunContext) -> StageWorker:
    """An idle worker handed `stage` (its interpreter and imports reused), else a new one."""
    while idle:
        worker = idle.pop()
        if worker.give(stage):
            return worker
        worker.close()  # it has gone (killed while it waited): reaped, and another is started
    return StageWorker(stage, ctx.ws, ctx.settings)


def _first_finished(workers: list[StageWorker]) -> int:
    """The position of a worker that has sent its report or ended (blocks until one has)."""
    ready = multiprocessing.connection.wait([w.connection for w in workers])
    return next(i for i, w in enumerate(workers) if w.connection in ready)


def _input_bytes(ctx: _RunContext, stage: Stage) -> int:
    total = 0
    for path in stage.inputs(ctx.ws, ctx.settings):
        try:
            total += path.stat().st_size
        except OSError:
            continue  # a missing input is the stage's to report
    return total


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
        outputs_by_command=receipt.resume.outputs_by_command,
    )


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
    stages: list[Stage] | None = None,
    on_event: EventHook | None = None,
) -> RunResult:
    """Run the pipeline once and write every report; see the module docstring."""
    emit: EventHook = on_event or (lambda kind, stage, detail: None)
    chosen = stages if stages is not None else pipeline_stages(include_index=include_index)
    with ws.exclusive("run"):
        for stage in chosen:
            if stage.unavailable() is None:
                stage.check_usable(ws, settings)
        ws.reports_dir.mkdir(parents=True, exist_ok=True)
        return _execute_locked(ws, settings, chosen, force=force, continue_on_failure=continue_on_failure,
                               include_index=include_index, emit=emit)


def _execute_locked(
    ws: Workspace,
    settings: Settings,
    stages: list[Stage],
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
    # --force re-reads every file instead of trusting the digests the last run saved, and every
    # stage starts without the caches it keeps to save work
    cache = (DigestCache(clock=ws.clock_path) if force
             else DigestCache.load(ws.digest_cache_path, clock=ws.clock_path))
    if force:
        FoldCache.remove(ws.fold_cache_path)  # the receipts' and the card's line counts
        for stage in stages:
            for path in stage.caches(ws):
                path.unlink(missing_ok=True)
    ctx = _RunContext(ws=ws, settings=settings, run_id=run_id, git=git_info(), full_hash=config_hash(settings),
                      force=force, emit=emit, cache=cache, folds=FoldCache.load(ws.fold_cache_path))

    outcomes = run_stages(ctx, stages, continue_on_failure=continue_on_failure)
    receipts: list[StageReceipt] = []
    lines: list[StageSummary] = []
    stopped = outcomes.stopped
    for stage in stages:
        if stage.name not in outcomes.receipts:
            assert stopped is not None
            lines.append(StageSummary(stage=stage.name, status="not_run", note=f"stopped: {stopped.stage} failed"))
            emit("not_run", stage.name, f"{stopped.stage} failed")
            continue
        receipt = outcomes.receipts[stage.name]
        if receipt is None:
            lines.append(StageSummary(stage=stage.name, status="unavailable", note="stage code not installed"))
            continue
        receipts.append(receipt)
        lines.append(_summary_line(receipt, ws))

    finished_at = now_utc()
    passed = stopped is None and all(r.passed for r in receipts)
    summary = RunSummary(
        run_id=run_id,
        root=ws.root.as_posix(),
        previous_run_id=previous.run_id if previous else None,
        started_at=started_at,
        finished_at=finished_at,
        duration_s=round(time.perf_counter() - t0, 6),
        git=ctx.git,
        full_config_hash=ctx.full_hash,
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
    ctx.cache.save(ws.digest_cache_path)
    return RunResult(summary=summary, drift=drift, run_dir=out_dir, summary_md=summary_md, receipts=receipts)


def run_pipeline(
    ws: Workspace,
    settings: Settings,
    *,
    force: bool = False,
    continue_on_failure: bool = False,
    include_index: bool = True,
    stages: list[Stage] | None = None,
    on_event: EventHook | None = None,
) -> RunSummary:
    """One `distill run` (for callers such as the demo that want only the summary)."""
    return execute_run(
        ws, settings, force=force, continue_on_failure=continue_on_failure, include_index=include_index,
        stages=stages, on_event=on_event,
    ).summary


def digest_of(ws: Workspace, path: Path) -> FileDigest | None:
    """Public helper (tests, tools): the digest a receipt would record for `path`."""
    return digest_path(ws, path)
