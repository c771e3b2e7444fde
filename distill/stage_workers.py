"""Stages in worker processes: independent stages of `distill run` on more than one core.

A stage's work is the only thing a worker does. Planning, validation and receipts stay in the
parent, which runs one stage of a wave itself and hands the others to workers, so a stage's
outputs are the bytes a single-process run writes (a stage is a function of its inputs; only
when it runs changes). A worker is a fresh interpreter (spawn: no thread, lock or open file of
the parent is inherited); once it has reported a stage the parent may hand it the next one, so a
run pays for at most [run] jobs interpreter starts. What a stage writes does not depend on what
ran before it in the process (tests/test_stage_workers.py runs the exports two by two in reused
workers and compares their bytes with a one-process run's). Stopped by the parent (Ctrl-C,
SIGTERM), it unwinds like a command, removing its temporary files; the parent waits for it before
it releases the workspace lock. A worker that dies (killed, out of memory) is its stage's failure,
never a hung run.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

from distill.config import Settings
from distill.errors import StageUnavailable, Terminated, os_error_message
from distill.records.stage import StageReport
from distill.stage import Stage
from distill.workspace import Workspace

Outcome = tuple[StageReport, str | None]
"""What running a stage gives: its report, and its error (None when it did not raise)."""
STOP_GRACE_S = 30.0  # how long a stopped worker may take to unwind before it is killed


def available_cores() -> int:
    """The cores this process may run on (a container or `taskset` can allow fewer than exist)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def effective_jobs(jobs: int) -> int:
    """[run] jobs: 0 means every available core."""
    return jobs if jobs > 0 else available_cores()


def processes_for(settings: Settings, input_bytes: int) -> int:
    """Processes for one stage's items (collect's sources, score's partitions): [run] jobs when
    they read at least [run] parallel_min_input_mib, else one (below it forking costs more than it
    saves)."""
    return effective_jobs(settings.run.jobs) if input_bytes >= settings.run.parallel_min_input_mib * 2**20 else 1


def run_guarded(stage: Stage, ws: Workspace, settings: Settings) -> Outcome:
    """Run the stage; an exception is the stage's failure, returned as its error, not raised.
    (KeyboardInterrupt, Terminated and StageUnavailable are not failures of the stage.)"""
    try:
        return stage.run(ws, settings), None
    except StageUnavailable:
        raise
    except OSError as exc:  # a full disk says so, and that running again is safe
        return StageReport(stage=stage.name), f"{type(exc).__name__}: {os_error_message(exc)}"
    except Exception as exc:  # the orchestration boundary: any failure becomes a failed receipt
        return StageReport(stage=stage.name), f"{type(exc).__name__}: {exc}"


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated(signum)


def _worker_main(conn: Connection, stage: Stage, ws: Workspace, settings: Settings) -> None:
    """Run `stage`, send its report, then run each next stage the parent sends until it sends None
    (or goes away)."""
    signal.signal(signal.SIGTERM, _on_sigterm)  # unwind (temp files removed), like a command
    todo: Stage | None = stage
    try:
        while todo is not None:
            try:
                message: tuple[Any, ...] = ("done", *run_guarded(todo, ws, settings))
            except StageUnavailable as exc:
                message = ("unavailable", str(exc))
            conn.send(message)
            try:
                todo = conn.recv()
            except EOFError:
                todo = None
    except KeyboardInterrupt:  # Ctrl-C or the parent's SIGTERM: unwound; the run says it stopped
        pass
    finally:
        conn.close()


class StageWorker:
    """A spawned process running one stage at a time; `outcome()` waits for its report, `give`
    hands it the next stage (a spawned interpreter's start and imports, about a second of CPU in
    a profile's samples, are paid once per worker rather than once per stage), `close` ends it."""

    def __init__(self, stage: Stage, ws: Workspace, settings: Settings) -> None:
        self.stage = stage
        self.started = time.perf_counter()
        self.reusable = False  # true while it waits for its next stage after a report
        spawn = multiprocessing.get_context("spawn")
        ours, its = spawn.Pipe(duplex=True)
        self._conn = ours
        self._process = spawn.Process(
            target=_worker_main, args=(its, stage, ws, settings), name=f"distill-{stage.name}", daemon=True)
        self._process.start()
        its.close()  # the parent keeps only its end: EOF when the worker goes away

    @property
    def connection(self) -> Connection:
        """Readable once the worker has sent its report or ended (multiprocessing.connection.wait)."""
        return self._conn

    def outcome(self) -> tuple[Outcome, float]:
        """(report, error) and the stage's wall seconds; the worker then waits for `give` or
        `close`. Raises StageUnavailable as running the stage here would."""
        try:
            message = self._conn.recv()
        except EOFError:
            message = None
        elapsed = time.perf_counter() - self.started
        if message is None:
            self._conn.close()
            self._process.join()
            code = self._process.exitcode
            why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            return (StageReport(stage=self.stage.name), f"WorkerDied: the {self.stage.name} worker process "
                    f"ended without a report ({why})"), elapsed
        self.reusable = True
        if message[0] == "unavailable":
            raise StageUnavailable(message[1])
        return (message[1], message[2]), elapsed

    def give(self, stage: Stage) -> bool:
        """Run `stage` next; False when the worker cannot take it (it has gone: start another)."""
        if not self.reusable:
            return False
        try:
            self._conn.send(stage)
        except (OSError, ValueError):
            self.reusable = False
            return False
        self.stage, self.started, self.reusable = stage, time.perf_counter(), False
        return True

    def close(self) -> None:
        """No more stages: the worker ends, and is waited for (its CPU time then counts as the run's)."""
        if self.reusable:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(None)
            self._process.join(STOP_GRACE_S)
        self.reusable = False
        self.stop()

    def stop(self) -> None:
        """Ask the worker to unwind (SIGTERM), wait for it, kill it if it does not end."""
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(STOP_GRACE_S)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._conn.close()
