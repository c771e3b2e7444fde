"""run_export: one exporter over the workspace, with its StageReport.

The native file is append-only (ids already there are skipped, so a re-run over unchanged
input writes nothing); the quarantine file, the TRL/OpenAI views and the dataset card are
rewritten whole (atomically) each run, so they are byte-identical on re-runs. --dry-run
computes everything and writes nothing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel

from distill.config import Settings
from distill.errors import UsageError
from distill.export.card import write_card
from distill.checkpoint_file import ENTRIES_KEY
from distill.export.checkpoints import ExportCheckpoints, export_basis, export_partition
from distill.export.exported import Exported, exported
from distill.export.formats import FORMATS, render_view, views_to_refresh
from distill.export.gates import Firewall, refused_now
from distill.export.passed_gates import PassedGates
from distill.export.kept_decisions import KeptDecisions
from distill.export.preference import PreferenceExport, PreferencePass, export_preference
from distill.export.quarantine import QuarantineLines, RowExporter
from distill.export.rag import decide_rag, rag_id
from distill.export.reader import EvidenceIndex, mirror_text, rel_path
from distill.export.sft import decide_sft, sft_id
from distill.export.scored_index import scored_categories
from distill.export.spill import bucket_count
from distill.export.verified import VerifiedPrefix
from distill.export.verify import native_path, verify_export
from distill.firewall import ExportKind, Violation, ViolationCode, pair_side, rows_violations
from distill.jsonl import (
    append_file,
    atomic_temp_path,
    dumps,
    json_rows,
    json_rows_at,
    prefix_keeping_writer,
    replace_file,
    write_atomic,
)
from distill.receipts import saved_whole_file_digests
from distill.records.stage import StageReport
from distill.workspace import Workspace, iter_partition_files

KINDS: tuple[str, ...] = tuple(k.value for k in ExportKind)
ExportKindName = Literal["rag", "sft", "preference"]
REMOVED_IDS_SHOWN = 20


def iter_existing_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The export's rows one at a time: a large export is never held whole. A line that is not a
    row is skipped here; verify_export reports it."""
    return (row for _, row in json_rows(path))


def existing_rows(path: Path) -> list[dict[str, Any]]:
    return list(iter_existing_rows(path))


