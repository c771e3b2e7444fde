"""The answer's shape: placeholders, the checklist addressed, no echo of the retrieved text or of the
prompt's markup.
"""

from __future__ import annotations

import re
from functools import lru_cache

from distill.records.replay import ContextBundle, GateCheck
from runtime.gate.common import (
    _WORD,
    _check,
    _ngrams,
    _quote,
    _retrieved_text,
    content_tokens,
)
from runtime.prompt import make_nonce, render
from runtime.task_form import task_options


@lru_cache(maxsize=32)
def placeholder_regexes(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    """`[gate] placeholder_patterns` compiled once (case-insensitive): the gate's and the auditor's."""
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


def check_checklist(output: str, bundle: ContextBundle, min_overlap: float, task: str = "") -> GateCheck:
    if not bundle.validation_steps:
        return _check("checklist_overlap", True, "skipped: the bundle has no validation steps")
    if task_options(task):
        return _check("checklist_overlap", True, "skipped: the task asks to choose an option, not to review or fix")
    wanted = set().union(*(content_tokens(s) for s in bundle.validation_steps))
    if not wanted:
        return _check("checklist_overlap", True, "skipped: the validation steps have no content words")
    got = wanted & content_tokens(output)
    ratio = len(got) / len(wanted)
    reason = f"{len(got)}/{len(wanted)} checklist tokens present ({ratio:.2f}, need {min_overlap:.2f})"
    if ratio < min_overlap:
        reason += f"; missing e.g. {_quote(sorted(wanted - got), 6)}"
    return _check("checklist_overlap", ratio >= min_overlap, reason)


def check_echo(output: str, bundle: ContextBundle, task: str, *, n: int, max_fraction: float) -> GateCheck:
    """Fail an answer that mostly repeats its prompt (the task, the system rules, the prompt's own
    markup) instead of answering: a small base model often does exactly this, and without a
    checklist nothing else catches it. The prompt text comes from runtime.prompt.render with an empty
    bundle, so it tracks the real instructions; n-grams that also occur in retrieved text are not
    counted, because a grounded answer may quote exemplars and validation steps verbatim."""
    words = _WORD.findall(output.lower())
    grams = _ngrams(words, n)
    if not grams:
        return _check("echo", True, f"skipped: the answer has fewer than {n} words")
    nonce = bundle.nonce or make_nonce(task, bundle)
    prompt_text = "\n".join(m["content"] for m in render(task, ContextBundle(), nonce))
    prompt_grams = set(_ngrams(_WORD.findall(prompt_text.lower()), n))
    retrieved_grams = set(_ngrams(_WORD.findall(_retrieved_text(bundle).lower()), n))
    echoed = sum(1 for g in grams if g in prompt_grams and g not in retrieved_grams)
    ratio = echoed / len(grams)
    reason = (
        f"{echoed}/{len(grams)} word {n}-grams ({ratio:.0%}) repeat the task or the prompt's instructions "
        f"(max {max_fraction:.0%})"
    )
    return _check("echo", ratio <= max_fraction, reason)


# The prompt's own scaffolding as runtime.prompt writes it (reference headings, the checklist heading,
# the question line), and the tags of the layout it replaced.
_PROMPT_MARKUP = re.compile(
    r"</?(task|retrieved|checklist)(?:\s[^<>]*)?>"  # tags of earlier prompt layouts
    r"|^\s*(Reference \d+ \((?:accepted|partially accepted)|Checklist \[|Question:|> title:)",  # this layout's own lines
    re.MULTILINE,
)


def check_prompt_markup(output: str, nonce: str | None = None) -> GateCheck:
    """Fail an answer that reproduces the prompt's own scaffolding (its tags or marker lines, or the
    prompt's nonce): the model is replaying its prompt, often loosely enough (paraphrased rules, a
    repeated marker) that n-gram echo matching misses it. Retrieved text cannot supply these: the
    prompt neutralises look-alikes inside it and removes the nonce from it."""
    found = sorted({(m.group(1) or m.group(2)).strip() for m in _PROMPT_MARKUP.finditer(output)})
    if nonce and nonce in output:
        found.append("nonce")
    if found:
        return _check("prompt_markup", False, f"the answer reproduces the prompt's own markup: {_quote(found)}")
    return _check("prompt_markup", True, "no prompt markup in the answer")
