"""pydantic v2 models for every persisted record (each carries schema_version).

Names are loaded on first use (PEP 562), not when the package is imported: the sample schemas
build on distill.firewall, which builds on the leaf modules here (categories, quarantine
reasons), so importing any of them first must not pull the schemas in half-way.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distill.records.common import Category, ModelRole, Provenance, Record, ScoreClass
    from distill.records.evidence import EvidenceRecord
    from distill.records.quarantine import QuarantineReason, QuarantineRecord, SourceRef
    from distill.records.replay import Attempt, ContextBundle, GateCheck, GateResult, ReplayRun, RetrievedItem
    from distill.records.samples import PreferenceSample, RagSample, SftSample
    from distill.records.scored import ScoredRun

_HOME = {
    "Category": "common", "ModelRole": "common", "Provenance": "common", "Record": "common", "ScoreClass": "common",
    "EvidenceRecord": "evidence",
    "QuarantineReason": "quarantine", "QuarantineRecord": "quarantine", "SourceRef": "quarantine",
    "Attempt": "replay", "ContextBundle": "replay", "GateCheck": "replay", "GateResult": "replay",
    "ReplayRun": "replay", "RetrievedItem": "replay",
    "PreferenceSample": "samples", "RagSample": "samples", "SftSample": "samples",
    "ScoredRun": "scored",
}

__all__ = [
    "Attempt",
    "Category",
    "ContextBundle",
    "EvidenceRecord",
    "GateCheck",
    "GateResult",
    "ModelRole",
    "PreferenceSample",
    "Provenance",
    "QuarantineReason",
    "QuarantineRecord",
    "RagSample",
    "Record",
    "ReplayRun",
    "RetrievedItem",
    "ScoreClass",
    "ScoredRun",
    "SftSample",
    "SourceRef",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'distill.records' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"distill.records.{home}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME])
