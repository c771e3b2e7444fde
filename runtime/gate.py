"""The validation gate: deterministic checks on a model's answer, never a model call.

`validate` is a pure function of (answer, bundle, task, thresholds). Each check says pass or fail
and why, so a failed run in the log explains itself. It catches empty, hedged, placeholder,
ungrounded and prompt-echo answers, and, through `support`, fabrication: an answer whose figures,
code identifiers or content words are not in the retrieved bundle or the task, or that turns a change
the bundle states the other way round, is not accepted because it is fluent. It cannot tell a
plausible answer drawn from the evidence from a right one.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from distill.config import GateSettings
from distill.records.common import LONE_SURROGATE
from distill.records.replay import ContextBundle, GateCheck, GateResult
from runtime.prompt import make_nonce, render
from runtime.task_form import asks_for_file, task_options

_EXTENSIONS = (
    "py|pyi|rs|ts|tsx|js|jsx|mjs|cjs|go|java|kt|rb|php|c|h|cc|cpp|hpp|cs|swift|scala|sh|bash|zsh|ps1|"
    "md|rst|txt|json|jsonl|toml|yaml|yml|ini|cfg|conf|lock|sql|proto|html|css|scss|xml|csv|tsv|ipynb|"
    "gradle|dockerfile|mk|env|patch|diff|traj|gguf"
)
_PATH = re.compile(
    r"(?<![\w/.@+-])"  # a path starts where a run of path characters does ("+" too: "a+a+a..." began
    # a scan to the run's end at every "+", quadratic in its length)
    r"((?:\.{0,2}/)?(?:[\w.@+-]+/)*[\w@+-][\w.@+-]*\.(?:" + _EXTENSIONS + r"))"
    r"(?::\d+(?:-\d+)?)?(?![\w/-])",
    re.IGNORECASE,
)
# a scheme starts where a run of scheme characters starts, and is read once (possessive): with "\b"
# alone, every boundary inside "a.a.a.a..." began a scan to the run's end, quadratic in its length
_URL = re.compile(r"(?<![a-z0-9+.-])[a-z][a-z0-9+.-]*+://\S+", re.IGNORECASE)
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


MAX_QUOTED_CHARS = 120


def _short(item: str) -> str:
    """An item a reason names, cut to a readable length: reasons are logged with every run, and a
    model can write a 40,000-character "path"."""
    return repr(item if len(item) <= MAX_QUOTED_CHARS else item[:MAX_QUOTED_CHARS] + "…")


def _quote(items: Iterable[str], limit: int = 5) -> str:
    items = list(items)
    shown = ", ".join(_short(i) for i in items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


@lru_cache(maxsize=32)
def placeholder_regexes(patterns: tuple[str, ...]) -> tuple[re.Pattern[str], ...]:
    """`[gate] placeholder_patterns` compiled once (case-insensitive): the gate's and the auditor's."""
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


def content_tokens(text: str) -> set[str]:
    """Lower-cased words of 3+ characters, stop words and checklist verbs removed."""
    return {w for w in _WORD.findall(text.lower()) if len(w) >= 3 and w not in _STOPWORDS}


def _path_matches(text: str) -> Iterator[re.Match[str]]:
    """The paths a text names outside its URLs: group 1 the path, then its `:line` suffix if any."""
    return _PATH.finditer(_URL.sub(" ", text))


def cited_paths(text: str) -> list[str]:
    """File paths an answer cites (URLs ignored, `:line` suffixes dropped), in order, unique."""
    found: list[str] = []
    for m in _path_matches(text):
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


# an e-mail address, read once from where its run starts (possessive, as _URL); cited_links keeps
# those whose domain ends in a label of 2+ letters, so `x@w.T` in code is no address
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]++@[a-z0-9-]++(?:\.[a-z0-9-]++)++(?![\w@])", re.IGNORECASE)
_TOP_LEVEL = re.compile(r"\.[a-z]{2,}", re.IGNORECASE)
_URL_END = ".,;:!?'\"*_`"  # what ends a sentence or markup, not the link
_CLOSERS = {")": "(", "]": "[", "}": "{", ">": "<"}


def _trim_link(url: str) -> str:
    """A URL as the answer means it: without the sentence's punctuation or markup after it, nor a
    closing bracket it does not open (`(see https://x/y)`, `[a](https://x/y)`, `<https://x/y>`)."""
    opened = {c: url.count(c) for c in _CLOSERS.values()}
    closed = {c: url.count(c) for c in _CLOSERS}
    end = len(url)
    while end:
        last = url[end - 1]
        if last in _URL_END or (last in _CLOSERS and closed[last] > opened[_CLOSERS[last]]):
            end -= 1
            if last in closed:
                closed[last] -= 1
        else:
            break
    return url[:end]


def cited_links(text: str) -> list[str]:
    """URLs and e-mail addresses an answer gives, in order, unique: each names a page or a contact
    the evidence must hold, as a cited file must."""
    found: dict[str, None] = {}
    for m in _URL.finditer(text):
        found[_trim_link(m.group(0))] = None
    for m in _EMAIL.finditer(_URL.sub(" ", text)):
        address = m.group(0)
        if _TOP_LEVEL.fullmatch(address[address.rfind("."):]):
            found[address] = None
    return list(found)


_NOT_AFTER = re.compile(r"[a-z0-9_-]")  # a link found in the evidence must end where an address ends there


def _link_grounded(link: str, lowered_evidence: str) -> bool:
    """The link, compared case-insensitively and without its scheme, trailing '/' or 'www.', is in
    the evidence as a whole address or the start of one: a page the evidence links, or a site or
    folder above it. A page under a site the evidence names, or a look-alike host, is not."""
    core = link.lower().split("://", 1)[-1].removeprefix("www.").rstrip("/")
    if not core:
        return False
    start = lowered_evidence.find(core)
    while start != -1:
        before = lowered_evidence[start - 1] if start else " "
        end = start + len(core)
        after = lowered_evidence[end] if end < len(lowered_evidence) else " "
        starts = not (before.isalnum() or before in ".-_") or lowered_evidence.endswith("www.", 0, start)
        if starts and not _NOT_AFTER.match(after):
            return True
        start = lowered_evidence.find(core, start + 1)
    return False


def _bundle_parts(bundle: ContextBundle) -> list[str]:
    """Every text the bundle gives the model: its checklist, and each item's ids, title, text and files."""
    parts = list(bundle.validation_steps)
    for item in (*bundle.exemplars, *bundle.warnings):
        parts += [item.id, item.source_run_id or "", item.title or "", item.text, *item.source_files]
    return parts


