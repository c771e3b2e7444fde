"""Types shared by every record: categories, roles, provenance, the strict base model."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class Category(StrEnum):
    ACCEPTED = "accepted"
    PARTIALLY_ACCEPTED = "partially_accepted"
    REJECTED = "rejected"
    NEEDS_HUMAN_REVIEW = "needs_human_review"


class ModelRole(StrEnum):
    EXECUTOR = "executor"
    REVIEWER = "reviewer"
    APPLIER = "applier"
    OBSERVER = "observer"
    EXTRACTOR = "extractor"


class ScoreClass(StrEnum):
    VERDICT = "A"  # verdict-bearing: a verdict about the run exists in the row
    TELEMETRY = "B"  # telemetry: the verdict is derived from outcome signals
    EXTRACTION = "C"  # extraction: no verdict of its own; joins to a parent by task_id


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-14:00 is past year 9999 in UTC: invalid input, not a crash
        raise ValueError("timestamp falls outside years 1-9999 once converted to UTC") from None


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
"""A timestamp normalised to UTC (naive input is taken as UTC)."""

Sha256Hex = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
NonEmptyStr = Annotated[str, Field(min_length=1)]

_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"})  # control, format, lone surrogate, separators


def is_blank_text(text: str) -> bool:
    """True when no character of `text` would show: whitespace, control and format characters only.

    `str.strip()` alone lets a NUL, a zero-width space or a BOM through as "text"; such a field is
    as empty as "" to a reader, a retriever or a model trained on it. Cheap on real text: the first
    character that shows ends the scan (usually the first one).
    """
    stripped = text.strip()
    return all(unicodedata.category(ch) in _INVISIBLE for ch in stripped)


_TAGS_OR_SELECTORS = re.compile("[\U000e0000-\U000e007f\ufe00-\ufe0f\U000e0100-\U000e01ef]")
_FLAG_TAG_SEQUENCE = re.compile("\U0001f3f4[\U000e0020-\U000e007e]+\U000e007f")  # a subdivision flag
_TAG_RUN = re.compile("[\U000e0000-\U000e007f]+")
_SELECTOR_RUN = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]{2,}")


def hidden_text_problem(text: str) -> str | None:
    """Why `text` carries words nobody sees, or None. Unicode tag characters (U+E0000-U+E007F)
    spell ASCII that displays as nothing but that a model's tokenizer reads ("ASCII smuggling": an
    instruction hidden in a web page or a tool's output that an agent logged); their one use in
    text is an emoji tag sequence (a subdivision flag: U+1F3F4, tags, U+E007F). A run of variation
    selectors carries bytes the same way (a character takes one). A row holding either would teach
    or prompt a model with words its reviewers never saw. Cheap: an ASCII text is decided in C, and
    one regex search finds nothing in nearly every other."""
    if text.isascii() or _TAGS_OR_SELECTORS.search(text) is None:
        return None
    flags = [m.span() for m in _FLAG_TAG_SEQUENCE.finditer(text)]
    for tags in _TAG_RUN.finditer(text):
        if any(start < tags.start() and tags.end() <= end for start, end in flags):
            continue  # the tags of a flag
        spelled = "".join(chr(ord(c) - 0xE0000) for c in tags.group(0) if 0x20 <= ord(c) - 0xE0000 < 0x7F)
        return (f"{len(tags.group(0))} invisible Unicode tag character(s) (U+E0000-U+E007F) "
                f"at character {tags.start()}, spelling {spelled[:80]!r}")
    selectors = _SELECTOR_RUN.search(text)
    if selectors is not None:
        return (f"{len(selectors.group(0))} variation selectors in a row at character {selectors.start()} "
                f"(a character takes one): bytes hidden in the text")
    return None


def _visible(value: str) -> str:
    if is_blank_text(value):
        raise ValueError("has no visible character (whitespace, control or format characters only)")
    return value


VisibleStr = Annotated[str, Field(min_length=1), AfterValidator(_visible)]
"""Text a person or a model is meant to read: at least one character that shows."""

LONE_SURROGATE = re.compile("[\ud800-\udfff]")
"""What JSON's "\\ud800" escape or a command-line argument that is not UTF-8 leaves in a str."""


def unicode_problem(text: str) -> str | None:
    """Why `text` is not Unicode text, or None. A lone surrogate is what JSON's "\\ud800" escape, or a
    command-line argument that is not UTF-8, reads as in Python: no encoder (a hash, a tokenizer,
    an HTTP body) takes it, so text that holds one is refused where it comes in, not deep inside."""
    m = LONE_SURROGATE.search(text)
    if m is None:
        return None
    return f"not valid Unicode: a lone surrogate ({ascii(m.group())[1:-1]}) at character {m.start()}"


def _unicode(value: str) -> str:
    problem = unicode_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


UnicodeStr = Annotated[str, AfterValidator(_unicode)]
"""Text that every encoder takes: no lone surrogate."""


_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def id_problem(value: str) -> str | None:
    """Why `value` cannot be an id or a file path, or None. A NUL or another control character (tab,
    line feed and carriage return aside) is in no real id or path and cuts the string short for
    C-string tools; a bidirectional control (U+202A-U+202E, U+2066-U+2069) makes an id display
    other than it reads ("Trojan Source"), and a Unicode tag character (U+E0000-U+E007F) spells
    ASCII nobody sees (`hidden_text_problem`). Such a row is quarantined at collect with this reason
    rather than shipped under an id a reader cannot see. Cheap: `isprintable` is false for every one
    of them, so printable ids (nearly all) are decided in C."""
    if value.isprintable():
        return None
    for ch in value:
        if ch in _BIDI_CONTROLS:
            return f"holds U+{ord(ch):04X}, a bidirectional control that makes it display other than it reads"
        if ch not in "\t\n\r" and unicodedata.category(ch) == "Cc":
            return f"holds U+{ord(ch):04X}, a control character no id or path has"
        if "\U000e0000" <= ch <= "\U000e007f":
            return f"holds U+{ord(ch):04X}, an invisible tag character (it spells text nobody sees)"
    return None


def _id(value: str) -> str:
    problem = id_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


IdStr = Annotated[str, Field(min_length=1), AfterValidator(_id)]
"""An id as written by a source: no control or bidirectional-control character."""

PathStr = Annotated[str, AfterValidator(_id)]
"""A file path a row names: the same rule as an id."""


class Record(BaseModel):
    """Base for every persisted record: strict about unknown fields, immutable once built."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class Provenance(Record):
    """Where a record came from: the exact source line and the hash of its canonical form.

    line_offset is the byte offset of the line in source_file (relative to ROOT), so a reader
    can seek straight to it; line_number is 1-based for humans. recorded_at is the time the
    source itself recorded the run, so provenance is byte-stable across re-runs (wall-clock
    time of a pipeline run lives in receipts only).
    """

    source_file: NonEmptyStr
    unit: Literal["line", "file"] = Field(
        "line", description="line: one JSONL line at line_offset; file: the whole file is the row"
    )
    line_offset: int = Field(ge=0)
    line_number: int = Field(ge=1)
    sig_hash: Sha256Hex
    recorded_at: UtcDatetime
