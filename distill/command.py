"""What every command line of the project shares: `distill`'s commands, `replay`, and the commands
other packages register (index, serve): the --root and --json options, opening a workspace with its
settings, JSON output, and the error boundary that turns a DistillError into one line and an exit
code."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console

from distill.config import Settings, load_settings
from distill.errors import DistillError, Terminated
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
    return ws, load_settings(ws.root)


def emit_json(value: BaseModel | dict[str, Any] | list[Any]) -> None:
    if isinstance(value, BaseModel):
        sys.stdout.write(value.model_dump_json(indent=2) + "\n")
    else:
        from distill.jsonl import dumps

        import orjson

        sys.stdout.write(orjson.dumps(orjson.loads(dumps(value)), option=orjson.OPT_INDENT_2).decode() + "\n")


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM (what service managers and `kill` send) stops the command like Ctrl-C does: a
    Terminated exception unwinds the stack, so locks are released and temporary files removed
    instead of the process vanishing mid-write. SIGINT keeps Python's own handling, including an
    inherited 'ignore' (a job started in the background of a script)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def handle_errors(func: F) -> F:
    """The error boundary of a command: a DistillError becomes a one-line message and its exit
    code (no traceback); Ctrl-C exits 130 and SIGTERM 143 after unwinding."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with stop_on_sigterm():
                return func(*args, **kwargs)
        except DistillError as exc:
            err_console().print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or Terminated (SIGTERM)
            code = exc.exit_code if isinstance(exc, Terminated) else 130
            err_console().print("stopped (SIGTERM)" if code == 143 else "interrupted", highlight=False)
            raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]