def run_export(
    ws: Workspace,
    settings: Settings,
    kind: ExportKindName | ExportKind,
    *,
    include_review: bool = False,
    include_partial: bool = False,
    fmt: str = "native",
    dry_run: bool = False,
    firewall: Firewall | None = None,
    all_views: bool = False,
    rebuild: bool = False,
    card: bool = True,
) -> StageReport:
    """Export one dataset. `firewall` lets `export all` build the gates once. `all_views`: render
    every trainer view (what `distill run` does, so views are outputs it rebuilds and verifies);
    otherwise the requested view and any view already on disk are refreshed. `rebuild`: write the
    dataset anew from the current scores and replace the file (after the same audit) instead of
    appending to it: the way out when a row that shipped earlier is now scored unsafe. `card`:
    rewrite the dataset card from all three exports (`distill run` leaves it to its card stage,
    which runs after all three)."""
    if kind not in KINDS:
        raise UsageError(f"unknown export kind {kind!r} (expected one of {', '.join(KINDS)})")
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    export = ExportKind(kind)
    kind = export.value
    report = StageReport(stage=f"export-{kind}", dry_run=dry_run)
    fw = firewall or Firewall.from_settings(ws.root, settings.export,
                                            prefilter_cache=None if dry_run else ws.secret_prefilter_path)
    report.notes.extend(fw.notes())
    if kind == "rag" and include_partial:
        report.notes.append("--include-partial has no effect on RAG (partially accepted rows ship by default)")
    if kind == "sft" and include_review:
        report.notes.append("--include-review has no effect on SFT: needs_human_review never ships there")
    if kind == "rag" and fmt != "native":
        report.notes.append(f"RAG has no {fmt} view; the native playbooks file is the RAG dataset")

    target = native_path(ws, kind)
    # a rebuild starts from nothing, and says by id what it removed
    previous_ids = {str(r.get("id")) for r in iter_existing_rows(target)} if rebuild else set()
    # a file unchanged since the last run's receipts hashed it (a partition, the export, its
    # quarantine file) is not read to check it
    known = saved_whole_file_digests(ws)
    existing = (Exported.nothing() if rebuild
                else exported(ws, export, target, max_pairs_per_task=settings.export.max_pairs_per_task, known=known))
    index = EvidenceIndex(ws)
    checkpoints: ExportCheckpoints | None = None
    pref = None
    token = uuid.uuid4().hex  # ties the preference export's kept decisions to the checkpoint saved with them

    stale: list[Violation] = []
    qpath = ws.quarantine_path(kind)
    # the new rows are staged in a scratch file and verified before they ship (a dry run stages
    # them outside the workspace, so it writes nothing there); named as an atomic write's temp, so
    # the next lock holder removes one a killed export left (Workspace.exclusive)
    staged = atomic_temp_path(Path(tempfile.gettempdir()) / target.name if dry_run else target)
    staged.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        stack.callback(index.close)
        sample_sink = stack.enter_context(_staging(staged))
        # rewritten in input order by every run; what it keeps of the last run's file (all of it,
        # when the new rows are the newest partitions') is left in place, not written again
        quarantine_sink: IO[bytes] = stack.enter_context(open(os.devnull, "wb") if dry_run
                                                         else prefix_keeping_writer(qpath))

        def on_sample(sample: BaseModel) -> None:
            sample_sink.write(dumps(sample.model_dump(mode="json")) + b"\n")

        # what this run's quarantine file will hold: the next run reads lines back out of it
        quarantine_lines = QuarantineLines(quarantine_sink)
        stack.callback(quarantine_lines.flush)  # before the file closes (callbacks run last in, first out)

        if kind == "preference":
            # pairing sees the whole input: every partition's first-pass rows come from its
            # checkpoint or a read, then every task is paired again; inputs that passed the gates
            # last time, under the same basis, are not scanned again
            basis = export_basis(ws, settings, kind, {})
            gates = PassedGates(ws.passed_gates_path(kind), basis, fw, writable=not dry_run)
            checkpoints = ExportCheckpoints(ws.export_checkpoint_path(kind), basis, writable=not dry_run,
                                            row_entries=False, known=known)
            stack.callback(checkpoints.discard)
            pref_checkpoints = checkpoints
            # a rebuild pairs against an empty export: last run's decisions do not hold for it
            kept = None if rebuild else KeptDecisions.load(ws.kept_decisions_path(kind), basis=basis,
                                                           token=checkpoints.token, export=target, quarantine=qpath,
                                                           known=known)

            def read_rows(pass1: PreferencePass) -> None:
                for path in iter_partition_files(ws.scored_dir):
                    pass1.start_partition(rel_path(ws, path))
                    export_partition(ws, path, index, pass1, pref_checkpoints)

            def reread(rel: str) -> list[Any] | None:
                found = pref_checkpoints.get(rel)
                return None if found is None else found[ENTRIES_KEY]

            pref = export_preference(
                read_rows, gates, report,
                record=not dry_run,
                evidence_text=lambda scored_file, key: mirror_text(ws, scored_file, key),
                kept=kept,
                reread=reread,
                existing_ids=existing.ids,
                existing_per_task=existing.per_task,
                max_pairs_per_task=settings.export.max_pairs_per_task,
                cross_source=settings.export.cross_source_pairs,
                spill_dir=staged.parent,
                buckets=bucket_count(sum(p.stat().st_size for p in iter_partition_files(ws.scored_dir))),
                on_sample=lambda line: sample_sink.write(line + b"\n"),
                on_quarantine=quarantine_lines,
            )
            report.notes.append(
                f"pairs written: {pref.pairs_same_task} same_task + {pref.pairs_cross_source} cross_source "
                f"({len(existing.ids)} already in the export)"
            )
            report.notes.append(f"first pass: {pref.lines_replayed} scored lines taken from the export checkpoint "
                                f"(the others read); {pref.rows_kept} rows kept their last decision")
            report.notes.append(f"firewall: {gates.checked} of {gates.seen} gated rows scanned "
                                f"(the others passed the same gates in the last run)")
            gates.save()
            if pref.refused_by_gates and len(existing.ids):
                stale = _pairs_refused_now(target, pref.refused_by_gates, existing.verified)
        else:
            decide = (partial(decide_rag, include_review=include_review) if kind == "rag"
                      else partial(decide_sft, include_partial=include_partial))
            id_of = (lambda j: rag_id(*j.key)) if kind == "rag" else (lambda j: sft_id(*j.key))
            flags = {"include_review": include_review} if kind == "rag" else {"include_partial": include_partial}
            checkpoints = ExportCheckpoints(ws.export_checkpoint_path(kind), export_basis(ws, settings, kind, flags),
                                            writable=not dry_run, quarantine=qpath,
                                            written=lambda: quarantine_lines.at, known=known)
            stack.callback(checkpoints.discard)
            exporter = RowExporter(kind, decide, existing.ids, fw, report, id_of=id_of, on_sample=on_sample,
                                   on_quarantine=quarantine_lines, record=not dry_run)
            for path in iter_partition_files(ws.scored_dir):
                export_partition(ws, path, index, exporter, checkpoints)
            rows = exporter.finish()
            stale = [Violation(export=export, code=ViolationCode.STALE_ROW, detail=m) for m in rows.stale]
        sample_sink.flush()

        report.finalize()
        scored_files = iter_partition_files(ws.scored_dir)
        report.inputs = sorted({rel_path(ws, p) for p in [*scored_files, *index.files_read]})

        # the rows about to ship, checked against the policy before anything is appended
        staged_ids: set[str] = set()  # what a rebuild writes, noted on the audit's one pass

        def audited() -> Iterator[tuple[int, dict[str, Any]]]:
            for line, row in json_rows(staged):
                if rebuild:
                    staged_ids.add(str(row.get("id")))
                yield line, row

        violations = rows_violations(export, audited())
        violations += stale
        if rebuild:
            report.notes.extend(_rebuild_notes(kind, previous_ids, staged_ids, applied=not violations and not dry_run))
        if not report.balanced:
            violations.append(Violation(export=export, code=ViolationCode.CONSERVATION,
                                        detail="rows in != written + quarantined + deduped + skipped"))

        if violations and not dry_run:
            # the rows about to ship break an invariant: ship none of them, say why
            report.notes.append("nothing appended: the new rows failed the firewall audit")
        if not dry_run:
            written: list[Path] = []
            if not violations and rebuild:
                replace_file(target, staged)
            elif not violations:
                append_file(target, staged)
            if not violations and checkpoints is not None:
                # what each partition decided, for the next run to start from
                checkpoints.save(token, None if pref is not None else quarantine_lines.digest())
                if pref is not None:
                    _keep_decisions(ws, pref, kind=kind, basis=checkpoints.basis, token=token, target=target,
                                    quarantine=quarantine_lines.digest(), rebuilt=rebuild)
            if not target.exists():
                write_atomic(target, b"")
            written.append(target)
            written.append(qpath)
        counted = quarantine_lines.written()  # the file is these bytes once the writer commits them
    if not dry_run:
        # what the quarantine file holds, for its receipt's line check and the dataset card
        if counted is not None:
            counted.save(ws.quarantine_tally_path(kind))
        else:
            ws.quarantine_tally_path(kind).unlink(missing_ok=True)
        # the export as written, judged by its labels and by the scores of its runs
        on_disk = verify_export(ws, export, scored=scored_categories(ws, known=known),
                                max_pairs_per_task=settings.export.max_pairs_per_task)
        violations += on_disk if rebuild else [_shipped(v) for v in on_disk]
        if kind != "rag" and not on_disk:
            # a view is what a trainer reads: never render one from an export that breaks the firewall
            for view in (FORMATS[1:] if all_views else views_to_refresh(ws, kind, fmt)):
                written.extend(render_view(ws, kind, view))
        elif on_disk:
            report.notes.append("views not refreshed: the export on disk breaks the firewall")
        if card:
            written.append(write_card(ws))
        report.outputs = [rel_path(ws, p) for p in written]
    report.violations = _unique(violations)
    return report


