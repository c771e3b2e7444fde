"""StageReport: what every stage returns (collect, score, export-*, index).

The counts obey conservation: rows_in = written + quarantined + deduped + skipped, in total and
per source. An export also lists the firewall violations it found (typed, see distill.firewall);
any violation fails the stage. Receipts wrap this report with hashes and timing; the CLI prints it.
"""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel, Field, model_validator

from distill.firewall import Violation


class Counts(BaseModel):
    rows_in: int = 0
    written: int = 0
    quarantined: int = 0
    deduped: int = Field(0, description="already present from an earlier run (idempotence)")
    skipped: int = Field(0, description="not this stage's business (e.g. a filter), counted not dropped")
    by_reason: dict[str, int] = Field(default_factory=dict, description="quarantine reasons")
    by_category: dict[str, int] = Field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.written + self.quarantined + self.deduped + self.skipped

    def add(self, other: Counts) -> None:
        self.rows_in += other.rows_in
        self.written += other.written
        self.quarantined += other.quarantined
        self.deduped += other.deduped
        self.skipped += other.skipped
        self.by_reason = dict(Counter(self.by_reason) + Counter(other.by_reason))
        self.by_category = dict(Counter(self.by_category) + Counter(other.by_category))

    def bump(self, field: str, *, reason: str | None = None, category: str | None = None, n: int = 1) -> None:
        """Count `n` rows as `field` (written/quarantined/deduped/skipped); rows_in too."""
        self.rows_in += n
        setattr(self, field, getattr(self, field) + n)
        if reason is not None:
            self.by_reason[reason] = self.by_reason.get(reason, 0) + n
        if category is not None:
            self.by_category[category] = self.by_category.get(category, 0) + n


class UnreadInput(BaseModel):
    path: str
    reason: str


class StageReport(BaseModel):
    stage: str
    totals: Counts = Field(default_factory=Counts)
    by_source: dict[str, Counts] = Field(default_factory=dict)
    inputs: list[str] = Field(default_factory=list, description="files read, relative to ROOT")
    outputs: list[str] = Field(default_factory=list, description="files written, relative to ROOT")
    dry_run: bool = False
    notes: list[str] = Field(default_factory=list)
    violations: list[Violation] = Field(default_factory=list, description="firewall breaches found by the stage")
    unread: list[UnreadInput] = Field(default_factory=list, description="inputs found and not read, and why")

    def source(self, name: str) -> Counts:
        counts = self.by_source.get(name)
        if counts is None:
            counts = self.by_source[name] = Counts()
        return counts

    def finalize(self) -> StageReport:
        """Recompute totals from the per-source counts (when per-source counting was used)."""
        if self.by_source:
            totals = Counts()
            for counts in self.by_source.values():
                totals.add(counts)
            self.totals = totals
        self.by_source = dict(sorted(self.by_source.items()))
        return self

    @model_validator(mode="after")
    def _sorted(self) -> StageReport:
        self.by_source = dict(sorted(self.by_source.items()))
        return self

    @property
    def balanced(self) -> bool:
        return self.totals.balanced and all(c.balanced for c in self.by_source.values())


TallyKey = tuple[str, str, str | None, str | None]  # (source, outcome, reason, category)


class Tally:
    """Rows counted in bulk: a stage that decides a million rows counts (source, outcome, reason,
    category) here at the cost of a dict update and adds them to its report once (`into`). The
    report ends the same as with a bump per row, its keys first seen in the same order."""

    def __init__(self) -> None:
        self._counts: Counter[TallyKey] = Counter()

    @classmethod
    def of(cls, counts: Counter[TallyKey]) -> Tally:
        """Counts a caller kept itself (keyed as `bump` keys them, in the order first seen)."""
        tally = cls()
        tally._counts = counts
        return tally

    def bump(self, source: str, field: str, *, reason: str | None = None, category: str | None = None) -> None:
        self._counts[(source, field, reason, category)] += 1

    def add(self, counts: Counter[TallyKey]) -> None:
        """Counts taken in bulk (keys new here come after those already counted)."""
        self._counts.update(counts)

    def into(self, report: StageReport) -> None:
        for (source, field, reason, category), n in self._counts.items():
            report.source(source).bump(field, reason=reason, category=category, n=n)
        self._counts.clear()

