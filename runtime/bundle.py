"""Search hits -> ContextBundle: what the local model gets to read, and what the gate checks against.

Accepted runs are exemplars (do it like this), partially accepted runs are warnings (this went
only half right), and the checklist lines found in both become the validation steps the gate
expects the answer to address. Pure: hits in, bundle out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from distill.records.replay import ContextBundle, RetrievedItem
from distill.validation_steps import extract_validation_steps
from index.hits import SearchHit

EXEMPLAR_CATEGORY = "accepted"
WARNING_CATEGORY = "partially_accepted"


def _str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list | tuple):
        return [str(v) for v in value if isinstance(v, str | int | float) and str(v).strip()]
    return []


def to_item(hit: SearchHit, *, with_text: bool = True) -> RetrievedItem:
    """One hit as it is recorded in the run (text left out for the plain `retrieved` list)."""
    meta = hit.metadata or {}
    source_run_id = meta.get("source_run_id")
    return RetrievedItem(
        id=hit.id,
        score=float(hit.score),
        rank=hit.rank,
        category=hit.category,
        source_run_id=str(source_run_id) if source_run_id else None,
        title=hit.title,
        text=hit.text if with_text else "",
        source_files=_str_list(meta.get("source_files")),
    )


def build_bundle(
    hits: Sequence[SearchHit],
    *,
    exemplars: int = 3,
    warnings: int = 2,
    max_steps: int = 10,
) -> ContextBundle:
    """Split hits (best first) into exemplars and warnings and gather their validation steps."""
    ordered = sorted(hits, key=lambda h: h.rank)
    chosen_ex = [h for h in ordered if h.category == EXEMPLAR_CATEGORY][:exemplars]
    chosen_warn = [h for h in ordered if h.category == WARNING_CATEGORY][:warnings]
    steps: list[str] = []
    seen: set[str] = set()
    for hit in (*chosen_ex, *chosen_warn):
        stored = _str_list((hit.metadata or {}).get("validation_steps"))
        for step in (*stored, *extract_validation_steps(hit.text)):
            key = " ".join(step.lower().split())
            if key and key not in seen and len(steps) < max_steps:
                seen.add(key)
                steps.append(step.strip())
    return ContextBundle(
        exemplars=[to_item(h) for h in chosen_ex],
        warnings=[to_item(h) for h in chosen_warn],
        validation_steps=steps,
    )


def retrieved_list(hits: Sequence[SearchHit]) -> list[RetrievedItem]:
    """Every hit's id, score, rank and category, for the run log (texts live in the bundle)."""
    return [to_item(h, with_text=False) for h in sorted(hits, key=lambda h: h.rank)]
