"""`distill audit` on real git repositories made here: verdicts, exit codes, SARIF against the
official 2.1.0 schema, recurrence from the lessons knowledge base, the audits row collected as
evidence, the model pass's quote check (a real ollama client against a loopback server)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from audit.checks import placeholder_findings
from audit.claims import ClaimKind, parse_claims
from audit.diff import is_test_path, parse_diff
from distill.config import Settings
from distill.errors import UsageError
from audit.model_pass import grounded_gaps
from audit.testrun import read_counts
from distill.config import load_settings
from tests.fixtures_reliability import DISTILL, run_cli

SCHEMA = Path(__file__).parent / "data" / "sarif-2.1.0-rtm.5.json"  # from npm @microsoft/jest-sarif (MIT)


def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "PATH": "/usr/bin:/bin", "HOME": str(repo)}
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


def make_repo(path: Path, n_tests: int = 10) -> Path:
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "app").mkdir()
    (path / "app" / "__init__.py").write_text("")
    (path / "app" / "core.py").write_text("def add(a, b):\n    return a + b\n")
    (path / "tests").mkdir()
    body = "".join(f"def test_{i}():\n    assert add({i}, 1) == {i + 1}\n\n\n" for i in range(n_tests))
    (path / "tests" / "test_core.py").write_text("from app.core import add\n\n\n" + body)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "_kb").mkdir(parents=True)
    return root


def audit_cli(ws: Path, repo: Path, rng: str, *extra: str, toml: str | None = None) -> tuple[int, dict, str]:
    if toml is not None:
        (ws / "distill.toml").write_text(toml)
    done = run_cli([*DISTILL, "audit", "--root", str(ws), "--repo", str(repo), "--range", rng, "--json", *extra], timeout=240)
    report = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
    return done.returncode, report, done.stderr


def checks_of(report: dict) -> list[str]:
    return [f["check"] for f in report["findings"]]


# ------------------------------------------------------------------------------------- verdicts


def test_a_todo_macro_blocks(tmp_path: Path, ws: Path) -> None:
    repo = make_repo(tmp_path / "r")
    commit(repo, {"app/core.rs": "fn load() -> u32 {\n    todo!()\n}\n"}, "Add the loader in app/core.rs")
    code, report, _ = audit_cli(ws, repo, "HEAD~1..HEAD")
    assert code == 1 and report["verdict"] == "block"
    hit = next(f for f in report["findings"] if f["check"] == "placeholder")
    assert hit["path"] == "app/core.rs" and hit["line"] == 2 and "todo!(" in hit["found"]


def test_a_claim_naming_an_untouched_file_blocks(tmp_path: Path, ws: Path) -> None:
    repo = make_repo(tmp_path / "r")
    commit(repo, {"tests/test_core.py": "from app.core import add\n\n\ndef test_one():\n    assert add(1, 1) == 2\n"},
           "Rewrite add in app/core.py")
    code, report, _ = audit_cli(ws, repo, "HEAD~1..HEAD")
    assert code == 1
    hit = next(f for f in report["findings"] if f["check"] == "claim_file")
    assert hit["severity"] == "block" and "app/core.py" in hit["title"] and hit["claim"] == "Rewrite add in app/core.py"
    assert "tests/test_core.py" in hit["found"] and "unchanged" in hit["found"]


def test_a_claimed_file_the_repository_never_had_warns(tmp_path: Path, ws: Path) -> None:
    repo = make_repo(tmp_path / "r")
    commit(repo, {"app/core.py": "def add(a, b):\n    return b + a\n"}, "Rewrite the retry loop; see summary.md")
    code, report, _ = audit_cli(ws, repo, "HEAD~1..HEAD")
    hit = next(f for f in report["findings"] if f["check"] == "claim_file")
    assert code == 0 and hit["severity"] == "warn" and "no file of that name" in hit["found"]


def test_placeholders_in_strings_and_data_files_are_content_not_code(tmp_path: Path, ws: Path) -> None:
    repo = make_repo(tmp_path / "r")
    commit(repo, {"app/prompts.py": 'PROMPT = """Do not leave placeholders such as TODO."""\nPATTERN = r"\\bFIXME\\b"\n',
                  "docs/notes.md": "TODO: write the guide\n", "data/rows.jsonl": '{"text": "todo!()"}\n',
                  "app/run.ts": "const msg = 'TODO later';\n// TODO: real handler\n"}, "Add prompts")
    code, report, _ = audit_cli(ws, repo, "HEAD~1..HEAD")
    hits = [(f["path"], f["line"]) for f in report["findings"] if f["check"] in ("placeholder", "stub_word")]
    assert hits == [("app/run.ts", 2)] and code == 1, report["findings"]


@pytest.mark.parametrize(("claimed", "blocks"), [(12, True), (10, False)])
def test_a_claimed_test_count_is_checked_by_running_the_tests(tmp_path: Path, ws: Path, claimed: int, blocks: bool) -> None:
    repo = make_repo(tmp_path / "r", n_tests=10)
    commit(repo, {"app/core.py": "def add(a, b):\n    return a + b  # same\n"}, f"Tidy app/core.py; {claimed} tests pass")
    toml = f'[audit]\ntest_command = "{sys.executable} -m pytest -q -p no:cacheprovider tests"\ntest_timeout_s = 120\n'
    code, report, err = audit_cli(ws, repo, "HEAD~1..HEAD", toml=toml)
    assert report["test_run"]["passed"] == 10, (report.get("test_run"), err)
    assert (code == 1) is blocks and ("claim_tests" in checks_of(report)) is blocks
    if blocks:
        hit = next(f for f in report["findings"] if f["check"] == "claim_tests")
        assert "claimed 12" in hit["title"] and "10 passed" in hit["found"]


def test_test_claims_are_never_judged_on_another_checkout(tmp_path: Path, ws: Path) -> None:
    """The test command runs in the working tree: with an older commit checked out (or tracked
    files edited), "10 tests pass" about HEAD was confirmed or refuted on other code."""
    repo = make_repo(tmp_path / "r", n_tests=10)
    head = commit(repo, {"app/core.py": "def add(a, b):\n    return a + b  # same\n"}, "Tidy app/core.py; 12 tests pass")
    toml = f'[audit]\ntest_command = "{sys.executable} -m pytest -q -p no:cacheprovider tests"\ntest_timeout_s = 120\n'
    git(repo, "checkout", "-q", "HEAD~1")
    code, report, err = audit_cli(ws, repo, f"HEAD..{head}", toml=toml)
    hit = next(f for f in report["findings"] if f["check"] == "claim_tests")
    assert report["test_run"] is None and hit["severity"] == "warn" and "not at" in hit["found"], (report, err)
    git(repo, "checkout", "-q", head)
    (repo / "app" / "core.py").write_text("def add(a, b):\n    return a - b\n")  # an uncommitted edit
    code, report, _ = audit_cli(ws, repo, "HEAD~1..HEAD", toml=toml)
    assert report["test_run"] is None and "uncommitted" in next(f["found"] for f in report["findings"] if f["check"] == "claim_tests")
    git(repo, "checkout", "-q", "--", "app/core.py")
    (repo / "build.log").write_text("untracked files do not count\n")
    code, report, _ = audit_cli(ws, repo, "HEAD~1..HEAD", toml=toml)
    assert report["test_run"]["passed"] == 10 and code == 1  # run, and 12 != 10 blocks


def test_a_clean_change_passes_and_writes_every_form(tmp_path: Path, ws: Path) -> None:
    repo = make_repo(tmp_path / "r")
    commit(repo, {"app/core.py": "def add(a, b):\n    \"\"\"Sum.\"\"\"\n    return a + b\n"}, "Document add in app/core.py")
    sarif_path, md_path = tmp_path / "out.sarif", tmp_path / "out.md"
    code, report, err = audit_cli(ws, repo, "HEAD~1..HEAD", "--sarif", str(sarif_path), "--markdown", str(md_path))
    assert code == 0 and report["verdict"] == "pass", (report, err)
    assert [c["kind"] for c in report["claims"]] == ["file"]
    assert "Passed" in md_path.read_text()
    assert json.loads(sarif_path.read_text())["runs"][0]["results"] == []


def test_named_outputs_that_are_not_regular_files_are_written_to_not_replaced(tmp_path: Path, ws: Path) -> None:
    """`--sarif` was written through a temp file renamed over the path: as root, `--sarif /dev/zero`
    replaced the device with a regular file (and `--sarif /dev/stdout` would have replaced the
    link). A FIFO stands in for the device here; a symlink keeps pointing at its target."""
    import os
    import stat

    repo = make_repo(tmp_path / "r")
    commit(repo, {"app/core.py": "def add(a, b):\n    return a + b  # ok\n"}, "Touch app/core.py")
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    target, link = tmp_path / "real.md", tmp_path / "link.md"
    target.write_text("old")
    link.symlink_to(target)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the writer's open does not wait for a reader
    try:
        code, _, err = audit_cli(ws, repo, "HEAD~1..HEAD", "--sarif", str(fifo), "--markdown", str(link))
        assert code == 0, err
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
        assert json.loads(os.read(reader, 1 << 20))["version"] == "2.1.0"
    finally:
        os.close(reader)
    assert link.is_symlink() and "audit" in target.read_text().lower()
    code, _, err = audit_cli(ws, repo, "HEAD~1..HEAD", "--sarif", str(tmp_path))
    assert code == 2 and "is a directory" in err and len(err.strip().splitlines()) == 1


def test_sarif_validates_against_the_2_1_0_schema(tmp_path: Path, ws: Path) -> None:
    import jsonschema

    repo = make_repo(tmp_path / "r")
    commit(repo, {"app/core.py": "def add(a, b):\n    pass\n\n\ndef sub(a, b):  # TODO\n    return a - b\n"},
           "Faster add (3.5x) in app/other.py; fixed the sum")
    sarif_path = tmp_path / "out.sarif"
    code, report, _ = audit_cli(ws, repo, "HEAD~1..HEAD", "--sarif", str(sarif_path))
    assert code == 1
    assert {"empty_body", "placeholder", "claim_file", "claim_figure"} <= set(checks_of(report))
    doc = json.loads(sarif_path.read_text())
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft4Validator.check_schema(schema)
    errors = list(jsonschema.Draft4Validator(schema).iter_errors(doc))
    assert not errors, [e.message for e in errors[:5]]
    results = doc["runs"][0]["results"]
    assert len(results) == len(report["findings"])
    located = [r for r in results if r["ruleId"] == "placeholder"][0]
    assert located["level"] == "error"
    assert located["locations"][0]["physicalLocation"]["region"]["startLine"] == 5


# ----------------------------------------------------------------------------------- recurrence


def test_recurrence_informs_at_two_ranges_and_blocks_at_five(tmp_path: Path, ws: Path) -> None:
    """A warn-level finding ('stub' in non-test code) in distinct ranges: 2 -> info, 3-4 -> warn, 5 -> block."""
    repo = make_repo(tmp_path / "r")
    levels = []
    for i in range(5):
        commit(repo, {f"app/mod{i}.py": f"def f{i}():\n    return {i}  # stub value for now\n"}, f"Add f{i}")
        code, report, err = audit_cli(ws, repo, "HEAD~1..HEAD")
        rec = [f for f in report["findings"] if f["check"] == "recurrence"]
        levels.append((code, rec[0]["severity"] if rec else None))
    assert levels == [(0, None), (0, "info"), (0, "warn"), (0, "warn"), (1, "block")], levels
    # auditing the same range again is not a new sighting
    code, report, _ = audit_cli(ws, repo, "HEAD~1..HEAD")
    assert next(f for f in report["findings"] if f["check"] == "recurrence")["severity"] == "block"
    lessons = [json.loads(x) for x in (ws / "_kb" / "audit_lessons.jsonl").read_text().splitlines()]
    assert len({x["range"] for x in lessons}) == 5 and len({x["signature"] for x in lessons}) == 1


def test_recurrence_thresholds_come_from_settings(tmp_path: Path, ws: Path) -> None:
    repo = make_repo(tmp_path / "r")
    toml = "[audit]\ninfo_at = 1\nwarn_at = 1\nblock_at = 2\n"
    codes = []
    for i in range(2):
        commit(repo, {f"app/m{i}.py": f"X = {i}  # placeholder\n"}, f"Add m{i}")
        codes.append(audit_cli(ws, repo, "HEAD~1..HEAD", toml=toml)[0])
    assert codes == [0, 1]


# ------------------------------------------------------------------------------------ evidence


def test_each_run_is_an_audits_row_that_run_collects_and_scores(tmp_path: Path, ws: Path) -> None:
    repo = make_repo(tmp_path / "r")
    commit(repo, {"app/core.rs": "todo!()\n"}, "Add app/core.rs")
    audit_cli(ws, repo, "HEAD~1..HEAD")
    rows = [json.loads(x) for x in (ws / "_kb" / "audits.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["severity"] == "critical" and rows[0]["resolution"] == "open"
    done = run_cli([*DISTILL, "run", "--root", str(ws), "--no-index", "--json"])
    assert done.returncode == 0, done.stderr
    assert not (ws / "exports" / "quarantine" / "collect.jsonl").read_text()
    assert not (ws / "exports" / "quarantine" / "score.jsonl").read_text()
    scored = [json.loads(x) for p in (ws / "scored-runs").rglob("audits.jsonl") for x in p.read_text().splitlines()]
    assert len(scored) == 1 and scored[0]["category"] == "needs_human_review"  # open: judged once it is resolved
    assert "audit_lessons" not in done.stdout + done.stderr  # the auditor's memory is not an unread stream


def test_no_record_writes_nothing(tmp_path: Path, ws: Path) -> None:
    repo = make_repo(tmp_path / "r")
    commit(repo, {"app/core.rs": "todo!()\n"}, "x")
    code, _, _ = audit_cli(ws, repo, "HEAD~1..HEAD", "--no-record")
    assert code == 1 and not (ws / "_kb" / "audits.jsonl").exists() and not (ws / "_kb" / "audit_lessons.jsonl").exists()


def test_a_check_without_recording_needs_no_workspace(tmp_path: Path) -> None:
    """A CI job audits its own repository, which is no distill workspace: with --no-record nothing
    goes to _kb/, so none is needed (it was "not a workspace (no _kb/ directory)", exit 2)."""
    repo = make_repo(tmp_path / "r")
    commit(repo, {"app/core.rs": "fn load() -> u32 {\n    todo!()\n}\n"}, "Add the loader in app/core.rs")
    code, report, err = audit_cli(repo, repo, "HEAD~1..HEAD", "--no-record")
    assert code == 1 and report["verdict"] == "block" and "placeholder" in checks_of(report), err
    assert not (repo / "_kb").exists() and not (repo / "reports").exists()
    code, _, err = audit_cli(repo, repo, "HEAD~1..HEAD")  # recording still needs one
    assert code == 2 and "not a workspace (no _kb/ directory)" in err


@pytest.mark.parametrize("case", ["not_a_repo", "bad_range", "unknown_rev", "missing_message_file", "endless_message_file",
                                  "utf16_message_file"])
def test_usage_errors_are_one_line_exit_2(tmp_path: Path, ws: Path, case: str) -> None:
    repo = make_repo(tmp_path / "r")
    args = {"not_a_repo": (tmp_path, "HEAD~1..HEAD"), "bad_range": (repo, "HEAD"), "unknown_rev": (repo, "nope..HEAD"),
            "missing_message_file": (repo, "HEAD..HEAD"), "endless_message_file": (repo, "HEAD..HEAD"),
            "utf16_message_file": (repo, "HEAD..HEAD")}[case]
    # UTF-16 (PowerShell's `>`): decoded leniently it read as a body with no claims, and the audit passed
    (tmp_path / "body16.md").write_bytes("Makes collect 40% faster (benchmarks/results/x.json).\n".encode("utf-16"))
    # /dev/zero: the file was read whole, so the audit filled memory until it was killed
    extra = {"missing_message_file": ["--message-file", str(tmp_path / "missing.md")],
             "endless_message_file": ["--message-file", "/dev/zero"],
             "utf16_message_file": ["--message-file", str(tmp_path / "body16.md")]}.get(case, [])
    done = run_cli([*DISTILL, "audit", "--root", str(ws), "--repo", str(args[0]), "--range", args[1], *extra])
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    if case == "utf16_message_file":
        assert "UTF-16" in done.stderr


def test_message_file_replaces_the_commit_messages(tmp_path: Path, ws: Path) -> None:
    repo = make_repo(tmp_path / "r")
    commit(repo, {"app/core.py": "def add(a, b):\n    return a + b  # ok\n"}, "Touch app/core.py")
    body = tmp_path / "pr.md"
    body.write_text("## Summary\n- Also rewrites tests/test_core.py\n")
    code, report, _ = audit_cli(ws, repo, "HEAD~1..HEAD", "--message-file", str(body))
    assert code == 1 and [c["value"] for c in report["claims"]] == ["tests/test_core.py"]


def test_a_pull_request_range_is_audited_from_the_merge_base(tmp_path: Path) -> None:
    """`BASE...HEAD` (how GitHub compares a pull request) was refused as "not BASE..HEAD"; `main`
    gaining commits after the branch forked must not put them into the audited change."""
    from audit.gitrange import read_change

    repo = make_repo(tmp_path / "r")
    git(repo, "checkout", "-q", "-b", "feature")
    commit(repo, {"app/feature.py": "X = 1\n"}, "Add app/feature.py")
    git(repo, "checkout", "-q", "main")
    commit(repo, {"app/later.py": "Y = 2\n"}, "Add app/later.py on main")
    pr = read_change(repo, "main...feature")
    assert pr.messages == ["Add app/feature.py"] and "app/feature.py" in pr.diff and "app/later.py" not in pr.diff
    two_dot = read_change(repo, "main..feature")  # the plain range diffs the tips: main's new file shows as removed
    assert two_dot.messages == ["Add app/feature.py"] and "app/later.py" in two_dot.diff
    git(repo, "checkout", "-q", "--orphan", "island")
    commit(repo, {"other.txt": "z\n"}, "unrelated")
    with pytest.raises(UsageError, match="share no history"):
        read_change(repo, "main...island")
    # a side that names no commit is named (git's --quiet said only "exit 1"); one that starts with
    # `-` would be read by git as an option (`--all` lists every ref)
    for bad, rev in [("nonsense..main", "'nonsense'"), ("main..HEAD~9", "'HEAD~9'"), ("--all..main", "'--all'"),
                     ("main...-q", "'-q'")]:
        with pytest.raises(UsageError, match=f"--range '{re.escape(bad)}': {re.escape(rev)} names no commit"):
            read_change(repo, bad)


def test_renames_mode_changes_and_unusual_names_are_files_the_change_touches(tmp_path: Path) -> None:
    """A pure rename and a mode change have no ---/+++ lines, and git quotes (and octal-escapes)
    unusual names: the claims naming them were blocked as "the change does not touch" the file."""
    from audit.checks import claim_findings
    from audit.gitrange import files_at, read_change

    repo = make_repo(tmp_path / "r")
    commit(repo, {"app/helpers.py": "def f():\n    return 1\n", "q.sql": "SELECT 1;\n-- note\n"}, "Add app/helpers.py")
    git(repo, "mv", "app/helpers.py", "app/util.py")
    (repo / "app" / "__init__.py").chmod(0o755)
    (repo / "q.sql").write_text("SELECT 1;\n")  # the removed line '-- note' is '--- note' in the diff
    (repo / "docs").mkdir()
    (repo / "docs" / "caf\u00e9 notes.py").write_text("X = 1\n")
    (repo / "tab\tname.py").write_text("Y = 2\n")
    message = "Rename app/helpers.py to app/util.py, make app/__init__.py executable, trim q.sql, add docs/caf\u00e9 notes.py"
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    change = read_change(repo, "HEAD~1..HEAD")
    files = {f.path: f for f in parse_diff(change.diff)}
    assert set(files) == {"app/util.py", "app/__init__.py", "q.sql", "docs/caf\u00e9 notes.py", "tab\tname.py"}
    assert files["app/util.py"].old_path == "app/helpers.py" and not files["app/util.py"].added
    assert files["q.sql"].removed == ["-- note"] and not files["q.sql"].deleted
    assert [a.text for a in files["tab\tname.py"].added] == ["Y = 2"]
    repo_files = set(files_at(repo, change.head)) | set(files_at(repo, change.base))
    assert "docs/caf\u00e9 notes.py" in repo_files
    claims = parse_claims(message)
    assert {c.value for c in claims if c.kind is ClaimKind.FILE} >= {"app/helpers.py", "app/util.py", "app/__init__.py", "q.sql"}
    assert claim_findings(claims, list(files.values()), None, repo_files) == []


def test_the_repository_s_diff_prefix_setting_does_not_change_the_files_a_change_touches(tmp_path: Path) -> None:
    """With `diff.noprefix` set in the audited repository, git printed paths without `a/` and `b/`:
    a file under a folder named `b` lost its folder and a new empty file (no ---/+++ lines) was no
    file at all. The audit asks git for the default prefixes."""
    from audit.gitrange import read_change

    repo = make_repo(tmp_path / "r")
    (repo / "b").mkdir()
    (repo / "b" / "notes.py").write_text("Z = 3\n")
    (repo / "app" / "empty.py").write_text("")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "Add b/notes.py and app/empty.py")
    touched = {f.path for f in parse_diff(read_change(repo, "HEAD~1..HEAD").diff)}
    assert touched == {"b/notes.py", "app/empty.py"}
    git(repo, "config", "diff.noprefix", "true")
    assert {f.path for f in parse_diff(read_change(repo, "HEAD~1..HEAD").diff)} == touched
    git(repo, "config", "--unset", "diff.noprefix")
    git(repo, "config", "diff.mnemonicPrefix", "true")
    assert {f.path for f in parse_diff(read_change(repo, "HEAD~1..HEAD").diff)} == touched


def test_a_lower_case_name_is_not_a_placeholder_but_a_marker_in_a_comment_is() -> None:
    """`part.todo = ...` (a byte count named todo) blocked a commit of this repository as five TODOs:
    the patterns match case-insensitively. In code a bare word counts in capitals or in a comment."""
    lines = ["    todo: int = 0  # bytes left", "    part.todo = end - start", "weights = [p.todo for p in parts]",
             "todo_items.append(x)", "x = 1  # todo: handle the empty case", "y = 2  # TODO", "    FIXME = None",
             "    raise NotImplementedError", "let v = todo!();", "i--; // fixme later", "SELECT 1 -- todo", " * todo: doc"]
    body = "".join(f"+{ln}\n" for ln in lines)
    diff = (f"diff --git a/app/x.py b/app/x.py\n--- a/app/x.py\n+++ b/app/x.py\n@@ -0,0 +1,{len(lines)} @@\n{body}"
            f"diff --git a/q.sql b/q.sql\n--- a/q.sql\n+++ b/q.sql\n@@ -0,0 +1 @@\n+SELECT todo FROM t -- todo\n")
    found = placeholder_findings(parse_diff(diff), Settings().gate.placeholder_patterns)
    assert [(f.path, f.line) for f in found if f.check == "placeholder"] == [
        ("app/x.py", n) for n in (5, 6, 7, 8, 9, 10, 12)] + [("q.sql", 1)]  # 11: `--` is no comment in Python
    # an exception name is a stub where raised, not where a test expects it or a caller catches it (sympy's tests)
    mentions = ["    raises(NotImplementedError, lambda: solve(x))", "    except NotImplementedError:",
                "        raise NotImplementedError('later')", "    throw new NotImplementedError();"]
    body = "".join(f"+{ln}\n" for ln in mentions)
    found = placeholder_findings(parse_diff(f"diff --git a/tests/test_y.py b/tests/test_y.py\n--- a/tests/test_y.py\n"
                                            f"+++ b/tests/test_y.py\n@@ -0,0 +1,4 @@\n{body}"),
                                 Settings().gate.placeholder_patterns)
    assert [f.line for f in found if f.check == "placeholder"] == [3, 4]


def test_a_hash_inside_a_python_string_that_ends_on_the_line_opens_no_comment() -> None:
    """A `#` inside a docstring that closes on the line read as a comment opener (the same-line
    quote heuristic sees no quote before it), so `part.todo` after it was blocked as a TODO. In a
    Python file the tokenizer's strings decide; a real comment on such a line still counts."""
    source = 'def f(part):\n    """Sizes.\n    # heading""" ; part.todo = 3\n    x = """a""" # todo: later\n'
    lines = source.splitlines()
    body = "".join(f"+{ln}\n" for ln in lines)
    diff = f"diff --git a/app/x.py b/app/x.py\n--- a/app/x.py\n+++ b/app/x.py\n@@ -0,0 +1,{len(lines)} @@\n{body}"
    found = placeholder_findings(parse_diff(diff), Settings().gate.placeholder_patterns, {"app/x.py": source})
    assert [f.line for f in found if f.check == "placeholder"] == [4]


