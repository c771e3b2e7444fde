"""Figures: numbers in any notation, with their units and signs, and numbered names, read the same way
from the answer and the evidence.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from functools import lru_cache

from distill.records.common import LONE_SURROGATE
from runtime.gate.grounding import _PATH, _RECORD_ID, _URL, _path_matches

# a number's digit groups, read once (possessive): "0.02", thousands after a comma ("2,300") or a
# no-break or thin space ("12 345", SI style). A comma before other than three digits separates
# numbers ("1,2,3", a hunk's "-120,7"), as does a plain space
_GROUPS = r"\d++(?:\.\d++|[,\u00a0\u2009\u202f]\d{3}+(?!\d))*+"
_NUMBER = re.compile(r"(?<![\w.])[-+\u2212]?" + _GROUPS + r"(?:\s?%)?")  # U+2212 is the minus sign
SMALL_NUMBERS = 10
"""Bare integers up to this (counts, steps, list items) are not checked as figures."""
# within one line: "^\s*" ran over every following blank line from every line start, quadratic in them
_LIST_MARKER = re.compile(r"^[ \t]*(?:\d+[.)]|[-*+]|#+)[ \t]+", re.MULTILINE)
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_FENCED = re.compile(r"^[ \t]*```.*?(?:^[ \t]*```|\Z)", re.MULTILINE | re.DOTALL)


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
