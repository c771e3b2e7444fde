"""What the auditor reports: a finding says which claim (if any), what was checked and what was
found, where, how severe, and carries a path-agnostic signature for the lessons knowledge base."""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum

from pydantic import BaseModel, Field


class Severity(StrEnum):
    INFO = "info"
    WARN = "warn"
    BLOCK = "block"

    @property
    def rank(self) -> int:
        return {"info": 0, "warn": 1, "block": 2}[self.value]


class Finding(BaseModel):
    check: str  # the name of the check that produced it (see docs/AUDIT.md)
    severity: Severity
    title: str
    claim: str | None = Field(None, description="the sentence that made the claim")
    checked: str
    found: str
    path: str | None = None
    line: int | None = None
    signature: str = ""
    recurrence: int = Field(0, description="distinct earlier ranges with the same signature")


_PATHISH = re.compile(r"`[^`]*`|'[^']*'|\"[^\"]*\"|[\w.-]*/[\w./-]+|\b[\w-]+\.[a-z]{1,5}\b|\d+(?:[.,]\d+)?")


def signature_of(check: str, what: str) -> str:
    """Same kind of finding, whatever the file, line or figure: `check` + `what` with quoted text,
    paths and numbers blanked."""
    norm = _PATHISH.sub("_", what.lower())
    norm = re.sub(r"\s+", " ", norm).strip()
    return hashlib.sha256(f"{check}\x00{norm}".encode()).hexdigest()[:16]
