"""Which sources a workspace has: the built-in streams, configured mappings, SWE-agent dirs.

Built-in streams are always listed (a missing file simply has no inputs and yields nothing),
so `collect --json` reports every known stream, present or not.
"""

from __future__ import annotations

from distill.config import Settings
from distill.errors import UsageError
from distill.sources.base import Converter, JsonlStream, Source
from distill.sources.extraction_streams import CONVERTERS as EXTRACTION
from distill.sources.mapping import mapping_stream
from distill.sources.swe_agent import SweAgentSource, swe_agent_dirs
from distill.sources.telemetry_streams import CONVERTERS as TELEMETRY
from distill.sources.verdict_streams import CONVERTERS as VERDICT
from distill.workspace import Workspace

REPLAY_RUNS = "replay_runs"
BUILTIN_CONVERTERS: dict[str, Converter] = {**VERDICT, **TELEMETRY, **EXTRACTION}
SEED_STREAMS: tuple[str, ...] = tuple(name for name in BUILTIN_CONVERTERS if name != REPLAY_RUNS)


def builtin_streams(settings: Settings) -> list[JsonlStream]:
    """One JsonlStream per built-in stream: _kb/<name>.jsonl."""
    return [
        JsonlStream(name=name, pattern=f"{name}.jsonl", convert=convert)
        for name, convert in BUILTIN_CONVERTERS.items()
        if name != REPLAY_RUNS or settings.collect.include_replay_runs
    ]


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
    return sources
