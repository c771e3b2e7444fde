"""`replay`: answer a task with a local model grounded in retrieved evidence, gate it, log it.

Exit codes: 0 the answer passed the gate (locally or after escalation), 1 it failed the gate and
was not (or not successfully) escalated, 2 bad usage/input or no usable backend.
Only light modules are imported here; retrieval and each backend import their own libraries
when (and only when) they are used.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from distill.command import JsonOption, RootOption, console, emit_json, err_console, handle_errors, open_workspace, run_app
from distill.errors import UsageError
from distill.records.common import id_problem, is_blank_text, unicode_problem
from distill.sources.fields import key_part

if TYPE_CHECKING:
    from distill.records.replay import ReplayRun
    from runtime.replay import ReplaySession

app = typer.Typer(
    name="replay",
    help="Answer a task with a local model, grounded in retrieved evidence, checked by a deterministic gate.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Mode(str, Enum):
    hybrid = "hybrid"
    dense = "dense"
    bm25 = "bm25"
    jaccard = "jaccard"


class BackendChoice(str, Enum):
    auto = "auto"
    ollama = "ollama"
    openai = "openai"
    llamacpp = "llamacpp"


def read_tasks(path: Path) -> tuple[list[tuple[str, str | None]], list[str]]:
    """(task, task_id) per usable line of a JSONL file, and one message per line that was not usable.

    A line is a JSON object with "task" (and optionally "task_id" or "id"), or a JSON string.
    """
    from distill.jsonl import iter_raw_lines, loads, utf16_problem

    if not path.exists():
        raise UsageError(f"tasks file not found: {path}")
    if not path.is_file():
        raise UsageError(f"tasks file is not a regular file: {path}")
    tasks: list[tuple[str, str | None]] = []
    bad: list[str] = []
    for raw in iter_raw_lines(path, max_line_bytes=1 << 20):
        where = f"{path}:{raw.number}"
        if raw.too_long:
            bad.append(f"{where}: line longer than 1 MiB")
            continue
        assert raw.data is not None
        if not raw.data.strip():
            continue
        if b"\x00" in raw.data or raw.number == 1:
            problem = utf16_problem(raw.data)  # the stdlib's parser would decode some such lines and not others
            if problem is not None:
                bad.append(f"{where}: {problem}")
                continue
        try:
            value = loads(raw.data)
        except ValueError as exc:
            bad.append(f"{where}: not JSON ({exc})")
            continue
        task_id = None
        if isinstance(value, dict):
            task_id = value.get("task_id", value.get("id"))
            value = value.get("task")
        if not isinstance(value, str) or is_blank_text(value):
            bad.append(f'{where}: no non-empty "task" string')
            continue
        if (problem := unicode_problem(value)) is not None:
            bad.append(f'{where}: "task" is {problem}')
            continue
        # an id is what a natural key may be (a non-blank string or an integer): an object, a list
        # or a float would be logged as its repr and become the evidence's task id
        if task_id is not None and key_part(task_id) is None:
            bad.append(f'{where}: "task_id" must be a non-empty string or an integer')
            continue
        if isinstance(task_id, str) and (problem := id_problem(task_id)) is not None:
            bad.append(f'{where}: "task_id" {problem}')
            continue
        if isinstance(task_id, str) and (problem := unicode_problem(task_id)) is not None:
            bad.append(f'{where}: "task_id" is {problem}')
            continue
        tasks.append((value, str(task_id) if task_id is not None else None))
    return tasks, bad


def exit_code_for(verdicts: list[str]) -> int:
    if any(v == "error" for v in verdicts):
        return 2
    if any(v in ("failed", "escalated_failed") for v in verdicts):
        return 1
    return 0


def finish(session: ReplaySession | None, code: int) -> None:
    """Exit with `code`. An embedded llama.cpp call that timed out cannot be cancelled, and letting
    the interpreter finalise under a running native thread can crash it; the run is already
    logged (fsynced), so in that case the process leaves without finalisation."""
    backends = (getattr(session, "local", None), getattr(session, "escalation", None))
    if any(getattr(b, "busy", False) for b in backends):
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)


def show_run(run: ReplayRun, log_path: Path) -> None:
    """The answer, the gate table per attempt, escalation and the log path. Model text is printed as
    text (never Rich markup); outside a terminal the answer is written as it is, unwrapped, so pipes
    and CI logs get every line whole."""
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from distill.command import console

    out = console()
    answer = run.final_output or "(no answer)"
    if out.is_terminal:
        out.print(Panel(Text(answer), title="answer", title_align="left"))
    else:
        sys.stdout.write("answer:\n" + answer.rstrip("\n") + "\n")
        sys.stdout.flush()
    for n, attempt in enumerate(run.attempts, 1):
        label = f"attempt {n}: {attempt.backend} / {attempt.model}" + (" (escalation)" if attempt.escalation else "")
        if attempt.error:
            out.print(Text.assemble((label, "bold"), ": ", ("error", "red"), f" {attempt.error}"))
            continue
        table = Table(title=label, title_justify="left")
        table.add_column("check")
        table.add_column("result")
        table.add_column("reason", overflow="fold")
        for check in attempt.gate.checks if attempt.gate else []:
            result = Text("pass", style="green") if check.passed else Text("FAIL", style="red")
            table.add_row(check.name, result, check.reason)
        out.print(table)
        toks = f"{attempt.prompt_tokens or '?'} prompt + {attempt.completion_tokens or '?'} completion tokens"
        out.print(Text.assemble(f"  {attempt.latency_ms:.0f} ms · {toks}", (" · truncated", "yellow") if attempt.truncated else ""))
    retrieval = "none (baseline)" if run.retrieval_mode == "none" else f"{run.retrieval_mode}, {len(run.retrieved)} hits"
    trim = f" · bundle trimmed ({len(run.bundle.trimmed_items)} dropped)" if run.bundle.trimmed else ""
    out.print(Text.assemble("verdict: ", (run.final_verdict, "bold"),
                            f" · escalated: {'yes' if run.escalated else 'no'} · retrieval: {retrieval}{trim}"))
    out.print(f"logged to: {log_path}")


def run_check(path: Path, root: Path | None) -> None:
    """`replay --check`: one JSON line per answer on stdout, exit 0 all passed / 1 any failed / 2 bad lines."""
    from distill.config import load_settings
    from distill.jsonl import dumps
    from distill.workspace import Workspace
    from runtime.check import check_file

    settings = load_settings(Workspace.resolve(root).root)  # a missing root: defaults and DISTILL_* env
    failed = bad = 0
    for verdict in check_file(path, settings.gate):
        row = verdict.model_dump(mode="json", exclude_none=True)
        sys.stdout.write(dumps(row).decode() + "\n")
        bad += verdict.error is not None
        failed += not verdict.passed
    sys.stdout.flush()
    raise typer.Exit(2 if bad else (1 if failed else 0))


def ask_server(url: str, task: str, json_out: bool) -> None:
    """One task to a running `distill serve` (its bearer token, if any, from $DISTILL_SERVE_KEY)."""
    import os

    import httpx

    headers = {"Authorization": f"Bearer {os.environ['DISTILL_SERVE_KEY']}"} if os.environ.get("DISTILL_SERVE_KEY") else {}
    try:  # an answer may wait for the queue and the model; a server that cannot be reached fails fast
        resp = httpx.post(url.rstrip("/") + "/v1/chat/completions", headers=headers,
                          timeout=httpx.Timeout(None, connect=10.0), json={"messages": [{"role": "user", "content": task}]})
    except (httpx.HTTPError, ValueError) as exc:
        raise UsageError(f"--server {url}: {exc}") from None
    if resp.status_code != 200:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:200]
        raise UsageError(f"--server {url}: HTTP {resp.status_code}: {message}")
    try:
        body = resp.json()
        ext = body["distill"]
        content = body["choices"][0]["message"]["content"]
    except (ValueError, KeyError, TypeError, IndexError):  # another OpenAI-compatible server, or not one at all
        raise UsageError(f"--server {url} did not answer as `distill serve` does (no choices and `distill` field in "
                         f"the reply: {resp.text[:120]!r})") from None
    if json_out:
        emit_json(body)
    else:
        out = console()
        # a withheld answer (it failed the gate) is printed as local `replay` prints it; exit 1 says so
        out.print(content if content is not None else ext.get("withheld_answer", ""), soft_wrap=True)
        out.print(f"run {ext.get('run_id')}: {ext.get('final_verdict')}, retrieved {len(ext.get('retrieved', []))}, "
                  f"escalated {ext.get('escalated')}")
    raise typer.Exit(exit_code_for([str(ext.get("final_verdict", "error"))]))


@app.command()
@handle_errors
def replay(
    task: Annotated[str | None, typer.Option("--task", help="the task to answer")] = None,
    tasks_file: Annotated[
        Path | None, typer.Option("--tasks-file", help='JSONL, one {"task": ..., "task_id": ...} per line')
    ] = None,
    root: RootOption = None,
    k: Annotated[int | None, typer.Option("--k", help="hits to retrieve (default: \\[runtime] k, 8)")] = None,
    mode: Annotated[Mode | None, typer.Option("--mode", help="retrieval mode (default: \\[runtime] mode, hybrid)")] = None,
    backend: Annotated[
        BackendChoice | None, typer.Option("--backend", help="local model backend (default: \\[runtime] backend, auto)")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", help="model name (or GGUF path for llamacpp)")] = None,
    local_only: Annotated[bool, typer.Option("--local-only", help="never escalate")] = False,
    allow_escalation: Annotated[
        bool, typer.Option("--allow-escalation", help="escalate a failed answer to the configured bigger model")
    ] = False,
    no_retrieval: Annotated[
        bool, typer.Option("--no-retrieval", help="baseline: answer without retrieved context")
    ] = False,
    check: Annotated[
        Path | None,
        typer.Option("--check", help='gate answers from any system: JSONL {"id","task","answer","context":[{"id","text"}]}'),
    ] = None,
    server: Annotated[
        str | None, typer.Option("--server", help="send --task to a running `distill serve` at this URL instead of loading everything here")
    ] = None,
    json_out: JsonOption = False,
    version: Annotated[bool, typer.Option("--version", help="print the version and exit", is_eager=True)] = False,
) -> None:
    """Retrieve, assemble a bundle, ask the local model, gate the answer, escalate if allowed, log the run.

    With --check FILE.jsonl: only the gate, on given answers and their context (no retrieval, no
    model, nothing logged); one JSON line per answer; exit 0 when every answer passed, else 1."""
    if version:
        from distill import __version__

        typer.echo(f"replay (distill {__version__})")
        raise typer.Exit(0)
    if check is not None:
        if task is not None or tasks_file is not None:
            raise UsageError("--check runs the gate alone: give it without --task / --tasks-file")
        run_check(check, root)
        return
    if (task is None) == (tasks_file is None):
        raise UsageError("give exactly one of --task TEXT, --tasks-file FILE.jsonl or --check FILE.jsonl")
    if task is not None and (problem := unicode_problem(task)) is not None:  # an argument that is not UTF-8
        raise UsageError(f"--task is {problem}")
    if server is not None:
        if task is None:
            raise UsageError("--server sends one --task; run a tasks file against the server with any OpenAI client")
        ask_server(server, task, json_out)
        return
    from runtime.replay import ReplayOptions, ReplaySession

    ws, settings = open_workspace(root)
    options = ReplayOptions.from_settings(
        settings.runtime,
        k=k,
        mode=mode.value if mode else None,
        backend=backend.value if backend else None,
        model=model,
        local_only=local_only,
        allow_escalation=allow_escalation,
        no_retrieval=no_retrieval,
    )
    session = ReplaySession(ws, settings, options)
    errc = err_console()
    from rich.text import Text

    if task is not None:
        run = session.run(task)
        for warning in run.warnings:
            errc.print(Text.assemble(("warning:", "yellow"), f" {warning}"))
        if json_out:
            emit_json(run)
        else:
            show_run(run, ws.replay_log)
        if run.final_verdict == "error":
            errc.print(Text.assemble(("error:", "bold red"), f" {run.attempts[-1].error}"))
        finish(session, exit_code_for([run.final_verdict]))

    assert tasks_file is not None
    tasks, bad = read_tasks(tasks_file)
    for message in bad:
        errc.print(Text.assemble(("skipped:", "yellow"), f" {message}"))
    runs = []
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("replay"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=errc, transient=json_out
    ) as progress:
        bar = progress.add_task("replay", total=len(tasks))
        for text, task_id in tasks:
            runs.append(session.run(text, task_id=task_id))
            progress.advance(bar)
    for warning in session.warnings:
        errc.print(Text.assemble(("warning:", "yellow"), f" {warning}"))
    verdicts = [r.final_verdict for r in runs]
    counts = {v: verdicts.count(v) for v in sorted(set(verdicts))}
    summary = {
        "tasks": len(tasks),
        "skipped_lines": len(bad),
        "verdicts": counts,
        "escalated": sum(r.escalated for r in runs),
        "log": str(ws.replay_log),
        "runs": [
            {"run_id": r.run_id, "task_id": r.task_id, "final_verdict": r.final_verdict, "escalated": r.escalated}
            for r in runs
        ],
    }
    if json_out:
        emit_json(summary)
    else:
        from rich.table import Table

        table = Table(title=f"replay summary ({len(tasks)} tasks, {len(bad)} lines skipped)", title_justify="left")
        table.add_column("verdict")
        table.add_column("runs", justify="right")
        for verdict, n in counts.items():
            table.add_row(verdict, str(n))
        console().print(table)
        console().print(f"escalated: {summary['escalated']} · logged to: {ws.replay_log}")
    code = 2 if bad else exit_code_for(verdicts)  # unusable input lines: the user must fix the file
    finish(session, code)


def main() -> None:
    run_app(app)


if __name__ == "__main__":  # `python -m runtime.cli`
    sys.exit(main())