def _bundle_text(bundle: ContextBundle, task: str) -> str:
    return "\n".join([task, *_bundle_parts(bundle)])


def _path_grounded(path: str, haystack: str, files: list[str]) -> bool:
    if path in haystack:
        return True
    if path[:2] in ("a/", "b/") and len(path) > 2 and _path_grounded(path[2:], haystack, files):
        return True  # a unified diff's `--- a/x` / `+++ b/x` header names x
    for f in files:
        f = f.removeprefix("./")
        if f == path or f.endswith("/" + path) or path.endswith("/" + f):
            return True
    return False


def check_grounding(output: str, bundle: ContextBundle, task: str, *, require_citation: bool) -> GateCheck:
    paths, ids = cited_paths(output), cited_ids(output)
    haystack = _bundle_text(bundle, task)
    links = cited_links(output)
    lowered = haystack.lower() if links else ""
    bad_links = [link for link in links if not _link_grounded(link, lowered)]
    if not paths and not ids:
        if bad_links:
            return _check("grounding", False, f"links not in the bundle or task: {_quote(bad_links)}")
        if require_citation:
            return _check("grounding", False, "the answer cites no file path or record id (citations required)")
        return _check("grounding", True, "the answer cites no file path or record id" +
                      (f"; its {len(links)} links appear in the bundle or task" if links else ""))
    files = [f for item in (*bundle.exemplars, *bundle.warnings) for f in item.source_files]
    known_ids = {i.id for i in (*bundle.exemplars, *bundle.warnings)} | {
        i.source_run_id for i in (*bundle.exemplars, *bundle.warnings) if i.source_run_id
    }
    bad_paths = [p for p in paths if not _path_grounded(p, haystack, files)]
    bad_ids = [i for i in ids if i not in known_ids and i not in haystack]
    if bad_paths or bad_ids or bad_links:
        what = []
        if bad_paths:
            what.append(f"file paths not in the bundle or task: {_quote(bad_paths)}")
        if bad_ids:
            what.append(f"record ids not in the bundle or task: {_quote(bad_ids)}")
        if bad_links:
            what.append(f"links not in the bundle or task: {_quote(bad_links)}")
        return _check("grounding", False, "; ".join(what))
    return _check("grounding", True, f"all {len(paths)} cited paths and {len(ids)} cited ids"
                  + (f" and {len(links)} links" if links else "") + " appear in the bundle or task")


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


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def _grams(text: str) -> set[tuple[str, ...]]:
    """The text's word 3-grams, lower-cased: what quotes are matched by."""
    return set(_ngrams(_WORD.findall(text.lower()), 3))


def _retrieved_text(bundle: ContextBundle) -> str:
    return "\n".join(_bundle_parts(bundle))


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


# ---------------------------------------------------------------------------------------------
# support: is the answer's content in the evidence (the bundle and the task)?

# a number's digit groups, read once (possessive): "0.02", thousands after a comma ("2,300") or a
# no-break or thin space ("12 345", SI style). A comma before other than three digits separates
# numbers ("1,2,3", a hunk's "-120,7"), as does a plain space
_GROUPS = r"\d++(?:\.\d++|[,\u00a0\u2009\u202f]\d{3}+(?!\d))*+"
_NUMBER = re.compile(r"(?<![\w.])[-+\u2212]?" + _GROUPS + r"(?:\s?%)?")  # U+2212 is the minus sign
# within one line: "^\s*" ran over every following blank line from every line start, quadratic in them
_LIST_MARKER = re.compile(r"^[ \t]*(?:\d+[.)]|[-*+]|#+)[ \t]+", re.MULTILINE)
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_FENCED = re.compile(r"^[ \t]*```.*?(?:^[ \t]*```|\Z)", re.MULTILINE | re.DOTALL)
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
SMALL_NUMBERS = 10
"""Bare integers up to this (counts, steps, list items) are not checked as figures."""
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


_FIGURE = re.compile(
    r"(?<![\w.])(?:"
    r"(?P<date>\d{4}-\d{2}-\d{2})(?!\d)"  # 2026-01-15, one figure rather than three numbers
    r"|(?P<hash>(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,64})(?![\w])"  # a commit or content hash
    r"|(?P<hex>0x[0-9a-f]+)(?![\w])"
    r"|v(?P<version>\d+(?:\.\d+)*)(?![\w])"  # v4.17.21 is the version 4.17.21
    r"|(?P<code>[a-z]+\d[a-z0-9]*(?:\.\d+)*)(?![\w])"  # H100, sha256, py311: a name that is its figure
    r"|(?P<number>[-+\u2212]?" + _GROUPS + r"(?:e[-+]?\d+(?!\w|\.\d))?(?:\s?%|\s+per\s?cent\b)?)"  # 18%, 2,300, 0.02, 3e-4
    r")",
    re.IGNORECASE,
)
_ORDINAL = re.compile(r"(?<![\w.])(\d+)(?:st|nd|rd|th)\b", re.IGNORECASE)
_NUMBER_WORDS = (
    "one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|"
    "eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|thousand|million|billion"
)
_NUMBER_WORD_COMPOUND = re.compile(rf"\b({_NUMBER_WORDS})-(?!(?:{_NUMBER_WORDS})\b)(?=[a-z]|\s)", re.IGNORECASE)
_MAGNITUDES = frozenset({"100", "1000", "1000000", "1000000000", "1000000000000"})
"""A scale word alone ("several thousand", "a million") is an order of magnitude, not a figure."""
MAX_EXPONENT = 30
"""Scientific notation up to this exponent is compared by value (3e-4 = 0.0003); a larger one as written."""


