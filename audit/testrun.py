"""The configured test command, run with a timeout; its closing line read for counts."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

from pydantic import BaseModel

from audit.claims import COUNT
from distill.errors import UsageError

_PASSED = re.compile(COUNT + r" passed\b")
_FAILED = re.compile(COUNT + r" (?:failed|errors?)\b")
_UNITTEST_RAN = re.compile(r"^Ran (\d+) tests?\b")
_UNITTEST_FAILED = re.compile(r"^FAILED \((?:failures|errors)=(\d+)")


class TestRun(BaseModel):
    command: str
    exit_code: int | None
    timed_out: bool = False
    closing_line: str = ""
    passed: int | None = None
    failed: int = 0


MAX_COUNT_DIGITS = 18


def count_of(text: str) -> int | None:
    """A count as written ("1,234"), or None when it has more digits than any test run counts:
    int() refuses over 4,300 digits, and the audited change writes both its message and its tests."""
    digits = text.replace(",", "").lstrip("0") or "0"
    return int(digits) if len(digits) <= MAX_COUNT_DIGITS else None


def read_counts(output: str) -> tuple[str, int | None, int]:
    """(closing line, passed, failed) from a pytest or unittest run's output; passed is None when
    there is no count to read (a failure count too long to read is at least one failure)."""
    lines = [ln.strip().strip("=").strip() for ln in output.splitlines() if ln.strip()]
    for line in reversed(lines):
        p, f = _PASSED.search(line), _FAILED.search(line)
        if p or f:
            failed = sum(count_of(x) or 1 for x in _FAILED.findall(line))
            return _shown(line), count_of(p.group(1)) if p else 0, failed
    ran = next((count_of(m.group(1)) for ln in lines if (m := _UNITTEST_RAN.match(ln))), None)
    if ran is not None:
        failed = next((count_of(m.group(1)) or 1 for ln in lines if (m := _UNITTEST_FAILED.match(ln))), 0)
        closing = lines[-1] if lines else ""
        return _shown(closing), ran - failed, failed
    return _shown(lines[-1] if lines else ""), None, 0


MAX_CLOSING_CHARS = 300


def _shown(line: str) -> str:
    """The closing line as a finding quotes it: a runner (or the change under audit) can print anything."""
    return line if len(line) <= MAX_CLOSING_CHARS else line[:MAX_CLOSING_CHARS] + "…"


def run_tests(command: str, cwd: Path, timeout_s: float) -> TestRun:
    """Run `command` (split like a shell, run without one) in `cwd`."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise UsageError(f"[audit] test_command cannot be split: {exc}") from None
    if not argv:
        raise UsageError("[audit] test_command is empty")
    try:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                errors="replace", start_new_session=True)
    except FileNotFoundError:
        raise UsageError(f"[audit] test_command: {argv[0]!r} not found") from None
    except OSError as exc:
        raise UsageError(f"[audit] test_command: {exc.strerror or exc}") from None
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        # the whole process group: a runner's workers must not outlive the audit
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        closing, passed, failed = read_counts(stdout or "")
        return TestRun(command=command, exit_code=None, timed_out=True, closing_line=closing, passed=passed, failed=failed)
    closing, passed, failed = read_counts(stdout if stdout.strip() else stderr)
    return TestRun(command=command, exit_code=proc.returncode, closing_line=closing, passed=passed, failed=failed)
