"""The secret gate: does a text carry a credential?

detect-secrets decides, through its own detectors (AWS, GitHub, Slack, private keys, JWTs, keyword
assignments, high-entropy strings...) and its heuristic false-positive filters. What this module
adds is where it looks, because agent output is not a source file:

- every line is scanned as written and with a leading diff/patch/quote marker removed (`-`, `+`,
  a context space, `>`, `<`, `!`), so a credential on a removed or added line is still found;
- text holding JSON or Python string escapes (`\\n`, `\\"`, `\\u0041`) is also scanned unescaped,
  line by line, so a key inside an escaped JSON document or a one-line PEM block is found;
- detect-secrets' line-level `is_indirect_reference` filter is not used: it drops every secret on
  a line that also holds `x = f(...)` or `x = a[...]` (so `token=AKIA...  resp = requests.get(url)`
  lost its AWS key), and the case it was written for (`secret = get_secret()`) never matches
  the quoted keyword detector used here in the first place;
- detect-secrets' Base64 entropy detector also runs on unquoted tokens, which its line scan only
  inspects when quoted;
- one rule of its own: a quoted value of 16+ letters and digits assigned to a name ending in a
  credential word (`api_token: "..."`, `client_secret = '...'`), which detect-secrets' keyword
  list leaves out for source code (`token`, `credential`).

Left out on purpose: the hex entropy detector (flags every git SHA and sha256 in review text) and
the public-IP detector (an address in a log is not a credential). The allowlist pragma is not
honoured: a row cannot whitelist itself.

Each distinct line is analysed once per scanner (a bounded LRU memo), since a line's verdict
depends on the line alone.

Most lines hold no candidate at all, and running ~25 Python detectors on each of them was the
single biggest cost of an export. So every pattern a detector can fire on (each plugin's denylist,
the keyword detector's regexes, a quoted or unquoted run long enough to pass the entropy limit,
the assignment rule) is compiled once into one Hyperscan database in prefilter mode, which by
construction matches a superset of what each pattern matches; a detector runs on a line only when
one of its own patterns hit it. Lines with non-ASCII text skip the prefilter (Python's `\w` and
case folding are Unicode-aware), and a pattern Hyperscan cannot compile makes its detector run
always: the prefilter can only skip work, never a finding (tests/test_secret_gate.py checks parity).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from distill.hashing import canonical_json, sha256_hex
from distill.jsonl import dumps, loads, write_atomic

BASE64_ENTROPY_LIMIT = 4.5
EXCLUDED_PLUGINS = frozenset({"HexHighEntropyString", "IPPublicDetector"})
UNQUOTED_MIN_LEN = 20
LINE_MEMO_MAX = 200_000  # distinct lines remembered by one scanner (~tens of MiB at most)
KEYWORD_TYPE = "Secret Keyword"

# a marker a diff, patch, e-mail quote or context listing puts in front of the real line
_MARKER = re.compile(r"^[-+ >!<]")
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|[\"'\\/bfnrt])")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\n", "b": " ", "f": " ", '"': '"', "'": "'", "\\": "\\", "/": "/"}
_UNQUOTED = re.compile(r"[A-Za-z0-9+/=_-]{%d,}" % UNQUOTED_MIN_LEN)
CREDENTIAL_ASSIGNMENT = "Credential Assignment"
# A quoted value of 16+ characters assigned to a name that ends in a credential word. detect-secrets'
# keyword detector leaves out "token" and "credential" names (noisy in source code); in an agent's
# output `api_token: "..."` is a credential.
_ASSIGNMENT = re.compile(
    r"(?i)(?:token|secret|passw(?:or)?d|pwd|api[_-]?key|access[_-]?key|private[_-]?key|credentials?)[\"']?"
    r"\s*(?::=|=>|[:=])\s*[\"']([^\"'\s]{16,})[\"']"
)
UNESCAPE_LEVELS = 3  # JSON inside a JSON string inside a JSON string
_DIGIT = re.compile(r"\d")
_LETTER = re.compile(r"[A-Za-z]")
_UPPER = re.compile(r"[A-Z]")


@dataclass(frozen=True, slots=True)
class SecretHit:
    type: str
    line: int  # 1-based line within the text


def _unescape(text: str) -> str:
    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        if code[0] == "u":
            return chr(int(code[1:], 16))
        return _ESCAPES[code]

    return _ESCAPE.sub(one, text)


def line_views(line: str) -> list[str]:
    """The forms of one line that are scanned: as written, without a leading diff/quote marker,
    and (when it holds string escapes) each line of its unescaped form, likewise."""
    views = [line]
    stripped = _MARKER.sub("", line, count=1)
    if stripped != line:
        views.append(stripped)
    text = line
    for _ in range(UNESCAPE_LEVELS):
        if "\\" not in text:
            break
        unescaped = _unescape(text)
        if unescaped == text:
            break
        for part in unescaped.split("\n"):
            views.append(part)
            bare = _MARKER.sub("", part, count=1)
            if bare != part:
                views.append(bare)
        text = unescaped
    seen: set[str] = set()
    return [v for v in views if not (v in seen or seen.add(v))]  # type: ignore[func-returns-value]


# ASCII characters Python's str `\s` matches and PCRE's does not: such lines skip the prefilter
_PYTHON_ONLY_SPACE = re.compile("[\x1c-\x1f]")
UNQUOTED_GROUP = "unquoted"
ASSIGNMENT_GROUP = "assignment"


def _entropy_min_length(limit: float) -> int:
    """Shortest string whose Shannon entropy can exceed `limit` (entropy <= log2(length))."""
    return int(2**limit) + 1


PREFILTER_CACHE_VERSION = 1


class _Prefilter:
    """One Hyperscan database over every detector's patterns: which detectors may fire on a line.

    Compiling it takes ~0.13 s, paid by every process that scans (in a run: collect, score's
    redaction and each export). With `cache`, the compiled database is kept in that file
    (`hyperscan.dumpb`) under a key of the Hyperscan version and every pattern and flag, with the
    sha256 of its bytes: a file whose key or digest does not match, or that Hyperscan refuses, is
    compiled again and rewritten. Hyperscan checks a database when it loads it (its version, its
    own CRC, and that it was built for this CPU's features or fewer: a workspace moved to an older
    CPU recompiles) and matches the same wherever it loads; only speed differs."""

    def __init__(self, groups: list[tuple[object, str, int]], cache: Path | None = None) -> None:
        import hyperscan

        self.always: set[object] = set()
        candidates: list[tuple[object, bytes, int]] = []
        base = hyperscan.HS_FLAG_PREFILTER | hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_ALLOWEMPTY
        for group, pattern, py_flags in groups:
            if not pattern:
                self.always.add(group)
                continue
            flags = base
            if py_flags & re.IGNORECASE:
                flags |= hyperscan.HS_FLAG_CASELESS
            if py_flags & re.MULTILINE:
                flags |= hyperscan.HS_FLAG_MULTILINE
            if py_flags & re.DOTALL:
                flags |= hyperscan.HS_FLAG_DOTALL
            candidates.append((group, pattern.encode(), flags))
        key = sha256_hex(canonical_json([PREFILTER_CACHE_VERSION, hyperscan.__version__,
                                          [[p.decode("latin-1"), f] for _, p, f in candidates]]))
        kept = _load_compiled(cache, key, len(candidates), hyperscan) if cache is not None else None
        if kept is not None:
            self.db, positions = kept
        else:
            self.db, positions = self._compile_usable(hyperscan, candidates)
            if cache is not None:
                _save_compiled(cache, key, positions, hyperscan.dumpb(self.db))
        left_out = set(range(len(candidates))).difference(positions)
        self.always.update(candidates[k][0] for k in left_out)
        self.group_of = [candidates[k][0] for k in positions]

    @classmethod
    def _compile_usable(cls, hyperscan: Any, candidates: list[tuple[object, bytes, int]]) -> tuple[Any, list[int]]:
        """The database and the positions of the candidates in it: a pattern Hyperscan cannot take
        is left out (its detector then runs always)."""
        try:
            return cls._compile(hyperscan, candidates), list(range(len(candidates)))
        except hyperscan.error:
            positions = []
            for k, candidate in enumerate(candidates):
                try:
                    cls._compile(hyperscan, [candidate])
                except hyperscan.error:
                    continue
                positions.append(k)
            return cls._compile(hyperscan, [candidates[k] for k in positions]), positions

    @staticmethod
    def _compile(hyperscan: Any, patterns: list[tuple[object, bytes, int]]) -> Any:
        db = hyperscan.Database()
        if patterns:
            db.compile(expressions=[p for _, p, _ in patterns], ids=list(range(len(patterns))),
                       elements=len(patterns), flags=[f for _, _, f in patterns])
        return db

    def groups(self, view: str) -> set[object] | None:
        """Detector groups whose patterns may match `view`; None: run them all."""
        if not view.isascii() or _PYTHON_ONLY_SPACE.search(view):
            return None
        hit: set[object] = set(self.always)
        group_of = self.group_of

        def on_match(pattern_id: int, start: int, end: int, flags: int, context: object) -> None:
            hit.add(group_of[pattern_id])

        if group_of:
            self.db.scan(view.encode(), match_event_handler=on_match)
        return hit


def _load_compiled(path: Path, key: str, candidates: int, hyperscan: Any) -> tuple[Any, list[int]] | None:
    """The database kept under `key` and the positions (among `candidates` patterns) it holds; None
    when the file is missing, of other patterns or versions, damaged, or refused by Hyperscan."""
    try:
        with open(path, "rb") as fh:
            header = loads(fh.readline())
            data = fh.read()
        if not (isinstance(header, dict) and header.get("key") == key and header.get("sha256") == sha256_hex(data)):
            return None
        positions = header["positions"]
        if not (isinstance(positions, list) and all(type(k) is int and 0 <= k < candidates for k in positions)):
            return None
        db = hyperscan.loadb(data, hyperscan.HS_MODE_BLOCK)
        db.scratch = hyperscan.Scratch(db)  # a compile allocates it; a loaded database has none
        return db, positions
    except (OSError, ValueError, KeyError, hyperscan.error):
        return None


def _save_compiled(path: Path, key: str, positions: list[int], data: bytes) -> None:
    """Best effort: a file that cannot be written costs the next process a compile."""
    header = dumps({"version": PREFILTER_CACHE_VERSION, "key": key, "positions": positions, "sha256": sha256_hex(data)})
    try:
        write_atomic(path, header + b"\n" + data)
    except OSError:
        pass


class _Detectors:
    """detect-secrets' plugins and secret-level filters, built once per scanner."""

    def __init__(self, entropy_limit: float) -> None:
        from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
        from detect_secrets.filters import heuristic
        from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString, HighEntropyStringsPlugin

        plugins: list[Any] = []
        for cls in sorted(get_mapping_from_secret_type_to_class().values(), key=lambda c: c.__name__):
            if cls.__name__ in EXCLUDED_PLUGINS:
                continue
            plugins.append(Base64HighEntropyString(limit=entropy_limit) if cls is Base64HighEntropyString else cls())
        self.plugins = plugins
        self.entropy_plugin = next(p for p in plugins if isinstance(p, Base64HighEntropyString))
        self.entropy_types = (HighEntropyStringsPlugin,)
        self.h = heuristic
        self.prefilter: _Prefilter | None = None

    def prefilter_groups(self) -> list[tuple[object, str, int]]:
        """(group, pattern, re flags) for every pattern a detector can fire on."""
        from detect_secrets.plugins.keyword import KeywordDetector, QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP
        from detect_secrets.plugins.high_entropy_strings import HighEntropyStringsPlugin

        out: list[tuple[object, str, int]] = []
        for index, plugin in enumerate(self.plugins):
            if isinstance(plugin, KeywordDetector):
                patterns = [(p.pattern, p.flags) for p in QUOTES_REQUIRED_DENYLIST_REGEX_TO_GROUP]
            elif isinstance(plugin, HighEntropyStringsPlugin):
                run = "[" + re.escape(plugin.charset) + "]{%d,}" % _entropy_min_length(plugin.entropy_limit)
                patterns = [(f"'{run}'", 0), (f'"{run}"', 0)]
            elif getattr(plugin, "denylist", None):
                patterns = [(p.pattern, p.flags) for p in plugin.denylist]
            else:
                out.append((index, "", 0))  # unknown kind of detector: run it always (empty pattern)
                continue
            out.extend((index, pattern, flags) for pattern, flags in patterns)
        unquoted = "[A-Za-z0-9+/=_-]{%d,}" % max(UNQUOTED_MIN_LEN, _entropy_min_length(self.entropy_plugin.entropy_limit))
        out.append((UNQUOTED_GROUP, unquoted, 0))
        out.append((ASSIGNMENT_GROUP, _ASSIGNMENT.pattern.replace("(?i)", ""), re.IGNORECASE))
        return out

    def enable_prefilter(self, cache: Path | None = None) -> bool:
        """Build the Hyperscan prefilter (compiled, or loaded from `cache`); False (every detector
        on every line) if it is unavailable."""
        try:
            self.prefilter = _Prefilter(self.prefilter_groups(), cache)
        except ImportError:
            self.prefilter = None
        return self.prefilter is not None

    def _filtered(self, secret: str, line: str, plugin: Any) -> bool:
        h = self.h
        return (
            h.is_sequential_string(secret)
            or h.is_potential_uuid(secret)
            or h.is_templated_secret(secret)
            or h.is_prefixed_with_dollar_sign(secret)
            or h.is_not_alphanumeric_string(secret)
            or h.is_likely_id_string(secret, line, plugin)
        )

    def kinds(self, line: str) -> set[str]:
        """Secret types detect-secrets finds on one line (filters applied as described above)."""
        groups = self.prefilter.groups(line) if self.prefilter is not None else None
        if groups is not None and not groups:
            return set()
        found: set[str] = set()
        for index, plugin in enumerate(self.plugins):
            if groups is not None and index not in groups:
                continue
            for secret in plugin.analyze_string(line):
                if not secret or self._filtered(secret, line, plugin):
                    continue
                if isinstance(plugin, self.entropy_types) and (
                    plugin.calculate_shannon_entropy(secret) <= plugin.entropy_limit
                ):
                    continue
                found.add(plugin.secret_type)
                break
        if groups is None or UNQUOTED_GROUP in groups:
            found.update(self._unquoted_entropy(line))
        if not found and (groups is None or ASSIGNMENT_GROUP in groups) and self._assignment(line):  # a fallback: only what detect-secrets missed
            found.add(CREDENTIAL_ASSIGNMENT)
        return found

    def _assignment(self, line: str) -> bool:
        for m in _ASSIGNMENT.finditer(line):
            value = m.group(1)
            if not (_DIGIT.search(value) and _LETTER.search(value)):
                continue
            if self.h.is_templated_secret(value) or self.h.is_prefixed_with_dollar_sign(value):
                continue
            if self.h.is_sequential_string(value) or self.h.is_potential_uuid(value):
                continue
            return True
        return False

    def _unquoted_entropy(self, line: str) -> Iterator[str]:
        """detect-secrets' Base64 entropy detector on unquoted tokens, with its limit and filters."""
        plugin = self.entropy_plugin
        for token in _UNQUOTED.findall(line):
            core = token.strip("=")
            if not (_DIGIT.search(core) and _LETTER.search(core)):
                continue
            if "/" in core and not _UPPER.search(core):
                continue  # a lowercase path, not key material
            if self.h.is_sequential_string(core) or self.h.is_potential_uuid(core):
                continue
            if plugin.calculate_shannon_entropy(core) > plugin.entropy_limit:
                yield plugin.secret_type
                return