def test_a_fix_of_a_test_may_change_only_tests_and_a_fix_of_code_may_not() -> None:
    """"Fix the flaky login test in tests/test_auth.py" with only that test changed was blocked as
    "claims a fix with no code change"; "Fixed the retry loop" with only tests changed still is."""
    from audit.checks import claim_findings

    only_tests = parse_diff("diff --git a/tests/test_auth.py b/tests/test_auth.py\n--- a/tests/test_auth.py\n"
                            "+++ b/tests/test_auth.py\n@@ -1,2 +1,2 @@\n def test_a():\n-    assert True\n+    assert 1 == 1\n")
    for message, blocked in [("Fix the flaky login test in tests/test_auth.py.", False), ("Fixes flaky CI.", False),
                             ("Fixed the retry loop in the client.", True), ("Resolves the crash on empty input.", True)]:
        claims = [c for c in parse_claims(message) if c.kind is ClaimKind.FIXED]
        assert claims, message
        found = [f.check for f in claim_findings(claims, only_tests, None)]
        assert (found == ["claim_fixed"]) is blocked, (message, found)


def test_diff_lines_that_look_like_headers_are_counted_by_their_hunk() -> None:
    diff = ("diff --git a/q.sql b/q.sql\n--- a/q.sql\n+++ b/q.sql\n@@ -1,3 +1,3 @@\n SELECT 1;\n--- old\n+++ new\n"
            " SELECT 2;\n\\ No newline at end of file\n--- a/x.py\n+++ b/x.py\n@@ -1 +1,2 @@\n-a\n+b\n+c\n")
    files = parse_diff(diff)  # the second file has no `diff --git` line: its ---/+++ come after the hunk is done
    assert [(f.path, [a.text for a in f.added], f.removed) for f in files] == [
        ("q.sql", ["++ new"], ["-- old"]), ("x.py", ["b", "c"], ["a"])]