def _shipped(violation: Violation) -> Violation:
    """A breach in rows the export already holds (a lowered max_pairs_per_task, a run scored again,
    a row added by hand): every later run stops on it until the export is written anew, so the
    message says how."""
    kind = violation.export.value
    return violation.model_copy(update={"detail": (
        f"{violation.detail} (in the export already: `distill export {kind} --rebuild` writes it anew from the "
        "current scores and settings)")})


def _pairs_refused_now(target: Path, refused: dict[tuple[str, str], tuple[str, list[str]]],
                       verified: VerifiedPrefix | None) -> list[Violation]:
    """Pairs the export holds already with a side the gates refuse in this run (a benchmark file
    added since, a stricter setting): each run stops on them until the export is written anew.
    Streamed, and only when the gates refused a row that may be in it. `verified`: the clean
    verification that covers the whole export; its lookups name each row's revisions, so only
    the rows that may name a refused one are read (most runs: none)."""
    lines = verified.lines_naming(refused) if verified is not None else None
    rows = json_rows(target) if lines is None else json_rows_at(target, lines, end=verified.end)
    found = []
    for _, row in rows:
        for side in ("chosen", "rejected"):
            run_id, sig_hash = pair_side(row, side)
            failure = refused.get((str(run_id), str(sig_hash)))
            if failure is not None:
                found.append(Violation(export=ExportKind.PREFERENCE, code=ViolationCode.STALE_ROW, detail=refused_now(
                    f"{row.get('id')} (its {side} answer, run {run_id})", "preference", *failure)))
                break
    return found


