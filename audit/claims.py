"""Ship-claims in commit messages and PR bodies, parsed deterministically.

A claim is what a sentence commits the change to: a file it names, a test count ("12 tests pass"),
"all tests pass", a figure with a unit ("3.4x faster", "120 ms", "95 %"), or "fixed X". Each keeps
the sentence it came from, so a finding can quote it."""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel

_SENTENCE = re.compile(r"[^\n.!?;]+(?:[.!?;]|$)", re.MULTILINE)
_FILE = re.compile(
    r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+(?:\.[\w-]+)*\.(?:py|pyi|rs|ts|tsx|js|jsx|go|java|kt|rb|c|h|cc|cpp|hpp|cs|"
    r"swift|sh|toml|ya?ml|json|jsonl|md|rst|txt|cfg|ini|sql|proto|html|css))(?![\w/])"
)
COUNT = r"(?<![\d,.])(\d{1,3}(?:,\d{3})+|\d+)"
"""A count as people and test runners write it: "1,234 tests pass" is 1234, never 234."""
_TEST_COUNT = re.compile(COUNT + r"\s+(?:(?:unit|integration|new)\s+)?(?:tests?|specs?)\s+(?:now\s+)?(?:pass(?:es|ed|ing)?|green)\b"
                         r"|" + COUNT + r"\s+passed\b", re.IGNORECASE)
_ALL_TESTS = re.compile(r"\ball\s+(?:the\s+)?(?:\w+\s+)?tests?\s+(?:now\s+)?(?:pass(?:es|ed|ing)?|are\s+green|green)\b", re.IGNORECASE)
_FIGURE = re.compile(
    r"(?<![\w.])(\d+(?:[.,]\d+)?)\s?(x|×|%|ms|µs|us|s|sec|seconds|minutes|min|MiB|GiB|KiB|MB|GB|KB|tokens/s|rows/s|req/s|qps)(?![\w/])"
)
_FIXED = re.compile(r"\b(?:fix(?:ed|es)?|resolve[sd]?|closes?)\s+(.{3,80}?)\s*(?=[.;,!?](?:\s|$)|\n|$)", re.IGNORECASE)


class ClaimKind(StrEnum):
    FILE = "file"
    TEST_COUNT = "test_count"
    ALL_TESTS = "all_tests"
    FIGURE = "figure"
    FIXED = "fixed"


class Claim(BaseModel):
    kind: ClaimKind
    value: str  # the file, the count, the figure with its unit, or what was fixed
    sentence: str  # where it was claimed


def _sentences(message: str) -> list[str]:
    out: list[str] = []
    for line in message.splitlines():
        line = line.strip().lstrip("-*•> ").strip()
        if not line or line.startswith("#"):
            continue
        # split on sentence ends, but not inside file names (foo.py) or figures (3.4x)
        out.extend(p.strip() for p in re.split(r"(?<=[!?;])\s+|(?<=\.)\s+(?=[A-Z])", line) if p.strip())
    return out


def parse_claims(message: str) -> list[Claim]:
    """Every claim in `message`, in order, without duplicates."""
    claims: list[Claim] = []
    seen: set[tuple[ClaimKind, str]] = set()

    def add(kind: ClaimKind, value: str, sentence: str) -> None:
        if (kind, value) not in seen:
            seen.add((kind, value))
            claims.append(Claim(kind=kind, value=value, sentence=sentence))

    for sentence in _sentences(message):
        for m in _FILE.finditer(sentence):
            add(ClaimKind.FILE, m.group(1), sentence)
        for m in _TEST_COUNT.finditer(sentence):
            add(ClaimKind.TEST_COUNT, (m.group(1) or m.group(2)).replace(",", ""), sentence)
        if _ALL_TESTS.search(sentence):
            add(ClaimKind.ALL_TESTS, "all", sentence)
        for m in _FIGURE.finditer(sentence):
            add(ClaimKind.FIGURE, f"{m.group(1)}{m.group(2)}", sentence)
        for m in _FIXED.finditer(sentence):
            add(ClaimKind.FIXED, m.group(1).strip(), sentence)
    return claims


def figure_number(value: str) -> str:
    """The number of a figure claim ("3.4x" -> "3.4")."""
    m = re.match(r"\d+(?:[.,]\d+)?", value)
    return m.group(0) if m else value
