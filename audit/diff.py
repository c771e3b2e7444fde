"""A unified diff as data: the files a change touches and the lines it adds, with their numbers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(\d+)(?:,\d+)? @@")
_TEST_PART = re.compile(r"(?:^|/)(?:tests?|spec|__tests__)/|(?:^|/)(?:test_[^/]*|[^/]*_test\.[^/]+|[^/]*\.(?:spec|test)\.[^/]+|conftest\.py)$")


@dataclass(frozen=True, slots=True)
class AddedLine:
    path: str
    line: int  # 1-based line number in the new file
    text: str


@dataclass(slots=True)
class FileChange:
    path: str  # the new path ('a/'/'b/' prefixes removed); the old one for a deletion
    added: list[AddedLine] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    deleted: bool = False

    @property
    def is_test(self) -> bool:
        return is_test_path(self.path)


def is_test_path(path: str) -> bool:
    """Test code by the usual layouts: tests/ folders, test_*.py, *_test.go, *.spec.ts, conftest.py."""
    return bool(_TEST_PART.search(path))


def _strip_prefix(name: str) -> str | None:
    name = name.split("\t", 1)[0].strip()
    if name == "/dev/null":
        return None
    if name.startswith('"') and name.endswith('"'):
        name = name[1:-1]
    return name[2:] if name[:2] in ("a/", "b/") else name


def parse_diff(text: str) -> list[FileChange]:
    """Files of a `git diff` (any -U), in order. Binary files appear with no lines."""
    files: list[FileChange] = []
    current: FileChange | None = None
    old_name: str | None = None
    new_line = 0
    for raw in text.splitlines():
        if raw.startswith("diff --git "):
            current = None
            old_name = None
            continue
        if raw.startswith("--- "):
            old_name = _strip_prefix(raw[4:])
            continue
        if raw.startswith("+++ "):
            new_name = _strip_prefix(raw[4:])
            current = FileChange(path=new_name or old_name or "", deleted=new_name is None)
            files.append(current)
            continue
        if raw.startswith("Binary files ") and " differ" in raw:
            m = re.match(r"Binary files (?:a/)?(.+?) and (?:b/)?(.+?) differ", raw)
            if m:
                name = m.group(2) if m.group(2) != "/dev/null" else m.group(1)
                files.append(FileChange(path=name))
            continue
        m = _HUNK.match(raw)
        if m:
            new_line = int(m.group(1))
            continue
        if current is None:
            continue
        if raw.startswith("+"):
            current.added.append(AddedLine(current.path, new_line, raw[1:]))
            new_line += 1
        elif raw.startswith("-"):
            current.removed.append(raw[1:])
        elif raw.startswith(" "):
            new_line += 1
    return files
