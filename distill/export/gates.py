"""The content gates of the contamination firewall, shared by every exporter.

- secrets: distill.secrets.SecretScanner (detect-secrets on every line whatever wraps it), run
  once per export over every candidate text.
- PathChecker: every cited file (source_files, and paths written in the shipped text) must
  exist under the configured repo root. Paths that leave the root (absolute, `..`, symlinks
  pointing out) are refused without touching anything outside it.
- ContaminationIndex: 13-gram overlap with configured benchmark task files.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from distill.config import ExportSettings
from distill.errors import UsageError
from distill.records import QuarantineReason
from distill.records.evidence import EvidenceRecord
from distill.secrets import SecretScanner

# ---------------------------------------------------------------------------------------------
# file paths

# A repo-relative path written in text: at least one directory and a file extension, not part
# of a URL or of a longer path; `./` and `../` prefixes are kept (they may escape the root).
_TEXT_PATH = re.compile(
    r"(?<![\w/.:~@$%-])((?:\.{1,2}/)*(?:[\w@+-][\w.@+-]*/)+[\w@+-][\w.@+-]*\.[A-Za-z][A-Za-z0-9]{0,9})(?![\w/])"
)
# Any explicit escape in text, extension or not (`../../etc/passwd`).
_TEXT_ESCAPE = re.compile(r"(?<![\w/.])((?:\.\./)+[\w.@+-][\w.@+/-]*)")
_MAX_SYMLINK_HOPS = 40


def paths_in_text(text: str) -> list[str]:
    """Candidate file paths cited in free text (sorted, unique)."""
    found = {m.group(1) for m in _TEXT_PATH.finditer(text)}
    found.update(m.group(1).rstrip(".,;:") for m in _TEXT_ESCAPE.finditer(text))
    return sorted(found)


class PathChecker:
    """Does a cited path name an existing file under the repo root, without leaving it?"""

    def __init__(self, repo_root: Path) -> None:
        if not repo_root.is_dir():
            raise UsageError(f"export.repo_root {repo_root} is not a directory")
        self.root = Path(os.path.realpath(repo_root))

    def _inside(self, path: str) -> bool:
        return path == str(self.root) or path.startswith(str(self.root) + os.sep)

    def problem(self, cited: str) -> str | None:
        """None when `cited` exists under the root, else why not."""
        text = cited.strip()
        if not text:
            return "empty path"
        if "\x00" in text:
            return f"{cited!r}: contains a NUL byte"
        pure = PurePosixPath(text.replace("\\", "/"))
        if pure.is_absolute():
            rel_str = os.path.normpath(str(pure))
            if not self._inside(rel_str):
                return f"{cited}: absolute path outside the repo root"
            parts = Path(rel_str).relative_to(self.root).parts
        else:
            norm = os.path.normpath(str(pure))
            if norm == ".." or norm.startswith("../"):
                return f"{cited}: escapes the repo root"
            parts = () if norm == "." else tuple(norm.split("/"))
        return self._walk(cited, list(parts))

    def _walk(self, cited: str, parts: list[str]) -> str | None:
        """Follow the components one lstat at a time; a symlink is read, never followed out."""
        current = str(self.root)
        hops = 0
        while parts:
            part = parts.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                current = os.path.dirname(current)
                if not self._inside(current):
                    return f"{cited}: escapes the repo root"
                continue
            candidate = os.path.join(current, part)
            try:
                st = os.lstat(candidate)
            except OSError:
                return f"{cited}: no such file under the repo root"
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > _MAX_SYMLINK_HOPS:
                    return f"{cited}: too many symlinks"
                target = os.readlink(candidate)
                joined = os.path.normpath(os.path.join(current, target))
                if not self._inside(joined):
                    return f"{cited}: symlink leaves the repo root"
                rest = Path(joined).relative_to(self.root).parts
                parts = list(rest) + parts
                current = str(self.root)
                continue
            current = candidate
        return None

    def check(self, cited_files: Sequence[str], texts: Sequence[str]) -> list[str]:
        """Problems with the row's declared files and with paths its text cites."""
        errors: list[str] = []
        for f in sorted(set(cited_files)):
            why = self.problem(f)
            if why:
                errors.append(f"source file {why}")
        for text in texts:
            for p in paths_in_text(text):
                why = self.problem(p)
                if why and p[:2] in ("a/", "b/") and self.problem(p[2:]) is None:
                    why = None  # unified-diff prefix: a/src/x.py names src/x.py
                if why:
                    errors.append(f"cited path {why}")
        return sorted(set(errors))


# ---------------------------------------------------------------------------------------------
# benchmark contamination

