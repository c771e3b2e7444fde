"""What a new user and a hostile tester broke in an afternoon, one test per finding (issue 13), plus
a property test: random pairs of mutating commands run at once on one workspace keep conservation
and never duplicate evidence.

Everything runs the real CLIs in subprocesses (tests/fixtures_reliability.py), the way a user or a
scheduler does, so a lock, a traceback or an exit code is the real thing.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures_reliability import DISTILL, REPLAY, REPO, SAMPLE_KB, cli_env, run_cli, small_workspace, tree_bytes

MUTATING = {
    "collect": ["collect"],
    "score": ["score"],
    "export": ["export", "all"],
    "run": ["run", "--no-index"],
    "init": ["init", "{root}", "--sample"],
}


def _workspace(root: Path, rows: int = 30) -> Path:
    return small_workspace(root, rows_per_stream=rows)


def _cmd(name: str, root: Path) -> list[str]:
    args = [a.replace("{root}", str(root)) for a in MUTATING[name]]
    return [*DISTILL, *args] + ([] if name == "init" else ["--root", str(root)])


def evidence_rows(root: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((root / "evidence").rglob("*.jsonl")) for line in p.read_text().splitlines()]


def one_line_error(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The failure shape every expected error has: the exit code, one line on stderr, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout[-800:], proc.stderr[-1500:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# ---------------------------------------------------------------------- 1. concurrent mutating commands


def test_1_two_collects_at_once_never_double_the_evidence(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws", rows=200)
    procs = [subprocess.Popen(_cmd("collect", root), cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    if codes == [0, 2]:
        assert any("another distill command is changing" in err for code, err in results if code == 2)
    rows = evidence_rows(root)
    keys = Counter((r["run_id"], r["provenance"]["sig_hash"]) for r in rows)
    assert keys and max(keys.values()) == 1, "evidence was written twice"
    done = run_cli([*DISTILL, "run", "--no-index", "--root", str(root), "--json"])
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)["summary"]
    for stage in summary["stages"]:
        assert "duplicate_id" not in stage["totals"]["by_reason"], stage["stage"]


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=st.tuples(st.sampled_from(sorted(MUTATING)), st.sampled_from(sorted(MUTATING))))
def test_1_random_pairs_of_mutating_commands_keep_conservation(pair: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> None:
    root = _workspace(tmp_path_factory.mktemp("pair") / "ws", rows=60)
    procs = [subprocess.Popen(_cmd(name, root), cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for name in pair]
    for name, proc in zip(pair, procs, strict=True):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, 2), (name, proc.returncode, err[-1500:])
        assert "Traceback" not in err, (name, err)
        if proc.returncode == 2:
            assert "another distill command is changing" in err, (name, err)
    # whatever ran, a following run is consistent: counts balance, nothing was collected twice
    done = run_cli([*DISTILL, "run", "--no-index", "--root", str(root), "--json"])
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)["summary"]
    for stage in summary["stages"]:
        t = stage["totals"]
        assert t["rows_in"] == t["written"] + t["quarantined"] + t["deduped"] + t["skipped"], stage
        assert "duplicate_id" not in t["by_reason"], (pair, stage["stage"])
    keys = Counter((r["run_id"], r["provenance"]["sig_hash"]) for r in evidence_rows(root))
    assert max(keys.values()) == 1


# ---------------------------------------------------------------------- 2. init keeps the user's rows


def test_2_init_sample_on_an_existing_workspace_overwrites_nothing(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    assert run_cli([*DISTILL, "init", str(root), "--sample"]).returncode == 0
    extra = json.dumps({"finding_id": "MINE-1", "phase": 1, "severity": "low", "evidence": "my own row", "ts": "2026-01-01T00:00:00Z"})
    with open(root / "_kb" / "audits.jsonl", "a") as fh:
        fh.write(extra + "\n")
    again = run_cli([*DISTILL, "init", str(root), "--sample", "--json"])
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["files_kept"] == ["_kb/audits.jsonl"]
    assert (root / "_kb" / "audits.jsonl").read_text().endswith(extra + "\n")


# ---------------------------------------------------------------------- 3. views are outputs of the run


def test_3_a_view_made_by_hand_does_not_break_later_runs(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws", rows=40)
    assert run_cli([*DISTILL, "run", "--no-index", "--root", str(root)]).returncode == 0
    assert run_cli([*DISTILL, "export", "sft", "--format", "trl", "--root", str(root)]).returncode == 0
    second = run_cli([*DISTILL, "run", "--no-index", "--root", str(root), "--json"])
    assert second.returncode == 0, second.stdout[-2000:]
    assert json.loads(second.stdout)["drift"]["severity"] == "ok"
    views = sorted(p.relative_to(root).as_posix() for p in (root / "exports").rglob("*.jsonl")
                   if "/trl/" in p.as_posix() or "/openai/" in p.as_posix())
    before = {v: (root / v).read_bytes() for v in views}
    assert "exports/sft/trl/messages.jsonl" in before and "exports/preference/openai/preference.jsonl" in before
    shutil.rmtree(root / "exports")
    rebuilt = run_cli([*DISTILL, "run", "--no-index", "--root", str(root), "--json"])
    assert rebuilt.returncode == 0, rebuilt.stdout[-2000:]
    assert json.loads(rebuilt.stdout)["drift"]["severity"] == "ok"
    assert {v: (root / v).read_bytes() for v in views} == before  # the views were rebuilt, byte for byte


# ---------------------------------------------------------------------- 4. text is printed as text


def test_4_markup_looking_text_is_printed_as_it_is(tmp_path: Path) -> None:
    from tests.ollama_server import OllamaLoopback, Reply

    root = _workspace(tmp_path / "ws", rows=3)
    answer = "Index with v[/*idx*/0] and arr[i]; buf[b] is [bold]not[/] markup. " + "x" * 150 + " END"
    with OllamaLoopback() as srv:
        srv.set_default(Reply(content=answer))
        (root / "distill.toml").write_text(f'[runtime]\nollama_host = "{srv.url}"\nollama_model = "qwen2.5:7b-instruct"\n')
        done = run_cli([*REPLAY, "--root", str(root), "--backend", "ollama", "--no-retrieval", "--task", "Index the buffer [/logs/quux.log]"])
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in (0, 1), done.stderr
    assert answer in done.stdout  # whole: brackets kept, the long line not cut at 80 columns


def test_4_help_keeps_the_bracketed_settings_it_names() -> None:
    """Help texts name settings as `[runtime] backend`; rich markup took `[runtime]` for a style tag and
    printed "(default:  backend)". Every option of every command, both entry points."""
    import re

    import typer
    from typer.testing import CliRunner

    from distill.cli import build_app
    from runtime.cli import app as replay_app

    runner = CliRunner()
    checked = 0
    for typer_app, prefix in ((build_app(), []), (replay_app, None)):
        root = typer.main.get_command(typer_app)
        commands = root.commands if prefix is not None else {"": root}  # type: ignore[attr-defined]
        for name, command in commands.items():
            wanted = {m for p in command.params for m in re.findall(r"\[[a-z_]+\]", getattr(p, "help", None) or "")}
            if not wanted:
                continue
            shown = runner.invoke(typer_app, [*([name] if name else []), "--help"], terminal_width=200).output
            checked += 1
            assert all(w in shown for w in wanted), (name, wanted, shown)
    assert checked >= 3  # replay, serve and audit name settings in their help


def test_4_search_prints_record_text_with_brackets(tmp_path: Path) -> None:
    from distill.config import load_settings
    from distill.workspace import Workspace
    from index.build import run_index
    from tests.fixtures_index import rag_row, write_export

    root = tmp_path / "ws"
    (root / "_kb").mkdir(parents=True)
    rows = [rag_row(i) for i in range(6)] + [rag_row(6, title="Logs in [/logs/quux.log] and arr[i]", text="The quux log [/logs/quux.log] grows; arr[i] overflows.")]
    write_export(root, rows)
    run_index(Workspace(root), load_settings(root), progress=False)
    done = run_cli([*DISTILL, "search", "quux log", "--mode", "bm25", "--root", str(root)])
    assert done.returncode == 0, done.stderr
    assert "[/logs/quux.log]" in done.stdout and "arr[i]" in done.stdout


# ---------------------------------------------------------------------- 5. pairs answer the same question


def test_5_preference_pairs_compare_answers_to_the_same_question(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    shutil.copytree(SAMPLE_KB, root / "_kb")
    assert run_cli([*DISTILL, "run", "--no-index", "--root", str(root)]).returncode == 0
    evidence = {r["run_id"]: r for r in evidence_rows(root)}
    pairs = [json.loads(line) for line in (root / "exports" / "preference" / "chosen_rejected.jsonl").read_text().splitlines()]
    assert pairs
    for pair in pairs:
        chosen, rejected = evidence[pair["chosen_run_id"]], evidence[pair["rejected_run_id"]]
        assert chosen["source_files"] == rejected["source_files"] or chosen["task_id"] == rejected["task_id"]
        if chosen["source"] == "audits":
            assert chosen["source_files"] == rejected["source_files"], pair["id"]  # never two different findings' files
    # a high or critical finding that was fixed is a good audit, and reaches RAG
    rag = [json.loads(line) for line in (root / "exports" / "rag" / "playbooks.jsonl").read_text().splitlines()]
    severities = Counter(evidence[r["source_run_id"]]["markers"]["severity"] for r in rag if r["source_category"] == "audits")
    assert severities["high"] > 0 and severities["critical"] > 0


# ---------------------------------------------------------------------- 6. diff headers are grounded


def test_6_the_gate_accepts_standard_diff_headers() -> None:
    from distill.records.replay import ContextBundle, RetrievedItem
    from runtime.gate import check_grounding

    bundle = ContextBundle(exemplars=[RetrievedItem(id="rag-1", score=1, rank=1, text="x", source_files=["services/ingest/src/batcher.rs"])])
    patch = "--- a/services/ingest/src/batcher.rs\n+++ b/services/ingest/src/batcher.rs\n@@ -1 +1 @@\n-a\n+b"
    assert check_grounding(patch, bundle, "Fix the batcher", require_citation=False).passed
    assert not check_grounding("--- a/services/other.rs", bundle, "Fix the batcher", require_citation=False).passed


# ---------------------------------------------------------------------- 7. config mistakes are refused


@pytest.mark.parametrize(
    "toml, env, named",
    [
        ('[export]\nrepo_rot = "/x"\n', {}, "export.repo_rot"),
        ("", {"DISTILL_COLLECT__MAX_LINE_BYTE": "5"}, "DISTILL_COLLECT__MAX_LINE_BYTE"),
        ("[export]\ncontamination_ngram = 0\n", {}, "export.contamination_ngram"),
        ("[export]\nmax_pairs_per_task = -1\n", {}, "export.max_pairs_per_task"),
        ("[score]\ngrounded_accept = -3\n", {}, "score.grounded_accept"),
        ("[nosuchsection]\nx = 1\n", {}, "nosuchsection"),
        # a blank field path matches no row: every row would be quarantined "missing ''" for a typo
        ('[[sources]]\nname = "m"\npath = "m.jsonl"\ntask_id = "task"\ntext = ""\n', {}, "sources.0.text"),
        ('[[sources]]\nname = "m"\npath = "m.jsonl"\ntask_id = "a..b"\ntext = "t"\n', {}, "sources.0.task_id"),
        ('[[sources]]\nname = "m"\npath = "m.jsonl"\ntask_id = "t"\ntext = "t"\nmarkers = ["ok", " "]\n', {},
         "sources.0.markers"),
    ],
)
def test_7_config_mistakes_are_refused_with_the_key_named(tmp_path: Path, toml: str, env: dict[str, str], named: str) -> None:
    root = _workspace(tmp_path / "ws", rows=2)
    (root / "distill.toml").write_text(toml)
    line = one_line_error(run_cli([*DISTILL, "collect", "--root", str(root)], **env))
    assert named in line


# ---------------------------------------------------------------------- 8. one line and exit 2, never a traceback


@pytest.mark.parametrize(
    "case",
    ["init_a_file", "init_under_proc", "reports_is_a_file", "toml_is_a_dir", "env_not_json", "env_sources", "env_list",
     "absolute_mapping", "ollama_host_bad_port", "ollama_host_not_url", "toml_nested_too_deep", "env_nested_too_deep",
     "every_empty", "every_past_the_clock", "toml_utf16", "toml_is_a_fifo", "source_name_taken",
     "two_sources_read_one_file", "chroma_url_not_http", "openai_base_url_not_http", "escalation_url_bad_port",
     "init_an_empty_path", "root_an_empty_path"],
)
def test_8_expected_failures_are_one_line_exit_2(tmp_path: Path, case: str) -> None:
    root = _workspace(tmp_path / "ws", rows=2)
    env: dict[str, str] = {}
    cmd = [*DISTILL, "run", "--no-index", "--root", str(root)]
    if case == "init_a_file":
        (tmp_path / "afile").write_text("x")
        cmd = [*DISTILL, "init", str(tmp_path / "afile")]
    elif case == "init_under_proc":
        cmd = [*DISTILL, "init", "/proc/distill-test"]
    elif case == "reports_is_a_file":
        (root / "reports").write_text("not a directory")
    elif case == "toml_is_a_dir":
        (root / "distill.toml").mkdir()
    elif case == "env_not_json":
        env = {"DISTILL_COLLECT": "notjson"}
    elif case == "env_sources":
        env = {"DISTILL_SOURCES": "oops"}
    elif case == "env_list":
        env = {"DISTILL_EXPORT__BENCHMARK_FILES": "x"}
    elif case == "absolute_mapping":
        (root / "distill.toml").write_text('[[sources]]\nname = "abs"\npath = "/abs/x.jsonl"\ntask_id = "t"\ntext = "o"\n')
    elif case == "toml_nested_too_deep":  # tomllib and the stdlib's json recurse: a RecursionError traceback before
        (root / "distill.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    elif case == "toml_is_a_fifo":  # read_text blocked every command until something wrote to it
        os.mkfifo(root / "distill.toml")
    elif case == "toml_utf16":  # "'utf-8' codec can't decode byte 0xff in position 0" named no cause
        (root / "distill.toml").write_bytes("[collect]\nmax_line_bytes = 100000\n".encode("utf-16"))
    elif case == "env_nested_too_deep":
        env = {"DISTILL_SOURCES": "[" * 5000 + "]" * 5000}
    elif case.startswith("every_"):  # '' ran once as if --every was not given; a huge one overflowed the clock
        cmd = [*DISTILL, "run", "--no-index", "--every", "" if case == "every_empty" else "99999999999999999999h",
               "--root", str(root)]
    elif case.startswith("ollama_host"):
        env = {"OLLAMA_HOST": "http://127.0.0.1:99999" if case.endswith("port") else "not a url::"}
        cmd = [*REPLAY, "--root", str(root), "--backend", "ollama", "--no-retrieval", "--task", "hello there"]
    elif case == "init_an_empty_path":  # `distill init "$DIR"`, DIR unset: made the current directory a workspace
        cmd = [*DISTILL, "init", ""]
    elif case == "root_an_empty_path":  # `--root "$WS"`, WS unset: acted on the current directory
        cmd = [*DISTILL, "run", "--no-index", "--root", ""]
    elif case == "source_name_taken":  # was a recorded run whose collect failed (exit 1), drift alerts and all
        (root / "distill.toml").write_text('[[sources]]\nname = "audits"\npath = "mine.jsonl"\ntask_id = "t"\ntext = "o"\n')
    elif case == "two_sources_read_one_file":
        (root / "distill.toml").write_text('[[sources]]\nname = "mine"\npath = "*.jsonl"\ntask_id = "t"\ntext = "o"\n')
    elif case == "chroma_url_not_http":  # the index stage failed after every other stage had run
        env = {"DISTILL_INDEX__CHROMA_URL": "ftp://chroma.example"}
    elif case == "openai_base_url_not_http":  # "cannot connect", after the run was logged as evidence
        env = {"DISTILL_RUNTIME__OPENAI_BASE_URL": "file:///etc/passwd", "OPENAI_API_KEY": "x"}
        cmd = [*REPLAY, "--root", str(root), "--backend", "openai", "--no-retrieval", "--task", "hello there"]
    elif case == "escalation_url_bad_port":
        (root / "distill.toml").write_text('[runtime]\nescalation_base_url = "http://127.0.0.1:70000/v1"\n')
    message = one_line_error(run_cli(cmd, **env))
    if case == "toml_utf16":
        assert "UTF-16" in message
    if case in ("source_name_taken", "two_sources_read_one_file", "chroma_url_not_http"):
        assert not (root / "reports").exists() or not any((root / "reports").iterdir())  # no run was recorded
        assert not (root / "evidence").exists() or not any((root / "evidence").rglob("*.jsonl"))
    if case.endswith("_an_empty_path"):
        assert "an empty path" in message and not (Path.cwd() / "_kb").exists()
    if case.endswith(("_not_http", "_bad_port")):
        assert "is not a usable URL" in message


def test_8_a_byte_order_mark_before_the_settings_is_not_an_error(tmp_path: Path) -> None:
    from distill.config import load_settings

    (tmp_path / "distill.toml").write_bytes("\ufeff[collect]\nmax_line_bytes = 12345\n".encode())
    assert load_settings(tmp_path).collect.max_line_bytes == 12345  # tomllib alone: "Invalid statement"


@pytest.mark.parametrize(
    ("argv", "named"),
    [(["export", "yaml"], "'yaml' is not one of"), (["export"], "Missing argument"),
     (["receipts", "--format", "x"], "No such option: --format"), (["receipts", "--run-id"], "requires an argument"),
     (["nosuch"], "No such command"), (["search", "x", "--k", "0"], "--k")],
)
def test_8_usage_mistakes_are_one_line_too(argv: list[str], named: str) -> None:
    """click's usage errors were a framed box of four lines and more; they read like every other error now."""
    assert named in one_line_error(run_cli([*DISTILL, *argv]))


