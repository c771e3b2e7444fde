"""Validation steps: the checklist lines in a run's text (verify/check/assert/ensure/confirm).

Shared by the RAG exporter (stored on each row) and the replay runtime (the gate's checklist),
so both read the same steps out of the same text.
"""

from __future__ import annotations

import re

_STEP = re.compile(
    r"^\s*(?:[-*+]\s+|\d+[.)]\s+|\[[ xX]\]\s+)*(?:\*\*)?(verify|check|assert|ensure|confirm)\b",
    re.IGNORECASE,
)
_MARKUP = re.compile(r"^\s*(?:[-*+]\s+|\d+[.)]\s+|\[[ xX]\]\s+)*")


def extract_validation_steps(text: str, *, limit: int = 20) -> list[str]:
    """Lines that start (after list markup) with verify/check/assert/ensure/confirm, in order,
    de-duplicated, list markup stripped."""
    steps: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        if _STEP.match(line):
            step = _MARKUP.sub("", line).replace("**", "").strip()
            key = step.lower()
            if step and key not in seen:
                seen.add(key)
                steps.append(step)
                if len(steps) >= limit:
                    break
    return steps
