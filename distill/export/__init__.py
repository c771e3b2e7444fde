"""Dataset exports behind the contamination firewall: RAG, SFT, preference (+ views, card).

Public entry point: run_export(ws, settings, kind, ...) -> StageReport.
"""

from distill.export.interop import (
    convert_hh_rlhf_file,
    hh_rlhf_to_preference,
    preference_to_hh_rlhf,
    trl_dpo_to_hh_rlhf,
)
from distill.export.run import KINDS, run_export
from distill.export.verify import verify_export

__all__ = [
    "KINDS",
    "convert_hh_rlhf_file",
    "hh_rlhf_to_preference",
    "preference_to_hh_rlhf",
    "run_export",
    "trl_dpo_to_hh_rlhf",
    "verify_export",
]
