"""The validation gate: deterministic checks on a model's answer, never a model call.

`validate` is a pure function of (answer, bundle, task, thresholds). Each check says pass or fail
and why, so a failed run in the log explains itself. It is structural, not semantic: it catches
empty, hedged, placeholder, ungrounded and prompt-echo answers, not plausible-but-wrong ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from distill.config import GateSettings
from distill.records.replay import ContextBundle, GateCheck, GateResult
from runtime.prompt import make_nonce, render

_EXTENSIONS = (
    "py|pyi|rs|ts|tsx|js|jsx|mjs|cjs|go|java|kt|rb|php|c|h|cc|cpp|hpp|cs|swift|scala|sh|bash|zsh|ps1|"
    "md|rst|txt|json|jsonl|toml|yaml|yml|ini|cfg|conf|lock|sql|proto|html|css|scss|xml|csv|tsv|ipynb|"
    "gradle|dockerfile|mk|env|patch|diff|traj|gguf"
)
_PATH = re.compile(
    r"(?<![\w/.@-])"
    r"((?:\.{0,2}/)?(?:[\w.@+-]+/)*[\w@+-][\w.@+-]*\.(?:" + _EXTENSIONS + r"))"
    r"(?::\d+(?:-\d+)?)?(?![\w/-])",
    re.IGNORECASE,
)
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_RECORD_ID = re.compile(
    r"\b([a-z][a-z0-9_]*-[0-9a-f]{8,64}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b"
)
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


def _quote(items: Iterable[str], limit: int = 5) -> str:
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


@lru_cache(maxsize=32)
def _compiled(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


def content_tokens(text: str) -> set[str]:
    """Lower-cased words of 3+ characters, stop words and checklist verbs removed."""
    return {w for w in _WORD.findall(text.lower()) if len(w) >= 3 and w not in _STOPWORDS}


def cited_paths(text: str) -> list[str]:
    """File paths an answer cites (URLs ignored, `:line` suffixes dropped), in order, unique."""
    found: list[str] = []
    for m in _PATH.finditer(_URL.sub(" ", text)):
        path = m.group(1)
        while path.startswith("./"):
            path = path[2:]
        if path not in found:
            found.append(path)
    return found


def cited_ids(text: str) -> list[str]:
    """Record ids an answer cites: prefix-hex ids (rag-1a2b..., replay-...) and UUIDs."""
    found: list[str] = []
    for m in _RECORD_ID.finditer(_URL.sub(" ", text)):
        if m.group(1) not in found:
            found.append(m.group(1))
    return found


def _bundle_text(bundle: ContextBundle, task: str) -> str:
    parts = [task, *bundle.validation_steps]
    for item in (*bundle.exemplars, *bundle.warnings):
        parts += [item.id, item.source_run_id or "", item.title or "", item.text, *item.source_files]
    return "\n".join(parts)


def _path_grounded(path: str, haystack: str, files: list[str]) -> bool:
    if path in haystack:
        return True
    for f in files:
        f = f.removeprefix("./")
        if f == path or f.endswith("/" + path) or path.endswith("/" + f):
            return True
    return False


def check_grounding(output: str, bundle: ContextBundle, task: str, *, require_citation: bool) -> GateCheck:
    paths, ids = cited_paths(output), cited_ids(output)
    if not paths and not ids:
        if require_citation:
            return _check("grounding", False, "the answer cites no file path or record id (citations required)")
        return _check("grounding", True, "the answer cites no file path or record id")
    haystack = _bundle_text(bundle, task)
    files = [f for item in (*bundle.exemplars, *bundle.warnings) for f in item.source_files]
    known_ids = {i.id for i in (*bundle.exemplars, *bundle.warnings)} | {
        i.source_run_id for i in (*bundle.exemplars, *bundle.warnings) if i.source_run_id
    }
    bad_paths = [p for p in paths if not _path_grounded(p, haystack, files)]
    bad_ids = [i for i in ids if i not in known_ids and i not in haystack]
    if bad_paths or bad_ids:
        what = []
        if bad_paths:
            what.append(f"file paths not in the bundle or task: {_quote(bad_paths)}")
        if bad_ids:
            what.append(f"record ids not in the bundle or task: {_quote(bad_ids)}")
        return _check("grounding", False, "; ".join(what))
    return _check("grounding", True, f"all {len(paths)} cited paths and {len(ids)} cited ids appear in the bundle or task")


def check_checklist(output: str, bundle: ContextBundle, min_overlap: float) -> GateCheck:
    if not bundle.validation_steps:
        return _check("checklist_overlap", True, "skipped: the bundle has no validation steps")
    wanted = set().union(*(content_tokens(s) for s in bundle.validation_steps))
    if not wanted:
        return _check("checklist_overlap", True, "skipped: the validation steps have no content words")
    got = wanted & content_tokens(output)
    ratio = len(got) / len(wanted)
    reason = f"{len(got)}/{len(wanted)} checklist tokens present ({ratio:.2f}, need {min_overlap:.2f})"
    if ratio < min_overlap:
        reason += f"; missing e.g. {_quote(sorted(wanted - got), 6)}"
    return _check("checklist_overlap", ratio >= min_overlap, reason)


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _retrieved_text(bundle: ContextBundle) -> str:
    parts = list(bundle.validation_steps)
    for item in (*bundle.exemplars, *bundle.warnings):
        parts += [item.id, item.source_run_id or "", item.title or "", item.text, *item.source_files]
    return "\n".join(parts)


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


# The prompt's delimiters exactly as runtime.prompt writes them: lowercase tags, attributes allowed.
_PROMPT_MARKUP = re.compile(r"</?(task|retrieved|checklist)(?:\s[^<>]*)?>")


def check_prompt_markup(output: str) -> GateCheck:
    """Fail an answer that reproduces the prompt's own delimiters (<task>, <retrieved ...>,
    <checklist ...>): the model is replaying its prompt, often loosely enough (paraphrased rules,
    a repeated <task> tag) that n-gram echo matching misses it. Retrieved text cannot supply these
    tags: the prompt neutralises look-alikes inside it."""
    found = sorted({m.group(1) for m in _PROMPT_MARKUP.finditer(output)})
    if found:
        return _check("prompt_markup", False, f"the answer reproduces the prompt's own tags: {_quote(f'<{t}>' for t in found)}")
    return _check("prompt_markup", True, "no prompt markup in the answer")


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
    for pattern in _compiled(tuple(settings.placeholder_patterns)):
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

    checks.append(check_checklist(text, bundle, settings.min_checklist_overlap))
    checks.append(check_grounding(text, bundle, task, require_citation=settings.require_citation))
    checks.append(check_echo(text, bundle, task, n=settings.echo_ngram, max_fraction=settings.max_echo_fraction))
    checks.append(check_prompt_markup(text))
    return GateResult(passed=all(c.passed for c in checks), checks=checks)