def test_8_replay_usage_mistakes_and_plain_help() -> None:
    assert "requires an argument" in one_line_error(run_cli([*REPLAY, "--task"]))
    bare = run_cli(DISTILL)  # no command: the help, as before
    assert bare.returncode == 2 and "Commands" in bare.stdout and "Traceback" not in bare.stderr
    assert run_cli([*DISTILL, "export", "--help"]).returncode == 0
    as_json = run_cli([*DISTILL, "receipts", "--json", "--format", "x"])  # --json: the error is JSON on stdout too
    assert json.loads(as_json.stdout)["exit_code"] == 2 and "--format" in one_line_error(as_json)


# ---------------------------------------------------------------------- 9. nothing skipped without a word


def test_9_inputs_collect_does_not_read_are_reported(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws", rows=3)
    kb = root / "_kb"
    (kb / "my_agent.jsonl").write_text('{"ticket": "T-1", "output": "done"}\n')
    (kb / "dir.jsonl").mkdir()
    (kb / "dangling.jsonl").symlink_to(kb / "nowhere")
    (kb / "loop_a").symlink_to(kb / "loop_b")
    (kb / "loop_b").symlink_to(kb / "loop_a")
    os.mkfifo(kb / "fifo.jsonl")
    (kb / "null.jsonl").symlink_to("/dev/null")  # was reported as a stream no source reads
    (kb / "pipe.jsonl").symlink_to(kb / "fifo.jsonl")
    done = run_cli([*DISTILL, "collect", "--root", str(root), "--json"], timeout=120)
    assert done.returncode == 0, done.stderr
    unread = {u["path"]: u["reason"] for u in json.loads(done.stdout)["unread"]}
    assert "[[sources]]" in unread["_kb/my_agent.jsonl"]
    assert "directory" in unread["_kb/dir.jsonl"] and "broken symlink" in unread["_kb/dangling.jsonl"]
    assert "loop" in unread["_kb/loop_a"] and "FIFO" in unread["_kb/fifo.jsonl"]
    assert unread["_kb/null.jsonl"] == "a symlink to a socket or device, not a file"
    assert unread["_kb/pipe.jsonl"].startswith("a symlink to a FIFO")


def test_9_names_that_are_not_utf8_are_reported_not_read(tmp_path: Path) -> None:
    """A file under _kb/ whose name is not valid UTF-8 stopped `distill run` with a traceback (a
    pydantic error: a receipt names every input as text). Such a file, or a folder, is now
    reported with its reason (its bytes shown as \\xNN) and not read, wherever it is: beside the
    built-in streams, matched by a [[sources]] glob, or inside a folder so named."""
    root = _workspace(tmp_path / "ws", rows=3)
    kb = root / "_kb"
    bad = os.fsdecode(b"b\xe9")
    (root / "distill.toml").write_text('[[sources]]\nname = "chat"\npath = "chat/*.jsonl"\n'
                                       'task_id = "conversation"\ntext = "reply"\ncreated_at = "when"\n')

    def row(task: str, reply: str) -> str:
        return json.dumps({"conversation": task, "when": "2026-03-01T10:00:00Z", "reply": reply}) + "\n"

    (kb / "chat").mkdir()
    (kb / "chat" / "ok.jsonl").write_text(row("c1", "hello there, the fix is in"))
    (kb / "chat" / f"{bad}.jsonl").write_text(row("c2", "another answer"))
    (kb / f"{bad}.jsonl").write_text(row("c3", "and one more"))
    (kb / bad).mkdir()
    (kb / bad / "rows.jsonl").write_text(row("c4", "inside"))
    done = run_cli([*DISTILL, "run", "--root", str(root), "--no-index"], timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-1500:]
    report = run_cli([*DISTILL, "collect", "--root", str(root), "--json"], timeout=120)
    assert report.returncode == 0, report.stderr
    unread = {u["path"]: u["reason"] for u in json.loads(report.stdout)["unread"]}
    for shown in ("_kb/b\\xe9.jsonl", "_kb/chat/b\\xe9.jsonl", "_kb/b\\xe9", "_kb/b\\xe9/rows.jsonl"):
        assert "not valid UTF-8" in unread[shown], unread
    chat = [line for path in sorted((root / "evidence").rglob("chat.jsonl")) for line in path.read_text().splitlines()]
    assert len(chat) == 1 and "hello there" in chat[0]


@pytest.mark.parametrize("entry", ["fifo", "device link", "broken link", "name not UTF-8", "folder named .jsonl"])
def test_9_an_entry_added_after_a_run_is_reported_by_the_next_run(tmp_path: Path, entry: str) -> None:
    """Such an entry has no content to digest, so `distill run` saw no change in collect's inputs,
    skipped collect and never said the entry was not read (a regular file added there made collect
    run and say so). What _kb/ holds by name is an input of collect now."""
    root = _workspace(tmp_path / "ws", rows=3)
    kb = root / "_kb"
    run = [*DISTILL, "run", "--root", str(root), "--no-index", "--json"]
    assert run_cli(run, timeout=300).returncode == 0
    name = {"fifo": "p.jsonl", "device link": "zero.jsonl", "broken link": "gone.jsonl",
            "name not UTF-8": os.fsdecode(b"b\xe9.jsonl"), "folder named .jsonl": "d.jsonl"}[entry]
    made = {"fifo": lambda p: os.mkfifo(p), "device link": lambda p: p.symlink_to("/dev/zero"),
            "broken link": lambda p: p.symlink_to(kb / "nowhere"), "name not UTF-8": lambda p: p.write_text("{}\n"),
            "folder named .jsonl": lambda p: p.mkdir()}[entry]
    made(kb / name)

    def collect_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-1500:]
        return next(s for s in json.loads(done.stdout)["summary"]["stages"] if s["stage"] == "collect")

    seen = collect_of(run_cli(run, timeout=300))
    assert seen["status"] == "ran", seen
    notes = json.loads((root / seen["receipt"]).read_text())["notes"]
    shown = "_kb/b\\xe9.jsonl" if entry == "name not UTF-8" else f"_kb/{name}"
    assert any(note.startswith(f"not read: {shown}: ") for note in notes), notes
    assert collect_of(run_cli(run, timeout=300))["status"] == "skipped"  # nothing new: nothing to say again


