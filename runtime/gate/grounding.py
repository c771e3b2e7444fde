"""grounding: a file path, record id, URL or e-mail address the answer gives must be in the bundle or
the task.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from distill.records.replay import ContextBundle, GateCheck
from runtime.gate.common import _bundle_text, _check, _quote

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