# ------------------------------------------------------------------------------- pure functions


def test_claims_are_parsed_from_prose() -> None:
    claims = parse_claims("Speed up export by 3.4x; 12 tests pass.\n- Touches distill/secrets.py\nAll tests pass. "
                          "Fixed the retry loop. p95 is 120 ms")
    kinds = {(c.kind, c.value) for c in claims}
    assert {(ClaimKind.FIGURE, "3.4x"), (ClaimKind.TEST_COUNT, "12"), (ClaimKind.FILE, "distill/secrets.py"),
            (ClaimKind.ALL_TESTS, "all"), (ClaimKind.FIXED, "the retry loop"), (ClaimKind.FIGURE, "120ms")} <= kinds


def test_a_test_count_with_a_thousands_separator_is_read_whole() -> None:
    """"1,234 tests pass" was read as 234, and blocked against a runner that passed 1234."""
    counts = lambda text: [c.value for c in parse_claims(text) if c.kind is ClaimKind.TEST_COUNT]  # noqa: E731
    assert counts("All 1,234 tests pass.") == ["1234"] and counts("1,234 passed") == ["1234"]
    assert counts("12 tests pass") == ["12"] and counts("v1.12 tests pass") == []
    assert read_counts("Tests:       3 failed, 1,234 passed, 1,237 total")[1:] == (1234, 3)  # the runner's side too


