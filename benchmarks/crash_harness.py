"""Crash-safety harness (docs/DESIGN.md, invariant 6): SIGKILL `distill export all`, `replay` and `distill
score` at random points, resume, and check nothing was lost, duplicated or left torn.

Export trials: a small workspace built from data/sample (collect + score once). A reference
`distill export all` runs uninterrupted. Then chains of runs on fresh copies: each run is killed
with SIGKILL after a random delay (uniform over the measured duration of a run, less the interpreter
start-up where nothing is written); after each kill
every append-only export file must be a byte prefix of the reference file (a torn tail is allowed
only as a prefix of the next reference line), and every whole-file output must be complete
(every line terminated and parseable). The chain ends with a run that completes; the export tree
must then be byte-identical to the reference (lock files and hidden temp files aside; the temp
files and scratch folders left anywhere in the workspace after it are counted and reported).

Replay trials: a loopback Ollama server (tests/ollama_server.py) is started in this process and
answers deterministically per task (some answers are hundreds of KB long, so a kill can land inside
the log append). A reference batch runs uninterrupted. Chains of killed batches follow; each
resume replays only the tasks that are not yet in the log as whole lines. After each kill the
log's whole lines must be the earlier whole lines plus new whole ReplayRun rows, task ids unique.
At the end every task is logged exactly once, no torn tail remains, the rows equal the
reference rows apart from per-run volatile fields (run id, wall-clock times, latencies), and
`distill collect` takes every row as evidence with nothing quarantined.

Score trials: a synthetic workspace (data/sample/generate.py) is collected and scored, grown by
10 % and collected again; a reference `distill score` runs uninterrupted (and a twin must give
the same bytes). Chains of killed scores follow on fresh copies; after each kill every scored
partition and the score quarantine file must hold its old bytes, the uninterrupted run's, or (a
partition the run grows in place) the old bytes plus a prefix of the appended ones; the run that
completes must leave the reference's bytes.

Usage:
    python benchmarks/crash_harness.py                 # 60 export + 60 replay + 40 score trials
    python benchmarks/crash_harness.py --quick         # 6 + 6 + 6 trials (CI smoke / pytest)
    python benchmarks/crash_harness.py --export-trials 0 --replay-trials 0 --name crash_harness_score
    python benchmarks/crash_harness.py --export-trials 80 --replay-trials 80 --seed 7
Results: benchmarks/results/crash_harness[_quick].json and .md (unless --no-write).
Exit code 0 when every trial passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.report import bounded_int, cli, count, scaled_sources  # noqa: E402

SAMPLE_KB = REPO / "data" / "sample" / "_kb"
RESULTS = REPO / "benchmarks" / "results"
DISTILL = [sys.executable, "-c", "import sys; from distill.cli import main; sys.argv[0] = 'distill'; main()"]
REPLAY = [sys.executable, "-m", "runtime.cli"]
APPEND_ONLY = ("exports/rag/playbooks.jsonl", "exports/sft/instruction_response.jsonl",
               "exports/preference/chosen_rejected.jsonl")
MODEL = "qwen2.5:7b-instruct"
VOLATILE_RUN_FIELDS = ("run_id", "created_at", "timings_ms")


@dataclass
class TrialLog:
    kind: str
    chain: int
    delay_s: float
    killed: bool
    torn_tail_bytes: int = 0
    state: str = ""
    problems: list[str] = field(default_factory=list)


@dataclass
class Summary:
    kind: str
    trials: int = 0
    failures: int = 0
    chains: int = 0
    chain_failures: int = 0
    finished_before_kill: int = 0
    kills_with_torn_tail: int = 0
    kills_by_state: dict[str, int] = field(default_factory=dict)
    leftover_temp_files: int = 0
    torn_tail_trials: int = 0
    torn_tail_failures: int = 0
    reference_run_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    def record_kill(self, logs: list[TrialLog], chain: int, delay: float, torn: int, state: str,
                    problems: list[str], *, key: str | None = None) -> None:
        """One judged kill, counted under `key` (its state unless given) with its problems kept."""
        self.trials += 1
        counted = state if key is None else key
        self.kills_by_state[counted] = self.kills_by_state.get(counted, 0) + 1
        if torn:
            self.kills_with_torn_tail += 1
        if problems:
            self.failures += 1
            self.problems.extend(f"{self.kind} chain {chain}: {p}" for p in problems)
        logs.append(TrialLog(self.kind, chain, round(delay, 3), True, torn, state, problems))


# ------------------------------------------------------------------------------------ helpers

CODE = [REPO]  # where the CLI subprocesses import distill/index/runtime from (a snapshot during a run)


def snapshot_code(dest: Path) -> Path:
    """Copy the packages the CLIs import, so edits landing in the working tree during a long run
    cannot change the code between the reference run and the resumed runs it is compared with."""
    for pkg in ("distill", "index", "runtime"):
        shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(CODE[0]) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("DISTILL_ROOT", None)
    env["COLUMNS"] = "200"
    return env


def run_cli(cmd: list[str], *, check: bool = True, ok_codes: tuple[int, ...] = (0,)) -> tuple[int, float, str]:
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=CODE[0], env=_env(), capture_output=True, text=True, timeout=600)
    took = time.monotonic() - start
    if check and proc.returncode not in ok_codes:
        raise RuntimeError(f"{' '.join(cmd[-6:])} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc.returncode, took, proc.stdout + proc.stderr


def run_and_kill(cmd: list[str], delay: float) -> tuple[bool, int]:
    """Start cmd, SIGKILL it after `delay` seconds unless it finished. (killed?, returncode)."""
    proc = subprocess.Popen(cmd, cwd=CODE[0], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=delay)
        return False, proc.returncode
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return True, proc.returncode


def tree_bytes(base: Path) -> dict[str, bytes]:
    """Every file under base except lock files and hidden temp files (atomic_writer leftovers)."""
    out: dict[str, bytes] = {}
    if not base.is_dir():
        return out
    for p in sorted(base.rglob("*")):
        if p.is_file() and not p.name.endswith(".lock") and not p.name.startswith("."):
            out[p.relative_to(base).as_posix()] = p.read_bytes()
    return out


def temp_leftovers(base: Path) -> list[str]:
    """Hidden `.tmp` files and folders anywhere in the workspace: what a killed command wrote
    aside (an atomic write's temp, a staged export, a checkpoint's side file, a scratch folder)
    and the run that completed after it did not remove."""
    if not base.is_dir():
        return []
    return sorted(p.relative_to(base).as_posix() for p in base.rglob(".*.tmp"))


def torn_tail(data: bytes) -> int:
    if not data or data.endswith(b"\n"):
        return 0
    return len(data) - (data.rfind(b"\n") + 1)


def whole_lines_parse(data: bytes) -> str | None:
    """None when every line is terminated and is one JSON value, else the problem."""
    if torn_tail(data):
        return f"torn tail of {torn_tail(data)} bytes in a whole-file output"
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except ValueError:
            return f"line {n} is not JSON"
    return None


def diff_trees(got: dict[str, bytes], want: dict[str, bytes]) -> list[str]:
    problems = []
    for path in sorted(set(got) | set(want)):
        if path not in got:
            problems.append(f"missing {path}")
        elif path not in want:
            problems.append(f"unexpected {path}")
        elif got[path] != want[path]:
            problems.append(f"{path} differs ({len(got[path])} vs {len(want[path])} bytes)")
    return problems


def kill_chains(summary: Summary, logs: list[TrialLog], *, work: Path, base: Path, trials: int, rng: random.Random,
                max_kills_per_chain: int, durations: list[float], command: Callable[[Path], list[str]],
                after_kill: Callable[[Path], tuple[list[str], int, str]], after_resume: Callable[[Path], list[str]]) -> None:
    """Chains of killed runs on fresh copies of `base`, each ended by a run that completes: every
    kill is judged by `after_kill` (problems, torn tail bytes, state), every chain's last run by
    `after_resume` (its problems) and by the temporary files left in the workspace."""
    kind = summary.kind
    chain = 0
    while summary.trials < trials:
        chain += 1
        ws = work / f"{kind}-chain-{chain}"
        shutil.copytree(base, ws)
        kills = rng.randint(1, max_kills_per_chain)
        for _ in range(kills):
            if summary.trials >= trials:
                break
            est = sorted(durations)[len(durations) // 2]
            delay = rng.uniform(0.3 * est, est)  # the first 30% is interpreter start-up: nothing to break there
            killed, _code = run_and_kill(command(ws), delay)
            if not killed:
                summary.finished_before_kill += 1
                continue
            problems, torn, state = after_kill(ws)
            summary.record_kill(logs, chain, delay, torn, state, problems)
        code, took, out = run_cli(command(ws), check=False)
        durations.append(took)
        summary.chains += 1
        problems = [] if code == 0 else [f"resume run exited {code}: {out[-300:]}"]
        problems += after_resume(ws)
        summary.leftover_temp_files += len(temp_leftovers(ws))
        if problems:
            summary.chain_failures += 1
            summary.problems.extend(f"{kind} chain {chain} after resume: {p}" for p in problems)
        shutil.rmtree(ws, ignore_errors=True)


# ------------------------------------------------------------------------------------ export

def build_export_base(work: Path, rows_per_stream: int) -> Path:
    """A workspace with evidence and scored runs, no exports (collect + score once)."""
    base = work / "export-base"
    (base / "_kb").mkdir(parents=True)
    for f in sorted(SAMPLE_KB.glob("*.jsonl")):
        lines = f.read_bytes().splitlines(keepends=True)[:rows_per_stream]
        (base / "_kb" / f.name).write_bytes(b"".join(lines))
    run_cli([*DISTILL, "collect", "--root", str(base)])
    run_cli([*DISTILL, "score", "--root", str(base)])
    return base


def check_export_after_kill(ws: Path, ref: dict[str, bytes]) -> tuple[list[str], int, str]:
    """(problems, torn tail bytes, state) of an export tree after a SIGKILL."""
    problems: list[str] = []
    torn = 0
    state_parts = []
    for rel in APPEND_ONLY:
        p = ws / rel
        key = rel.removeprefix("exports/")
        if not p.exists():
            state_parts.append("-")
            continue
        data = p.read_bytes()
        torn += torn_tail(data)
        want = ref.get(key, b"")
        if want[: len(data)] != data:
            problems.append(f"{rel}: {len(data)} bytes are not a prefix of the uninterrupted export")
        state_parts.append("full" if data == want else ("torn" if torn_tail(data) else "part"))
    for rel, data in tree_bytes(ws / "exports").items():
        if f"exports/{rel}" in APPEND_ONLY or not rel.endswith(".jsonl"):
            continue
        why = whole_lines_parse(data)
        if why:
            problems.append(f"exports/{rel}: {why}")
    return problems, torn, "/".join(state_parts)


def export_trials(work: Path, trials: int, rows: int, rng: random.Random, max_kills_per_chain: int,
                  torn_n: int) -> tuple[Summary, list[TrialLog]]:
    summary = Summary(kind="export")
    logs: list[TrialLog] = []
    base = build_export_base(work, rows)
    ref_ws = work / "export-ref"
    shutil.copytree(base, ref_ws)
    _, took, _ = run_cli([*DISTILL, "export", "all", "--root", str(ref_ws)])
    ref = tree_bytes(ref_ws / "exports")
    # determinism of the reference itself: a second uninterrupted copy gives the same bytes
    twin = work / "export-twin"
    shutil.copytree(base, twin)
    _, took2, _ = run_cli([*DISTILL, "export", "all", "--root", str(twin)])
    twin_diff = diff_trees(tree_bytes(twin / "exports"), ref)
    if twin_diff:
        raise RuntimeError(f"two uninterrupted exports differ, the harness cannot judge crashes: {twin_diff}")
    durations = [took, took2]
    summary.reference_run_s = round(min(durations), 3)
    kill_chains(summary, logs, work=work, base=base, trials=trials, rng=rng, max_kills_per_chain=max_kills_per_chain,
                durations=durations, command=lambda ws: [*DISTILL, "export", "all", "--root", str(ws)],
                after_kill=lambda ws: check_export_after_kill(ws, ref),
                after_resume=lambda ws: diff_trees(tree_bytes(ws / "exports"), ref))
    for n in range(torn_n):
        # What a kill inside write() leaves: a complete export with its last line cut mid-way.
        ws = work / f"export-torn-{n}"
        shutil.copytree(ref_ws, ws)
        rel = APPEND_ONLY[n % len(APPEND_ONLY)]
        data = (ws / rel).read_bytes()
        last = data.rstrip(b"\n").rfind(b"\n") + 1
        cut = rng.randint(last + 1, len(data) - 1)
        (ws / rel).write_bytes(data[:cut])
        code, _, out = run_cli([*DISTILL, "export", "all", "--root", str(ws)], check=False)
        problems = [] if code == 0 else [f"run after a torn tail exited {code}: {out[-300:]}"]
        problems += diff_trees(tree_bytes(ws / "exports"), ref)
        summary.torn_tail_trials += 1
        if problems:
            summary.torn_tail_failures += 1
            summary.problems.extend(f"export torn tail {n} ({rel} cut at {cut}/{len(data)}): {p}" for p in problems)
        shutil.rmtree(ws, ignore_errors=True)
    return summary, logs


# ------------------------------------------------------------------------------------ score

SCORE_OUTPUTS = ("scored-runs", "exports/quarantine/score.jsonl")


def score_tree(ws: Path) -> dict[str, bytes]:
    """What `distill score` writes: the scored partitions and its quarantine file."""
    out = {f"scored-runs/{rel}": data for rel, data in tree_bytes(ws / "scored-runs").items()}
    quarantine = ws / SCORE_OUTPUTS[1]
    if quarantine.is_file():
        out[SCORE_OUTPUTS[1]] = quarantine.read_bytes()
    return out


def build_score_base(work: Path, rows: int) -> Path:
    """A synthetic workspace scored once, then grown by 10 % and collected: the next `distill
    score` appends to grown partitions in place, writes new ones and re-scores runs whose verdicts
    arrived late (rewritten whole)."""
    base, grown = work / "score-base", work / "score-grown"
    scaled_sources(base / "_kb", rows)
    run_cli([*DISTILL, "collect", "--root", str(base)])
    run_cli([*DISTILL, "score", "--root", str(base)])
    scaled_sources(grown / "_kb", rows + max(1, rows // 10))  # prefix-stable: the same rows, then more
    for src in (grown / "_kb").glob("*.jsonl"):
        shutil.copyfile(src, base / "_kb" / src.name)
    run_cli([*DISTILL, "collect", "--root", str(base)])
    return base


def check_score_after_kill(ws: Path, before: dict[str, bytes], ref: dict[str, bytes]) -> tuple[list[str], str]:
    """(problems, state) of the score outputs after a SIGKILL: each file is as it was, as the
    uninterrupted run left it, or, for a partition that run grew, its old bytes plus a prefix of
    the new ones (the in-place append; the next run cuts what its checkpoint does not hold)."""
    got = score_tree(ws)
    problems: list[str] = []
    states = {"old": 0, "new": 0, "growing": 0}
    for rel in sorted(set(got) | set(before) | set(ref)):
        data, old, new = got.get(rel), before.get(rel), ref.get(rel)
        if data is None:
            if old is not None:
                problems.append(f"{rel}: gone (it held {len(old)} bytes before the run)")
            continue
        if data == old:
            states["old"] += 1
        elif data == new:
            states["new"] += 1
        elif old is not None and new is not None and new.startswith(old) and new.startswith(data) and data.startswith(old):
            states["growing"] += 1
        else:
            problems.append(f"{rel}: {len(data)} bytes are neither its old bytes ({len(old or b'')}), the "
                            f"uninterrupted run's ({len(new or b'')}) nor the old plus a prefix of the appended")
    return problems, "/".join(f"{k} {v}" for k, v in states.items() if v)


def score_trials(work: Path, trials: int, rows: int, rng: random.Random,
                 max_kills_per_chain: int) -> tuple[Summary, list[TrialLog]]:
    summary = Summary(kind="score")
    logs: list[TrialLog] = []
    base = build_score_base(work, rows)
    before = score_tree(base)
    refs, durations = [], []
    for name in ("score-ref", "score-twin"):  # the reference, and a second uninterrupted run that must equal it
        ws = work / name
        shutil.copytree(base, ws)
        _, took, _ = run_cli([*DISTILL, "score", "--root", str(ws)])
        refs.append(score_tree(ws))
        durations.append(took)
    ref = refs[0]
    twin_diff = diff_trees(refs[1], ref)
    if twin_diff:
        raise RuntimeError(f"two uninterrupted scores differ, the harness cannot judge crashes: {twin_diff}")
    if ref == before:
        raise RuntimeError("the appended rows changed no scored file: nothing for a kill to break")
    summary.reference_run_s = round(min(durations), 3)

    def after_kill(ws: Path) -> tuple[list[str], int, str]:
        problems, state = check_score_after_kill(ws, before, ref)
        return problems, 0, state

    kill_chains(summary, logs, work=work, base=base, trials=trials, rng=rng, max_kills_per_chain=max_kills_per_chain,
                durations=durations, command=lambda ws: [*DISTILL, "score", "--root", str(ws)], after_kill=after_kill,
                after_resume=lambda ws: diff_trees(score_tree(ws), ref))
    return summary, logs


# ------------------------------------------------------------------------------------ replay

def reply_for(body: dict[str, Any]) -> Any:
    """Deterministic per task; every fourth task gets a long answer (a long append)."""
    from tests.ollama_server import Reply

    user = next((m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"), "")
    marker = user.split("#")[-1].split("<")[0].strip() if "#" in user else "0"
    n = int(marker) if marker.isdigit() else 0
    text = (f"Verify task {n}: the router falls back to openrouter when the provider times out; "
            f"check crates/gateway/src/router.rs handles task {n}. ")
    if n % 4 == 3:
        text = text * (1500 + 50 * n)  # ~250-350 KB: the logged line (answer kept twice) stays under 1 MiB
    return Reply(content=text, prompt_eval_count=100 + n, eval_count=20 + n)


def write_tasks(path: Path, ids: list[int]) -> None:
    path.write_text("".join(json.dumps({"task": f"Audit provider routing, task #{i}", "task_id": f"t{i}"}) + "\n"
                            for i in ids))


def logged_rows(log: Path) -> tuple[list[dict[str, Any]], bytes, int]:
    """(rows of whole lines, bytes of whole lines, torn tail bytes)."""
    if not log.exists():
        return [], b"", 0
    data = log.read_bytes()
    torn = torn_tail(data)
    whole = data[: len(data) - torn]
    rows = [json.loads(line) for line in whole.splitlines() if line.strip()]
    return rows, whole, torn


def normalise_run(row: dict[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in row.items() if k not in VOLATILE_RUN_FIELDS}
    row["attempts"] = [{k: v for k, v in a.items() if k != "latency_ms"} for a in row.get("attempts", [])]
    return row


def replay_cmd(root: Path, tasks: Path) -> list[str]:
    return [*REPLAY, "--root", str(root), "--tasks-file", str(tasks), "--backend", "ollama", "--no-retrieval", "--json"]


def check_replay_log(root: Path, ref: dict[str, dict[str, Any]], *, collect: bool) -> list[str]:
    """Final state of a resumed log: every task once, no torn tail, rows as in the reference,
    and (when `collect`) `distill collect` takes every row with nothing quarantined."""
    problems = []
    rows, _, torn = logged_rows(root / "_kb" / "replay_runs.jsonl")
    if torn:
        problems.append(f"torn tail of {torn} bytes left after the resumed run")
    got: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["task_id"] in got:
            problems.append(f"task {r['task_id']} logged twice")
        got[r["task_id"]] = normalise_run(r)
    if set(got) != set(ref):
        problems.append(f"logged tasks {len(got)} != {len(ref)}")
    else:
        problems.extend(f"task {t} differs from the uninterrupted run" for t in ref if got[t] != ref[t])
    if collect:
        code, _, out = run_cli([*DISTILL, "collect", "--root", str(root), "--json"], check=False)
        if code != 0:
            problems.append(f"collect exited {code}")
        else:
            src = json.loads(out[out.index("{"):]).get("by_source", {}).get("replay_runs", {})
            if src.get("written") != len(ref) or src.get("quarantined", 0) != 0:
                problems.append(f"collect over the log: {json.dumps(src)[:300]}")
    return problems


def replay_trials(work: Path, trials: int, n_tasks: int, rng: random.Random, max_kills_per_chain: int,
                  torn_n: int, collect_every: int) -> tuple[Summary, list[TrialLog]]:
    from distill.records.replay import ReplayRun
    from tests.ollama_server import OllamaLoopback

    summary = Summary(kind="replay")
    logs: list[TrialLog] = []
    with OllamaLoopback(models=[MODEL]) as srv:
        srv.set_default(reply_for)
        srv._server.handle_error = lambda request, address: None  # type: ignore[method-assign]  # killed clients
        config = f'[runtime]\nollama_host = "{srv.url}"\nollama_model = "{MODEL}"\ntimeout_s = 30\n'

        def fresh(name: str) -> Path:
            root = work / name
            (root / "_kb").mkdir(parents=True)
            (root / "distill.toml").write_text(config)
            return root

        all_ids = list(range(n_tasks))
        write_tasks(work / "tasks-one.jsonl", [0])
        _, startup, _ = run_cli(replay_cmd(fresh("replay-startup"), work / "tasks-one.jsonl"), ok_codes=(0, 1))
        ref_root = fresh("replay-ref")
        write_tasks(work / "tasks-all.jsonl", all_ids)
        _, took, _ = run_cli(replay_cmd(ref_root, work / "tasks-all.jsonl"), ok_codes=(0, 1))
        ref_rows, _, _ = logged_rows(ref_root / "_kb" / "replay_runs.jsonl")
        ref = {r["task_id"]: normalise_run(r) for r in ref_rows}
        if len(ref) != n_tasks:
            raise RuntimeError(f"reference replay logged {len(ref)} of {n_tasks} tasks")
        summary.reference_run_s = round(took, 3)
        per_task = max(0.01, (took - startup) / max(1, n_tasks - 1))
        chain = 0
        while summary.trials < trials:
            chain += 1
            root = fresh(f"replay-chain-{chain}")
            log = root / "_kb" / "replay_runs.jsonl"
            kills = rng.randint(1, max_kills_per_chain)
            kill_no = 0
            resume_failed = False
            while True:
                before_rows, before_whole, _ = logged_rows(log)
                done = {r["task_id"] for r in before_rows}
                remaining = [i for i in all_ids if f"t{i}" not in done]
                if not remaining:
                    break
                tasks = root / f"tasks-{kill_no}.jsonl"
                write_tasks(tasks, remaining)
                cmd = replay_cmd(root, tasks)
                if kill_no < kills and summary.trials < trials:
                    kill_no += 1
                    est = startup + per_task * (len(remaining) - 1)
                    delay = rng.uniform(0.7 * startup, est)  # skip most of the start-up, where nothing is written
                    killed, _ = run_and_kill(cmd, delay)
                    if not killed:
                        summary.finished_before_kill += 1
                        continue
                    problems: list[str] = []
                    rows, whole, torn = logged_rows(log)
                    if not whole.startswith(before_whole):
                        problems.append("whole lines written before the killed run changed")
                    ids = [r.get("task_id") for r in rows]
                    if len(ids) != len(set(ids)):
                        problems.append("a task is logged twice")
                    for r in rows[len(before_rows):]:
                        try:
                            ReplayRun.model_validate(r)
                        except ValueError as exc:
                            problems.append(f"a logged row is not a ReplayRun: {str(exc)[:120]}")
                    state = f"+{len(rows) - len(before_rows)} rows" + (", torn tail" if torn else "")
                    key = "torn tail" if torn else ("new rows" if len(rows) > len(before_rows) else "no new rows")
                    summary.record_kill(logs, chain, delay, torn, state, problems, key=key)
                else:
                    code, _, out = run_cli(cmd, check=False)
                    if code not in (0, 1):
                        summary.problems.append(f"replay chain {chain}: resume exited {code}: {out[-300:]}")
                        resume_failed = True
                        break
            summary.chains += 1
            last = summary.trials >= trials
            problems = ["resume failed"] if resume_failed else []
            problems += check_replay_log(root, ref, collect=last or chain % collect_every == 0)
            summary.leftover_temp_files += len(temp_leftovers(root))
            if problems:
                summary.chain_failures += 1
                summary.problems.extend(f"replay chain {chain} after resume: {p}" for p in problems)
            shutil.rmtree(root, ignore_errors=True)
        for n in range(torn_n):
            # What a kill inside the log append leaves: whole lines, then part of one more.
            root = fresh(f"replay-torn-{n}")
            log = root / "_kb" / "replay_runs.jsonl"
            data = (ref_root / "_kb" / "replay_runs.jsonl").read_bytes()
            lines = data.splitlines(keepends=True)
            keep = rng.randint(0, len(lines) - 1)
            head = b"".join(lines[:keep])
            cut = rng.randint(1, len(lines[keep]) - 2)
            log.write_bytes(head + lines[keep][:cut])
            code, _, _ = run_cli([*DISTILL, "collect", "--root", str(root), "--json"], check=False)
            torn_seen = code == 0 and (root / "exports" / "quarantine" / "collect.jsonl").read_bytes().count(b"torn_line") == 1
            done = {json.loads(line)["task_id"] for line in lines[:keep]}
            tasks = root / "tasks-rest.jsonl"
            write_tasks(tasks, [i for i in all_ids if f"t{i}" not in done])
            code, _, out = run_cli(replay_cmd(root, tasks), check=False)
            problems = [] if code in (0, 1) else [f"replay after a torn tail exited {code}: {out[-300:]}"]
            if not torn_seen:
                problems.append("collect did not quarantine the torn last line as torn_line")
            if not log.read_bytes().startswith(head):
                problems.append("whole lines before the torn tail changed")
            problems += check_replay_log(root, ref, collect=False)
            summary.torn_tail_trials += 1
            if problems:
                summary.torn_tail_failures += 1
                summary.problems.extend(f"replay torn tail {n} (line {keep + 1} cut at {cut}): {p}" for p in problems)
            shutil.rmtree(root, ignore_errors=True)
    return summary, logs


# ------------------------------------------------------------------------------------ main

def run(export_n: int, replay_n: int, *, seed: int, rows: int, n_tasks: int, max_kills: int,
        torn_n: int = 0, collect_every: int = 1, workdir: Path | None = None, score_n: int = 0,
        score_rows: int = 3000) -> dict[str, Any]:
    rng = random.Random(seed)
    start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="distill-crash-", dir=workdir))
    CODE[0] = snapshot_code(tmp / "code")
    try:
        summaries: list[Summary] = []
        logs: list[TrialLog] = []
        if export_n:
            s, lg = export_trials(tmp, export_n, rows, rng, max_kills, torn_n)
            summaries.append(s)
            logs += lg
        if replay_n:
            s, lg = replay_trials(tmp, replay_n, n_tasks, rng, max_kills, torn_n, collect_every)
            summaries.append(s)
            logs += lg
        if score_n:
            s, lg = score_trials(tmp, score_n, score_rows, rng, max_kills)
            summaries.append(s)
            logs += lg
    finally:
        CODE[0] = REPO
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "seed": seed,
        "rows_per_stream": rows,
        "replay_tasks": n_tasks,
        "score_rows": score_rows if score_n else None,
        "trials": sum(s.trials for s in summaries),
        "failures": sum(s.failures + s.chain_failures + s.torn_tail_failures for s in summaries),
        "torn_tail_trials": sum(s.torn_tail_trials for s in summaries),
        "wall_s": round(time.monotonic() - start, 1),
        "suites": [asdict(s) for s in summaries],
        "trial_log": [asdict(t) for t in logs],
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Crash harness (SIGKILL at random points)",
        "",
        f"seed {result['seed']} · {result['trials']} SIGKILL trials + {result['torn_tail_trials']} simulated torn tails · "
        f"**{result['failures']} failures** · "
        f"{result['wall_s']} s wall",
        "",
        "| suite | kill trials | failures | chains (resume checks) | chain failures | finished before kill | "
        "kills leaving a torn tail | simulated torn tails (failures) | leftover temp files | uninterrupted run (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in result["suites"]:
        lines.append(
            f"| {s['kind']} | {s['trials']} | {s['failures']} | {s['chains']} | {s['chain_failures']} | "
            f"{s['finished_before_kill']} | {s['kills_with_torn_tail']} | {s['torn_tail_trials']} ({s['torn_tail_failures']}) | "
            f"{s['leftover_temp_files']} | "
            f"{s['reference_run_s']} |"
        )
    lines.append("")
    for s in result["suites"]:
        states = ", ".join(f"{k}: {v}" for k, v in sorted(s["kills_by_state"].items()))
        lines.append(f"- {s['kind']} state at kill time: {states}")
    problems = [p for s in result["suites"] for p in s["problems"]]
    lines += ["", "## Problems", ""] + ([f"- {p}" for p in problems] or ["none"])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="6 export + 6 replay kill trials on a smaller workspace")
    ap.add_argument("--export-trials", type=bounded_int(0), default=None)
    ap.add_argument("--replay-trials", type=bounded_int(0), default=None)
    ap.add_argument("--score-trials", type=bounded_int(0), default=None)
    ap.add_argument("--score-rows", type=count, default=None, help="synthetic source rows in the score workspace (then +10 %%)")
    ap.add_argument("--rows-per-stream", type=count, default=None, help="sample rows per stream in the export workspace")
    ap.add_argument("--tasks", type=count, default=None, help="tasks per replay batch")
    ap.add_argument("--max-kills-per-chain", type=count, default=None)
    ap.add_argument("--torn-trials", type=bounded_int(0), default=None, help="simulated torn tails per suite (a cut last line)")
    ap.add_argument("--collect-every", type=count, default=None, help="run `distill collect` on every Nth replay chain")
    ap.add_argument("--seed", type=int, default=20261122)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--no-write", action="store_true", help="print the JSON result, write no files")
    ap.add_argument("--name", default=None, help="results file stem (default crash_harness[_quick])")
    args = ap.parse_args(argv)
    export_n = args.export_trials if args.export_trials is not None else (6 if args.quick else 60)
    replay_n = args.replay_trials if args.replay_trials is not None else (6 if args.quick else 60)
    score_n = args.score_trials if args.score_trials is not None else (6 if args.quick else 40)
    score_rows = args.score_rows or (3000 if args.quick else 20000)
    rows = args.rows_per_stream or (6 if args.quick else 12)
    n_tasks = args.tasks or (6 if args.quick else 12)
    max_kills = args.max_kills_per_chain or (3 if args.quick else 4)
    torn_n = args.torn_trials if args.torn_trials is not None else (1 if args.quick else 6)
    collect_every = args.collect_every or (1000 if args.quick else 3)
    result = run(export_n, replay_n, seed=args.seed, rows=rows, n_tasks=n_tasks, max_kills=max_kills,
                 torn_n=torn_n, collect_every=collect_every, workdir=args.workdir, score_n=score_n,
                 score_rows=score_rows)
    result["mode"] = "quick" if args.quick else "full"
    if args.no_write:
        print(json.dumps(result, indent=1))
    else:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = args.name or ("crash_harness_quick" if args.quick else "crash_harness")
        (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
        (RESULTS / f"{stem}.md").write_text(markdown(result))
        print(markdown(result))
    return 0 if result["failures"] == 0 and result["trials"] >= export_n + replay_n + score_n else 1


if __name__ == "__main__":
    sys.exit(cli(main))
