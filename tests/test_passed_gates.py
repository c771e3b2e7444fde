"""The preference export's memory of gate inputs that passed (distill.export.passed_gates): a second
export scans only the rows that did not pass before, and its outputs are the bytes of an export that
scans every row, also after the firewall's settings change or the memory is damaged."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from distill.config import Settings
from distill.export.gates import GateInput
from distill.export.passed_gates import input_digest
from distill.export.run import run_export
from distill.records.stage import StageReport
from distill.workspace import Workspace
from tests.export_helpers import sample_scored

GATE_REASONS = {"secret_detected", "hallucinated_file_path", "eval_contamination"}


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return sample_scored(tmp_path_factory.mktemp("gates") / "ws")


@pytest.fixture()
def ws(scored: Workspace, tmp_path: Path) -> Workspace:
    shutil.copytree(scored.root, tmp_path / "ws")
    return Workspace.resolve(tmp_path / "ws")


def _scanned(report: StageReport) -> tuple[int, int]:
    note = next(n for n in report.notes if n.startswith("firewall: "))
    found = re.match(r"firewall: (\d+) of (\d+) gated rows scanned", note)
    assert found, note
    return int(found[1]), int(found[2])


def _outputs(ws: Workspace) -> tuple[bytes, bytes]:
    return ws.preference_path.read_bytes(), ws.quarantine_path("preference").read_bytes()


def _export_without_memory(ws: Workspace, settings: Settings, twin: Path) -> tuple[tuple[bytes, bytes], StageReport]:
    """The same export on a copy of the workspace whose memory is deleted: every row scanned."""
    shutil.copytree(ws.root, twin)
    other = Workspace.resolve(twin)
    other.passed_gates_path("preference").unlink(missing_ok=True)
    other.export_checkpoint_path("preference").unlink(missing_ok=True)
    report = run_export(other, settings, "preference")
    assert _scanned(report)[0] == _scanned(report)[1]
    return _outputs(other), report


def _counters(report: StageReport) -> object:
    return report.totals, report.by_source


def test_the_next_export_scans_only_rows_that_did_not_pass(ws: Workspace, tmp_path: Path) -> None:
    first = run_export(ws, Settings(), "preference")
    scanned, gated = _scanned(first)
    assert scanned == gated > 100
    quarantined = [json.loads(line) for line in ws.quarantine_path("preference").read_text().splitlines()]
    refused_by_gates = sum(1 for q in quarantined if q["reason"] in GATE_REASONS)
    assert refused_by_gates >= 3  # the sample's planted credentials

    ws.preference_path.unlink()  # the export is written again from the same rows
    expected, twin_report = _export_without_memory(ws, Settings(), tmp_path / "twin")
    # its first pass takes every line from the export checkpoint: no row is gated, and the
    # memory still keeps every input that passed
    replayed = run_export(ws, Settings(), "preference")
    assert _scanned(replayed) == (0, 0)
    assert _outputs(ws) == expected
    ws.preference_path.unlink()
    ws.export_checkpoint_path("preference").unlink()  # now every line is read and gated again
    second = run_export(ws, Settings(), "preference")
    scanned_again, gated_again = _scanned(second)
    assert gated_again == gated
    # only inputs that failed a gate are scanned again (a duplicate revision that failed counts too)
    assert refused_by_gates <= scanned_again < gated // 10
    assert _outputs(ws) == expected
    assert _counters(second) == _counters(twin_report)


def test_a_changed_firewall_setting_scans_every_row_again(ws: Workspace, tmp_path: Path) -> None:
    run_export(ws, Settings(), "preference")
    # a benchmark holding the chosen text of a pair that shipped: rows that passed must now fail
    pair = json.loads(ws.preference_path.read_text().splitlines()[0])
    ws.preference_path.unlink()
    (ws.root / "bench.jsonl").write_text(json.dumps({"task": pair["chosen"]}) + "\n")
    settings = Settings.model_validate({"export": {"benchmark_files": ["bench.jsonl"]}})

    expected, twin_report = _export_without_memory(ws, settings, tmp_path / "twin")
    report = run_export(ws, settings, "preference")
    scanned, gated = _scanned(report)
    assert scanned == gated  # another basis: nothing known to pass
    assert pair["id"] not in ws.preference_path.read_text()
    assert "eval_contamination" in ws.quarantine_path("preference").read_text()
    assert _outputs(ws) == expected
    assert _counters(report) == _counters(twin_report)


@pytest.mark.parametrize("damage", [b"", b"not a zip", b"PK\x03\x04junk"])
def test_a_damaged_memory_is_ignored(ws: Workspace, tmp_path: Path, damage: bytes) -> None:
    run_export(ws, Settings(), "preference")
    expected = _outputs(ws)
    ws.preference_path.unlink()
    ws.passed_gates_path("preference").write_bytes(damage)
    ws.export_checkpoint_path("preference").unlink()  # the rows are read and gated
    report = run_export(ws, Settings(), "preference")
    assert _scanned(report)[0] == _scanned(report)[1]
    assert _outputs(ws) == expected


def test_the_digest_keeps_fields_and_strings_apart() -> None:
    inputs = [
        GateInput(("ab", "c"), ()), GateInput(("a", "bc"), ()), GateInput(("abc",), ()),
        GateInput(("ab",), ("c",)), GateInput(("ab",), (), ("c",)), GateInput(("ab", "c"), (), ()),
    ]
    digests = [input_digest(i) for i in inputs]
    assert len(set(digests[:5])) == 5
    assert digests[0] == digests[5]
