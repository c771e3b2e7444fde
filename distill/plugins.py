"""Stages and commands registered through entry points (pyproject.toml).

`distill` never imports `index` or `runtime`: they add their stage (`distill.stages`) and their
commands (`distill.commands`) through entry points, which keeps the package layers one-way
(runtime -> index -> distill). A registration that is missing or fails to import is an error, never
a stage or command that silently disappears.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any

from distill.errors import PluginError
from distill.stage import Stage

STAGES_GROUP = "distill.stages"
COMMANDS_GROUP = "distill.commands"
REQUIRED_COMMANDS: tuple[str, ...] = ("init", "collect", "score", "export", "run", "receipts", "index")
"""Commands every installation has, in the order `distill --help` lists them; their absence
means the package metadata is stale. Other registered commands follow, by name."""
REINSTALL = "reinstall the project (`make install`, or `pip install -e .`) so its entry points are current"


def load_group(group: str) -> list[tuple[str, Any]]:
    """(name, loaded object) for every entry point of `group`, sorted by name."""
    found = sorted(metadata.entry_points(group=group), key=lambda ep: ep.name)
    if not found:
        raise PluginError(f"no entry points in group {group!r}: distill is not installed; {REINSTALL}")
    loaded: list[tuple[str, Any]] = []
    for ep in found:
        try:
            loaded.append((ep.name, ep.load()))
        except Exception as exc:
            raise PluginError(
                f"{group} entry point {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
            ) from exc
    return loaded


def registered_stages() -> list[Stage]:
    """Every registered stage, in run order (see order_stages)."""
    stages: list[Stage] = []
    for name, factory in load_group(STAGES_GROUP):
        made = factory()
        items: Iterable[Any] = made if isinstance(made, list | tuple) else [made]
        for stage in items:
            if not isinstance(stage, Stage):
                raise PluginError(f"{STAGES_GROUP} entry point {name!r} produced {stage!r}, not a Stage")
            stages.append(stage)
    return order_stages(stages)


def order_stages(stages: list[Stage]) -> list[Stage]:
    """A stage after every stage it names in `after`; among stages ready together, by name.

    A dependency on a stage that is not in the list is ignored (a pipeline may leave stages
    out); a cycle is an error.
    """
    by_name: dict[str, Stage] = {}
    for stage in stages:
        if stage.name in by_name:
            raise PluginError(f"two stages are named {stage.name!r}")
        by_name[stage.name] = stage
    waiting = {s.name: {d for d in s.after if d in by_name} for s in stages}
    ordered: list[Stage] = []
    while waiting:
        ready = sorted(name for name, deps in waiting.items() if not deps)
        if not ready:
            raise PluginError(f"stages depend on each other in a cycle: {sorted(waiting)}")
        name = ready[0]
        ordered.append(by_name[name])
        del waiting[name]
        for deps in waiting.values():
            deps.discard(name)
    return ordered


def registered_commands() -> list[tuple[str, Callable[[Any], None]]]:
    """(name, register(app)) for every registered command; all of REQUIRED_COMMANDS must be there."""
    commands = load_group(COMMANDS_GROUP)
    missing = set(REQUIRED_COMMANDS) - {name for name, _ in commands}
    if missing:
        raise PluginError(f"commands {sorted(missing)} are not registered; {REINSTALL}")
    rank = {name: i for i, name in enumerate(REQUIRED_COMMANDS)}
    return sorted(commands, key=lambda item: (rank.get(item[0], len(rank)), item[0]))