def _keep_decisions(ws: Workspace, pref: PreferenceExport, *, kind: str, basis: str, token: str, target: Path,
                    quarantine: tuple[int, str], rebuilt: bool) -> None:
    """Every row's decision, for the next run to take where the task did not change (a rebuild
    paired against an empty export: the next run pairs every task again)."""
    path = ws.kept_decisions_path(kind)
    if pref.decisions is None or rebuilt:
        path.unlink(missing_ok=True)
        return
    pref.decisions.save(path, basis=basis, token=token, export=target, quarantine=quarantine)


@contextlib.contextmanager
def _staging(path: Path) -> Iterator[IO[bytes]]:
    """A scratch file for the new rows; removed whatever happens (they are appended from it)."""
    try:
        with open(path, "wb") as fh:
            yield fh
    finally:
        path.unlink(missing_ok=True)


def _rebuild_notes(kind: str, previous_ids: set[str], new_ids: set[str], *, applied: bool) -> list[str]:
    """What a rebuild changes, by id: the rows it drops are the ones a trainer may already have read."""
    removed = sorted(previous_ids - new_ids)
    verb = "rebuilt" if applied else "a rebuild would write"
    notes = [f"{verb} the {kind} export from the current scores: {len(new_ids)} rows (it held {len(previous_ids)}; "
             f"{len(removed)} removed, {len(new_ids - previous_ids)} new)"]
    if removed:
        shown = ", ".join(removed[:REMOVED_IDS_SHOWN])
        more = f" and {len(removed) - REMOVED_IDS_SHOWN} more" if len(removed) > REMOVED_IDS_SHOWN else ""
        notes.append(f"removed (each is in the {kind} quarantine with its reason): {shown}{more}")
    return notes


def _unique(violations: list[Violation]) -> list[Violation]:
    seen: set[Violation] = set()
    out = []
    for v in violations:
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out
