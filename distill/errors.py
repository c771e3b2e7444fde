"""Every error distill raises, in one hierarchy under DistillError.

A DistillError is shown to the user as one line and ends the command with its `exit_code`
(1: a validation/firewall failure the user must look at; 2: bad usage, input or configuration).
Stopping on a signal is not an error: `Terminated` is a KeyboardInterrupt, so the code that
already cleans up after Ctrl-C cleans up after SIGTERM too.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distill.records.quarantine import QuarantineReason


class DistillError(Exception):
    """Base: message for the user, exit code for scripts (1 validation/firewall, 2 usage/input)."""

    exit_code = 2


class UsageError(DistillError):
    """The command line, a file the user named, or the workspace is not usable as given."""

    exit_code = 2


class ConfigError(UsageError):
    """distill.toml or a DISTILL_* environment variable holds an invalid setting; the message says which."""


class ConversionError(UsageError):
    """A file in another dataset format (hh-rlhf, TRL DPO) cannot be converted as asked."""


class ValidationFailed(DistillError):
    """A stage ran but its output failed validation (conservation, firewall); the user must look."""

    exit_code = 1


class WorkspaceBusy(DistillError):
    """Another distill command is changing the workspace: its outputs would interleave with ours."""

    exit_code = 2


class IndexUnavailable(DistillError):
    """The vector store could not answer a search (a rebuild dropped what an open searcher reads, a
    Chroma server went away): a server answers 503 and the caller may retry."""


class StageUnavailable(DistillError):
    """An optional stage whose dependencies are not installed (index without its extra)."""


class PluginError(DistillError):
    """A stage or command registered through an entry point is missing or failed to load: a broken
    installation or a bug, never a reason to carry on without it."""


class BackendError(DistillError):
    """A model call failed or the backend is unusable; the message says what to do."""

    exit_code = 2

    def __init__(self, message: str, *, backend: str = "", model: str = "") -> None:
        super().__init__(message)
        self.backend = backend
        self.model = model


class RowRejected(DistillError):
    """Raised inside a source adapter: this input row cannot become evidence, for this reason.

    Adapters catch it and turn it into a quarantine row; it never reaches the user as an error.
    """

    def __init__(self, reason: QuarantineReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Terminated(KeyboardInterrupt):
    """SIGTERM (or another stop signal) arrived: stop like Ctrl-C, exit 128 + signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class RunNotLogged(DistillError):
    """A replayed run ended but its log could not be appended (a full disk): a run that is not
    evidence gives no answer (`replay` prints none, `distill serve` answers 503)."""

    exit_code = 2


class WorkerFailed(DistillError):
    """A process a stage forked for some of its partitions failed or died: the stage failed."""

    exit_code = 1


def os_error_message(exc: OSError) -> str:
    """One line for a failed file operation: what, where, why."""
    where = f" {exc.filename}" if exc.filename else ""
    if exc.filename2:
        where += f" -> {exc.filename2}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        # each file is replaced whole or appended in whole lines, so running again is safe
        return f"cannot write{where}: {exc.strerror}; free some space and run the command again"
    return f"cannot use{where}: {exc.strerror or type(exc).__name__}"
