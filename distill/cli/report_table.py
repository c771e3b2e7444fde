"""Rich tables for StageReports: what a person reads after each stage."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from distill.records.stage import Counts, StageReport

CATEGORY_ORDER = ("accepted", "partially_accepted", "rejected", "needs_human_review")


def _reasons(counts: Counts) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.by_reason.items())) or "-"


def flow_table(report: StageReport, *, title: str | None = None) -> Table:
    """Per source: rows read, written, deduped, quarantined (by reason)."""
    table = Table(title=title or f"{report.stage}{' (dry run)' if report.dry_run else ''}")
    for col in ("source", "read", "written", "deduped", "quarantined", "quarantined by reason"):
        table.add_column(col, justify="left" if col in ("source", "quarantined by reason") else "right")
    for name, c in report.by_source.items():
        table.add_row(name, str(c.rows_in), str(c.written), str(c.deduped), str(c.quarantined), _reasons(c))
    t = report.totals
    table.add_row(Text("total", style="bold"), str(t.rows_in), str(t.written), str(t.deduped), str(t.quarantined), _reasons(t))
    return table


def category_table(report: StageReport, *, title: str | None = None) -> Table:
    """Per source: how many rows landed in each category."""
    table = Table(title=title or f"{report.stage}: categories")
    table.add_column("source")
    for cat in CATEGORY_ORDER:
        table.add_column(cat, justify="right")
    rows: list[tuple[str | Text, Counts]] = [*report.by_source.items(), (Text("total", style="bold"), report.totals)]
    for name, c in rows:
        table.add_row(name, *(str(c.by_category.get(cat, 0)) for cat in CATEGORY_ORDER))
    return table


# notes a stage leaves that the user should see on the console, by their prefix, with the label shown
SHOWN_NOTES = (("not read: ", "not read"), ("evidence: ", "evidence"))


def shown_notes(notes: list[str]) -> list[Text]:
    """A stage's notes worth a line on the console: inputs it did not read, and what a rebuild of
    the evidence did (distill.collect.EVIDENCE_NOTE)."""
    out = []
    for note in notes:
        for prefix, label in SHOWN_NOTES:
            if note.startswith(prefix):
                out.append(Text.assemble((label, "yellow"), f" {note.removeprefix(prefix)}"))
    return out