def test_placeholders_use_the_gate_patterns_and_skip_abstract_methods() -> None:
    diff = ("diff --git a/app/x.py b/app/x.py\n--- a/app/x.py\n+++ b/app/x.py\n@@ -0,0 +1,9 @@\n"
            "+class A:\n+    @abstractmethod\n+    def run(self):\n+        ...\n+\n+    def go(self):\n+        pass\n+\n+QQQ = 1\n")
    files = parse_diff(diff)
    found = placeholder_findings(files, [r"\bQQQ\b"])
    assert sorted((f.check, f.line) for f in found) == [("empty_body", 6), ("placeholder", 9)]
    assert is_test_path("tests/test_x.py") and is_test_path("web/a.spec.ts") and not is_test_path("app/contest.py")


def test_a_count_of_thousands_of_digits_is_a_finding_not_a_crash(tmp_path: Path, ws: Path) -> None:
    """int() refuses over 4,300 digits: "999...9 tests pass" in a commit message ended the audit in
    a traceback once a test command was configured; so did such a count in the runner's output."""
    huge = "9" * 5000
    assert read_counts(f"===== {huge} passed in 1s =====")[1] is None  # no count to read
    assert read_counts(f"===== {huge} failed, 3 passed =====")[1:] == (3, 1)  # failures all the same
    assert len(read_counts(f"===== {huge} passed =====")[0]) < 400  # quoted briefly
    repo = make_repo(tmp_path / "r", n_tests=3)
    commit(repo, {"app/core.py": "def add(a, b):\n    return a + b  # same\n"}, f"Tidy app/core.py; {huge} tests pass")
    toml = f'[audit]\ntest_command = "{sys.executable} -m pytest -q -p no:cacheprovider tests"\ntest_timeout_s = 120\n'
    code, report, err = audit_cli(ws, repo, "HEAD~1..HEAD", toml=toml)
    hit = next(f for f in report["findings"] if f["check"] == "claim_tests")
    assert code == 1 and hit["severity"] == "block" and "3 passed" in hit["found"], (report, err)
    assert len(hit["title"]) < 200


