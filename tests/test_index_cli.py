"""`distill index` / `distill search` through the real CLI (typer runner, real model and Chroma)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from distill.cli import app
from tests.fixtures_index import rag_row, write_export


def test_cli_index_and_search_json(tmp_path: Path) -> None:
    rows = [rag_row(i) for i in range(12)]
    write_export(tmp_path, rows)
    runner = CliRunner()
    res = runner.invoke(app, ["index", "--root", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert (report["added"], report["embedded"], report["count"]) == (12, 12, 12)
    assert report["stage_report"]["stage"] == "index"
    assert report["stage_report"]["totals"]["written"] == 12

    res = runner.invoke(
        app,
        ["search", "flaky migration test database", "--root", str(tmp_path), "--k", "3", "--mode", "hybrid",
         "--category", "accepted", "--json"],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["mode"] == "hybrid" and out["index_stale"] is False and len(out["hits"]) == 3
    assert out["hits"][0]["title"] == "Fix flaky migration test"
    assert all(h["category"] == "accepted" for h in out["hits"])
    assert isinstance(out["hits"][0]["metadata"]["validation_steps"], list)

    # a changed export is reported as stale until re-indexed; re-indexing embeds only the change
    write_export(tmp_path, rows[:11])
    res = runner.invoke(app, ["search", "migration", "--root", str(tmp_path), "--mode", "bm25", "--json"])
    assert json.loads(res.stdout)["index_stale"] is True
    res = runner.invoke(app, ["index", "--root", str(tmp_path), "--json"])
    report = json.loads(res.stdout)
    assert (report["deleted"], report["embedded"], report["unchanged"]) == (1, 0, 11)

    res = runner.invoke(app, ["search", "x", "--root", str(tmp_path), "--mode", "fuzzy"])
    assert res.exit_code == 2 and "choose one of" in res.output
    # a misspelt category is refused, not answered with "no hits"
    res = runner.invoke(app, ["search", "x", "--root", str(tmp_path), "--category", "acepted"])
    assert res.exit_code == 2 and "--category 'acepted': choose from accepted" in res.output
    for blank in ("", "  \t"):  # a blank query is refused, not answered with "no hits"
        res = runner.invoke(app, ["search", blank, "--root", str(tmp_path)])
        assert res.exit_code == 2 and "query is blank" in res.output
    res = runner.invoke(app, ["search", "x", "--root", str(tmp_path / "nowhere")])
    assert res.exit_code == 2


def test_a_search_overlapping_a_rebuilds_switch_answers_from_the_new_index(tmp_path: Path, monkeypatch) -> None:
    """`distill search` beside `distill index --rebuild` in another process: the rebuild writes its
    manifest and drops the collection it replaced while the query is in it (Chroma may then fail or
    answer with no hits). The search is done again on the new index: no error, the new hits."""
    from index.store import ChromaStore
    from tests.fixtures_reliability import DISTILL, run_cli

    rows = [rag_row(i) for i in range(12)]
    write_export(tmp_path, rows)
    runner = CliRunner()
    assert runner.invoke(app, ["index", "--root", str(tmp_path)]).exit_code == 0
    new = rag_row(900, title="Wombat burrow fjord telemetry", text="Check the wombat burrow fjord telemetry feed before the deploy.")
    searched = ChromaStore.query
    rebuilds: list[int] = []

    def query_then_rebuild(store, *args, **kwargs):
        hits = searched(store, *args, **kwargs)
        if not rebuilds:  # the old collection answered; the rebuild switches and drops it before the answer is used
            write_export(tmp_path, [*rows, new])
            rebuilds.append(run_cli([*DISTILL, "index", "--rebuild", "--root", str(tmp_path)], timeout=300).returncode)
        return hits

    monkeypatch.setattr(ChromaStore, "query", query_then_rebuild)
    res = runner.invoke(app, ["search", "wombat burrow fjord telemetry", "--root", str(tmp_path), "--k", "1",
                              "--mode", "dense", "--json"])
    assert res.exit_code == 0, res.output
    assert rebuilds == [0] and [h["id"] for h in json.loads(res.stdout)["hits"]] == [new["id"]]