def test_9_a_repository_file_whose_name_is_not_utf8_does_not_stop_the_export(tmp_path: Path) -> None:
    """[export] repo_root lists the repository's file names; one that is not valid UTF-8 stopped
    `distill run` with a traceback (UnicodeEncodeError hashing the listing)."""
    root = _workspace(tmp_path / "ws", rows=3)
    (root / "repo").mkdir()
    (root / "repo" / os.fsdecode(b"caf\xe9.rs")).write_text("fn main() {}\n")
    (root / "distill.toml").write_text('[export]\nrepo_root = "repo"\n')
    done = run_cli([*DISTILL, "run", "--root", str(root), "--no-index"], timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-1500:]


def test_9_a_mapping_that_matches_no_file_is_reported(tmp_path: Path) -> None:
    """`path = "_kb/x.jsonl"` (the path is already under _kb/) read nothing without a word, and
    the file itself was then reported as one no source reads."""
    root = _workspace(tmp_path / "ws", rows=3)
    (root / "_kb" / "my_agent.jsonl").write_text('{"ticket": "T-1", "output": "done", "created_at": "2026-03-01T00:00:00Z"}\n')
    (root / "distill.toml").write_text('[[sources]]\nname = "my_agent"\npath = "_kb/my_agent.jsonl"\n'
                                       'task_id = "ticket"\ntext = "output"\n')
    done = run_cli([*DISTILL, "collect", "--root", str(root), "--json"], timeout=120)
    assert done.returncode == 0, done.stderr
    unread = {u["path"]: u["reason"] for u in json.loads(done.stdout)["unread"]}
    assert "matches no file" in unread["_kb/_kb/my_agent.jsonl"] and "drop its leading '_kb/'" in unread["_kb/_kb/my_agent.jsonl"]
    (root / "distill.toml").write_text('[[sources]]\nname = "my_agent"\npath = "my_agent.jsonl"\n'
                                       'task_id = "ticket"\ntext = "output"\n')
    done = run_cli([*DISTILL, "collect", "--root", str(root), "--json"], timeout=120)
    report = json.loads(done.stdout)
    assert not [u for u in report["unread"] if "my_agent" in u["path"]]
    assert report["by_source"]["my_agent"]["written"] == 1
    # a folder names no file: the hint says how to name the files in it
    (root / "_kb" / "logs").mkdir()
    (root / "_kb" / "my_agent.jsonl").rename(root / "_kb" / "logs" / "my_agent.jsonl")
    (root / "distill.toml").write_text('[[sources]]\nname = "my_agent"\npath = "logs"\n'
                                       'task_id = "ticket"\ntext = "output"\n')
    done = run_cli([*DISTILL, "collect", "--root", str(root), "--json"], timeout=120)
    unread = {u["path"]: u["reason"] for u in json.loads(done.stdout)["unread"]}
    assert "matches no file: it is a folder; name the files in it (logs/*.jsonl)" in unread["_kb/logs"], unread


