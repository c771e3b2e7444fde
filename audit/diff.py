"""A unified diff as data: the files a change touches and the lines it adds, with their numbers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_HUNK = re.compile(r"^@@ -\d+(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
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
    old_path: str | None = None  # a rename's (or copy's) source

    @property
    def is_test(self) -> bool:
        return is_test_path(self.path)


def is_test_path(path: str) -> bool:
    """Test code by the usual layouts: tests/ folders, test_*.py, *_test.go, *.spec.ts, conftest.py."""
    return bool(_TEST_PART.search(path))


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_C_ESCAPES = {"a": 7, "b": 8, "t": 9, "n": 10, "v": 11, "f": 12, "r": 13}


def unquote_path(name: str) -> str:
    """A path as git prints it, decoded: a name with a byte above 0x7f (unless core.quotePath is
    off), a quote, a backslash or a control character comes between double quotes, C-escaped, the
    bytes as octal (`"docs/caf\\303\\251.py"`)."""
    if len(name) < 2 or name[0] != '"' or name[-1] != '"':
        return name
    out = bytearray()
    body, i = name[1:-1], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in "01234567" and re.fullmatch(r"[0-7]{3}", body[i + 1:i + 4]):
                out.append(int(body[i + 1:i + 4], 8) & 0xFF)
                i += 4
                continue
            out.extend(bytes([_C_ESCAPES[nxt]]) if nxt in _C_ESCAPES else nxt.encode())
            i += 2
            continue
        out.extend(ch.encode())
        i += 1
    return out.decode("utf-8", errors="replace")


def _strip_prefix(name: str) -> str | None:
    name = name.split("\t", 1)[0] if not name.startswith('"') else name  # git pads a spaced name with a tab
    name = unquote_path(name.strip())
    if name == "/dev/null":
        return None
    return name[2:] if name[:2] in ("a/", "b/") else name


def _header_path(rest: str) -> str | None:
    """The new path of a `diff --git a/X b/Y` header, when it can be told: quoted names, or an
    unquoted X equal to Y (a name with spaces is then the two equal halves)."""
    if rest.startswith('"') or rest.endswith('"'):
        names = [unquote_path(f'"{q}"') for q in _QUOTED.findall(rest)]
        tail = rest.rsplit(" ", 1)[-1] if not rest.endswith('"') else None
        last = names[-1] if rest.endswith('"') and names else tail
        return last[2:] if last and last[:2] == "b/" else last
    half = (len(rest) - 1) // 2
    if len(rest) % 2 == 1 and rest[half] == " " and rest[2:half] == rest[half + 3:] and rest[:2] == "a/":
        return rest[2:half]
    return None


def parse_diff(text: str) -> list[FileChange]:
    """Files of a `git diff` (any -U), in order. Binary files, pure renames and mode changes appear
    with no lines (a rename keeps its old path: a message may name either). Each hunk's lines are
    counted from its `@@` header, so a removed line `-- x` (`--- x` in the diff) is never a header."""
    files: list[FileChange] = []
    current: FileChange | None = None
    old_name: str | None = None
    header: str | None = None  # the path of the current `diff --git` header, until a file is made for it
    renamed_from: str | None = None
    deleted = False
    new_line = old_left = new_left = 0  # the lines of the current hunk still to come

    def close_header() -> None:
        if header is not None and current is None:  # no ---/+++ pair: a rename, a mode change, an empty file
            files.append(FileChange(path=header, deleted=deleted, old_path=renamed_from))

    for raw in text.splitlines():
        if old_left > 0 or new_left > 0:  # inside a hunk: every line is content
            if current is not None and raw.startswith("+"):
                current.added.append(AddedLine(current.path, new_line, raw[1:]))
                new_line += 1
                new_left -= 1
            elif current is not None and raw.startswith("-"):
                current.removed.append(raw[1:])
                old_left -= 1
            elif raw.startswith(" ") or raw == "":
                new_line += 1
                old_left, new_left = old_left - 1, new_left - 1
            continue  # `\ No newline at end of file` counts for nothing
        if raw.startswith("diff --git "):
            close_header()
            current, old_name, renamed_from, deleted = None, None, None, False
            header = _header_path(raw[len("diff --git "):])
            continue
        m = _HUNK.match(raw)
        if m:
            old_left = int(m.group(1)) if m.group(1) is not None else 1
            new_line = int(m.group(2))
            new_left = int(m.group(3)) if m.group(3) is not None else 1
            continue
        if raw.startswith(("rename from ", "copy from ")):
            renamed_from = unquote_path(raw.split(" from ", 1)[1])
        elif raw.startswith(("rename to ", "copy to ")):
            header = unquote_path(raw.split(" to ", 1)[1])
        elif raw.startswith("deleted file mode"):
            deleted = True
        elif raw.startswith("--- "):
            old_name = _strip_prefix(raw[4:])
        elif raw.startswith("+++ "):
            new_name = _strip_prefix(raw[4:])
            current = FileChange(path=new_name or old_name or header or "", deleted=new_name is None,
                                 old_path=renamed_from)
            files.append(current)
        elif raw.startswith("Binary files ") and raw.endswith(" differ"):
            m = re.match(r"Binary files (?:a/)?(.+?) and (?:b/)?(.+?) differ", raw)
            if m:
                name = m.group(2) if m.group(2) != "/dev/null" else m.group(1)
                current = FileChange(path=header or unquote_path(name), deleted=m.group(2) == "/dev/null",
                                     old_path=renamed_from)
                files.append(current)
    close_header()
    return files