def _number(raw: str) -> str:
    """One spelling per value: thousands separators and a leading + dropped, 30.0 = 30, 1e-4 = 0.0001,
    18 percent = 18%."""
    fig = re.sub(r"\s", "", re.sub(r"per\s?cent$", "%", raw.lower())).replace(",", "").replace("\u2212", "-").lstrip("+")
    if not fig.isascii():  # digits of another script, or full-width ones, are the same value: "３０" = 30
        fig = "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in fig)
    percent = "%" if fig.endswith("%") else ""
    body = fig.removesuffix("%")
    if "e" in body.lower() or body.count(".") == 1:
        try:
            value = Decimal(body)
        except InvalidOperation:
            return fig.lower()
        exponent = value.as_tuple().exponent
        if not isinstance(exponent, int) or abs(exponent) > MAX_EXPONENT or value.adjusted() > MAX_EXPONENT:
            return fig.lower()
        body = format(value.normalize(), "f")
    return body + percent


def _figure(m: re.Match[str]) -> str:
    kind = m.lastgroup
    if kind == "number":
        return _number(m.group(0))
    if kind == "version":
        return _number(m.group("version"))
    return m.group(0).lower()


def _strip_non_figures(text: str) -> str:
    """List markers, URLs, paths and record ids carry digits that are not figures."""
    text = _LIST_MARKER.sub(" ", _URL.sub(" ", text))
    return _RECORD_ID.sub(" ", _PATH.sub(" ", text))


