"""SWE-agent trajectories: a directory of `.traj` files plus the evaluation's results file.

One input unit per `.traj` file (Provenance unit="file": the whole JSON document is the row,
sig_hash is the hash of its canonical form). The instance id is the file name; the evaluation
buckets come from `results.json` (SWE-bench harness output, which is known to carry trailing
commas, so it is parsed leniently). `resolved` is the verdict-bearing marker.

Why file mtime for created_at: a trajectory carries no timestamp of its own; the file's
modification time is when the agent finished (tar archives preserve it), and it is stable
across re-runs over the same files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distill.config import Settings
from distill.errors import RowRejected
from distill.hashing import sig_hash
from distill.jsonl import loads, utf16_problem
from distill.records import (
    EvidenceRecord,
    ModelRole,
    Provenance,
    QuarantineReason,
    ScoreClass,
    SourceRef,
)
from distill.sources.base import SourceItem, quarantine, refuse_hidden_text
from distill.workspace import Workspace, text_name

ADAPTER = "swe_agent"
RESULTS_NAMES = ("results.json", "report.json")
PREDS_NAME = "all_preds.jsonl"
MAX_TRAJ_BYTES = 256 * 1024 * 1024
PROBLEM_CHARS = 20_000
_DIFF_FILE = re.compile(r"^diff --git a/(\S+) b/\S+", re.MULTILINE)
_ISSUE = re.compile(r"ISSUE:\s*\n(.*?)(?:\n\s*INSTRUCTIONS?:|\Z)", re.DOTALL)
# Buckets that mean the harness actually evaluated the patch (resolved or not).
EVALUATED_BUCKETS = frozenset(
    {"resolved", "applied", "no_apply", "with_logs", "test_errored", "test_timeout", "install_fail", "reset_failed"}
)


def strip_trailing_commas(text: str) -> str:
    """Drop commas that directly precede ] or } outside strings (lenient JSON)."""
    out: list[str] = []
    in_string = escaped = False
    pending_comma: list[str] = []  # a comma plus the whitespace after it, held back
    for ch in text:
        if in_string:
            out.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if pending_comma:
            if ch.isspace():
                pending_comma.append(ch)
                continue
            if ch in "]}":
                out.extend(pending_comma[1:])
            else:
                out.extend(pending_comma)
            pending_comma = []
        if ch == ",":
            pending_comma = [ch]
            continue
        out.append(ch)
        if ch == '"':
            in_string = True
    out.extend(pending_comma)
    return "".join(out)


def load_results(path: Path) -> dict[str, list[str]] | None:
    """results.json -> {bucket: [instance ids]}; None when absent or unreadable."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        data = json.loads(strip_trailing_commas(raw))
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's limit
        return None
    if not isinstance(data, dict):
        return None
    return {k: [i for i in v if isinstance(i, str)] for k, v in data.items() if isinstance(v, list)}