_WORD = re.compile(r"\w+")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _string_leaves(value: Any) -> Iterator[str]:
    """The strings in a parsed JSON value, in document order. A loop with its own stack, not
    recursion: a benchmark file is user input, and JSON nested near the parser's limit would
    otherwise overflow Python's stack here."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))


def _benchmark_texts(path: Path) -> Iterator[str]:
    """Task texts in a benchmark file: string fields of JSONL/JSON rows, else the whole text."""
    name = path.name.lower()
    opener = gzip.open if name.endswith(".gz") else open
    base = name[:-3] if name.endswith(".gz") else name
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:  # type: ignore[operator]
        if base.endswith(".jsonl"):
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    parsed = json.loads(line)
                except (ValueError, RecursionError):  # not JSON, or nested past the parser's limit
                    yield line
                    continue
                yield from _string_leaves(parsed)
        elif base.endswith(".json"):
            data = fh.read()
            try:
                parsed = json.loads(data)
            except (ValueError, RecursionError):
                yield data
                return
            yield from _string_leaves(parsed)
        else:
            yield fh.read()


class ContaminationIndex:
    """n-grams of benchmark tasks; a row whose n-gram overlap exceeds the threshold is out."""

    def __init__(self, files: Sequence[Path], n: int, threshold: float) -> None:
        self.n = n
        self.threshold = threshold
        self.files = list(files)
        self.grams: set[tuple[str, ...]] = set()
        for f in self.files:
            if not f.is_file():
                raise UsageError(f"export.benchmark_files: {f} does not exist")
            for text in _benchmark_texts(f):
                self.grams |= ngrams(text, n)

    def overlap(self, text: str) -> float:
        grams = ngrams(text, self.n)
        if not grams or not self.grams:
            return 0.0
        return len(grams & self.grams) / len(grams)

    def problem(self, text: str) -> str | None:
        frac = self.overlap(text)
        if frac > self.threshold:
            return f"{frac:.0%} of the row's {self.n}-grams appear in benchmark tasks (threshold {self.threshold:.0%})"
        return None


# ---------------------------------------------------------------------------------------------
# the firewall: all three gates for one export run


def meta_text(ev: EvidenceRecord) -> str:
    """The identifiers a row ships besides its text (ids, task, files, model): scanned too."""
    return " ".join([ev.run_id, ev.task_id, *ev.source_files, ev.model_name or ""]).strip()


@dataclass(frozen=True, slots=True)
class GateInput:
    """What one candidate row ships: the texts (scanned) and the files it cites."""

    texts: tuple[str, ...]
    cited_files: tuple[str, ...]
    scan_only: tuple[str, ...] = ()  # identifiers: secret-scanned, not path/contamination-checked


@dataclass(frozen=True, slots=True)
class GateFailure:
    reason: str  # a QuarantineReason value
    errors: list[str]


# What a row an export already holds is judged by again (`Firewall.check(paths=False)`): a
# credential or an eval task must never stay in a dataset however it got there.
REJUDGED_REASONS = frozenset({QuarantineReason.SECRET_DETECTED.value, QuarantineReason.EVAL_CONTAMINATION.value})


def refused_now(shipped: str, kind: str, reason: str, errors: Sequence[str]) -> str:
    """Why a row (or pair) `shipped` in the `kind` export stops the run now, and the way out."""
    return (f"{shipped} is in the {kind} export but fails the firewall now ({reason}: {'; '.join(errors[:2])}): "
            f"`distill export {kind} --rebuild` writes the export without it")


class Firewall:
    """Secret, path and contamination gates; built once per export from the settings."""

    def __init__(
        self,
        scanner: SecretScanner,
        paths: PathChecker | None,
        contamination: ContaminationIndex | None,
    ) -> None:
        self.scanner = scanner
        self.paths = paths
        self.contamination = contamination

    @classmethod
    def from_settings(cls, root: Path, export: ExportSettings, *, prefilter_cache: Path | None = None) -> Firewall:
        """Relative paths in the settings are taken from the workspace root. `prefilter_cache`:
        where the secret gate keeps its compiled prefilter (distill.secrets)."""

        def here(p: Path) -> Path:
            return p if p.is_absolute() else root / p

        paths = PathChecker(here(Path(export.repo_root))) if export.repo_root is not None else None
        bench = [here(Path(p)) for p in export.benchmark_files]
        contamination = (
            ContaminationIndex(bench, export.contamination_ngram, export.contamination_threshold) if bench else None
        )
        return cls(SecretScanner(prefilter_cache=prefilter_cache), paths, contamination)

    def notes(self) -> list[str]:
        out = []
        if self.paths is None:
            out.append("hallucinated_file_path check skipped: export.repo_root is not configured")
        if self.contamination is None:
            out.append("eval_contamination check skipped: export.benchmark_files is empty")
        return out

    def check(self, items: Sequence[GateInput], *, paths: bool = True) -> list[GateFailure | None]:
        """First failing gate per item, in firewall order: secrets, paths, contamination.
        `paths=False` for rows an export already holds (REJUDGED_REASONS): a file a row cited when
        it shipped and that was removed or renamed since is no hallucination."""
        flat: list[str] = []
        owner: list[int] = []
        for i, item in enumerate(items):
            for t in item.texts + item.scan_only:
                flat.append(t)
                owner.append(i)
        secret_hits: list[list[str]] = [[] for _ in items]
        for i, hits in zip(owner, self.scanner.scan(flat), strict=True):
            secret_hits[i].extend(f"{h.type} on line {h.line}" for h in hits)
        results: list[GateFailure | None] = []
        for i, item in enumerate(items):
            if secret_hits[i]:
                results.append(GateFailure(QuarantineReason.SECRET_DETECTED.value,
                                           ["credential detected: " + e for e in sorted(set(secret_hits[i]))]))
                continue
            if self.paths is not None and paths:
                errors = self.paths.check(item.cited_files, item.texts)
                if errors:
                    results.append(GateFailure(QuarantineReason.HALLUCINATED_FILE_PATH.value, errors))
                    continue
            if self.contamination is not None:
                why = self.contamination.problem("\n".join(item.texts))
                if why:
                    results.append(GateFailure(QuarantineReason.EVAL_CONTAMINATION.value, [why]))
                    continue
            results.append(None)
        return results