def _all_figures(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """Each figure's one spelling -> how the text first wrote it; and the same for its versions
    alone ("v5" names a release, however small its number)."""
    found: dict[str, str] = {}
    versions: dict[str, str] = {}
    for m in _FIGURE.finditer(text):
        fig = _figure(m)
        found.setdefault(fig, m.group(0))
        if m.lastgroup == "version":
            versions.setdefault(fig, m.group(0))
    return found, versions


def _figure_list(text: str) -> list[str]:
    return [_figure(m) for m in _FIGURE.finditer(text)]


def _in_digits(text: str) -> str:
    """`text` with its numbers in words written in digits (text2num): "ninety seconds" -> "90 seconds"."""
    from text_to_num import alpha2digit

    text = _NUMBER_WORD_COMPOUND.sub(r"\1 ", text)  # "thirty-one-day mortality": the number, then its noun
    # a small number before a unit is a measurement ("two minutes"), though alone it is a count
    text = _SMALL_WORD_WITH_UNIT.sub(_small_in_digits, text)
    # text2num takes UTF-8 only: a lone surrogate (JSON "\ud800" reads as one) raised from the gate
    return alpha2digit(LONE_SURROGATE.sub("\ufffd", text), "en", threshold=SMALL_NUMBERS)


@lru_cache(maxsize=8)
def _figure_text(text: str) -> tuple[str, str]:
    """(`text` without list markers, URLs, paths and ids; the same with its numbers in words in
    digits), made once per text: check_support reads the evidence for its figures, the numbers
    inside them and its figures with units, and the answer for two of those."""
    stripped = _strip_non_figures(text)
    return stripped, _in_digits(stripped)


def _spelled_figures(text: str, converted: str) -> list[str]:
    """Figures written in words ("ninety seconds", "two hundred and twelve patients"), as digits:
    those `converted` (`text` after `_in_digits`) states beyond `text`'s own. An ordinal
    ("twenty-first", "thirty second": 32nd or 30 s?) and a scale word alone are left out."""
    if converted == text:
        return []
    new = Counter(_figure_list(converted)) - Counter(_figure_list(text))
    ordinals = Counter(m.group(1) for m in _ORDINAL.finditer(converted)) - Counter(
        m.group(1) for m in _ORDINAL.finditer(text))
    new -= ordinals
    return [f for f in new if f not in _MAGNITUDES]


def _at_most(digits: str, limit: int) -> bool:
    """`digits` (no leading zeros) is a number up to `limit`, compared as text first: int() refuses a
    number of thousands of digits, and a model can write one."""
    return len(digits) <= len(str(limit)) and int(digits) <= limit


def _checked(fig: str) -> bool:
    bare = fig.lstrip("-").lstrip("0") or "0"
    return not (bare.isdigit() and _at_most(bare, SMALL_NUMBERS))


_CURRENCY = re.compile(r"[$€£¥]\s?(" + _GROUPS + ")")


@lru_cache(maxsize=8)
def _measured(text: str) -> frozenset[str]:
    """Numbers `text` states with a unit or a currency sign ("2 minutes", "$5"): a measurement, so
    checked however small, where a bare small number is a count."""
    converted = _figure_text(text)[1]
    return frozenset({value for value, _ in figures_with_units(text)}
                     | {_number(m.group(1)) for m in _CURRENCY.finditer(converted)})


def _line_numbers(text: str) -> dict[str, str]:
    """The line numbers a text gives after a path ("src/cache.rs:110", "a.py:3-9"), each -> the path
    as written: a line is a figure, though the path around it is not one."""
    found: dict[str, str] = {}
    for m in _path_matches(text):
        suffix = m.group(0)[len(m.group(1)):]
        for n in re.findall(r"\d+", suffix):
            found.setdefault(_number(n), m.group(0))
    return found


def stated_figures(text: str) -> dict[str, str]:
    """The figures a text states, each by its one spelling (-> as the text wrote it): numbers (with
    their % sign), scientific notation, versions, dates, hashes and names such as H100, numbers
    written in words, and the line numbers after paths; list markers, paths, ids and small counts
    (bare numbers up to SMALL_NUMBERS, but not "2 minutes", "$5" or "v5") left out."""
    stripped, converted = _figure_text(text)
    found, versions = _all_figures(stripped)
    spelled = _spelled_figures(stripped, converted)
    if spelled:  # rare: most texts write their figures in digits
        with_units = {value: written for (value, _), written in figures_with_units(text).items()}
        for fig in spelled:
            found.setdefault(fig, with_units.get(fig, fig))  # "2 minutes" says where, "2" alone does not
    measured = _measured(text)
    kept = {fig: written for fig, written in found.items() if _checked(fig) or fig.lstrip("-") in measured}
    for fig, written in [*_line_numbers(text).items(), *versions.items()]:
        kept.setdefault(fig, written)
    return kept


def figures_in(text: str) -> list[str]:
    """`stated_figures`' spellings, in order."""
    return list(stated_figures(text))


def evidence_figures(text: str) -> set[str]:
    """Every figure an answer may take from `text`: those `figures_in` finds, each also without its
    sign, and the plain numbers inside a compound one (the 15 of 2026-01-15), so an answer that
    states a part of a figure is not called a fabrication. A percentage stays one: 30% does not
    back "30-day" (measured on PubMedQA, where dropping the sign let a mismatched answer through)."""
    found = set(figures_in(text))
    for m in _NUMBER.finditer(_figure_text(text)[0]):
        found.add(_number(m.group(0)))
    return found | {f.lstrip("-") for f in found}


_UNIT_SPELLINGS: dict[str, tuple[str, ...]] = {
    "ns": ("ns", "nanoseconds?"), "µs": ("µs", "μs", "us", "microseconds?"), "ms": ("ms", "msecs?", "milliseconds?"),
    "s": ("s", "secs?", "seconds?"), "min": ("mins?", "minutes?"), "h": ("h", "hrs?", "hours?"), "day": ("days?",),
    "week": ("weeks?", "wks?"), "month": ("months?", "mos?"), "year": ("years?", "yrs?"),
    "byte": ("bytes?",), "KB": ("kb", "kib", "kilobytes?"), "MB": ("mb", "mib", "megabytes?"),
    "GB": ("gb", "gib", "gigabytes?"), "TB": ("tb", "tib", "terabytes?"),
    "µg": ("µg", "μg", "mcg", "ug", "micrograms?"), "mg": ("mg", "milligrams?"), "g": ("g", "grams?"),
    "kg": ("kg", "kilograms?"), "ml": ("ml", "millilit(?:er|re)s?"), "l": ("l", "lit(?:er|re)s?"),
    "mm": ("mm", "millimet(?:er|re)s?"), "cm": ("cm", "centimet(?:er|re)s?"), "km": ("km", "kilomet(?:er|re)s?"),
}
"""Units a figure is stated in, each with its spellings; a bare "m" (minutes or metres?) is none."""
_UNIT_OF = {spelling: unit for unit, spellings in _UNIT_SPELLINGS.items() for spelling in spellings}
_WITH_UNIT = re.compile(
    # a number starts at its first digit and is read once (possessive): "1,1,1,...", no unit after it,
    # was scanned again from every digit, quadratic in its length
    r"(?<![\w.])(?<!\d,)(" + _GROUPS + r")(?:\s?-\s?|\s)?(" + "|".join(_UNIT_OF) + r")(?![\w])", re.IGNORECASE
)


_SMALL_WORDS = "zero one two three four five six seven eight nine ten".split()
_SMALL_WORD_WITH_UNIT = re.compile(
    r"\b(" + "|".join(_SMALL_WORDS) + r")(\s(?:" + "|".join(_UNIT_OF) + r"))(?![\w])", re.IGNORECASE
)
"""A number up to ten in words directly before a unit ("two minutes", "five-year" once its hyphen is
a space): text2num leaves such numbers as words (SMALL_NUMBERS), so they are written in digits here."""


_ENDS_IN_NUMBER_WORD = re.compile(rf"\b(?:{_NUMBER_WORDS})(?:[\s-]+and)?[\s-]+$", re.IGNORECASE)


def _small_in_digits(m: re.Match[str]) -> str:
    """"two minutes" -> "2 minutes"; the last word of a larger number ("thirty-one days", "a hundred
    and five days") is left to text2num, which reads the whole number."""
    if _ENDS_IN_NUMBER_WORD.search(m.string, max(0, m.start() - 20), m.start()):
        return m.group(0)
    return str(_SMALL_WORDS.index(m.group(1).lower())) + m.group(2)


def _unit(spelled: str) -> str:
    return next(unit for spelling, unit in _UNIT_OF.items() if re.fullmatch(spelling, spelled, re.IGNORECASE))


def figures_with_units(text: str) -> dict[tuple[str, str], str]:
    """(value, unit) -> as written, for every figure stated with a unit ("30 s", "thirty-day", "5 mg")."""
    found: dict[tuple[str, str], str] = {}
    for m in _WITH_UNIT.finditer(_figure_text(text)[1]):
        found.setdefault((_number(m.group(1)), _unit(m.group(2))), m.group(0))
    return found


def unit_mismatches(output: str, evidence: str) -> list[str]:
    """Figures the evidence states in another unit only: "30 ms" where it says 30 seconds, "5 g"
    where it says 5 mg. A value the evidence states without a unit, or not at all, is left to the
    figure check."""
    units: dict[str, set[str]] = {}
    for value, unit in figures_with_units(evidence):
        units.setdefault(value, set()).add(unit)
    return [f"{written} (the evidence has {value} {' or '.join(sorted(units[value]))})"
            for (value, unit), written in figures_with_units(output).items()
            if value in units and unit not in units[value]]


def _signs(text: str) -> Iterator[tuple[str, str, str]]:
    """(sign: "+", "-" or "" for none, value, as written) for every number `text` states."""
    for m in _NUMBER.finditer(_figure_text(text)[0]):
        raw = m.group(0).replace("\u2212", "-")
        sign = raw[0] if raw[0] in "+-" else ""
        yield sign, _number(raw.lstrip("+-")), m.group(0)


def flipped_signs(output: str, evidence: str) -> list[str]:
    """Numbers the answer signs the other way from the evidence: "+30%" where it says only -30%,
    "-0.5" where it says +0.5. An unsigned number is a magnitude ("fell 30%" for -30%) and is left
    to the figure check, and so is a value the evidence also states unsigned."""
    signs: dict[str, dict[str, str]] = {}
    for sign, value, written in _signs(evidence):
        signs.setdefault(value, {}).setdefault(sign, written)
    found: list[str] = []
    for sign, value, written in _signs(output):
        known = signs.get(value, {})
        if sign and known and sign not in known and "" not in known:
            found.append(f"{written} (the evidence has {' or '.join(known.values())})")
    return list(dict.fromkeys(found))


# "gpt-4o", "phase-3", "IL-6", "covid-19-related": a name and its number, joined by a hyphen
_NUMBERED_NAME = re.compile(r"(?<![\w.-])([a-z]{2,}+)-(\d++(?:\.\d++)*+[a-z]*+)(?!\w|[.-]\d)", re.IGNORECASE)
# how evidence may write one: with a hyphen, a space or nothing between ("GPT-4o", "phase 3", "gpt4o")
_NAME_NUMBER = re.compile(r"\b([a-z]{2,}+)[-\s]?+(\d++(?:\.\d++)*+[a-z]*+)\b", re.IGNORECASE)


def renumbered_names(output: str, evidence: str) -> list[str]:
    """Numbered names the evidence gives with other numbers only: "gpt-5" where it names gpt-4o,
    "phase-2" where it says phase 3. The number after a name's hyphen is small and so no figure of
    its own ("5" is a count), but with the name it says which model, trial or grade. A name the
    evidence never numbers is left to the word and figure checks; "python-3" matches "Python 3.11"."""
    numbers: dict[str, dict[str, str]] = {}  # name -> its number -> as the evidence first wrote it
    for m in _NAME_NUMBER.finditer(evidence):
        numbers.setdefault(m.group(1).lower(), {}).setdefault(m.group(2).lower(), m.group(0))
    found: list[str] = []
    for m in _NUMBERED_NAME.finditer(_CODE_SPAN.sub(" ", _FENCED.sub(" ", output))):  # code: `count-1` is a sum
        name, number = m.group(1).lower(), m.group(2).lower()
        known = numbers.get(name)
        if known and not any(k == number or k.startswith(number + ".") for k in known):
            written = f"{m.group(0)} (the evidence has {' or '.join(sorted(known.values())[:3])})"
            if written not in found:
                found.append(written)
    return found


_UP = frozenset("""increase increased increases increasing raise raised raises raising rose rise rises rising
    elevated higher greater more""".split())
_DOWN = frozenset("""decrease decreased decreases decreasing reduce reduced reduces reducing reduction reductions
    lower lowered lowers lowering fell declined declines declining diminished dropped less fewer smaller""".split())
_NEGATIONS = frozenset("not no never without neither nor cannot failed fails".split())  # and every "...n't"
_OBJECT_FILLER = frozenset("""the a an of in on at for to by with than its their his her this that these those
    significantly significant markedly slightly substantially statistically was were is are be been""".split())
_TOKEN = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*+|[.;:!?,()\[\]]")
OBJECT_WORDS = 1
"""How many words after a change word say what changes. Measured on PubMedQA (benchmarks/gate_check.py,
test / dev): one word catches 81% / 80% of conclusions turned the other way round and fails 6 / 3 of
500 honest ones ("less likely" where the abstract's "more likely" is about something else); two words
catch 41% / 56% and fail 2 / 3."""


NEGATION_WORDS = 5
NEGATION_CONTEXT = 3
"""Words either side of a negation that an answer must share with the evidence, word for word, before
the negation missing (or added) counts as a claim turned round (fewer where the clause starts or
ends). Measured on gate_check's answers (test + dev): two words failed an honest conclusion (its
"benefits are not distributed on the basis of need" where the abstract states the principle
"benefits are distributed on the basis of need"); three fail none and still catch every quote with
its negation left out."""


def _negated(tokens: list[str], i: int) -> bool:
    """A negation among the NEGATION_WORDS words before tokens[i], in its clause ("not associated
    with the higher risk" is negated; "No. Statins increased" is not)."""
    for t in reversed(tokens[max(0, i - NEGATION_WORDS):i]):
        if not t[0].isalnum():
            return False
        if t in _NEGATIONS or t.endswith("n't"):
            return True
    return False


_PREPOSITIONS = frozenset("by with in among after during from over following under at for when per of on".split())
_AUXILIARIES = frozenset("was were is are be been being became become becomes remained remains got gets has have had".split())
_ADVERBS = frozenset("significantly markedly slightly substantially statistically also further much far even still".split())
_CONJUNCTIONS = frozenset("and or but nor yet so".split())


def _is_figure(token: str) -> bool:
    return any(c.isdigit() for c in token)


def _subject(tokens: list[str], i: int) -> str | None:
    """The word a change word at tokens[i] is said of when it has no object ("mortality was
    reduced", "mortality increased with statins"): the nearest word before it, auxiliaries, adverbs
    and figures skipped. None where that is no subject: a clause start, an article or preposition
    ("with decreases in", "a reduction"), a conjunction, or a word inside a phrase ("per patient")."""
    j = i - 1
    while j >= max(0, i - 6) and (tokens[j] in _AUXILIARIES or tokens[j] in _ADVERBS or tokens[j].endswith("ly")
                      or _is_figure(tokens[j])):
        j -= 1
    if j < 0 or i - j > 5:
        return None  # nothing before it, or only auxiliaries and adverbs as far as we look
    word = tokens[j]
    if not word[0].isalnum() or word in _OBJECT_FILLER or word in _PREPOSITIONS or word in _CONJUNCTIONS:
        return None
    if j > 0 and tokens[j - 1] in _PREPOSITIONS:
        return None
    return word


def _directions(text: str) -> dict[tuple[int, tuple[str, ...]], tuple[str, str]]:
    """(+1 up / -1 down, what changes) -> (as written, the change word), for each change a text states without a
    negation before it: "reduced 30-day mortality" is (-1, ('30-day', 'mortality')) and, as a
    figure says which mortality but not what changes, also (-1, ('mortality',)). What changes is
    the next OBJECT_WORDS words of the clause (articles and fillers skipped, figures kept but not
    counted), and, when the change word has no object (the clause ends or a preposition follows:
    "mortality was reduced", "mortality rose with age"), also the word it is said of."""
    tokens = _TOKEN.findall(text.lower().replace("\u2019", "'"))  # didn’t = didn't
    found: dict[tuple[int, tuple[str, ...]], tuple[str, str]] = {}
    for i, word in enumerate(tokens):
        sign = 1 if word in _UP else -1 if word in _DOWN else 0
        if not sign or _negated(tokens, i):
            continue
        changed: list[str] = []
        words = 0
        for t in tokens[i + 1:i + 1 + 4 * OBJECT_WORDS + 2]:
            if not t[0].isalnum():
                break  # the clause ends
            if t in _OBJECT_FILLER:
                continue
            changed.append(t)
            words += not _is_figure(t)  # "30-day" says which mortality, not what changes
            if words == OBJECT_WORDS:
                break
        if changed:
            written = " ".join([word, *changed])
            found.setdefault((sign, tuple(changed)), (written, word))
            if words:
                found.setdefault((sign, tuple(t for t in changed if not _is_figure(t))), (written, word))
        following = tokens[i + 1] if i + 1 < len(tokens) else "."
        if not following[0].isalnum() or following in _PREPOSITIONS:
            subject = _subject(tokens, i)
            if subject is not None:
                found.setdefault((sign, (subject,)), (f"{subject} {word}", word))
    return found


_FROM_TO = re.compile(r"\bfrom\s+(" + _GROUPS + r"\s?%?)\s+to\s+(" + _GROUPS + r"\s?%?)", re.IGNORECASE)


def _from_to(text: str) -> dict[tuple[str, str], str]:
    """("from" value, "to" value) -> as written, for every "from 12% to 8%" a text states."""
    return {(_number(m.group(1)), _number(m.group(2))): m.group(0) for m in _FROM_TO.finditer(text)}


def reversed_directions(output: str, retrieved: str) -> list[str]:
    """Changes the answer states the other way round from the retrieved evidence: "increased 30-day
    mortality" where the evidence says only that it reduced 30-day mortality, "from 8% to 12%" where
    it says from 12% to 8%. Figures and words alike are the evidence's while the claim is turned
    around. (The task is no evidence here: "Do statins reduce mortality?" states no change.) A
    comparison said from its other side ("aspirin was less effective than the drug" for "the drug was
    more effective than aspirin") turns no change round: converse_comparatives names it."""
    stated = _directions(retrieved)
    candidates = [(written, word, stated[(-sign, changed)][0])
                  for (sign, changed), (written, word) in _directions(output).items()
                  if (-sign, changed) in stated and (sign, changed) not in stated]
    converse = converse_comparatives(output, retrieved) if candidates else set()
    turned = [f"{written} (the evidence: {theirs})" for written, word, theirs in candidates if word not in converse]
    turned = list(dict.fromkeys(turned))  # one claim can match both with and without its figure
    ranges = _from_to(retrieved)
    turned += [f"{written} (the evidence: {ranges[(b, a)]})" for (a, b), written in _from_to(output).items()
               if a != b and (b, a) in ranges and (a, b) not in ranges]
    return turned


_NEGATORS = frozenset("not no never".split())
_CONTRACTED_NOT = re.compile(r"n't\b|(?<=\bcan)not\b")
_CLAUSE_END = frozenset(".;:!?")


def _clause_tokens(text: str) -> list[str]:
    """Words and the marks that end a clause, with every negation a word of its own ("didn't",
    "cannot": "did not", "can not"), the same for the answer and the evidence: what the negation and
    comparison checks read. Commas and brackets are left out: "(NPBD) have not been" and
    "complaints, but no studies" read on across them."""
    tokens = _TOKEN.findall(_CONTRACTED_NOT.sub(" not", text.lower().replace("\u2019", "'")))
    return [t for t in tokens if t[0].isalnum() or t in _CLAUSE_END]


_ASKING = frozenset("whether if".split())


def _asked(tokens: list[str]) -> list[bool]:
    """For each token, whether it stands in a clause that asks rather than states ("to study whether
    HFNC are noisier than bubble CPAP"): from "whether" or "if" to the clause's end. What an aim asks
    affirms nothing, so an answer that negates it is no flip."""
    out, asking = [], False
    for t in tokens:
        if not t[0].isalnum():
            asking = False
        elif t in _ASKING:
            asking = True
        out.append(asking)
    return out


def negation_flips(output: str, retrieved: str) -> list[str]:
    """Claims the answer makes without the negation the evidence gives them, or with one it does not:
    "statin therapy was associated with a lower risk" where the evidence says it "was not associated
    with" it, "there was a significant difference" for "no significant difference", or a "not" added
    to what the evidence affirms. The words either side of the negation (NEGATION_CONTEXT of them, or
    fewer up to where the clause starts or ends) must be the evidence's, word for word; a quote copied
    with its "not" left out passes the quote match (80 % of its 3-grams). The answer's wording must
    also be nowhere in the evidence (which may affirm it elsewhere), outside what an aim asks."""
    evidence, answer = _clause_tokens(retrieved), _clause_tokens(output)
    Context = tuple[tuple[str, ...], tuple[str, ...]]

    def around(tokens: list[str], end: int, start: int) -> Context | None:
        """The words before tokens[end] and from tokens[start] on, each side up to NEGATION_CONTEXT
        words or a clause's edge (kept, so both texts must have it there; a text's start and end count
        as one); None with no word on a side, NEGATION_CONTEXT words or fewer in all, or nothing but
        fillers after."""
        sides: list[tuple[str, ...]] = []
        words = 0
        for step, first in ((-1, end - 1), (1, start)):
            taken: list[str] = []
            j = first
            while len(taken) < NEGATION_CONTEXT:
                t = tokens[j] if 0 <= j < len(tokens) else "."
                if not t[0].isalnum():
                    break
                taken.append(t)
                j += step
            if not taken:
                return None
            words += len(taken)
            if len(taken) < NEGATION_CONTEXT:
                taken.append(".")
            sides.append(tuple(reversed(taken)) if step < 0 else tuple(taken))
        if words <= NEGATION_CONTEXT or all(t in _OBJECT_FILLER for t in sides[1] if t[0].isalnum()):
            return None
        return sides[0], sides[1]

    def written(context: Context, middle: str = "") -> str:
        return " ".join(t for t in (*context[0], middle, *context[1]) if t and t[0].isalnum())

    asked = _asked(evidence)
    answer_words = set(answer)
    # the words around each negation the evidence states, and the same words with no negation, or
    # another word, between; each with the word between ("" for none), written out only if reported
    negated: dict[Context, str] = {}
    affirmed: dict[Context, str] = {}
    for i, token in enumerate(evidence):
        if not i or evidence[i - 1] not in answer_words:
            continue  # every context ends, on the left, with the word before i: no answer's can match
        replaced = around(evidence, i, i + 1)
        if replaced is not None and token in _NEGATORS:
            negated.setdefault(replaced, token)
        elif replaced is not None and not asked[i]:
            affirmed.setdefault(replaced, token)
        joined = around(evidence, i, i)
        if joined is not None and not asked[i] and not asked[i - 1]:
            affirmed.setdefault(joined, "")
    flips: list[str] = []
    for i, token in enumerate(answer):
        replaced = around(answer, i, i + 1)  # a word between two contexts: a negation added, or one replaced
        if replaced is not None:
            if token in _NEGATORS and replaced in affirmed and replaced not in negated:
                flips.append(f"{written(replaced, token)} (the evidence: {written(replaced, affirmed[replaced])})")
            elif token not in _NEGATORS and replaced in negated and replaced not in affirmed:
                flips.append(f"{written(replaced, token)} (the evidence: {written(replaced, negated[replaced])})")
        joined = around(answer, i, i)  # two contexts side by side: a negation left out
        if joined is not None and joined in negated and joined not in affirmed:
            flips.append(f"{written(joined)} (the evidence: {written(joined, negated[joined])})")
    return list(dict.fromkeys(flips))


_COMPARATIVES = frozenset("""more less fewer better worse higher lower greater smaller larger bigger longer shorter
    faster slower earlier later older younger stronger weaker wider narrower heavier lighter safer riskier cheaper""".split())
_SENSES = {**dict.fromkeys("more higher greater larger bigger".split(), "more"),
           **dict.fromkeys("less fewer lower smaller".split(), "less")}
"""Comparatives that say the same thing of a comparison: "greater in men than in women" is "higher in
men than in women"; the others are their own sense."""
_OPPOSITES = [("more", "less"), ("better", "worse"), ("longer", "shorter"), ("faster", "slower"),
              ("earlier", "later"), ("older", "younger"), ("stronger", "weaker"), ("wider", "narrower"),
              ("heavier", "lighter"), ("safer", "riskier"), ("superior", "inferior")]
_OPPOSITE_SENSE = {b: a for a, b in _OPPOSITES} | {a: b for a, b in _OPPOSITES}


def _sense(how: str) -> str:
    return _SENSES.get(how, how)


_RANKING_VERBS = {"outperformed": "outperform", "outperforms": "outperform", "outperform": "outperform",
                  "exceeded": "exceed", "exceeds": "exceed", "exceed": "exceed", "surpassed": "surpass",
                  "surpasses": "surpass", "superior": "superior", "inferior": "inferior"}
_CLAUSE_BREAKS = frozenset("but whereas while although though however".split())
COMPARED_WORDS = 3
"""Content words either side of a comparison taken as what it compares: "mortality was higher in men
than in women" compares (mortality, men) with (women, two, years)."""
COMPARED_SPAN = 10
"""Words looked at either side for them (fillers and short words are skipped, so without a bound a
text of "than the the the ..." was read to its start from every "than": quadratic)."""


Comparison = tuple[str, list[str], list[str]]


def _comparisons(text: str) -> list[Comparison]:
    """(how, first side, second side) for every comparison a text states: "higher in men than in
    women" gives ("higher", [men], [women]), "statins were superior to placebo" ("superior",
    [statins], [placebo]), "surgery outperformed physiotherapy" ("outperform", [surgery],
    [physiotherapy]); each side the COMPARED_WORDS content words next to it in its clause, the
    nearest first. What is compared is no side ("the drug was more effective than aspirin": not
    "effective"), nor is a word both sides have ("a level III center than a level I center": not
    "center")."""
    tokens = _clause_tokens(text)
    skip = _OBJECT_FILLER | _AUXILIARIES | _STOPWORDS | _PREPOSITIONS | _COMPARATIVES | _NEGATORS

    def content(indices: Iterable[int]) -> list[str]:
        out: list[str] = []
        for j in indices:
            t = tokens[j]
            if not t[0].isalnum() or t in _CLAUSE_BREAKS:
                break
            if t not in skip and not _is_figure(t) and len(t) > 1:
                out.append(t)
                if len(out) == COMPARED_WORDS:
                    break
        return out

    found: list[Comparison] = []
    for i, t in enumerate(tokens):
        before: Iterable[int] = range(i - 1, max(-1, i - 1 - COMPARED_SPAN), -1)
        if t == "than":  # the comparative word may stand a few words before: "higher in patients with X than"
            at = next((j for j in range(i - 1, max(-1, i - 7), -1) if tokens[j] in _COMPARATIVES), None)
            how = tokens[at] if at is not None else None
            if at is not None:
                # what is compared, up to a preposition: "more effective than", "higher risk of death in men than"
                quality = at + 1
                while quality < i and (tokens[quality] == "of" or tokens[quality] not in _PREPOSITIONS):
                    quality += 1
                before = [j for j in before if not at < j < quality]
        else:
            how = _RANKING_VERBS.get(t)
        if how is None:
            continue
        after = i + 2 if how in ("superior", "inferior") and i + 1 < len(tokens) and tokens[i + 1] == "to" else i + 1
        if after < len(tokens) and _is_figure(tokens[after]):
            continue  # "more than 40 degrees", "exceeded 10%": a bound, not two things compared
        first = content(before)
        second = content(range(after, min(len(tokens), after + COMPARED_SPAN)))
        shared = set(first) & set(second)
        first, second = [w for w in first if w not in shared], [w for w in second if w not in shared]
        if first and second:
            found.append((how, first, second))
    return found


def _stated_comparisons(text: str) -> dict[tuple[str, str, str], str]:
    """(sense, a, b) -> the comparative as written, for every pair a text's comparisons allow: any word
    of one side against any of the other."""
    stated: dict[tuple[str, str, str], str] = {}
    for how, first, second in _comparisons(text):
        for a in first:
            for b in second:
                stated.setdefault((_sense(how), a, b), how)
    return stated


def swapped_comparisons(output: str, retrieved: str) -> list[str]:
    """Comparisons the answer states the other way round from the evidence: "placebo was superior to
    statins" where the evidence says statins were superior to placebo, "mortality was higher in
    women than in men" for "higher in men than in women" (or "greater"), or the same order with the
    opposite word ("lower in men than in women"). Word-level support cannot see it: every word is the
    evidence's. An answer's comparison is judged by the words next to it ("women" and "men" in
    "mortality was lower in women than in men at two years"; "mortality" and "years" are what it is
    about), the evidence's by any of its words; said from its other side with the opposite word it is
    the evidence's claim."""
    def said(how: str, a: str, b: str) -> str:
        if how in ("superior", "inferior"):
            return f"{a} {how} to {b}"
        if how in _COMPARATIVES:
            return f"{a} {how} than {b}"
        return f"{a} {how}s {b}"  # outperform, exceed, surpass

    stated = _stated_comparisons(retrieved)
    turned = []
    for how, first, second in _comparisons(output):
        a, b, sense = first[0], second[0], _sense(how)
        opposite = _OPPOSITE_SENSE.get(sense, "")
        if (sense, a, b) in stated or (opposite, b, a) in stated:
            continue
        if (sense, b, a) in stated:
            turned.append(f"{said(how, a, b)} (the evidence: {said(stated[(sense, b, a)], b, a)})")
        elif (opposite, a, b) in stated:
            turned.append(f"{said(how, a, b)} (the evidence: {said(stated[(opposite, a, b)], a, b)})")
    return list(dict.fromkeys(turned))


def converse_comparatives(output: str, retrieved: str) -> set[str]:
    """The comparatives of the answer's comparisons that state one of the evidence's from its other
    side: "aspirin was less effective than the drug" for "the drug was more effective than aspirin".
    Their "less" is no change turned round (reversed_directions leaves it to the comparison check)."""
    stated = _stated_comparisons(retrieved)
    return {how for how, first, second in _comparisons(output)
            if (_OPPOSITE_SENSE.get(_sense(how), ""), second[0], first[0]) in stated}


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


# ---------------------------------------------------------------------------------------------
# citations: a reference the answer names must exist, a passage it quotes must be in the evidence

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


# ---------------------------------------------------------------------------------------------
# answer form: what the task asks for (one of its options, a file path) is what the answer gives

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