def buckets_by_instance(results: dict[str, list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for bucket, ids in sorted(results.items()):
        for iid in ids:
            out.setdefault(iid, []).append(bucket)
    return out


def model_names(directory: Path) -> dict[str, str]:
    """instance id -> model name, from the predictions file when the run left one."""
    path = directory / PREDS_NAME
    names: dict[str, str] = {}
    if not path.is_file():
        return names
    from distill.jsonl import iter_raw_lines

    for raw in iter_raw_lines(path, 64 * 1024 * 1024):
        if not raw.data or not raw.terminated:
            continue
        try:
            row = loads(raw.data)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("instance_id"), str):
            name = row.get("model_name_or_path")
            if isinstance(name, str) and name:
                names[row["instance_id"]] = name
    return names


def problem_statement(history: Any) -> str | None:
    """The issue text from the first user turn ('ISSUE:' ... 'INSTRUCTION:'), else that turn."""
    if not isinstance(history, list):
        return None
    for turn in history:
        if isinstance(turn, dict) and turn.get("role") == "user" and isinstance(turn.get("content"), str):
            content = turn["content"]
            match = _ISSUE.search(content)
            text = (match.group(1) if match else content).strip()
            return text[:PROBLEM_CHARS] or None
    return None


@dataclass(frozen=True)
class TrajContext:
    source: str
    rel: str
    sig: str
    created_at: datetime

    def ref(self) -> SourceRef:
        return SourceRef(source_file=self.rel, line_offset=0, line_number=1, sig_hash=self.sig)

    def provenance(self) -> Provenance:
        return Provenance(
            source_file=self.rel, unit="file", line_offset=0, line_number=1, sig_hash=self.sig,
            recorded_at=self.created_at,
        )


def convert_trajectory(
    doc: dict[str, Any],
    ctx: TrajContext,
    *,
    instance_id: str,
    buckets: list[str] | None,
    model_name: str | None,
) -> EvidenceRecord:
    """One parsed .traj document -> evidence. buckets None: no results file for this run."""
    info = doc.get("info")
    if not isinstance(info, dict):
        raise RowRejected(QuarantineReason.MISSING_FIELD, "no 'info' object (exit_status, submission)")
    submission = info.get("submission")
    if submission is not None and not isinstance(submission, str):
        raise RowRejected(QuarantineReason.WRONG_TYPE, f"'info.submission' is {type(submission).__name__}")
    trajectory = doc.get("trajectory")
    if trajectory is not None and not isinstance(trajectory, list):
        raise RowRejected(QuarantineReason.WRONG_TYPE, "'trajectory' must be a list of steps")
    problem = problem_statement(doc.get("history"))
    exit_status = info.get("exit_status") if isinstance(info.get("exit_status"), str) else None
    stats = info.get("model_stats") if isinstance(info.get("model_stats"), dict) else {}
    text = submission or ""
    markers: dict[str, Any] = {
        "resolved": None if buckets is None else "resolved" in buckets,
        "eval_buckets": buckets,
        "exit_status": exit_status,
    }
    return EvidenceRecord(
        run_id=f"{ctx.source}:{instance_id}",
        task_id=f"swebench:{instance_id}",
        source=ctx.source,
        score_class=ScoreClass.VERDICT,
        model_role=ModelRole.EXECUTOR,
        model_name=model_name,
        text=text,
        instruction=problem,
        source_files=sorted(set(_DIFF_FILE.findall(text))),
        markers=markers,
        metadata={
            "adapter": ADAPTER,
            "instance_id": instance_id,
            "steps": len(trajectory) if isinstance(trajectory, list) else 0,
            "environment": doc.get("environment") if isinstance(doc.get("environment"), str) else None,
            "model_stats": {k: v for k, v in sorted(stats.items()) if isinstance(v, int | float | str)},
        },
        created_at=ctx.created_at,
        provenance=ctx.provenance(),
    )


@dataclass(frozen=True)
class SweAgentSource:
    """All .traj files under one `_kb/<dir>/` (recursively), plus its results file."""

    name: str
    directory: Path

    def trajectories(self) -> list[Path]:
        return sorted(p for p in self.directory.rglob("*.traj") if p.is_file() and text_name(p.relative_to(self.directory)))

    def results_path(self) -> Path | None:
        for name in RESULTS_NAMES:
            candidate = self.directory / name
            if candidate.is_file():
                return candidate
        return None

    def inputs(self, ws: Workspace) -> list[Path]:
        extra = [p for p in (self.results_path(), self.directory / PREDS_NAME) if p is not None and p.is_file()]
        return sorted(self.trajectories() + extra)

    def read(self, ws: Workspace, settings: Settings) -> Iterator[SourceItem]:
        results_file = self.results_path()
        results = load_results(results_file) if results_file else None
        by_instance = buckets_by_instance(results) if results is not None else None
        models = model_names(self.directory)
        for path in self.trajectories():
            yield self.read_one(path, ws, by_instance, models)

    def read_one(
        self, path: Path, ws: Workspace, by_instance: dict[str, list[str]] | None, models: dict[str, str]
    ) -> SourceItem:
        rel = ws.relative(path)
        base_ref = SourceRef(source_file=rel, line_offset=0, line_number=1)
        instance_id = path.stem
        try:
            stat = path.stat()
            if stat.st_size > MAX_TRAJ_BYTES:
                return quarantine(
                    source=self.name, reason=QuarantineReason.LINE_TOO_LONG, ref=base_ref,
                    error=f"trajectory is {stat.st_size} bytes, limit {MAX_TRAJ_BYTES}",
                )
            data = path.read_bytes()
        except OSError as exc:
            return quarantine(
                source=self.name, reason=QuarantineReason.UNREADABLE_SOURCE, ref=base_ref,
                error=f"cannot read {rel}: {exc.strerror or exc}",
            )
        problem = utf16_problem(data)
        if problem is None:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                problem = f"not UTF-8 at byte {exc.start}: {exc.reason}"
        if problem is not None:
            return quarantine(
                source=self.name, reason=QuarantineReason.INVALID_UTF8, ref=base_ref, excerpt=data, error=problem
            )
        try:
            doc = loads(text)
        except (ValueError, RecursionError) as exc:
            return quarantine(
                source=self.name, reason=QuarantineReason.MALFORMED_JSON, ref=base_ref, excerpt=text,
                error=f"trajectory is not JSON (truncated file?): {str(exc)[:160]}",
            )
        if not isinstance(doc, dict):
            return quarantine(
                source=self.name, reason=QuarantineReason.NOT_AN_OBJECT, ref=base_ref, excerpt=text,
                error=f"trajectory is a JSON {type(doc).__name__}, expected an object",
            )
        try:
            sig = sig_hash(doc)
        except (TypeError, ValueError, RecursionError) as exc:  # e.g. Infinity next to a >64-bit integer
            return quarantine(
                source=self.name, reason=QuarantineReason.MALFORMED_JSON, ref=base_ref, excerpt=text,
                error=f"trajectory cannot be canonicalised: {str(exc)[:160]}",
            )
        created = datetime.fromtimestamp(stat.st_mtime, tz=UTC).replace(microsecond=0)
        ctx = TrajContext(self.name, rel, sig, created)
        buckets = None if by_instance is None else by_instance.get(instance_id, [])
        try:
            item = convert_trajectory(
                doc, ctx, instance_id=instance_id, buckets=buckets, model_name=models.get(instance_id)
            )
            return refuse_hidden_text(item, source=self.name, ref=ctx.ref(), excerpt=text)
        except RowRejected as exc:
            return quarantine(
                source=self.name, reason=exc.reason, error=exc.message, ref=ctx.ref(), excerpt=text,
                record_id=f"{self.name}:{instance_id}",
            )
        except ValueError as exc:  # pydantic ValidationError is a ValueError
            return quarantine(
                source=self.name, reason=QuarantineReason.SCHEMA_VIOLATION, ref=ctx.ref(), excerpt=text,
                error=f"not valid evidence: {str(exc)[:200]}",
            )


def swe_agent_dirs(kb_dir: Path) -> list[Path]:
    """Directories directly under _kb/ that hold at least one .traj file (at any depth)."""
    if not kb_dir.is_dir():
        return []
    return sorted(d for d in kb_dir.iterdir()
                  if d.is_dir() and text_name(Path(d.name)) and next(d.rglob("*.traj"), None) is not None)


__all__ = ["SweAgentSource", "convert_trajectory", "load_results", "strip_trailing_commas", "swe_agent_dirs"]
