"""answer form: what the task asks for (one of its options, a file path) is what the answer gives,
backed by what the references label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from distill.records.replay import ContextBundle, GateCheck
from runtime.gate.citations import quoted_passages
from runtime.gate.common import _check, _grams, _quote, _short, content_tokens
from runtime.gate.grounding import cited_paths
from runtime.task_form import asks_for_file, task_options

_SENTENCE_END = re.compile(r"[.!?\n]")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_LABEL_KEY = re.compile(r"([a-z0-9_]+)[^a-z0-9_\n]{0,3}$", re.IGNORECASE)


def _label_pattern(options: list[str]) -> re.Pattern[str]:
    """An option set apart as a label, "(high)", "[low]" or after a colon ("severity: medium"): in
    running prose "high" or "no" is just a word."""
    alternatives = "|".join(re.escape(o) for o in options)
    return re.compile(rf"[(\[]\s*({alternatives})\s*[)\]]|:\s*({alternatives})\b", re.IGNORECASE)


def _labels(text: str, pattern: re.Pattern[str]) -> dict[str, str]:
    """The options `text` labels, each with the label as written."""
    return _named(pattern.finditer(text))


def _named(matches: Iterable[re.Match[str]]) -> dict[str, str]:
    return {(m.group(1) or m.group(2)).lower(): m.group(0) for m in matches}


def quoted_labels(output: str, options: list[str], chosen: str) -> list[str]:
    """Labels the answer's own quotes give in place of its decision: it answers "info" and quotes
    "Error swallowed in retry path, severity: medium"."""
    pattern = _label_pattern(options)
    found: list[str] = []
    for passage in quoted_passages(output):
        named = _labels(passage, pattern)
        if named and chosen not in named:
            found += [written for written in named.values() if written not in found]
    return found


def _paragraphs(bundle: ContextBundle) -> list[str]:
    out = []
    for item in (*bundle.exemplars, *bundle.warnings):
        if item.title:
            out.append(item.title)
        out += [p for p in _PARAGRAPH_BREAK.split(item.text) if p.strip()]
    return out


MAX_LOCATED_QUOTES = 20
"""Quotes looked up paragraph by paragraph to back a decision: an answer backs it in its first few,
and the bound keeps the lookup linear (thousands of quotes against thousands of paragraphs)."""


def unbacked_decision(output: str, bundle: ContextBundle, task: str, options: list[str], chosen: str) -> str | None:
    """Why the decision rests on nothing the evidence labels, or None. Where the references label the
    options for what the task asks about ("severity: medium" for "what severity should this finding
    get", or "(low)" beside the task's own words), those labels are what a decision is read from; an
    answer that says "Info." and quotes a summary line, a file header or another finding's sentence
    (the 0.5B's habit: it answers the first option and quotes whatever it saw) backs its decision with
    nothing. So the paragraph of a passage it quotes (or, quoting none, some reference) must label
    its decision. Evidence whose labels concern other things (a config's "enabled: no") asks for
    nothing; PubMedQA's abstracts label no yes/no/maybe at all."""
    pattern = _label_pattern(options)
    paragraphs = _paragraphs(bundle)
    label_matches = [list(pattern.finditer(p)) for p in paragraphs]
    if not any(label_matches):
        return None  # the references label no option (an abstract's yes/no/maybe): nothing to back
    paragraph_labels = [_named(matches) for matches in label_matches]
    paragraph_grams = [_grams(p) for p in paragraphs]
    task_words = content_tokens(task) - set(options)
    task_grams = {g for g in _grams(task) if task_words.intersection(g)}

    def about_the_task(i: int) -> bool:
        for m in label_matches[i]:
            key = _LABEL_KEY.search(paragraphs[i], max(0, m.start() - 40), m.start()) if m.group(2) else None
            if key and key.group(1).lower() in task_words:
                return True
        return bool(task_grams & paragraph_grams[i])

    if not any(label_matches[i] and about_the_task(i) for i in range(len(paragraphs))):
        return None
    passages = quoted_passages(output)
    if any(chosen in _labels(passage, pattern) for passage in passages):
        return None
    located = False
    for passage in passages[:MAX_LOCATED_QUOTES]:
        grams = _grams(passage)
        best = max((len(grams & g) for g in paragraph_grams), default=0)
        if not best:
            continue  # a passage in no reference is the citations check's to fail
        located = True
        if any(len(grams & g) == best and chosen in labels for g, labels in zip(paragraph_grams, paragraph_labels)):
            return None
    if located:
        return f"decides {_short(chosen)}, but no passage it quotes is labelled {_short(chosen)} in the references"
    if any(chosen in labels for labels in paragraph_labels):
        return None
    labelled = sorted({written for labels in paragraph_labels for written in labels.values()})
    return f"decides {_short(chosen)}, but the references label only {_quote(labelled)}"


def check_answer_form(output: str, bundle: ContextBundle, task: str) -> GateCheck:
    """A task that offers options gets exactly one of them, first (copying 'yes, no or maybe' back is
    not a decision), backed by the evidence where the evidence labels them; a task that asks which
    file gets a file path."""
    options = task_options(task)
    if options:
        first_sentence = _SENTENCE_END.split(output.strip(), maxsplit=1)[0].lower()
        words = re.findall(r"[a-z]+", first_sentence)
        chosen = next((w for w in words[:5] if w in options), None)
        if chosen is None:
            return _check("answer_form", False, f"the answer does not open with one of {_quote(options)}")
        others = sorted({w for w in words if w in options and w != chosen})
        if others:
            return _check("answer_form", False, f"the first sentence names {_short(chosen)} and also {_quote(others)}: no single decision")
        contradicting = quoted_labels(output, options, chosen)
        if contradicting:
            return _check("answer_form", False, f"decides {_short(chosen)}, but the passage it quotes says "
                                                f"{_quote(contradicting)}")
        unbacked = unbacked_decision(output, bundle, task, options, chosen)
        if unbacked:
            return _check("answer_form", False, unbacked)
        return _check("answer_form", True, f"decides {_short(chosen)}")
    if asks_for_file(task):
        if not cited_paths(output):
            return _check("answer_form", False, "the task asks for a file and the answer names no file path")
        return _check("answer_form", True, f"names {_short(cited_paths(output)[0])}")
    return _check("answer_form", True, "skipped: the task asks for no particular form")