def test_test_runner_closing_lines() -> None:
    assert read_counts("..\n===== 10 passed, 1 warning in 0.1s =====\n")[1:] == (10, 0)
    assert read_counts("===== 2 failed, 8 passed in 1s =====")[1:] == (8, 2)
    assert read_counts("Ran 7 tests in 0.01s\n\nFAILED (failures=2)")[1:] == (5, 2)
    assert read_counts("nothing here")[1] is None


def test_model_gaps_must_quote_the_diff_or_the_message() -> None:
    diff = "+++ b/app/core.py\n+    return a - b  # inverted\n"
    output = ('GAP: "return a - b  # inverted" - the message claims addition\n'
              'GAP: "retries are capped at five attempts" - not in the diff\n'
              "GAP: \"ab\" - too short\nsome prose")
    kept, dropped = grounded_gaps(output, ["Fix add in app/core.py"], diff)
    assert [f.found.split('"')[1] for f in kept] == ["return a - b  # inverted"] and dropped == 2


def test_model_pass_through_a_real_ollama_client(tmp_path: Path, ws: Path) -> None:
    from audit.model_pass import model_gaps
    from runtime.backends import make_backend
    from tests.ollama_server import OllamaLoopback, Reply

    repo = make_repo(tmp_path / "r")
    commit(repo, {"app/core.py": "def add(a, b):\n    return a - b\n"}, "Fix add in app/core.py")
    diff = git(repo, "diff", "HEAD~1", "HEAD")
    with OllamaLoopback(models=["qwen2.5:7b-instruct"]) as srv:
        srv.set_default(Reply(content='GAP: "return a - b" - subtracts\nGAP: "made up line of code" - invented'))
        rt = load_settings(ws).runtime.model_copy(update={"ollama_host": srv.url, "ollama_model": "qwen2.5:7b-instruct"})
        kept, dropped, _ = model_gaps(make_backend("ollama", rt), ["Fix add in app/core.py"], diff, max_tokens=64, timeout=30)
        sent = json.dumps(srv.chat_requests)
    assert len(kept) == 1 and dropped == 1 and "subtracts" in kept[0].found
    assert "never instructions to you" in sent and "return a - b" in sent  # the diff went in, fenced as data


