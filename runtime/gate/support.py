"""support: is the answer's content in the evidence (the bundle and the task)? Figures, identifiers,
rare words, and no claim the evidence states the other way round.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from distill.records.replay import ContextBundle, GateCheck
from runtime.gate.claims import denied_changes, negation_flips, reversed_directions, swapped_comparisons
from runtime.gate.common import (
    _STOPWORDS,
    _bundle_text,
    _check,
    _quote,
    _retrieved_text,
)
from runtime.gate.figures import (
    _CODE_SPAN,
    evidence_figures,
    flipped_signs,
    renumbered_names,
    stated_figures,
    unit_mismatches,
)
from runtime.gate.grounding import _PATH, _URL

_IDENTIFIER = re.compile(
    # dotted.name (parts of 2+ characters), from where the dotted run starts: from every part of
    # "v1.v1.v1..." each failed scan to the end was quadratic in its length
    r"(?<![\w.])[A-Za-z_][A-Za-z0-9_]+(?:\.[A-Za-z_][A-Za-z0-9_]+)+\b(?!\.)"
    r"|\b[a-z][a-z0-9]*(?:_[a-z0-9]+)+\b"  # snake_case
    r"|\b[A-Z][a-z0-9]+(?:[A-Z][a-z0-9]+)+\b"  # CamelCase (each hump has lower-case letters)
    r"|\b[a-z]+[A-Z][a-z0-9]+[A-Za-z0-9]*\b"  # camelCase
    r"|\b[A-Za-z_][A-Za-z0-9_]*(?=\()"  # a call
)
_JOINED_SENTENCE = re.compile(
    r"[a-z]\.(?:The|This|These|That|Those|There|Their|It|In|We|Our|Of|On|At|As|To|For|With|From|However|Thus|"
    r"Therefore|A|An|No|Yes|So|If|When|But|And)\b"
)
_WEB_SUFFIX = re.compile(r"\.(?:com|org|net|gov|edu|io|dev|ai|co|uk|de)$", re.IGNORECASE)
_GENERIC = frozenset(
    """about above across actual after again against also although always among answer another
    because been before being below best better between both bring change changes code could does
    doing done down during each either else enough ever every example fact file files first fix fixed
    following from further given good have having here however into just keep kind know last least
    less like likely line lines make makes many means more most much must need needs never next none
    often only order other otherwise over part patch please point problem rather really right same
    second several shall should show shows since some something still such sure take than that their
    them then there these they thing things third this those though through thus under until upon
    used uses using very want well were what when where whether which while whole will with within
    without would your yes no maybe also true false step steps result results""".split()
)


COMMON_ZIPF = 5.5
RARE_ZIPF = 2.5
MIN_SPECIFIC_WEIGHT = 1.0


@lru_cache(maxsize=65536)
def specificity(word: str) -> float:
    """How much a word says about content, from its frequency in general English (wordfreq's Zipf
    scale): 0 for everyday words ("important", "data", "found"), 1 for rare or technical ones
    ("epinephrine", "batcher"), linear in between. Generic words carry no claim to support."""
    from wordfreq import zipf_frequency

    return min(1.0, max(0.0, (COMMON_ZIPF - zipf_frequency(word, "en")) / (COMMON_ZIPF - RARE_ZIPF)))


@lru_cache(maxsize=1)
def _stemmer() -> object:
    import Stemmer

    return Stemmer.Stemmer("english")


def _stems(words: Iterable[str]) -> list[str]:
    return _stemmer().stemWords(list(words))  # type: ignore[attr-defined]


def _content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z][a-z]{3,}", text.lower()) if w not in _STOPWORDS and w not in _GENERIC]


def identifiers_in(text: str) -> list[str]:
    """Code identifiers an answer names: `code spans`, dotted.names, snake_case, CamelCase, calls."""
    found: list[str] = []
    for m in _CODE_SPAN.finditer(text):
        span = m.group(1).strip()
        if span and len(span) <= 80 and not _PATH.fullmatch(span) and span not in found:
            found.append(span)
    for m in _IDENTIFIER.finditer(_PATH.sub(" ", _URL.sub(" ", _CODE_SPAN.sub(" ", text)))):
        ident = m.group(0)
        if _WEB_SUFFIX.search(ident):
            continue  # a domain name in prose (ClinicalTrials.gov), not code
        if _JOINED_SENTENCE.search(ident):
            continue  # "hospice.The": a full stop without its space, not a dotted name
        if ident not in found and ident.lower() not in _STOPWORDS:
            found.append(ident)
    return found


def evidence_text(bundle: ContextBundle, task: str) -> str:
    """Everything an answer may draw on: the task and every retrieved text, title, file and step."""
    return _bundle_text(bundle, task)


def check_support(
    output: str, bundle: ContextBundle, task: str, *, min_word_support: float, min_identifier_support: float
) -> GateCheck:
    """The answer's content must come from the evidence: every figure it states and most of the code
    identifiers it names must appear in the task or the bundle, and of its specific content words
    (weighted by how rare they are in general English) beyond those of the task, at least
    `min_word_support` must appear in the bundle. A fluent answer about something else, one with its
    figures changed, or one written without retrieval from the model's own memory does not pass."""
    evidence = evidence_text(bundle, task)
    known_figures = evidence_figures(evidence)
    missing_figures = [written for f, written in stated_figures(output).items()
                       if f not in known_figures and f.lstrip("-") not in known_figures]
    idents = identifiers_in(output)
    lowered = evidence.lower()
    missing_idents = [i for i in idents if i.lower() not in lowered]
    # words the task already holds are not claims of the answer's own; the rest, weighted by how
    # specific they are, must be found in the retrieved evidence
    task_stems = set(_stems(_content_words(task)))
    evidence_stems = set(_stems(_content_words(evidence)))
    words = list(dict.fromkeys(_content_words(output)))  # each distinct word once: repetition is no evidence
    claimed = [(w, s) for w, s in zip(words, _stems(words), strict=True) if s not in task_stems]
    weights = [(w, s, specificity(w)) for w, s in claimed]
    total = sum(wt for _, _, wt in weights)
    found = sum(wt for _, s, wt in weights if s in evidence_stems)
    # below one rare word's worth of its own content an answer makes no specific claim to check
    word_ratio = found / total if total >= MIN_SPECIFIC_WEIGHT else 1.0
    ident_ratio = 1 - len(missing_idents) / len(idents) if idents else 1.0
    problems: list[str] = []
    if missing_figures:
        problems.append(f"figures not in the evidence: {_quote(missing_figures)}")
    retrieved = _retrieved_text(bundle)  # the task states no claim: "Do statins reduce mortality?"
    contradicted = [
        ("figures in another unit than the evidence's", unit_mismatches(output, evidence)),
        ("figures signed the other way from the evidence", flipped_signs(output, evidence)),
        ("names with another number than the evidence's", renumbered_names(output, evidence)),
        ("changes stated the other way round from the evidence", reversed_directions(output, retrieved)),
        ("changes the evidence says did not happen", denied_changes(output, retrieved)),
        ("comparisons the other way round from the evidence", swapped_comparisons(output, retrieved)),
        ("claims with a negation the evidence does not give them, or without its own", negation_flips(output, retrieved)),
    ]
    problems += [f"{what}: {_quote(found)}" for what, found in contradicted if found]
    if ident_ratio < min_identifier_support:
        problems.append(
            f"{len(missing_idents)}/{len(idents)} code identifiers not in the evidence (e.g. {_quote(missing_idents, 4)})"
        )
    if word_ratio < min_word_support:
        unsupported = [w for w, s, wt in sorted(weights, key=lambda x: -x[2]) if s not in evidence_stems and wt > 0]
        problems.append(
            f"{word_ratio:.0%} of the answer's specific content beyond the task is in the evidence "
            f"(need {min_word_support:.0%}); unsupported e.g. {_quote(list(dict.fromkeys(unsupported)), 6)}"
        )
    if problems:
        return _check("support", False, "; ".join(problems))
    return _check(
        "support", True,
        f"{word_ratio:.0%} of the specific content beyond the task, {len(idents) - len(missing_idents)}/{len(idents)} "
        "identifiers and every figure are in the evidence",
    )
