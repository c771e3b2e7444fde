"""Credential redaction for quarantine excerpts.

Quarantine files sit under exports/ next to the datasets; a bad row kept as an excerpt could
otherwise carry a secret past the firewall. The same detect-secrets scan the exporters use
decides, and a hit replaces the excerpt with a note naming the kind of secret.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from distill.records import QuarantineRecord
from distill.secrets import SecretScanner


def new_scanner(prefilter_cache: Path | None = None) -> SecretScanner:
    """`prefilter_cache`: the workspace's compiled prefilter (None in a dry run: it writes nothing)."""
    return SecretScanner(prefilter_cache=prefilter_cache)


def redact_excerpts(records: Sequence[QuarantineRecord], scanner: SecretScanner | None = None) -> list[QuarantineRecord]:
    """Records with any credential-bearing excerpt removed (one batch scan for all of them)."""
    if not any(r.excerpt for r in records):
        return list(records)
    scanner = scanner or new_scanner()
    hits = scanner.scan([r.excerpt or "" for r in records])
    out: list[QuarantineRecord] = []
    for record, found in zip(records, hits, strict=True):
        if found:
            kinds = ", ".join(sorted({h.type for h in found}))
            detail = {**record.detail, "excerpt_redacted": f"possible credential: {kinds}"}
            record = record.model_copy(update={"excerpt": None, "detail": detail})
        out.append(record)
    return out