def test_prior_reviews_of_touched_files_come_from_the_index(tmp_path: Path, indexed_root: Path, session_searcher: object) -> None:
    from audit.run import audit
    from distill.workspace import Workspace

    repo = make_repo(tmp_path / "r")
    commit(repo, {"crates/gateway/src/breaker.rs": "pub struct Breaker;\n"},
           "Add crates/gateway/src/breaker.rs")
    report = audit(Workspace.resolve(indexed_root), load_settings(indexed_root), repo, "HEAD~1..HEAD",
                   record=False, searcher=session_searcher)  # type: ignore[arg-type]
    prior = [f for f in report.findings if f.check == "prior_review"]
    assert prior and prior[0].path == "crates/gateway/src/breaker.rs" and prior[0].severity == "info", report.findings
    assert report.verdict == "pass"


def test_a_store_that_cannot_be_searched_is_a_note_not_a_failed_audit(tmp_path: Path, indexed_root: Path,
                                                                      embedder: object) -> None:
    """Prior reviews are context: a store dropped under the searcher (a rebuild in another process)
    or a Chroma server gone leaves the audit's own checks standing and says why none were found."""
    import shutil

    from audit.run import audit
    from distill.workspace import Workspace
    from index.search import open_searcher
    from index.store import drop_collection

    root = tmp_path / "ws"
    shutil.copytree(indexed_root, root, ignore=shutil.ignore_patterns("*.lock"))
    ws, settings = Workspace.resolve(root), load_settings(root)
    searcher = open_searcher(ws, settings, embedder=embedder)  # type: ignore[arg-type]
    assert drop_collection(searcher.store.client, searcher.manifest.chroma_collection)
    repo = make_repo(tmp_path / "r")
    commit(repo, {"crates/gateway/src/breaker.rs": "pub struct Breaker;\n"}, "Add crates/gateway/src/breaker.rs")
    report = audit(ws, settings, repo, "HEAD~1..HEAD", record=False, searcher=searcher)
    assert not [f for f in report.findings if f.check == "prior_review"] and report.verdict == "pass"
    assert any("prior reviews not searched from crates/gateway/src/breaker.rs on" in n and "could not be searched" in n
               for n in report.notes), report.notes


def test_unordered_recurrence_thresholds_are_refused(tmp_path: Path, ws: Path) -> None:
    (ws / "distill.toml").write_text("[audit]\ninfo_at = 4\nwarn_at = 3\n")
    done = run_cli([*DISTILL, "audit", "--root", str(ws), "--repo", str(tmp_path), "--range", "a..b"])
    assert done.returncode == 2 and "info_at" in done.stderr and "Traceback" not in done.stderr


def test_a_hanging_test_command_is_stopped_with_its_children(tmp_path: Path) -> None:
    import os
    import time

    from audit.testrun import run_tests

    marker = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(marker)!r}, 'w').write(str(p.pid)); print('1 passed', flush=True); time.sleep(60)")
    t0 = time.monotonic()
    run = run_tests(f'{sys.executable} -c "{script}"', tmp_path, 1.5)
    assert run.timed_out and run.exit_code is None and time.monotonic() - t0 < 20
    child = int(marker.read_text())
    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the test command's child outlived the timeout")