class SecretScanner:
    """Batch secret scan over many texts (one scanner per export or collect run)."""

    def __init__(
        self, entropy_limit: float = BASE64_ENTROPY_LIMIT, memo_lines: int = LINE_MEMO_MAX, *, prefilter: bool = True,
        prefilter_cache: Path | None = None,
    ) -> None:
        """`prefilter_cache`: a file to keep the compiled prefilter in (a workspace's
        `.distill.secret-prefilter.hs`), so that the next process loads it instead of compiling."""
        self.entropy_limit = entropy_limit
        self.memo_lines = max(0, memo_lines)
        self.use_prefilter = prefilter
        self.prefilter_cache = prefilter_cache
        self._memo: OrderedDict[str, tuple[str, ...]] = OrderedDict()

    @cached_property
    def _detectors(self) -> _Detectors:
        detectors = _Detectors(self.entropy_limit)
        if self.use_prefilter:
            detectors.enable_prefilter(self.prefilter_cache)
        return detectors

    @property
    def prefiltered(self) -> bool:
        """Whether the Hyperscan prefilter is in front of the detectors."""
        return self._detectors.prefilter is not None

    def analyse(self, line: str) -> tuple[str, ...]:
        """Sorted secret types found in one line, in any of its views (no memo)."""
        found: set[str] = set()
        for view in line_views(line.replace("\x00", " ")):
            found |= self._detectors.kinds(view)
        return tuple(sorted(found))

    def line_kinds(self, line: str) -> tuple[str, ...]:
        """analyse(), remembered per distinct line."""
        memo = self._memo
        kinds = memo.get(line)
        if kinds is not None:
            memo.move_to_end(line)
            return kinds
        kinds = self.analyse(line)
        if self.memo_lines:
            memo[line] = kinds
            if len(memo) > self.memo_lines:
                memo.popitem(last=False)
        return kinds

    def scan(self, texts: Sequence[str]) -> list[list[SecretHit]]:
        """Hits per text (an empty list: clean), ordered by line, one per kind per line."""
        return [
            [SecretHit(kind, n) for n, line in enumerate(text.splitlines() or [""], start=1) for kind in self.line_kinds(line)]
            for text in texts
        ]


def reference_scan(lines: Sequence[str], entropy_limit: float = BASE64_ENTROPY_LIMIT) -> set[int]:
    """0-based indexes of the lines detect-secrets' own file scan flags, with its default filters
    and the same plugins (the scan exports used before this gate): the yardstick for parity."""
    import os
    import tempfile

    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.core.scan import scan_file
    from detect_secrets.settings import default_settings, transient_settings

    plugins = [
        {"name": cls.__name__, **({"limit": entropy_limit} if cls.__name__ == "Base64HighEntropyString" else {})}
        for cls in get_mapping_from_secret_type_to_class().values()
        if cls.__name__ not in EXCLUDED_PLUGINS
    ]
    with default_settings() as settings:
        filters = [{"path": p} for p in settings.filters if "allowlist" not in p and "verification" not in p]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lines.txt")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as fh:
            fh.write("distill parity scan\n" + "\n".join(ln.replace("\x00", " ") for ln in lines) + "\n")
        with transient_settings({"plugins_used": plugins, "filters_used": filters}):
            return {s.line_number - 2 for s in scan_file(path)}
