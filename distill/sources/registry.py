"""Which sources a workspace has: the built-in streams, configured mappings, SWE-agent dirs.

Built-in streams are always listed (a missing file simply has no inputs and yields nothing),
so `collect --json` reports every known stream, present or not.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from distill.config import Settings
from distill.errors import UsageError
from distill.sources.base import Converter, JsonlStream, Source
from distill.sources.extraction_streams import CONVERTERS as EXTRACTION
from distill.sources.mapping import mapping_stream
from distill.sources.swe_agent import SweAgentSource, swe_agent_dirs
from distill.sources.telemetry_streams import CONVERTERS as TELEMETRY
from distill.sources.verdict_streams import CONVERTERS as VERDICT
from distill.workspace import Workspace, is_data, shown_name, special_kind, text_name

REPLAY_RUNS = "replay_runs"
BUILTIN_CONVERTERS: dict[str, Converter] = {**VERDICT, **TELEMETRY, **EXTRACTION}
SEED_STREAMS: tuple[str, ...] = tuple(name for name in BUILTIN_CONVERTERS if name != REPLAY_RUNS)

KB_STATE_FILES = frozenset({"audit_lessons.jsonl"})
"""Files in _kb/ that are a command's own memory, not evidence: `distill audit` keeps its lessons
there (its verdicts go to audits.jsonl, which is collected)."""


def builtin_streams(settings: Settings) -> list[JsonlStream]:
    """One JsonlStream per built-in stream: _kb/<name>.jsonl."""
    return [
        JsonlStream(name=name, pattern=f"{name}.jsonl", convert=convert)
        for name, convert in BUILTIN_CONVERTERS.items()
        if name != REPLAY_RUNS or settings.collect.include_replay_runs
    ]


def _kind_problem(path: Path) -> str | None:
    """Why an entry cannot be a source file at all (None: a regular file or a directory)."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return f"cannot be examined ({exc.strerror})"
    what = ""
    if stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except OSError as exc:
            return "a symlink loop" if exc.errno == 40 else "a broken symlink (its target does not exist)"
        what = "a symlink to "
    special = special_kind(st.st_mode)
    if special is None:
        return None
    return f"{what}{special}, not a file" + (" (collect never reads from pipes)" if stat.S_ISFIFO(st.st_mode) else "")


NOT_UTF8 = "its name is not valid UTF-8 (a receipt or a provenance field cannot name it): rename it"


def _rel(ws: Workspace, path: Path) -> str:
    """The path relative to ROOT as found (not resolved: a symlink may lead nowhere or in a loop),
    as text whatever its bytes."""
    return shown_name(Path(os.path.relpath(path, ws.root)).as_posix())


def unread_inputs(ws: Workspace, settings: Settings, sources: list[Source]) -> list[tuple[str, str]]:
    """Every entry under _kb/ that no source reads, with the reason: collect says what it skipped
    instead of skipping it without a word."""
    if not ws.kb_dir.is_dir():
        return []
    inputs = {source.name: source.inputs(ws) for source in sources}
    read = {p.absolute() for found in inputs.values() for p in found}
    owned_dirs = [s.directory.absolute() for s in sources if isinstance(s, SweAgentSource)]
    out: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(ws.kb_dir, followlinks=False):
        here = Path(dirpath)
        for name in sorted(dirnames):
            path = here / name
            problem = _kind_problem(path)
            if not text_name(Path(name)):
                out.append((_rel(ws, path), NOT_UTF8))
            elif problem:
                out.append((_rel(ws, path), problem))
            elif name.endswith(".jsonl"):
                out.append((_rel(ws, path), "a directory named like a JSONL stream"))
        dirnames[:] = sorted(d for d in dirnames if not os.path.islink(here / d))
        for name in sorted(filenames):
            path = here / name
            if not is_data(name) or path.absolute() in read:
                continue
            if here == ws.kb_dir and name in KB_STATE_FILES:
                continue
            rel = _rel(ws, path)
            problem = _kind_problem(path)
            if not text_name(path.relative_to(ws.kb_dir)):  # its name, or a folder's above it
                out.append((rel, NOT_UTF8))
            elif problem:
                out.append((rel, problem))
            elif any(d in path.absolute().parents for d in owned_dirs):
                out.append((rel, "not a .traj trajectory or the results file of its SWE-agent directory"))
            elif name == f"{REPLAY_RUNS}.jsonl" and not settings.collect.include_replay_runs:
                out.append((rel, "collect.include_replay_runs is off"))
            elif name.endswith(".jsonl"):
                out.append((rel, "no source reads it: map it with a [[sources]] entry in distill.toml "
                                  "(name, path, task_id, text, created_at)"))
            else:
                out.append((rel, "not a JSONL stream or a SWE-agent directory"))
    for mapping in settings.sources:  # a declared stream that reads nothing is a typo until shown otherwise
        found = inputs.get(mapping.name)
        if found is not None and not found:
            if mapping.path.startswith("_kb/"):
                hint = ": the path is relative to _kb/ already, drop its leading '_kb/'"
            elif (ws.kb_dir / mapping.path).is_dir():
                hint = f": it is a folder; name the files in it ({mapping.path.rstrip('/')}/*.jsonl)"
            else:
                hint = ""
            out.append((f"_kb/{mapping.path}", f"[[sources]] '{mapping.name}' matches no file{hint}"))
    return sorted(set(out))


def discover_sources(ws: Workspace, settings: Settings) -> list[Source]:
    """Built-in streams, then [[sources]] mappings from distill.toml, then one SWE-agent source
    per _kb/<dir>/ holding .traj files. Names must be unique (they name evidence files)."""
    sources: list[Source] = list(builtin_streams(settings))
    taken = set(BUILTIN_CONVERTERS)
    for mapping in settings.sources:
        if mapping.name in taken:
            raise UsageError(
                f"distill.toml [[sources]] name '{mapping.name}' is already taken by another source; rename it"
            )
        taken.add(mapping.name)
        sources.append(mapping_stream(mapping))
    for directory in swe_agent_dirs(ws.kb_dir):
        if directory.name in taken:
            raise UsageError(
                f"_kb/{directory.name}/ holds SWE-agent trajectories but '{directory.name}' names another source; "
                "rename the directory"
            )
        taken.add(directory.name)
        sources.append(SweAgentSource(name=directory.name, directory=directory))
    _refuse_shared_files(ws, sources, mapped={m.name for m in settings.sources})
    return sources


def _refuse_shared_files(ws: Workspace, sources: list[Source], *, mapped: set[str]) -> None:
    """A file read by two sources would become two evidence rows per line (the same run in the
    datasets twice, under two names): a [[sources]] glob such as "*.jsonl" also matches the
    built-in streams. Each file belongs to one source."""
    owner: dict[Path, str] = {}
    for source in sources:
        for path in source.inputs(ws):
            first = owner.setdefault(path.absolute(), source.name)
            if first != source.name:
                blame = source.name if source.name in mapped else first
                raise UsageError(
                    f"{_rel(ws, path)} is read by two sources, '{first}' and '{source.name}': a file belongs to one "
                    f"source (narrow the [[sources]] path of '{blame}')"
                )
