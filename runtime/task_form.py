"""What form of answer a task asks for, and a worked example of that form for the prompt.

The gate's answer_form check and the prompt read the same rules, so a task the gate will hold to
"one of its options first" is also the task whose prompt demonstrates that form. The examples exist
because the packaged 0.5B ignores a two-part instruction ("answer yes, no or maybe, then quote the
evidence") and stops after one word; one worked exchange before the real question made it write both
parts (benchmarks/prompt_variants.py measures this). The example's facts are invented on purpose and
appear in no evidence: an answer that copies them fails the support and echo checks.
"""

from __future__ import annotations

import re
from enum import Enum

MAX_OPTIONS = 12
"""A choice offers at most this many options; the bound also keeps the scan linear: with an open
list, each 'answer' in ",answer ,answer ,answer ..." read the list to its end (quadratic)."""
_OPTIONS = re.compile(
    r"\b(?:answer|reply|respond|choose|pick|one of|one word)\b[^.\n]{0,40}?\b"
    r"([a-z]{1,12}(?:\s{0,3},\s{0,3}[a-z]{1,12}){0,%d},?\s+or\s+[a-z]{1,12})\b" % (MAX_OPTIONS - 2)
)
_ASKS_FOR_FILE = re.compile(
    r"\b(?:which|what) (?:source )?files?\b|\bthe file path\b|\banswer with the (?:file )?path\b", re.IGNORECASE
)


class AnswerForm(str, Enum):
    CHOICE = "choice"
    FILE = "file"
    FREE = "free"


def task_options(task: str) -> list[str]:
    """The options a task asks the answer to choose from ('Answer yes, no or maybe', 'reply with one
    word: low, medium or high'), when it asks for one; otherwise []."""
    for m in _OPTIONS.finditer(task.lower()):
        words = [w for w in re.split(r"\s*,\s*|\s+or\s+", m.group(1)) if w]
        if len(words) >= 2 and all(len(w) <= 12 for w in words) and len(set(words)) == len(words):
            return words
    return []


def asks_for_file(task: str) -> bool:
    return bool(_ASKS_FOR_FILE.search(task))


def answer_form(task: str) -> AnswerForm:
    if task_options(task):
        return AnswerForm.CHOICE
    if asks_for_file(task):
        return AnswerForm.FILE
    return AnswerForm.FREE


_CHOICE_REFERENCE = (
    "title: Aspirin after a first stroke",
    "Second strokes were as frequent with aspirin as with placebo (6% vs 6%).",
    "Bleeding was rare in both groups.",
)
_FILE_REFERENCE = (
    "title: Invoice totals off by one cent",
    "The total is rounded in round_total() in billing/invoice.py before tax is added; rounding after tax fixed it.",
)


_ASKED_ABOUT = re.compile(r"\b(?:what|which)\s+([a-z]{3,20})\b", re.IGNORECASE)
_NOT_A_LABEL = frozenset("does did should would could will can are was were has have had the this that these those one "
                         "kind sort type".split())
_LABELLED_FINDING = "Rounding before tax in round_total()"


def listed(options: list[str]) -> str:
    """The options as a task offers them: "info, low, medium, high or critical"."""
    return ", ".join(options[:-1]) + " or " + options[-1]


def labelled_example(task: str, nonce: str, options: list[str], decision: str) -> list[dict[str, str]]:
    """The worked example for a choice that is no yes/no question ("what severity ... info, low,
    medium, high or critical"): the reference labels its finding with one option under the word the
    task asks about ("severity: medium"), and the answer gives that label and quotes the labelled line.
    It shows where a decision comes from: the evidence's label, not the example's decision."""
    asked = _ASKED_ABOUT.search(task)
    key = asked.group(1).lower() if asked else "rating"
    if key in options or key in _NOT_A_LABEL:
        key = "rating"
    labelled = f"{_LABELLED_FINDING} \u2014 {key}: {decision}"
    head = f"Reference 1 (accepted, id example:1, files billing/invoice.py) [{nonce}]:"
    lines = ("title: Review of billing/invoice.py", labelled, "Totals drift by a cent because tax is added after rounding.")
    question = (f"A review of billing/invoice.py found: {_LABELLED_FINDING}. What {key} should it get? Answer {listed(options)} "
                "as the first word, then quote the line of the evidence that decides it.")
    # "Reference 1 says:" led the 0.5B on into a reference's header ("High. Reference 3 (partially
    # accepted, id ...) [nonce]: > ..."): half its answers copied the prompt's markup; "as reference 1
    # labels it" none (benchmarks/results/prompt_variants_labels.md)
    answer = f'{decision.capitalize()}, as reference 1 labels it: "{labelled}"'
    user = head + "\n" + "\n".join("> " + ln for ln in lines) + f"\n\nQuestion: {question}\n\nAnswer:"
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def worked_example(task: str, nonce: str) -> list[dict[str, str]]:
    """One invented user/assistant exchange in the prompt's own layout showing the form the task asks
    for (decision first, then the evidence quoted; or the path first, then why), or [] for a free-form
    task. The options offered in the example are the task's own, so the form carries over."""
    form = answer_form(task)
    if form is AnswerForm.FREE:
        return []
    if form is AnswerForm.CHOICE:
        options = task_options(task)
        if "no" not in options:
            return labelled_example(task, nonce, options, options[len(options) // 2])
        decision = "no"
        head = f"Reference 1 (accepted, id example:1) [{nonce}]:"
        question = (f"Does aspirin prevent a second stroke? Answer {listed(options)} as the first word, then quote the "
                    "sentence of the evidence that decides it.")
        answer = f'{decision.capitalize()}. Reference 1 says: "{_CHOICE_REFERENCE[1]}"'
        lines = _CHOICE_REFERENCE
    else:
        head = f"Reference 1 (accepted, id example:1, files billing/invoice.py) [{nonce}]:"
        question = ("Invoice totals are one cent off after tax. Which file must change to fix this issue? "
                    "Answer with the file path, then one sentence on why.")
        answer = 'billing/invoice.py: Reference 1 says "The total is rounded in round_total() in billing/invoice.py before tax is added".'
        lines = _FILE_REFERENCE
    user = head + "\n" + "\n".join("> " + ln for ln in lines) + f"\n\nQuestion: {question}\n\nAnswer:"
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