def test_9_a_file_two_sources_match_is_refused_not_read_twice(tmp_path: Path) -> None:
    """`path = "*.jsonl"` also matched the built-in streams: each of their lines became a second
    evidence row under the mapping's name (the same run twice in the datasets)."""
    root = _workspace(tmp_path / "ws", rows=3)
    before = evidence_rows(root)
    (root / "_kb" / "my_agent.jsonl").write_text('{"ticket": "T-1", "output": "done", "created_at": "2026-03-01T00:00:00Z"}\n')
    (root / "distill.toml").write_text('[[sources]]\nname = "my_agent"\npath = "*.jsonl"\ntask_id = "ticket"\ntext = "output"\n')
    message = one_line_error(run_cli([*DISTILL, "collect", "--root", str(root)], timeout=120))
    assert "is read by two sources" in message and "narrow the [[sources]] path of 'my_agent'" in message
    assert evidence_rows(root) == before  # nothing was collected
    (root / "distill.toml").write_text('[[sources]]\nname = "my_agent"\npath = "my_*.jsonl"\ntask_id = "ticket"\ntext = "output"\n')
    done = run_cli([*DISTILL, "collect", "--root", str(root), "--json"], timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout)["by_source"]["my_agent"]["written"] == 1


def test_9_a_directory_without_kb_is_not_a_workspace(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not a workspace" in one_line_error(run_cli([*DISTILL, "run", "--root", str(empty)]))
    assert list(empty.iterdir()) == []  # nothing created there


def test_9_a_file_given_as_the_workspace_is_named_as_a_file(tmp_path: Path) -> None:
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    assert "is a file, not a directory" in one_line_error(run_cli([*DISTILL, "run", "--root", str(afile)]))
    assert afile.read_text() == "x"


def test_9_a_byte_order_mark_does_not_cost_the_first_row(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws", rows=5)
    plain = run_cli([*DISTILL, "collect", "--root", str(root), "--dry-run", "--json"])
    path = root / "_kb" / "scrum_reviews.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    bom = run_cli([*DISTILL, "collect", "--root", str(root), "--dry-run", "--json"])
    assert json.loads(bom.stdout)["by_source"]["scrum_reviews"] == json.loads(plain.stdout)["by_source"]["scrum_reviews"]


# ---------------------------------------------------------------------- 10. a forged row fails the export


def test_10_standalone_export_refuses_a_forged_row_and_keeps_it_out_of_views(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws", rows=40)
    assert run_cli([*DISTILL, "run", "--no-index", "--root", str(root)]).returncode == 0
    scored = [json.loads(line) for p in (root / "scored-runs").rglob("*.jsonl") for line in p.read_text().splitlines()]
    rejected = next(s for s in scored if s["category"] == "rejected")
    rows = (root / "exports" / "sft" / "instruction_response.jsonl").read_text().splitlines()
    forged = dict(json.loads(rows[0]), id="sft-forged000000000", source_run_id=rejected["evidence_run_id"],
                  provenance=rejected["provenance"], response="FORGED RESPONSE")
    with open(root / "exports" / "sft" / "instruction_response.jsonl", "a") as fh:
        fh.write(json.dumps(forged) + "\n")
    done = run_cli([*DISTILL, "export", "sft", "--format", "trl", "--root", str(root)])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "firewall_sft_category" in done.stderr
    for view in (root / "exports" / "sft").rglob("*.jsonl"):
        if view.name != "instruction_response.jsonl":
            assert "FORGED RESPONSE" not in view.read_text(), view


# ---------------------------------------------------------------------- 11. the smaller ones


def test_11_json_errors_are_json_on_stdout(tmp_path: Path) -> None:
    done = run_cli([*DISTILL, "collect", "--root", str(tmp_path / "missing"), "--json"])
    assert done.returncode == 2
    assert json.loads(done.stdout) == {"error": json.loads(done.stdout)["error"], "exit_code": 2}
    assert "does not exist" in json.loads(done.stdout)["error"]


def test_11_json_output_keeps_integers_beyond_64_bits(capsys: pytest.CaptureFixture[str]) -> None:
    """--json output (e.g. `replay --server --json` prints the server's body) went through orjson,
    which cannot write an integer beyond 64 bits: it failed, or came out as a float."""
    from distill.command import emit_json

    value = {"b": 2**128 + 1, "a": [-(10**30), "é", None], "c": {"z": 1, "y": 2.5}}
    emit_json(value)
    out = capsys.readouterr().out
    assert json.loads(out) == value and "340282366920938463463374607431768211457" in out
    emit_json({"b": 1, "a": [2, "é", None]})  # the usual case: indented, keys sorted, as before
    assert capsys.readouterr().out == '{\n  "a": [\n    2,\n    "é",\n    null\n  ],\n  "b": 1\n}\n'


def test_11_receipts_stage_cannot_leave_the_run_directory(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws", rows=2)
    assert run_cli([*DISTILL, "run", "--no-index", "--root", str(root)]).returncode == 0
    assert "not a stage name" in one_line_error(run_cli([*DISTILL, "receipts", "--stage", "../x", "--root", str(root)]))


def test_11_receipts_names_a_corrupted_summary_rather_than_no_runs(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws", rows=2)
    assert run_cli([*DISTILL, "run", "--no-index", "--root", str(root)]).returncode == 0
    (summary,) = (root / "reports").glob("*/summary.json")
    summary.write_text("{not json")
    message = one_line_error(run_cli([*DISTILL, "receipts", "--root", str(root)]))
    assert "readable summary" in message and summary.parent.name in message and "yet" not in message


def test_11_outputs_are_readable_by_others_like_the_datasets(tmp_path: Path) -> None:
    root = _workspace(tmp_path / "ws", rows=10)
    assert run_cli([*DISTILL, "run", "--no-index", "--root", str(root)]).returncode == 0
    for rel in ("exports/README.md", "exports/quarantine/collect.jsonl", "exports/sft/trl/messages.jsonl",
                "exports/rag/playbooks.jsonl", "reports/latest.json"):
        mode = stat.S_IMODE((root / rel).stat().st_mode)
        assert mode & 0o044 == 0o044, (rel, oct(mode))


def test_11_version() -> None:
    assert run_cli([*DISTILL, "--version"]).stdout.startswith("distill ")
    assert "distill" in run_cli([*REPLAY, "--version"]).stdout


def test_11_a_dead_backend_fails_fast_and_is_not_evidence(tmp_path: Path) -> None:
    import socket

    root = _workspace(tmp_path / "ws", rows=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (root / "distill.toml").write_text(f'[runtime]\nollama_host = "http://127.0.0.1:{port}"\n')
    start = time.monotonic()
    done = run_cli([*REPLAY, "--root", str(root), "--backend", "ollama", "--task", "Review the batcher", "--json"])
    assert done.returncode == 2 and time.monotonic() - start < 20
    run = json.loads(done.stdout)
    assert run["final_verdict"] == "error" and run["retrieved"] == []  # no retrieval was spent on it
    collected = run_cli([*DISTILL, "collect", "--root", str(root), "--json"])
    replay = json.loads(collected.stdout)["by_source"]["replay_runs"]
    assert replay["written"] == 0 and replay["by_reason"] == {"no_model_answer": 1}


def test_11_a_read_only_store_is_not_told_to_rebuild(tmp_path: Path) -> None:
    from index.store import not_writable

    assert not_writable(tmp_path, RuntimeError("attempt to write a readonly database"))
    assert not not_writable(tmp_path, RuntimeError("file is not a database"))


def test_11_bm25_search_needs_no_chroma_store(tmp_path: Path) -> None:
    from distill.config import load_settings
    from distill.workspace import Workspace
    from index.build import run_index
    from tests.fixtures_index import rag_row, write_export

    root = tmp_path / "ws"
    (root / "_kb").mkdir(parents=True)
    write_export(root, [rag_row(i) for i in range(5)])
    run_index(Workspace(root), load_settings(root), progress=False)
    shutil.rmtree(root / "index" / "chroma")
    done = run_cli([*DISTILL, "search", "flaky migration test", "--mode", "bm25", "--root", str(root), "--json"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["hits"]


# ---------------------------------------------------------------------- 12. a pipe where distill keeps a file


@pytest.fixture(scope="module")
def ran_small_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small workspace after one run: every kind of file distill keeps exists in it."""
    root = _workspace(tmp_path_factory.mktemp("special") / "ws", rows=6)
    done = run_cli([*DISTILL, "run", "--no-index", "--root", str(root)], timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]
    return root


@pytest.mark.parametrize(("where", "command"), [
    ("evidence", ["run", "--no-index"]), ("scored-runs", ["export", "rag"]), ("export", ["run", "--no-index"]),
    ("checkpoint", ["export", "rag"]), ("symlink", ["run", "--no-index"]), ("report", ["receipts"]),
    ("evidence", ["receipts"]),
])
def test_12_a_fifo_in_place_of_a_workspace_file_is_refused_not_waited_on(
        ran_small_workspace: Path, tmp_path: Path, where: str, command: list[str]) -> None:
    """A FIFO in place of an evidence partition blocked `distill run` for ever (collect opened it
    to append, and waited for a reader), one in place of a run's summary blocked `distill
    receipts`; anywhere distill keeps a file it is now a one-line error naming it, before any
    stage runs, and the workspace is as it was."""
    root = tmp_path / "ws"
    shutil.copytree(ran_small_workspace, root, symlinks=True)
    if where in ("evidence", "scored-runs"):
        victim = sorted((root / where).rglob("*.jsonl"))[0]
    elif where == "export":
        victim = root / "exports" / "rag" / "playbooks.jsonl"
    elif where == "report":  # `distill receipts` (no lock: it only reads) waited on it
        victim = sorted((root / "reports").glob("*/summary.json"))[-1]
    else:
        victim = root / ".distill.export-rag.json"
    assert victim.is_file()
    victim.unlink()
    if where == "symlink":
        os.mkfifo(tmp_path / "pipe")
        victim.symlink_to(tmp_path / "pipe")
    else:
        os.mkfifo(victim)
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    message = one_line_error(run_cli([*DISTILL, *command, "--root", str(root)], timeout=60))
    assert victim.relative_to(root).as_posix() in message
    assert ("a symlink to a FIFO" if where == "symlink" else "is a FIFO") in message
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == before
    assert stat.S_ISFIFO(os.stat(victim).st_mode)  # refused, not replaced


def test_13_temporary_files_of_killed_writes_are_removed_by_the_next_lock_holder(
        ran_small_workspace: Path, tmp_path: Path) -> None:
    """A process killed inside an atomic write (SIGKILL runs no handler) left its temporary file
    for ever: a killed periodic run at a million rows leaves up to a GB per file. So did an export
    killed while staging its new rows, a checkpoint's side file and the scratch folders of collect
    and score. The next command that takes the workspace lock removes them (every writer of those
    files holds the lock, so none is in use); a read-only command does not, and files that are not
    distill's own temps stay (a link with a scratch folder's name is not followed)."""
    root = tmp_path / "ws"
    shutil.copytree(ran_small_workspace, root, symlinks=True)
    targets = [sorted((root / "scored-runs").rglob("*.jsonl"))[0], root / "exports" / "rag" / "playbooks.jsonl",
               root / ".distill.score.json", root / "reports" / "new.json"]
    script = ("import os, signal, sys\nfrom pathlib import Path\nfrom distill.jsonl import atomic_writer\n"
              "with atomic_writer(Path(sys.argv[1])) as fh:\n"
              "    fh.write(b'{\"half\": '); fh.flush(); os.kill(os.getpid(), signal.SIGKILL)\n")
    # first (it takes the lock, which sweeps): an export killed while it stages its new rows
    staging = ("import contextlib, os, signal, sys\nimport distill.export.run as run\nstaging = run._staging\n"
               "@contextlib.contextmanager\ndef killed(path):\n    with staging(path) as fh:\n"
               "        fh.write(b'{\"half\": '); fh.flush(); os.kill(os.getpid(), signal.SIGKILL)\n        yield fh\n"
               "run._staging = killed\nfrom distill.cli import main\n"
               "sys.argv = ['distill', 'export', 'rag', '--root', sys.argv[1]]\nmain()\n")
    killed = subprocess.run([*DISTILL[:1], "-c", staging, str(root)], cwd=REPO, env=cli_env(), timeout=120)
    assert killed.returncode == -9
    for target in targets:
        killed = subprocess.run([*DISTILL[:1], "-c", script, str(target)], cwd=REPO, env=cli_env(), timeout=60)
        assert killed.returncode == -9
    targets.append(root / "exports" / "rag" / "playbooks.jsonl")  # the staged rows' temp
    # a checkpoint file's side file, killed before it was renamed into place
    side = ("import os, signal, sys\nfrom pathlib import Path\nfrom distill.checkpoint_file import CheckpointFile\n"
            "book = CheckpointFile(Path(sys.argv[1]), lambda header: None)\n"
            "book.write('evidence/2026/01/01/a.jsonl', {'end': 1})\nbook._out.flush()\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    targets.append(root / ".distill.export-sft.json")
    killed = subprocess.run([*DISTILL[:1], "-c", side, str(targets[-1])], cwd=REPO, env=cli_env(), timeout=60)
    assert killed.returncode == -9
    temps = sorted(p for p in root.rglob("*.tmp") if p.is_file())
    assert sorted(p.name.rsplit(".", 2)[0] for p in temps) == sorted(f".{t.name}" for t in targets)  # .NAME.HEX.tmp
    # scratch folders of a killed collect (sources side by side) and score (partitions in children)
    scratch = [root / ".distill-collect-k1l_ed.tmp", root / ".distill-partitions-x9_y.tmp"]
    for folder in scratch:
        (folder / "0").mkdir(parents=True)
        (folder / "0" / "group-1.pickle").write_bytes(b"half")
    temps += scratch
    # the BM25 index's new folder, killed before it was swapped in
    bm25 = ("import os, signal, sys\nfrom pathlib import Path\nimport index.bm25 as bm25\n"
            "bm25.write_jsonl_atomic = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
            "bm25.save(bm25.build([]), Path(sys.argv[1]), fingerprint='x')\n")
    killed = subprocess.run([*DISTILL[:1], "-c", bm25, str(root / "index" / "bm25")], cwd=REPO, env=cli_env(), timeout=60)
    assert killed.returncode == -9
    new_bm25 = [p for p in (root / "index").glob(".bm25.*.tmp") if p.is_dir()]
    assert len(new_bm25) == 1
    temps += new_bm25
    kept = [root / "_kb" / ".notes.jsonl.0123456789ab.tmp",  # the user's source folder: not distill's to clean
            root / "index" / ".model.gguf.0123456789ab.assembling.tmp",  # a model cache assembling (no lock)
            root / "exports" / "draft.tmp",
            root / ".distill-partitions-file.tmp",  # a scratch folder's name on a file
            tmp_path / "mine" / "notes.txt"]  # behind a link with a scratch folder's name
    for path in kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"mine")
    (root / ".distill-partitions-link.tmp").symlink_to(tmp_path / "mine", target_is_directory=True)
    before = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert run_cli([*DISTILL, "receipts", "--root", str(root)], timeout=120).returncode == 0
    assert {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    done = run_cli([*DISTILL, "score", "--root", str(root)], timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]
    assert not [p for p in temps if p.exists()]
    assert all(p.read_bytes() == b"mine" for p in kept)
    assert (root / ".distill-partitions-link.tmp").is_symlink()


@pytest.mark.parametrize(("entry", "command", "how"), [
    ("evidence", ["run", "--no-index"], "file"), ("exports/rag", ["export", "rag"], "file"),
    ("index", ["run"], "file"), ("reports", ["receipts"], "file"),
    ("exports/quarantine", ["run", "--no-index"], "link to nothing"),
    ("exports/rag/playbooks.jsonl", ["run", "--no-index"], "folder"), (".distill.score.json", ["score"], "folder"),
    ("exports/quarantine/sft.jsonl", ["export", "sft"], "folder"),
    ("evidence/*", ["run", "--no-index"], "folder"), ("scored-runs/*", ["export", "rag"], "folder"),
    # a partition's year, month or day folder (`/*^3`: three levels above the first partition file)
    ("evidence/*^3", ["run", "--no-index"], "file"), ("scored-runs/*^2", ["score"], "file"),
    ("evidence/*^1", ["collect"], "symlink to a file"),
])
def test_14_a_file_where_distill_keeps_a_folder_or_a_folder_where_it_keeps_a_file_is_refused(
        ran_small_workspace: Path, tmp_path: Path, entry: str, command: list[str], how: str) -> None:
    """`distill run` with a file where the evidence folder belongs failed collect halfway
    ("stage_raised: NotADirectoryError ... evidence/2026/02/27", exit 1); one where the RAG export's
    folder belongs, or the index's, failed that stage with FileExistsError; a folder in place of
    the RAG export failed it with IsADirectoryError. Now every command refuses before it starts:
    one line naming the path, exit 2, the workspace as it was. The same for a file where a
    partition's year, month or day folder belongs (`evidence/2026` failed collect with
    NotADirectoryError, exit 1)."""
    root = tmp_path / "ws"
    shutil.copytree(ran_small_workspace, root, symlinks=True)
    if entry.endswith("/*"):  # a partition file of that folder
        entry = sorted((root / entry[:-2]).rglob("*.jsonl"))[0].relative_to(root).as_posix()
    elif "/*^" in entry:  # a folder above one
        folder, up = entry.split("/*^")
        entry = sorted((root / folder).rglob("*.jsonl"))[0].parents[int(up) - 1].relative_to(root).as_posix()
    victim = root / entry
    if victim.is_dir():
        shutil.rmtree(victim)
    else:
        victim.unlink(missing_ok=True)
    if how == "file":
        victim.write_bytes(b"not a folder\n")
    elif how == "folder":
        victim.mkdir()
    elif how == "symlink to a file":
        (tmp_path / "a-file").write_bytes(b"a file\n")
        victim.symlink_to(tmp_path / "a-file")
    else:
        victim.symlink_to(tmp_path / "nothing-here")
    before = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    message = one_line_error(run_cli([*DISTILL, *command, "--root", str(root)], timeout=120))
    wanted = "not a file" if how == "folder" else "not a folder"
    assert message.startswith(f"error: {entry} is a {how}, {wanted}: distill keeps "), message
    assert {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} == before


# ---------------------------------------------------------------------- 15. a write the OS refuses


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child, before exec: writes past `limit` fail with EFBIG
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("limit", [8192, 32768])
def test_15_a_write_the_os_refuses_names_its_file_and_the_next_run_completes(
        ran_small_workspace: Path, tmp_path: Path, limit: int) -> None:
    """A full disk stopped `distill run` with `error: cannot use: No space left on device`: the
    OS names no file for a failed write, so neither did the message (found with the sample
    workspace on a tmpfs of 0.1 to 15 MB, 21 sizes: the run failed in every stage in turn; the run
    after the space was freed gave the exports of an undisturbed run every time). A file size
    limit stands in for the full disk here (RLIMIT_FSIZE: EFBIG, no mount needed): the one line
    names the file, and the next run completes the work."""
    root = _workspace(tmp_path / "ws", rows=6)
    refused = subprocess.run([*DISTILL, "run", "--no-index", "--root", str(root)], cwd=REPO, env=cli_env(),
                             capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(limit))
    message = one_line_error(refused)
    assert message.startswith(f"error: cannot use {root}{os.sep}") and message.endswith(": File too large"), message
    done = run_cli([*DISTILL, "run", "--no-index", "--root", str(root)], timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]
    assert tree_bytes(root / "exports") == tree_bytes(ran_small_workspace / "exports")


def test_15_a_full_disk_says_so_and_what_to_do() -> None:
    import errno

    from distill.command import os_error_message

    message = os_error_message(OSError(errno.ENOSPC, "No space left on device", "/ws/reports/r/collect.json"))
    assert message.startswith("cannot write /ws/reports/r/collect.json: No space left on device; free some space "
                              "and run the command again"), message


# ---------------------------------------------------------------------- 16. a stricter setting over a shipped export


def test_16_a_lowered_pair_cap_stops_the_run_and_names_the_way_out(tmp_path: Path) -> None:
    """`max_pairs_per_task` lowered after pairs shipped: every later `distill run` stopped on
    "task X has 3 pairs (max 1)" without saying that the rows are already in the export or what
    writes it anew, and RAG and SFT were never exported again. The message names
    `distill export preference --rebuild`; after it the run passes under the new cap."""
    root = _workspace(tmp_path / "ws", rows=60)
    run = [*DISTILL, "run", "--root", str(root), "--no-index"]
    assert run_cli(run, timeout=300).returncode == 0
    per_task = Counter(json.loads(line)["task_id"] for line in (root / "exports/preference/chosen_rejected.jsonl")
                       .read_text().splitlines())
    assert max(per_task.values()) > 1, per_task  # the sample ships tasks with several pairs
    (root / "distill.toml").write_text("[export]\nmax_pairs_per_task = 1\n")
    stopped = run_cli(run, timeout=300)
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr
    said = " ".join(stopped.stdout.split())
    assert "firewall_preference_pairs_per_task" in said and "`distill export preference --rebuild`" in said, said
    rebuilt = run_cli([*DISTILL, "export", "preference", "--rebuild", "--root", str(root)], timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr[-1500:]
    assert "rebuilt the preference export" in " ".join(rebuilt.stdout.split()), rebuilt.stdout
    assert run_cli(run, timeout=300).returncode == 0
    per_task = Counter(json.loads(line)["task_id"] for line in (root / "exports/preference/chosen_rejected.jsonl")
                       .read_text().splitlines())
    assert per_task and max(per_task.values()) == 1


# ---------------------------------------------------------------------- 17. gates that change after rows shipped


def test_17_a_benchmark_file_added_after_rows_shipped_finds_them_in_every_export(tmp_path: Path) -> None:
    """The gates judged only new rows: a row already in an export was deduped without a look, so
    after `[export] benchmark_files` named an eval set holding the text of shipped rows, every
    run passed with those rows still in the SFT, RAG and preference exports (the preference
    quarantine even counted the answers as eval_contamination while their pairs stayed shipped).
    Each export now names such a row with the way out, and after the rebuild none is left."""
    root = _workspace(tmp_path / "ws", rows=60)
    run = [*DISTILL, "run", "--root", str(root), "--no-index", "--json", "--continue-on-failure"]
    assert run_cli(run, timeout=300).returncode == 0
    exports = {"sft": root / "exports/sft/instruction_response.jsonl", "rag": root / "exports/rag/playbooks.jsonl",
               "preference": root / "exports/preference/chosen_rejected.jsonl"}
    sft = json.loads(exports["sft"].read_text().splitlines()[0])
    pair = json.loads(exports["preference"].read_text().splitlines()[0])
    (root / "eval.jsonl").write_text(json.dumps({"task": sft["response"]}) + "\n" + json.dumps({"task": pair["chosen"]}) + "\n")
    (root / "distill.toml").write_text('[export]\nbenchmark_files = ["eval.jsonl"]\n')
    done = run_cli(run, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-1500:]
    errors = {s["stage"]: " ".join(s["errors"]) for s in json.loads(done.stdout)["summary"]["stages"]}
    for kind in exports:
        assert f"firewall_{kind}_stale_row" in errors[f"export-{kind}"], errors
        assert "eval_contamination" in errors[f"export-{kind}"] and f"distill export {kind} --rebuild" in errors[f"export-{kind}"]
    assert sft["id"] in errors["export-sft"] and pair["id"] in errors["export-preference"]
    assert run_cli(run, timeout=300).returncode == 1  # nothing changed: it stops again, it does not forget

    rebuilt = run_cli([*DISTILL, "export", "all", "--rebuild", "--root", str(root)], timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr[-1500:]
    assert run_cli(run, timeout=300).returncode == 0
    held = {kind: {json.loads(line)["id"] for line in path.read_text().splitlines()} for kind, path in exports.items()}
    assert sft["id"] not in held["sft"] and pair["id"] not in held["preference"]


def test_17_a_cited_file_gone_from_the_repository_does_not_stop_later_runs(tmp_path: Path) -> None:
    """The rows already shipped are judged again by the gates that must never let a row stay
    (credentials, eval tasks), not by the path gate: a file a row cited when it shipped and that
    was removed or renamed since (here: `repo_root` pointed at a tree without any of them) is no
    hallucination, and a periodic run must not stop on every refactoring of the repository."""
    root = _workspace(tmp_path / "ws", rows=60)
    run = [*DISTILL, "run", "--root", str(root), "--no-index", "--json"]
    assert run_cli(run, timeout=300).returncode == 0
    shipped = (root / "exports/rag/playbooks.jsonl").read_bytes()
    (root / "repo").mkdir()
    (root / "distill.toml").write_text('[export]\nrepo_root = "repo"\n')
    done = run_cli(run, timeout=300)
    assert done.returncode == 0, [(s["stage"], s["errors"]) for s in json.loads(done.stdout)["summary"]["stages"]]
    assert (root / "exports/rag/playbooks.jsonl").read_bytes() == shipped


# ---------------------------------------------------------------------- 18. distill export between runs


@pytest.mark.parametrize("how", [["rag", "--include-review"], ["sft", "--include-partial"], ["preference", "--rebuild"]])
def test_18_an_export_with_its_own_flags_between_runs_is_not_a_hand_edit(tmp_path: Path, how: list[str]) -> None:
    """`distill export rag --include-review` (a documented flag) between two runs: every later
    `distill run`, --force too, stopped on "determinism_violation: output differs ... (if it was
    edited by hand, delete it and rerun to rebuild it)", since the run would not have written those
    rows. What a clean `distill export` leaves is the run's new reference; a hand edit after it
    is still refused."""
    root = _workspace(tmp_path / "ws", rows=60)
    run = [*DISTILL, "run", "--root", str(root), "--no-index", "--json"]
    assert run_cli(run, timeout=300).returncode == 0
    native = {"rag": "rag/playbooks.jsonl", "sft": "sft/instruction_response.jsonl",
              "preference": "preference/chosen_rejected.jsonl"}[how[0]]
    if how[0] == "preference":  # a rebuild writes other bytes than the appends did once the cap moved
        (root / "distill.toml").write_text("[export]\nmax_pairs_per_task = 1\n")
        assert run_cli(run, timeout=300).returncode == 1
    before = (root / "exports" / native).read_bytes()
    done = run_cli([*DISTILL, "export", *how, "--root", str(root)], timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]
    assert (root / "exports" / native).read_bytes() != before  # the flag changed what is shipped

    def stage(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
        assert "Traceback" not in result.stderr, result.stderr[-1500:]
        return next(s for s in json.loads(result.stdout)["summary"]["stages"] if s["stage"] == f"export-{how[0]}")

    after = run_cli(run, timeout=300)
    assert after.returncode == 0 and stage(after)["status"] == "ran", [(s["stage"], s["errors"]) for s in json.loads(after.stdout)["summary"]["stages"]]
    again = run_cli(run, timeout=300)
    assert again.returncode == 0 and stage(again)["status"] == "skipped"
    with open(root / "exports" / native, "ab") as fh:  # a hand edit after all that: still refused
        fh.write((root / "exports" / native).read_bytes().splitlines(keepends=True)[0])
    edited = run_cli(run, timeout=300)
    assert edited.returncode == 1 and "determinism_violation" in " ".join(stage(edited)["errors"])


# ---------------------------------------------------------------------- 19. scores that change after rows shipped


def test_19_a_shipped_row_whose_run_is_scored_into_another_category_is_named(tmp_path: Path) -> None:
    """`[score] grounded_accept` raised after a run: every later `distill run` passed with SFT rows
    still labelled `"quality_score": "accepted"` whose runs are now partially_accepted (found on the
    sample: 32 rows), each also listed in the SFT quarantine as category_disallowed; RAG and the
    preference pairs kept the old labels too. The export's verification compares a row's label
    with its run's score, so the run stops naming the row and `--rebuild`; after the rebuild every
    label is the run's category and the run passes."""
    root = _workspace(tmp_path / "ws", rows=60)
    run = [*DISTILL, "run", "--root", str(root), "--no-index", "--continue-on-failure", "--json"]
    assert run_cli(run, timeout=300).returncode == 0
    (root / "distill.toml").write_text("[score]\ngrounded_accept = 0.99\nmode_latency_partial_s = 1\n")
    stopped = run_cli(run, timeout=300)
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr
    errors = {s["stage"]: " ".join(s["errors"]) for s in json.loads(stopped.stdout)["summary"]["stages"]}
    for kind in ("rag", "sft"):
        assert f"firewall_{kind}_stale_label" in errors[f"export-{kind}"], errors
        assert "labelled accepted but its run is scored partially_accepted now" in errors[f"export-{kind}"]
        assert f"`distill export {kind} --rebuild`" in errors[f"export-{kind}"]
    rebuilt = run_cli([*DISTILL, "export", "all", "--rebuild", "--root", str(root)], timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr[-1500:]
    assert run_cli(run, timeout=300).returncode == 0
    scored = {(r["evidence_run_id"], r["provenance"]["sig_hash"]): r["category"]
              for p in (root / "scored-runs").rglob("*.jsonl") for r in map(json.loads, p.read_text().splitlines())}
    for native, field in (("rag/playbooks.jsonl", "success_score"), ("sft/instruction_response.jsonl", "quality_score")):
        rows = [json.loads(line) for line in (root / "exports" / native).read_text().splitlines()]
        assert rows and all(r[field] == scored[(r["source_run_id"], r["provenance"]["sig_hash"])] for r in rows)
