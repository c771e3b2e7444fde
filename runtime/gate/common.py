"""What every check shares: the check record, how reasons quote, words and n-grams, the bundle as text."""

from __future__ import annotations

import re
from collections.abc import Iterable

from distill.records.replay import ContextBundle, GateCheck

_WORD = re.compile(r"[a-z0-9_]+")
_STOPWORDS = frozenset(
    """verify check assert ensure confirm that the this these those there their with from into onto
    for and but not are was were has have had does did can could should would will shall may might
    must all any each every its it's when then than also only just such same other some more most
    very been being about after before over under again once here what which who whom why how
    you your yours our ours they them use used using make made sure""".split()
)


def _check(name: str, passed: bool, reason: str) -> GateCheck:
    return GateCheck(name=name, passed=passed, reason=reason)


MAX_QUOTED_CHARS = 120


def _short(item: str) -> str:
    """An item a reason names, cut to a readable length: reasons are logged with every run, and a
    model can write a 40,000-character "path"."""
    return repr(item if len(item) <= MAX_QUOTED_CHARS else item[:MAX_QUOTED_CHARS] + "…")


def _quote(items: Iterable[str], limit: int = 5) -> str:
    items = list(items)
    shown = ", ".join(_short(i) for i in items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def content_tokens(text: str) -> set[str]:
    """Lower-cased words of 3+ characters, stop words and checklist verbs removed."""
    return {w for w in _WORD.findall(text.lower()) if len(w) >= 3 and w not in _STOPWORDS}


def _bundle_parts(bundle: ContextBundle) -> list[str]:
    """Every text the bundle gives the model: its checklist, and each item's ids, title, text and files."""
    parts = list(bundle.validation_steps)
    for item in (*bundle.exemplars, *bundle.warnings):
        parts += [item.id, item.source_run_id or "", item.title or "", item.text, *item.source_files]
    return parts


def _bundle_text(bundle: ContextBundle, task: str) -> str:
    return "\n".join([task, *_bundle_parts(bundle)])


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _grams(text: str) -> set[tuple[str, ...]]:
    """The text's word 3-grams, lower-cased: what quotes are matched by."""
    return set(_ngrams(_WORD.findall(text.lower()), 3))


def _retrieved_text(bundle: ContextBundle) -> str:
    return "\n".join(_bundle_parts(bundle))
