"""Errors a user sees as a message and an exit code, never as a traceback."""

from __future__ import annotations


class DistillError(Exception):
    """Base: message for the user, exit code for scripts (1 validation/firewall, 2 usage/input)."""

    exit_code = 2


class UsageError(DistillError):
    exit_code = 2


class ValidationFailed(DistillError):
    """A stage ran but its output failed validation; the user must look."""

    exit_code = 1
