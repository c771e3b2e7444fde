"""Options and output helpers every `distill` command shares."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console

from distill.config import ConfigError, Settings, load_settings
from distill.errors import DistillError
from distill.workspace import Workspace

RootOption = Annotated[
    Path | None,
    typer.Option("--root", help="workspace root (default: $DISTILL_ROOT, else the current directory)"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print a JSON result for scripts")]

F = TypeVar("F", bound=Callable[..., Any])


def console() -> Console:
    """stdout console; at least 120 columns so stage tables stay readable in pipes and CI logs."""
    probe = Console()
    return Console(width=max(probe.width, 120) if not probe.is_terminal else None)


def err_console() -> Console:
    return Console(stderr=True, soft_wrap=True)


def open_workspace(root: Path | None, *, must_exist: bool = True) -> tuple[Workspace, Settings]:
    ws = Workspace.resolve(root)
    if must_exist and not ws.root.is_dir():
        raise DistillError(f"workspace {ws.root} does not exist (create one with `distill init DIR --sample`)")
    try:
        settings = load_settings(ws.root)
    except ConfigError as exc:
        raise DistillError(str(exc)) from exc
    return ws, settings


def emit_json(value: BaseModel | dict[str, Any] | list[Any]) -> None:
    if isinstance(value, BaseModel):
        sys.stdout.write(value.model_dump_json(indent=2) + "\n")
    else:
        from distill.jsonl import dumps

        import orjson

        sys.stdout.write(orjson.dumps(orjson.loads(dumps(value)), option=orjson.OPT_INDENT_2).decode() + "\n")


def handle_errors(func: F) -> F:
    """Turn DistillError into a one-line message and its exit code (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DistillError as exc:
            err_console().print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console().print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]
