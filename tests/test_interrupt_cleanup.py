"""A command stopped by Ctrl-C or SIGTERM leaves no temporary file, even when the interrupt lands
where no `with` owns the writer yet (between a context manager's enter and the `with`, or inside
its exit): the error boundary lets go of the interrupt and collects before it exits, so the
suspended writer is closed and removes its file while the interpreter is whole."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import typer

from distill.command import handle_errors
from distill.errors import Terminated
from distill.jsonl import atomic_writer


@pytest.mark.parametrize("in_a_cycle", [False, True])
@pytest.mark.parametrize("sigterm", [False, True])
def test_an_interrupt_before_the_with_owns_the_writer_leaves_no_temp_file(
        tmp_path: Path, in_a_cycle: bool, sigterm: bool) -> None:
    target = tmp_path / "out.jsonl"

    @handle_errors
    def command() -> None:
        writer = atomic_writer(target)
        writer.__enter__()  # the temporary file exists; the interrupt lands before a `with` holds it
        if in_a_cycle:
            writer.itself = writer  # type: ignore[attr-defined]  # freed only by the cycle collector
        assert list(tmp_path.glob(".out.jsonl.*.tmp"))
        raise Terminated(signal.SIGTERM) if sigterm else KeyboardInterrupt

    with pytest.raises(typer.Exit) as stopped:
        command()
    assert stopped.value.exit_code == (143 if sigterm else 130)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    assert not target.exists()
