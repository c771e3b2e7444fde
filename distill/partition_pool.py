"""One stage's items (collect's sources, score's evidence partitions) on every core, with the
outputs of a single process.

A stage that handles items independently hands `map_in_order` the work for item i and each
item's weight (the bytes it will read). The items are cut into contiguous groups of about equal
weight; the first group runs in this process and each other group in a forked child, so the
children see everything this process holds (the dedup keys, the parents index, the checkpoints
read) without it being pickled. A child writes each result to a scratch file as it goes; results
come back strictly in item order (this process's own first, as they are made, then each
child's), so whatever the caller does with them (counters, checkpoint lines, the quarantine
file) happens in the order and with the bytes of a one-process run.

A child's exception is the stage's failure: a DistillError is raised here as it is (the message
and exit code one process would give), anything else as `WorkerFailed` with the child's message;
a child that dies (killed, out of memory) is a `WorkerFailed` too. When this process is stopped
(Ctrl-C, SIGTERM) or fails, its children are stopped and waited for before the error goes on.
Children leave with `os._exit` (multiprocessing's fork start), so they never flush or close the
files they inherited (multiprocessing flushes the standard streams before it forks, so nothing
buffered there is printed twice).
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import multiprocessing
import pickle
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from distill.errors import DistillError, WorkerFailed

T = TypeVar("T")
STOP_GRACE_S = 30.0  # a stopped child may take this long to unwind before it is killed


def split_contiguous(weights: list[int], groups: int) -> list[range]:
    """`groups` contiguous, non-empty ranges of indices (fewer when there are fewer items), cut
    where the running weight first reaches each equal share (by count when every weight is 0)."""
    n = len(weights)
    if n == 0:
        return []
    groups = max(1, min(groups, n))
    cum = list(itertools.accumulate((max(0, w) for w in weights), initial=0))
    total = cum[-1]
    cuts = [0]
    for g in range(1, groups):
        at = bisect.bisect_left(cum, total * g / groups) if total else round(n * g / groups)
        cuts.append(min(max(at, cuts[-1] + 1), n - (groups - g)))
    cuts.append(n)
    return [range(a, b) for a, b in itertools.pairwise(cuts)]


def _child(work: Callable[[int], Any], indices: range, out: Path) -> None:
    with open(out, "wb") as fh:
        try:
            for i in indices:
                pickle.dump(("ok", work(i)), fh, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it
            pickle.dump(("error", (_portable(exc), f"{type(exc).__name__}: {exc}")), fh,
                        protocol=pickle.HIGHEST_PROTOCOL)


def _portable(exc: BaseException) -> DistillError | None:
    """A DistillError that survives pickling, for the parent to raise as it is (its message and
    exit code are what one process would have shown); anything else travels as its message."""
    if not isinstance(exc, DistillError):
        return None
    try:
        back = pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - an exception class that cannot be rebuilt from its args
        return None
    return back if type(back) is type(exc) and str(back) == str(exc) else None


def _stop(children: list[Any]) -> None:
    for child in children:
        if child.is_alive():
            child.terminate()
    for child in children:
        child.join(STOP_GRACE_S)
        if child.is_alive():
            child.kill()
            child.join()


def _results(child: Any, indices: range, out: Path, what: str) -> Iterator[Any]:
    child.join()
    got = 0
    try:
        with open(out, "rb") as fh:
            while got < len(indices):
                try:
                    status, value = pickle.load(fh)
                except EOFError:
                    break
                if status != "ok":
                    error, message = value
                    if error is not None:
                        raise error
                    raise WorkerFailed(f"{what}: a worker failed on partition {indices[got]}: {message}")
                got += 1
                yield value
    except OSError as exc:
        raise WorkerFailed(f"{what}: a worker's results cannot be read: {exc}") from None
    if got < len(indices):
        code = child.exitcode
        why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        raise WorkerFailed(f"{what}: a worker ended after {got} of its {len(indices)} partitions ({why})")


def _start(fork: Any, work: Callable[[int], Any], groups: list[range], outs: list[Path], what: str) -> list[Any] | None:
    """One child per group after the first; None (and none left running) when a fork fails."""
    children: list[Any] = []
    try:
        for g in range(1, len(groups)):
            child = fork.Process(target=_child, args=(work, groups[g], outs[g]), name=f"distill-{what}-{g}", daemon=True)
            child.start()
            children.append(child)
    except OSError:  # no process to be had (a process limit, no memory): do the work here
        _stop(children)
        return None
    return children


def map_in_order(work: Callable[[int], T], weights: list[int], processes: int, *, what: str,
                 scratch_in: Path | None = None) -> Iterator[T]:
    """work(0), work(1), ... in order; with `processes` > 1, groups after the first run in
    forked children. `what` names the stage in errors. Where no child can be had (no fork on
    this platform, a daemonic process, no scratch directory, a failed fork), all of it runs here.

    The children's results go to a scratch directory in `scratch_in` (the system's temporary
    folder when None), named `.distill-partitions-*.tmp`: a caller that holds the workspace lock
    passes the workspace root, where the next lock holder removes what a killed run left
    (`Workspace.exclusive`)."""
    groups = split_contiguous(weights, processes) if weights else []
    # a daemonic process (a stage worker) may not have children
    if (len(groups) > 1 and "fork" in multiprocessing.get_all_start_methods()
            and not multiprocessing.current_process().daemon):
        with contextlib.ExitStack() as stack:
            try:
                scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(
                    prefix=".distill-partitions-", suffix=".tmp", dir=scratch_in)))
            except OSError:
                scratch = None
            if scratch is not None:
                outs = [scratch / f"group-{g}.pickle" for g in range(len(groups))]
                children = _start(multiprocessing.get_context("fork"), work, groups, outs, what)
                if children is not None:
                    try:
                        for i in groups[0]:
                            yield work(i)
                        for g, child in enumerate(children, start=1):
                            yield from _results(child, groups[g], outs[g], what)
                    finally:
                        with contextlib.suppress(Exception):
                            _stop(children)
                        for child in children:
                            with contextlib.suppress(Exception):
                                child.close()
                    return
    for i in range(len(weights)):
        yield work(i)
