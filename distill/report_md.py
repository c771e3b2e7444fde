"""summary.md for a run: what ran, what was skipped and why, counts, drift, and a chart.

The markdown is a pure function of the RunSummary and DriftReport; the PNG chart (category and
quarantine counts per stage) is drawn with matplotlib's Agg canvas, imported only here and only
when a run writes its summary. Without matplotlib the summary says so and carries the tables.
"""

from __future__ import annotations

import contextlib
import io
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from distill.jsonl import write_atomic
from distill.records.receipts import DriftReport, RunSummary
from distill.workspace import Workspace

CHART_NAME = "summary.png"
CATEGORY_COLORS = {
    "accepted": "#59a14f",
    "partially_accepted": "#edc948",
    "needs_human_review": "#bab0ac",
    "rejected": "#e15759",
}
MAX_COUNT_CHANGES = 25


def _short(h: str | None) -> str:
    return h[:12] if h else "-"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_summary_md(summary: RunSummary, drift: DriftReport, chart: str | None, chart_note: str | None = None) -> str:
    """The human-readable account of one run (pure: same inputs, same text)."""
    lines: list[str] = []
    verdict = "PASSED" if summary.overall_passed else "FAILED"
    lines.append(f"# distill run `{summary.run_id}`")
    lines.append("")
    lines.append(f"- result: **{verdict}**, drift **{drift.severity}**")
    lines.append(f"- root: `{summary.root}`")
    lines.append(f"- started {summary.started_at.isoformat()}, took {summary.duration_s:.2f}s")
    git = summary.git
    git_text = f"`{_short(git.sha)}` on {git.branch or 'detached'}{' (dirty)' if git.dirty else ''}" if git.sha else "not a git checkout"
    lines.append(f"- code: {summary.code_version}; {git_text}; config `{_short(summary.full_config_hash)}`")
    lines.append(f"- previous run: `{summary.previous_run_id}`" if summary.previous_run_id else "- previous run: none (first run)")
    lines.append(f"- run hash: `{summary.run_hash}`")
    opts = ", ".join(k for k, v in summary.options.items() if v) or "none"
    lines.append(f"- options: {opts}")
    if summary.stopped_by is not None:
        lines.append("")
        lines.append(f"**Run stopped by `{summary.stopped_by.stage}`**: {_cell(summary.stopped_by.reason)}")
    lines.append("")
    lines.append("## Stages")
    lines.append("")
    lines.append("| stage | status | passed | in | written | deduped | quarantined | skipped | content hash | time (s) |")
    lines.append("|---|---|---|---:|---:|---:|---:|---:|---|---:|")
    for s in summary.stages:
        t = s.totals
        passed = "-" if s.passed is None else ("yes" if s.passed else "**no**")
        status = s.status + (f" (reuses {s.reused_from})" if s.reused_from else "")
        lines.append(
            f"| {s.stage} | {status} | {passed} | {t.rows_in} | {t.written} | {t.deduped} | {t.quarantined} "
            f"| {t.skipped} | `{_short(s.content_hash)}` | {s.duration_s:.2f} |"
        )
    lines.append("")
    for s in summary.stages:
        if s.note:
            lines.append(f"- **{s.stage}**: {_cell(s.note)}")
        for err in s.errors:
            lines.append(f"  - error: {_cell(err)}")
    if summary.datasets:
        lines.append("")
        lines.append("## Datasets")
        lines.append("")
        for name, n in sorted(summary.datasets.items()):
            lines.append(f"- {name}: {n} records")
    with_cats = [s for s in summary.stages if s.output_categories]
    if with_cats:
        lines.append("")
        lines.append("## Categories per stage")
        lines.append("")
        lines.append("Rows in each stage's output as written (collect: evidence by model role; preference: chosen>rejected).")
        lines.append("")
        lines.append("| stage | counts |")
        lines.append("|---|---|")
        for s in with_cats:
            counts = ", ".join(f"{k} {v}" for k, v in sorted(s.output_categories.items()))
            lines.append(f"| {s.stage} | {counts} |")
    reasons = sorted({r for s in summary.stages for r in s.totals.by_reason})
    if reasons:
        lines.append("")
        lines.append("## Quarantine reasons per stage")
        lines.append("")
        lines.append("| reason | " + " | ".join(s.stage for s in summary.stages if s.totals.by_reason) + " |")
        shown = [s for s in summary.stages if s.totals.by_reason]
        lines.append("|---|" + "---:|" * len(shown))
        for r in reasons:
            lines.append(f"| {r} | " + " | ".join(str(s.totals.by_reason.get(r, 0)) for s in shown) + " |")
    lines.append("")
    lines.append("## Chart")
    lines.append("")
    if chart:
        lines.append(f"![category and quarantine counts per stage]({chart})")
    else:
        lines.append(f"_no chart: {chart_note or 'matplotlib not installed (pip install distill[plots])'}_")
    lines.append("")
    lines.append(f"## Drift vs previous run: {drift.severity}")
    lines.append("")
    lines.append(f"threshold: {drift.threshold_pct:g}%")
    lines.append("")
    if not drift.flags and not drift.count_changes and not drift.changed_stages:
        lines.append("no changes." if drift.previous_run_id else "first run: nothing to compare.")
    for f in drift.flags:
        lines.append(f"- **{f.severity}** [{f.kind}] {_cell(f.message)}")
    if drift.deterministic_violation:
        lines.append("")
        lines.append("### Determinism violations")
        lines.append("")
        for v in drift.deterministic_violation:
            lines.append(
                f"- {v.stage}: {v.kind} `{v.path}` expected `{_short(v.expected_sha256)}` found "
                f"`{_short(v.found_sha256)}` (reference run {v.reference_run_id})"
            )
    if drift.changed_stages:
        lines.append("")
        lines.append("### Stages whose content changed")
        lines.append("")
        for c in drift.changed_stages:
            lines.append(f"- {c.stage} ({c.current_status}): `{_short(c.previous_content_hash)}` -> `{_short(c.current_content_hash)}`")
    if drift.count_changes:
        lines.append("")
        lines.append("### Count changes")
        lines.append("")
        lines.append("| stage | scope | key | metric | previous | current | change | over threshold |")
        lines.append("|---|---|---|---|---:|---:|---:|---|")
        for ch in drift.count_changes[:MAX_COUNT_CHANGES]:
            pct = "new" if ch.pct_change is None else f"{ch.pct_change:+.1f}%"
            lines.append(
                f"| {ch.stage} | {ch.scope} | {_cell(ch.key)} | {ch.metric} | {ch.previous} | {ch.current} | {pct} "
                f"| {'yes' if ch.over_threshold else ''} |"
            )
        if len(drift.count_changes) > MAX_COUNT_CHANGES:
            lines.append(f"\n({len(drift.count_changes) - MAX_COUNT_CHANGES} more in drift.json)")
    lines.append("")
    lines.append("Receipts, summary.json and drift.json are next to this file.")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block ends, then take effect as they would have. The
    exception their handlers raise must not land inside matplotlib's drawing: its C++ code turned
    one into `ValueError: Invalid bounding box` (a traceback where the run should have stopped
    with 130/143), and one raised in a weakref callback there is printed and ignored (the run went
    on). Only the main thread can set handlers; elsewhere nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = (signal.SIGINT, signal.SIGTERM)
    received: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signal.raise_signal(received[0])  # through the handler it would have met (or ignored, or the default)


