"""citations: a reference the answer names must exist, a passage it quotes must be in the evidence, and
be the words of the reference it names.
"""

from __future__ import annotations

import re

from distill.records.replay import ContextBundle, GateCheck
from runtime.gate.common import (
    _WORD,
    MAX_QUOTED_CHARS,
    _check,
    _grams,
    _ngrams,
    _quote,
    _short,
)
from runtime.gate.figures import _at_most

_REFERENCE_NO = re.compile(r"\breference\s+#?(\d+)\b", re.IGNORECASE)
_QUOTED = re.compile(r'"([^"\n]+)(?:"|$)|\u201c([^\u201d\n]+)(?:\u201d|$)')
MIN_QUOTE_WORDS = 4
MIN_QUOTE_MATCH = 0.8


def quoted_passages(text: str) -> list[str]:
    """Passages in double quotes ("..." or \u201c...\u201d) of at least MIN_QUOTE_WORDS words; a quote
    left open at the end (an answer cut by the token limit) counts up to where it stops."""
    out = []
    for m in _QUOTED.finditer(text.strip()):
        passage = (m.group(1) or m.group(2) or "").strip()
        if len(_WORD.findall(passage.lower())) >= MIN_QUOTE_WORDS:
            out.append(passage)
    return out


def _quote_found(passage: str, evidence_grams: set[tuple[str, ...]]) -> bool:
    words = _WORD.findall(passage.lower())
    grams = _ngrams(words, 3)
    return sum(g in evidence_grams for g in grams) >= MIN_QUOTE_MATCH * len(grams)


_ATTRIBUTED = re.compile(r"\breference\s+#?(\d{1,6})\b([^\"\u201c\n]{0,40}?)[\"\u201c]([^\"\u201d\n]+)", re.IGNORECASE)
_MORE_REFERENCES = re.compile(r"\breferences?\b|(?:\band\b|\bor\b|&|,|/)\s*#?\d", re.IGNORECASE)
"""Between a reference's number and its quote: another reference ("Reference 1 and reference 2 say",
"Reference 1 (and 3) says", "Reference 1, 2"), so the quote is not one reference's alone."""


def misattributed_quotes(output: str, bundle: ContextBundle) -> list[str]:
    """Passages the answer gives as one reference's words ("Reference 1 says: \"...\"") that are
    another's, or the checklist's: the reader looks them up where the answer says and does not find
    them. The 0.5B wrote "Reference 1 says" (the question's own abstract) and quoted reference 2, a
    different study or an earlier answer; the quote was in the evidence, so the answer passed."""
    items = [*bundle.exemplars, *bundle.warnings]
    attributed = []
    for m in _ATTRIBUTED.finditer(output):
        number, between, passage = int(m.group(1)), m.group(2), m.group(3).strip()
        if _MORE_REFERENCES.search(between):
            continue  # cited with another reference: the quote may be either's
        if not 1 <= number <= len(items) or len(_WORD.findall(passage.lower())) < MIN_QUOTE_WORDS:
            continue  # a reference the prompt lacks, or too short a quote to tell: the checks below
        attributed.append((number, passage))
    if not attributed:
        return []
    sources = [("reference", _grams(f"{item.title or ''}\n{item.text}")) for item in items]
    sources.append(("the checklist", _grams("\n".join(bundle.validation_steps))))
    found = []
    for number, passage in attributed:
        if _quote_found(passage, sources[number - 1][1]):
            continue
        elsewhere = [f"reference {k}" if kind == "reference" else kind
                     for k, (kind, grams) in enumerate(sources, start=1) if _quote_found(passage, grams)]
        if elsewhere:  # a passage in no one source is the quote check's to judge
            found.append(f"{_short(passage[:60])} as reference {number}'s, but it is {' and '.join(elsewhere[:3])}'s")
    return found


def check_citations(output: str, bundle: ContextBundle) -> GateCheck:
    """An answer that says "Reference 3 says ..." when the prompt had two references, or quotes a
    passage that no reference contains, invents its evidence; it fails however fluent it is. Quotes
    are matched by word 3-grams (80 % must be in the retrieved text or checklist), so a dropped comma
    or a quote cut by the token limit still counts, and a passage taken from the task does not: the
    question is not evidence for its own answer."""
    n_refs = len(bundle.exemplars) + len(bundle.warnings)
    cited = {m.group(1).lstrip("0") or "0" for m in _REFERENCE_NO.finditer(output)}
    bad_refs = sorted((r for r in cited if r == "0" or not _at_most(r, n_refs)), key=lambda r: (len(r), r))
    passages = quoted_passages(output)
    problems = []
    if bad_refs:
        had = f"the prompt had {n_refs}" if n_refs else "the prompt had none"
        problems.append(f"cites reference {', '.join(r if len(r) <= MAX_QUOTED_CHARS else _short(r) for r in bad_refs[:5])}"
                        f"{f' (+{len(bad_refs) - 5} more)' if len(bad_refs) > 5 else ''} but {had}")
    if passages:
        evidence = "\n".join([*(f"{i.title or ''}\n{i.text}" for i in (*bundle.exemplars, *bundle.warnings)),
                              *bundle.validation_steps])
        evidence_grams = _grams(evidence)
        missing = [p for p in passages if not _quote_found(p, evidence_grams)]
        if missing:
            problems.append(f"{len(missing)}/{len(passages)} quoted passages are in no reference: {_quote(p[:60] for p in missing)}")
        misattributed = misattributed_quotes(output, bundle)
        if misattributed:
            problems.append(f"quotes one reference's words as another's: {'; '.join(misattributed[:3])}")
    if problems:
        return _check("citations", False, "; ".join(problems))
    if not passages and not n_refs:
        return _check("citations", True, "no reference cited and none quoted")
    return _check("citations", True, f"{len(passages)} quoted passages found in the references; every cited reference exists")
