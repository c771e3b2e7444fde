"""The validation gate: deterministic checks on a model's answer, never a model call.

`validate` is a pure function of (answer, bundle, task, thresholds). Each check says pass or fail
and why, so a failed run in the log explains itself. It catches empty, hedged, placeholder,
ungrounded and prompt-echo answers, and, through `support`, fabrication: an answer whose figures,
code identifiers or content words are not in the retrieved bundle or the task, or that turns a change
the bundle states the other way round, is not accepted because it is fluent. It cannot tell a
plausible answer drawn from the evidence from a right one.

One module per kind of check: `grounding` (paths, ids, links the answer gives), `shape`
(placeholders, checklist, echoes), `citations` (references and quotes), `answer_form` (the form the
task asks for), `support` (the answer's content in the evidence) with `figures` (numbers, units,
signs) and `claims` (changes, negations and comparisons turned round); `common` holds what they share.
"""

from __future__ import annotations

import re

from distill.config import GateSettings
from distill.records.replay import ContextBundle, GateCheck, GateResult
from runtime.gate.answer_form import check_answer_form
from runtime.gate.citations import check_citations, quoted_passages
from runtime.gate.common import _check, _quote, content_tokens
from runtime.gate.figures import evidence_figures, figures_in, stated_figures, unit_mismatches
from runtime.gate.grounding import check_grounding, cited_ids, cited_links, cited_paths
from runtime.gate.shape import check_checklist, check_echo, check_prompt_markup, placeholder_regexes
from runtime.gate.support import check_support, identifiers_in

__all__ = [
    "check_answer_form", "check_checklist", "check_citations", "check_echo", "check_grounding",
    "check_prompt_markup", "check_support", "cited_ids", "cited_links", "cited_paths", "content_tokens",
    "evidence_figures", "figures_in", "identifiers_in", "placeholder_regexes", "quoted_passages",
    "stated_figures", "unit_mismatches", "validate",
]


def validate(output: str, bundle: ContextBundle, task: str, settings: GateSettings) -> GateResult:
    """Run every check (none short-circuits, so the log shows all reasons) and pass only if all pass."""
    text = output.strip()
    lowered = text.lower()
    checks: list[GateCheck] = []

    checks.append(
        _check("non_empty", bool(text), f"{len(text)} characters" if text else "the answer is empty")
    )
    n = len(text)
    if n < settings.min_chars:
        checks.append(_check("length", False, f"{n} characters, below the minimum {settings.min_chars}"))
    elif n > settings.max_chars:
        checks.append(_check("length", False, f"{n} characters, above the maximum {settings.max_chars}"))
    else:
        checks.append(_check("length", True, f"{n} characters within [{settings.min_chars}, {settings.max_chars}]"))

    hedges = [
        h for h in settings.hedging_phrases
        if h.strip() and re.search(r"(?<!\w)" + re.escape(h.lower().strip()) + r"(?!\w)", lowered)
    ]
    checks.append(
        _check("hedging", not hedges, f"hedging phrases: {_quote(hedges)}" if hedges else "no hedging phrases")
    )

    placeholders: list[str] = []
    for pattern in placeholder_regexes(tuple(settings.placeholder_patterns)):
        m = pattern.search(text)
        if m and m.group(0) not in placeholders:
            placeholders.append(m.group(0))
    checks.append(
        _check(
            "placeholders",
            not placeholders,
            f"placeholder patterns: {_quote(placeholders)}" if placeholders else "no placeholder patterns",
        )
    )

    checks.append(check_checklist(text, bundle, settings.min_checklist_overlap, task))
    checks.append(check_grounding(text, bundle, task, require_citation=settings.require_citation))
    checks.append(check_echo(text, bundle, task, n=settings.echo_ngram, max_fraction=settings.max_echo_fraction))
    checks.append(check_prompt_markup(text, bundle.nonce))
    checks.append(check_citations(text, bundle))
    checks.append(check_answer_form(text, bundle, task))
    checks.append(
        check_support(
            text, bundle, task,
            min_word_support=settings.min_word_support, min_identifier_support=settings.min_identifier_support,
        )
    )
    return GateResult(passed=all(c.passed for c in checks), checks=checks)
