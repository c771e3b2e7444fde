"""Resume decisions for `distill run`: pure functions of receipts, digests and configuration.

A stage is skipped only when its inputs, the configuration sections it reads, its code and its
outputs on disk all equal what its last successful receipt recorded. Outputs that differ on disk
while everything else matched are a determinism finding (tampering, or a write outside
`distill run`); a rerun on identical inputs that produces different outputs is one too.
"""

from __future__ import annotations

from collections.abc import Iterable

from distill.config import Settings
from distill.hashing import canonical_json, sha256_hex
from distill.receipts import ReceiptBasis
from distill.records.receipts import DeterminismFinding, FileDigest, ResumeDecision, StageReceipt

# Config sections no pipeline stage reads; every other section not claimed by a stage is assumed
# to matter to every stage (a new section reruns stages rather than being silently ignored).
NON_PIPELINE_SECTIONS = frozenset({"runtime", "gate", "drift", "run"})
KNOWN_SECTIONS = frozenset({"collect", "sources", "score", "export", "index"}) | NON_PIPELINE_SECTIONS
MAX_LISTED = 5


def stage_config_hash(settings: Settings, sections: Iterable[str]) -> str:
    dumped = settings.model_dump(mode="json")
    wanted = set(sections) | {k for k in dumped if k not in KNOWN_SECTIONS}
    return sha256_hex(canonical_json({k: dumped.get(k) for k in sorted(wanted)}))


def diff_digests(before: list[FileDigest], after: list[FileDigest]) -> tuple[list[str], list[str], list[str]]:
    b = {d.path: d.sha256 for d in before}
    a = {d.path: d.sha256 for d in after}
    added = sorted(set(a) - set(b))
    removed = sorted(set(b) - set(a))
    changed = sorted(p for p in set(a) & set(b) if a[p] != b[p])
    return added, removed, changed


def listed(paths: list[str]) -> str:
    more = f" (+{len(paths) - MAX_LISTED} more)" if len(paths) > MAX_LISTED else ""
    return ", ".join(paths[:MAX_LISTED]) + more


def decide_resume(
    previous: StageReceipt | None,
    basis: ReceiptBasis,
    inputs: list[FileDigest],
    outputs: list[FileDigest],
    *,
    force: bool,
    compare_fingerprint: bool = True,
    written_by_command: set[tuple[str, str]] | None = None,
) -> tuple[ResumeDecision, list[DeterminismFinding]]:
    """Skip only when inputs, config, code and outputs all equal the last successful receipt's.

    Also returns output_modified findings: outputs differ on disk although inputs, config and
    code are the ones that receipt vouched for; not when they are exactly the (path, sha256) a
    distill command outside the run recorded (`written_by_command`, receipts.vouch_outputs):
    that writing is distill's, and the run takes what it writes next as its new reference.
    """
    if previous is None:
        reasons = ["--force"] if force else []
        return ResumeDecision(action="ran", forced=force, reasons=reasons + ["no earlier successful receipt"]), []
    reasons: list[str] = []
    if previous.config_hash != basis.config_hash:
        reasons.append("config changed")
    if previous.code_version != basis.code_version:
        reasons.append(f"code version changed ({previous.code_version} -> {basis.code_version})")
    if compare_fingerprint and previous.code_fingerprint != basis.code_fingerprint:
        reasons.append("code changed (source fingerprint differs)")
    added, removed, changed = diff_digests(previous.inputs, inputs)
    inputs_same = not (added or removed or changed)
    for label, paths in (("new inputs", added), ("inputs gone", removed), ("inputs changed", changed)):
        if paths:
            reasons.append(f"{label}: {listed(paths)}")
    o_added, o_removed, o_changed = diff_digests(previous.outputs, outputs)
    findings: list[DeterminismFinding] = []
    by_command = False
    if o_added or o_removed or o_changed:
        parts = [f"{label}: {listed(paths)}" for label, paths in (("unrecorded outputs", o_added), ("outputs missing", o_removed), ("outputs modified", o_changed)) if paths]
        reasons.append(f"outputs differ from receipt of run {previous.run_id} ({'; '.join(parts)})")
        by_command = bool(written_by_command) and {(d.path, d.sha256) for d in outputs} == written_by_command
        if by_command:
            reasons.append("outputs as `distill export` left them")
        # A deleted output is simply rebuilt, and so is everything beside it (files the stage shares
        # with earlier stages of the same run, such as the dataset card, were rewritten by them in the
        # meantime); an added or altered output while all of them are there is what must not pass quietly.
        elif inputs_same and not o_removed and not any(r.startswith(("config", "code")) for r in reasons):
            before = {d.path: d.sha256 for d in previous.outputs}
            after = {d.path: d.sha256 for d in outputs}
            for path in o_added + o_changed:
                findings.append(
                    DeterminismFinding(
                        stage=previous.stage,
                        kind="output_modified",
                        path=path,
                        expected_sha256=before.get(path),
                        found_sha256=after.get(path),
                        reference_run_id=previous.run_id,
                        detail="output on disk differs from its receipt while inputs, config and code are unchanged "
                        "(modified outside `distill run`)",
                    )
                )
    if force:
        return ResumeDecision(action="ran", forced=True, reference_run_id=previous.run_id, reasons=["--force", *reasons],
                              outputs_by_command=by_command), findings
    if reasons:
        return ResumeDecision(action="ran", reference_run_id=previous.run_id, reasons=reasons,
                              outputs_by_command=by_command), findings
    return (
        ResumeDecision(
            action="skipped",
            reference_run_id=previous.run_id,
            reasons=[f"inputs, config, code and outputs unchanged since run {previous.run_id}"],
        ),
        [],
    )


def rerun_findings(
    previous: StageReceipt | None, receipt: StageReceipt, *, compare_fingerprint: bool = True
) -> list[DeterminismFinding]:
    """After a rerun on the same inputs/config/code as a trusted receipt: did outputs change?"""
    if previous is None or receipt.error is not None:
        return []
    same_basis = (
        previous.inputs_hash == receipt.inputs_hash
        and previous.config_hash == receipt.config_hash
        and previous.code_version == receipt.code_version
        and (not compare_fingerprint or previous.code_fingerprint == receipt.code_fingerprint)
    )
    if not same_basis or previous.outputs_hash == receipt.outputs_hash:
        return []
    added, removed, changed = diff_digests(previous.outputs, receipt.outputs)
    before = {d.path: d.sha256 for d in previous.outputs}
    after = {d.path: d.sha256 for d in receipt.outputs}
    return [
        DeterminismFinding(
            stage=receipt.stage,
            kind="rerun_output_differs",
            path=path,
            expected_sha256=before.get(path),
            found_sha256=after.get(path),
            reference_run_id=previous.run_id,
            detail="rerun on identical inputs, config and code produced a different output",
        )
        for path in added + removed + changed
    ]
