"""What every command line of the project shares: `distill`'s commands, `replay`, and the commands
other packages register (index, serve): the --root and --json options, opening a workspace with its
settings, JSON output, and the error boundary that turns a DistillError into one line and an exit
code."""

from __future__ import annotations

import contextlib
import functools
import gc
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.text import Text

from distill.config import Settings, load_settings
from distill.errors import DistillError, Terminated, UsageError, os_error_message
from distill.workspace import Workspace


def directory_path(value: str) -> Path:
    """A directory named on the command line; an empty one is refused rather than read as the
    current directory (`--root "$WS"` or `init "$DIR"` with the variable unset)."""
    if not value.strip():
        raise typer.BadParameter("an empty path (an unset shell variable?): name the directory, or '.' for this one")
    return Path(value)


RootOption = Annotated[
    Path | None,
    typer.Option("--root", parser=directory_path, metavar="<path>",
                 help="workspace root (default: $DISTILL_ROOT, else the current directory)"),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print a JSON result for scripts")]

F = TypeVar("F", bound=Callable[..., Any])


def console() -> Console:
    """stdout console; at least 120 columns so stage tables stay readable in pipes and CI logs.

    markup=False: text from records, models and users (`arr[i]`, `[/logs/x.log]`) is printed as it
    is, never parsed as Rich markup; styling is explicit (rich.text.Text).
    """
    probe = Console()
    return Console(width=max(probe.width, 120) if not probe.is_terminal else None, markup=False, highlight=False)


def err_console() -> Console:
    return Console(stderr=True, soft_wrap=True, markup=False, highlight=False)


def open_workspace(root: Path | None, *, must_exist: bool = True, sources: bool = False) -> tuple[Workspace, Settings]:
    """The workspace and its settings. `sources`: the command reads the source streams, so the
    directory must be a workspace (have _kb/), not just any directory it would fill with outputs."""
    ws = Workspace.resolve(root)
    if must_exist and ws.root.exists() and not ws.root.is_dir():
        raise UsageError(f"workspace {ws.root} is a file, not a directory (pass the workspace directory as --root)")
    if must_exist and not ws.root.is_dir():
        raise UsageError(f"workspace {ws.root} does not exist (create one with `distill init DIR --sample`)")
    if sources and not ws.kb_dir.is_dir():
        raise UsageError(f"{ws.root} is not a workspace (no _kb/ directory): create one with `distill init DIR`")
    if ws.root.is_dir():
        ws.refuse_special_files()  # read-only commands too: `receipts` waited for ever on a FIFO summary
    return ws, load_settings(ws.root)


def emit_json(value: BaseModel | dict[str, Any] | list[Any]) -> None:
    if isinstance(value, BaseModel):
        sys.stdout.write(value.model_dump_json(indent=2) + "\n")
    else:
        import json

        import orjson

        try:
            text = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()
        except (TypeError, orjson.JSONEncodeError):  # an integer beyond 64 bits: the stdlib writes every digit
            text = json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)
        sys.stdout.write(text + "\n")


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


def fail(message: str, code: int, *, json_out: bool) -> typer.Exit:
    """Report a failure as one line on stderr (and, under --json, as one JSON document on stdout,
    so a script always has something to parse); returns the Exit to raise."""
    err_console().print(Text.assemble(("error: ", "bold red"), message))
    if json_out:
        from distill.jsonl import dumps

        sys.stdout.write(dumps({"error": message, "exit_code": code}).decode() + "\n")
        sys.stdout.flush()
    return typer.Exit(code)


def run_app(app: typer.Typer) -> None:
    """Run a command-line app so that a usage mistake (an unknown option, a bad choice, a missing
    argument) is one `error:` line and exit 2 like every other expected failure, not click's
    framed usage box. Asking for help (no arguments, `--help`) still prints the help."""
    # Typer re-exports BadParameter only; newer versions vendor click, so its bases are found there.
    bases = typer.BadParameter.__mro__
    usage_error = next(c for c in bases if c.__name__ == "UsageError")
    click_exception = next(c for c in bases if c.__name__ == "ClickException")
    try:
        code = app(standalone_mode=False)
    except click_exception as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:  # `distill` alone: the help
            exc.show()
        else:
            where = f" (see `{ctx.command_path} --help`)" if isinstance(exc, usage_error) and ctx is not None else ""
            fail(f"{' '.join(exc.format_message().split())}{where}", exc.exit_code, json_out="--json" in sys.argv[1:])
        sys.exit(exc.exit_code)
    except RuntimeError as exc:  # click's Abort (end of input at a prompt)
        if type(exc).__name__ != "Abort":
            raise
        sys.stderr.write("aborted\n")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def handle_errors(func: F) -> F:
    """The error boundary of a command. Every expected failure ends as one line and an exit code,
    never a traceback: a DistillError (its own code: 1 validation/firewall, 2 usage/input/config),
    a failed file operation (permissions, a file where a directory should be, a full disk: 2).
    Ctrl-C exits 130 and SIGTERM 143 after unwinding."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        json_out = bool(kwargs.get("json_out"))
        try:
            with stop_on_sigterm():
                return func(*args, **kwargs)
        except DistillError as exc:
            raise fail(str(exc), exc.exit_code, json_out=json_out) from None
        except OSError as exc:
            raise fail(os_error_message(exc), 2, json_out=json_out) from None
        except KeyboardInterrupt as exc:  # Ctrl-C, or Terminated (SIGTERM)
            code = exc.exit_code if isinstance(exc, Terminated) else 130
        # Stopped. The interrupt can land between a context manager's enter and its `with` (or
        # inside its exit), leaving a generator such as jsonl.atomic_writer suspended with its
        # temporary file; it is closed, and the file removed, when nothing holds it any more. Out
        # of the except block the exception and its traceback are gone: collect now, while the
        # interpreter is whole, rather than at exit, when a module a cleanup needs may be torn down.
        gc.collect()
        err_console().print("stopped (SIGTERM)" if code == 143 else "interrupted")
        raise typer.Exit(code)

    return wrapper  # type: ignore[return-value]
