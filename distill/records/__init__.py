"""pydantic v2 models for every persisted record (each carries schema_version)."""

from distill.records.common import Category, ModelRole, Provenance, Record, ScoreClass
from distill.records.evidence import EvidenceRecord
from distill.records.quarantine import QuarantineReason, QuarantineRecord, SourceRef
from distill.records.replay import Attempt, ContextBundle, GateCheck, GateResult, ReplayRun, RetrievedItem
from distill.records.samples import PreferenceSample, RagSample, SftSample
from distill.records.scored import ScoredRun

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