def write_chart(summary: RunSummary, path: Path) -> str | None:
    """Draw category and quarantine counts per stage; returns why not when it cannot."""
    stages = [s for s in summary.stages if s.status in ("ran", "skipped")]
    if not stages:
        return "no stage ran"
    if all(s.status == "skipped" for s in stages):
        # importing matplotlib and drawing cost seconds: most of a periodic run that found nothing to do
        return f"nothing changed: every stage was skipped (the counts are those of run {summary.previous_run_id})"
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return "matplotlib not installed (pip install distill[plots])"
    names = [s.stage for s in stages]
    cats = sorted({c for s in stages for c in s.output_categories}, key=lambda c: (c not in CATEGORY_COLORS, c))
    reasons = sorted({r for s in stages for r in s.totals.by_reason})
    panel_h = 1.2 + 0.45 * len(names)
    fig = Figure(figsize=(11, 2 * panel_h + 0.8), dpi=100)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1)
    ypos = list(range(len(names)))
    palette = [
        "#4e79a7", "#f28e2b", "#76b7b2", "#b07aa1", "#ff9da7", "#9c755f", "#2f4b7c", "#d37295",
        "#fabfd2", "#499894", "#a0cbe8", "#ffbe7d", "#d4a6c8", "#79706e", "#b6992d", "#d7b5a6",
    ]

    def stacked(ax, keys: list[str], getter, title: str) -> None:  # type: ignore[no-untyped-def]
        left = [0] * len(stages)
        spare = iter(palette * 4)
        for key in keys:
            vals = [getter(s).get(key, 0) for s in stages]
            ax.barh(ypos, vals, left=left, label=key, color=CATEGORY_COLORS.get(key) or next(spare))
            left = [a + b for a, b in zip(left, vals, strict=True)]
        ax.set_title(title, loc="left")
        ax.set_xlabel("rows")
        ax.set_yticks(ypos, names)
        ax.invert_yaxis()
        if keys:
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=2 if len(keys) > 8 else 1, frameon=False)
        else:
            ax.text(0.5, 0.5, "none", transform=ax.transAxes, ha="center")

    png = io.BytesIO()
    with stops_held():
        stacked(ax1, cats, lambda s: s.output_categories, "rows in each output, by category (collect: by model role)")
        stacked(ax2, reasons, lambda s: s.totals.by_reason, "rows quarantined, by reason")
        fig.suptitle(f"run {summary.run_id}")
        fig.tight_layout()
        fig.savefig(png, format="png", metadata={"Software": None})
    write_atomic(path, png.getvalue())
    return None


def write_summary_md(ws: Workspace, summary: RunSummary, drift: DriftReport) -> Path:
    out_dir = ws.reports_dir / summary.run_id
    why_not = write_chart(summary, out_dir / CHART_NAME)
    text = render_summary_md(summary, drift, CHART_NAME if why_not is None else None, why_not)
    path = out_dir / "summary.md"
    write_atomic(path, text.encode("utf-8"))
    return path
