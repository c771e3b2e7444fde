"""Pipeline throughput: N synthetic source rows through collect, score and export-all, against a
raw parse + serialise pass over the same bytes, with peak memory per stage.

    python benchmarks/pipeline.py --rows 1000000        # the target size (see --help for the rest)
    python benchmarks/pipeline.py --quick               # 1,000 rows, CI smoke

Rows come from data/sample/generate.py's write_scaled (the sample's shape, bad rows and planted
secrets included, ids unique per replica). Every stage runs in its own child process, so its peak
RSS (os.wait4's ru_maxrss) is its own; wall time is taken around the child (interpreter start and
imports included) and inside it (the stage call alone). The raw baseline reads the same source
files line by line, parses each with orjson (the library distill.jsonl uses), serialises it again
and writes it out through distill.jsonl; it runs RAW_PASSES times and the pass with the least CPU
time is the baseline (one pass of a few seconds measured 2.7 to 8.7 s CPU across days, so a single
pass moved the ratio more than the code did; the fastest is the least flattering). After the measured run, the slowest stage is run once
more on the same data under pyinstrument; its profile is saved next to the results.

Targets at N = 1,000,000: whole pipeline <= 10x the raw baseline's CPU time (stretch: <= 4x wall),
peak RSS <= 1 GiB. The JSON records both, met or not.
Results: benchmarks/results/pipeline[_quick].json, .md, _stages.png, _profile_<stage>.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.report import RESULTS, cli, count, log, machine, md_table, niceness, pyplot, save_figure, scaled_sources, write_results  # noqa: E402

STAGES = ("raw", "collect", "score", "export")
RAW_PASSES = 3
PIPELINE = ("collect", "score", "export")
TARGET_RATIO = 10.0
STRETCH_WALL_RATIO = 4.0
TARGET_RSS_BYTES = 1 << 30
QUICK_ROWS = 1_000


# --------------------------------------------------------------------------------------------
# children: one stage each (python benchmarks/pipeline.py --stage NAME --root WS)
# --------------------------------------------------------------------------------------------


def raw_baseline(ws_root: Path) -> dict[str, Any]:
    """Read + orjson parse + orjson serialise + write, every source line, no validation."""
    import orjson

    from distill.jsonl import atomic_writer

    kb = ws_root / "_kb"
    out = ws_root / "raw-baseline"
    out.mkdir(exist_ok=True)
    rows = bad = 0
    for src in sorted(kb.glob("*.jsonl")):
        with open(src, "rb", buffering=1 << 20) as fh, atomic_writer(out / src.name) as sink:
            for line in fh:
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError:
                    bad += 1
                    continue
                sink.write(orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS) + b"\n")
                rows += 1
    return {"rows_in": rows + bad, "written": rows, "unparseable": bad}


def run_stage(stage: str, ws_root: Path) -> dict[str, Any]:
    """One stage through the product's own entry points (what the CLI calls)."""
    if stage == "raw":
        return raw_baseline(ws_root)
    from distill.config import load_settings
    from distill.workspace import Workspace

    ws = Workspace.resolve(ws_root)
    settings = load_settings(ws.root)
    if stage == "collect":
        from distill.collect import run_collect

        reports = [run_collect(ws, settings)]
    elif stage == "score":
        from distill.score import run_score

        reports = [run_score(ws, settings)]
    elif stage == "export":
        from distill.export import KINDS, run_export
        from distill.export.gates import Firewall

        firewall = Firewall.from_settings(ws.root, settings.export)
        reports = [run_export(ws, settings, kind, firewall=firewall) for kind in KINDS]  # type: ignore[arg-type]
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    out: dict[str, Any] = {"reports": {}}
    for r in reports:
        out["reports"][r.stage] = r.totals.model_dump()
    out["rows_in"] = sum(r.totals.rows_in for r in reports)
    out["written"] = sum(r.totals.written for r in reports)
    return out


def child_main(stage: str, root: Path, profile: Path | None) -> int:
    t0 = time.perf_counter()
    if profile is not None:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.005)
        profiler.start()
        result = run_stage(stage, root)
        profiler.stop()
        from distill.jsonl import write_atomic

        write_atomic(profile.with_suffix(".txt"), profiler.output_text(unicode=True, color=False, show_all=False).encode())
    else:
        result = run_stage(stage, root)
    result["stage_s"] = time.perf_counter() - t0
    result["vm_hwm_bytes"] = vm_hwm_bytes()
    print(json.dumps(result), flush=True)
    return 0


def vm_hwm_bytes() -> int | None:
    """This process's peak RSS since its exec (/proc/self/status VmHWM). Unlike ru_maxrss, it
    does not inherit the high-water mark of the parent image the child was forked from."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------------------------
# parent: generate, run each stage in a child, measure
# --------------------------------------------------------------------------------------------


def _set_niceness(target: int) -> None:
    """Absolute niceness for the child (os.nice is relative: a parent run under `nice` would stack)."""
    current = os.nice(0)
    if target > current:
        os.nice(target - current)


def measure_rusage(stage: str, root: Path, *, nice: int, profile: Path | None = None) -> dict[str, Any]:
    """Run one stage in a child process: wall time around it, and the child's own peak RSS and CPU
    time (reaped with os.wait4, so the rusage is this child's, not the maximum over all children)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--root", str(root)]
    if profile is not None:
        cmd += ["--profile-out", str(profile)]
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env,
                                preexec_fn=lambda: _set_niceness(nice))
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"stage {stage} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    result = json.loads([ln for ln in stdout.splitlines() if ln.startswith("{")][-1])
    peak = result.pop("vm_hwm_bytes", None) or usage.ru_maxrss * 1024
    result.update(wall_s=wall, peak_rss_bytes=peak, cpu_s=usage.ru_utime + usage.ru_stime)
    return result


CACHE_GLOB = ".distill.*"  # checkpoints, caches and the lock's owner file at the workspace root


def snapshot_caches(ws_root: Path, into: Path) -> None:
    """Keep the workspace's cache files as a stage found them: its profile must redo the same work
    (a stage run again over its own checkpoints replays them instead of doing what was timed)."""
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    for path in ws_root.glob(CACHE_GLOB):
        if path.is_file():
            shutil.copy2(path, into / path.name)


def restore_caches(ws_root: Path, saved: Path) -> None:
    for path in ws_root.glob(CACHE_GLOB):
        if path.is_file():
            path.unlink()
    for path in saved.iterdir():
        shutil.copy2(path, ws_root / path.name)


def reset_outputs(ws_root: Path, stage: str) -> None:
    """Remove what `stage` wrote, so it can run again on the same input for the profile (the
    caches are put back as the timed run found them by restore_caches)."""
    if stage == "raw":
        shutil.rmtree(ws_root / "raw-baseline", ignore_errors=True)
    elif stage == "collect":
        shutil.rmtree(ws_root / "evidence", ignore_errors=True)
    elif stage == "score":
        shutil.rmtree(ws_root / "scored-runs", ignore_errors=True)
    elif stage == "export":
        for name in ("rag", "sft", "preference", "quarantine/rag.jsonl", "quarantine/sft.jsonl",
                     "quarantine/preference.jsonl"):
            p = ws_root / "exports" / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def finalize(r: dict[str, Any]) -> dict[str, Any]:
    """Totals, ratios and targets from the per-stage measurements (also used to re-render a JSON).

    Three ratios: in-stage wall time (the headline the issue asks for), child wall time (with
    interpreter start and imports), and CPU time, which is the one to trust on a shared machine:
    wall time there measures the other tenants' load as much as this code."""
    stages = r["stages"]
    raw = stages["raw"]
    pipe_s = sum(stages[s]["stage_s"] for s in PIPELINE)
    pipe_wall = sum(stages[s]["wall_s"] for s in PIPELINE)
    pipe_cpu = sum(stages[s]["cpu_s"] for s in PIPELINE)
    peak_stage = max(PIPELINE, key=lambda s: stages[s]["peak_rss_bytes"])
    r["pipeline_stage_s"], r["pipeline_wall_s"], r["pipeline_cpu_s"] = pipe_s, pipe_wall, pipe_cpu
    r["slowest_stage"] = max(PIPELINE, key=lambda s: stages[s]["cpu_s"])
    r["targets"] = {
        "ratio": pipe_s / raw["stage_s"],
        "ratio_wall": pipe_wall / raw["wall_s"],
        "ratio_cpu": pipe_cpu / raw["cpu_s"],
        "ratio_target": TARGET_RATIO,
        "ratio_met": pipe_s / raw["stage_s"] <= TARGET_RATIO,
        "ratio_cpu_met": pipe_cpu / raw["cpu_s"] <= TARGET_RATIO,
        "stage_ratio_cpu": {s: stages[s]["cpu_s"] / raw["cpu_s"] for s in PIPELINE},
        "stretch_wall_ratio": STRETCH_WALL_RATIO,
        "stretch_wall_met": pipe_s / raw["stage_s"] <= STRETCH_WALL_RATIO,
        "peak_rss_bytes": stages[peak_stage]["peak_rss_bytes"],
        "peak_rss_stage": peak_stage,
        "rss_target_bytes": TARGET_RSS_BYTES,
        "rss_met": stages[peak_stage]["peak_rss_bytes"] <= TARGET_RSS_BYTES,
        "at_target_size": r["rows"] >= 1_000_000,
    }
    # A linear projection to the target size when it was not run: CPU time scales with rows, and
    # memory above the interpreter's floor (the raw child's peak) is assumed to as well. A
    # projection, labelled as one, never a measurement.
    if r["rows"] < 1_000_000:
        scale = 1_000_000 / r["rows"]
        floor = raw["peak_rss_bytes"]
        r["projection_1m"] = {
            s: {"cpu_s": stages[s]["cpu_s"] * scale,
                "peak_rss_bytes": floor + max(0, stages[s]["peak_rss_bytes"] - floor) * scale}
            for s in STAGES
        }
    return r


def markdown(r: dict[str, Any]) -> str:
    rows = []
    for s in STAGES:
        m = r["stages"][s]
        rows.append([s, m["rows_in"], round(m["stage_s"], 2), round(m["wall_s"], 2), round(m["cpu_s"], 2),
                     round(r["rows"] / m["stage_s"]), round(r["rows"] / max(m["cpu_s"], 1e-9)),
                     round(m["peak_rss_bytes"] / 2**20)])
    t = r["targets"]
    text = [
        f"### Pipeline throughput ({r['rows']:,} source rows, {r['source_bytes'] / 2**20:,.0f} MiB)\n",
        md_table(["stage", "rows in", "stage s", "wall s (child)", "CPU s", "source rows/s (wall)",
                  "source rows/CPU-s", "peak RSS MiB"], rows),
        "",
        *([f"- raw baseline: the least CPU of {len(r['stages']['raw']['passes_cpu_s'])} passes "
           f"({', '.join(f'{c:.2f}' for c in r['stages']['raw']['passes_cpu_s'])} s)"]
          if r["stages"]["raw"].get("passes_cpu_s") else []),
        f"- whole pipeline / raw baseline: **{t['ratio']:.1f}x** in-stage wall time ({t['ratio_wall']:.1f}x child wall, "
        f"**{t['ratio_cpu']:.1f}x CPU time**) — target <= {TARGET_RATIO:g}x CPU: "
        f"**{'met' if t['ratio_cpu_met'] else 'missed'}**; stretch <= {t.get('stretch_wall_ratio', 4):g}x wall: "
        f"**{'met' if t.get('stretch_wall_met') else 'missed'}**",
        *([("- per stage, CPU time / raw: " + ", ".join(f"{s} {v:.1f}x" for s, v in t["stage_ratio_cpu"].items()))]
          if t.get("stage_ratio_cpu") else []),
        f"- peak RSS (largest stage): **{t['peak_rss_bytes'] / 2**20:,.0f} MiB** ({t['peak_rss_stage']}) "
        f"— target <= 1 GiB: **{'met' if t['rss_met'] else 'missed'}** at N = {r['rows']:,}",
        f"- slowest stage: {r['slowest_stage']}; profile: `{r.get('profile_txt') or 'not taken'}`",
        *(["- projected at 1,000,000 rows (linear in N from this run, not measured): "
           + ", ".join(f"{s} {p['cpu_s'] / 60:,.0f} CPU-min / {p['peak_rss_bytes'] / 2**30:,.1f} GiB"
                       for s, p in r["projection_1m"].items())] if r.get("projection_1m") else []),
        f"- target size 1,000,000 rows: {'run' if r['rows'] >= 1_000_000 else 'NOT run at this size (' + r['rows_note'] + ')'}",
        *([f"- dates: {r['dates']}"] if r.get("dates") else []),
        *([f"- rows: {r['shape']}"] if r.get("shape") else []),
        f"- machine: {r['machine']['cpu_count']} CPUs, load {r['machine']['loadavg_at_start']}, "
        f"children at nice {r['nice']}; commit {r['machine']['git_commit']}",
    ]
    return "\n".join(text) + "\n"


def plot(r: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = list(STAGES)
    a.bar(names, [r["rows"] / r["stages"][s]["stage_s"] for s in names], color=["#888", "#4c72b0", "#55a868", "#c44e52"])
    a.set_yscale("log")
    a.set_ylabel("source rows / s (log)")
    a.set_title(f"throughput, N = {r['rows']:,}")
    b.bar(names, [r["stages"][s]["peak_rss_bytes"] / 2**20 for s in names], color="#8172b2")
    b.axhline(1024, color="red", linestyle="--", linewidth=1, label="1 GiB target")
    b.set_ylabel("peak RSS (MiB)")
    b.set_title("peak memory per stage")
    b.legend()
    return save_figure(fig, path)


ONE_DAY = "every ISO timestamp on 2026-03-15"
ISO_DATE = re.compile(rb'"20\d\d-\d\d-\d\dT')


ONE_TASK = "one mapped source, 90 % of its rows one task and one question (a task retried all day)"


def write_one_task(ws_root: Path, rows: int) -> dict[str, Any]:
    """A `[[sources]]`-mapped stream whose rows mostly answer one task, instead of the sample
    generator's streams: preference pairing holds a task's rows together, so this is its worst
    shape. Verdicts cycle accepted / rejected / partial; texts differ; seeded, so reproducible."""
    import random

    import orjson

    kb = ws_root / "_kb"
    kb.mkdir(parents=True, exist_ok=True)
    (ws_root / "distill.toml").write_text(
        '[[sources]]\nname = "agent"\npath = "agent.jsonl"\ntask_id = "task_id"\ntext = "text"\n'
        'instruction = "prompt"\nverdict = "verdict"\n'
        'verdict_map = { accepted = "accepted", rejected = "rejected", partial = "partially_accepted" }\n')
    words = "shard timeout budget cache schema migration flaky query retry fixture latency worker lock queue".split()
    rng = random.Random(7)
    verdicts = ("accepted", "rejected", "partial")
    total = 0
    with open(kb / "agent.jsonl", "wb") as out:
        for i in range(rows):
            t = i % 86400
            line = orjson.dumps({
                "task_id": "T-same" if i % 10 else f"T-{i % 7}",
                "prompt": "How do we fix the flaky retry test in the worker queue?",
                "text": " ".join(rng.choice(words) for _ in range(40)) + f" answer {i}",
                "created_at": f"2026-03-{1 + i % 28:02d}T{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}Z",
                "verdict": verdicts[i % 3],
            }) + b"\n"
            out.write(line)
            total += len(line)
    return {"rows": rows, "bytes": total, "replicas": 1, "streams": ["agent (mapped)"]}


def onto_one_day(kb: Path) -> int:
    """Rewrite each source file line by line with every ISO timestamp's date set to 2026-03-15
    (times kept; epoch-number timestamps stay where they are). Returns the bytes written."""
    from distill.jsonl import atomic_writer, iter_raw_lines

    total = 0
    for path in sorted(kb.glob("*.jsonl")):
        with atomic_writer(path) as out:
            for raw in iter_raw_lines(path):
                line = ISO_DATE.sub(b'"2026-03-15T', raw.data or b"") + (b"\n" if raw.terminated else b"")
                out.write(line)
                total += len(line)
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=count, default=1_000_000, help="source rows to generate (default 1,000,000)")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows (CI smoke)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--work-dir", type=Path, help="where the workspace is built (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the workspace")
    ap.add_argument("--nice", type=niceness, default=10, help="niceness of the stage processes (shared machine)")
    ap.add_argument("--no-profile", action="store_true", help="skip the profile of the slowest stage")
    ap.add_argument("--name", help="result file stem (default pipeline / pipeline_quick)")
    ap.add_argument("--rows-note", default="", help="why this N (recorded in the results)")
    ap.add_argument("--one-day", action="store_true",
                    help="move every ISO timestamp onto one date (a bulk import of one busy day): evidence is "
                         "partitioned per source per day, so each partition holds about N/12 rows and a stage "
                         "that holds a partition shows it in its peak RSS")
    ap.add_argument("--one-task", action="store_true", help="instead of the sample streams: " + ONE_TASK.replace("%", "%%"))  # argparse formats %
    ap.add_argument("--rerender", type=Path, help="recompute targets, markdown and plot from a results JSON")
    # child mode
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--profile-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stage:
        return child_main(args.stage, args.root, args.profile_out)

    if args.rerender:
        result = finalize(json.loads(args.rerender.read_text()))
        stem = args.rerender.stem
        write_results(args.rerender.parent, stem, result, markdown(result))
        plot(result, args.rerender.parent / f"{stem}_stages.png")
        return 0
    rows = QUICK_ROWS if args.quick else args.rows
    name = args.name or ("pipeline_quick" if args.quick else "pipeline")
    info = machine()
    base = args.work_dir or Path(tempfile.mkdtemp(prefix="distill-pipeline-"))
    ws_root = base / "ws"
    if ws_root.exists():
        shutil.rmtree(ws_root)
    try:
        t = time.perf_counter()
        gen = write_one_task(ws_root, rows) if args.one_task else scaled_sources(ws_root / "_kb", rows)
        if args.one_day:
            gen["bytes"] = onto_one_day(ws_root / "_kb")
        gen_s = time.perf_counter() - t
        log(f"generated {gen['rows']:,} rows ({gen['bytes'] / 2**20:,.0f} MiB) in {gen_s:.1f}s")
        stages: dict[str, Any] = {}
        for stage in STAGES:
            snapshot_caches(ws_root, base / "caches-before" / stage)
            passes = [measure_rusage(stage, ws_root, nice=args.nice) for _ in range(RAW_PASSES if stage == "raw" else 1)]
            stages[stage] = m = min(passes, key=lambda p: p["cpu_s"])
            if len(passes) > 1:
                m["passes_cpu_s"] = [round(p["cpu_s"], 2) for p in passes]
            log(f"{stage:8s} {m['stage_s']:8.1f}s in stage  {m['wall_s']:8.1f}s wall  "
                f"{m['peak_rss_bytes'] / 2**20:7.0f} MiB  rows_in {m['rows_in']:,}")
        result: dict[str, Any] = {
            "suite": "pipeline",
            "quick": args.quick,
            "rows": gen["rows"],
            "rows_note": args.rows_note or ("quick smoke" if args.quick else "requested size"),
            "dates": ONE_DAY if args.one_day else "spread (the generator's dates)",
            **({"shape": ONE_TASK} if args.one_task else {}),
            "source_bytes": gen["bytes"],
            "generator": {"replicas": gen["replicas"], "streams": gen["streams"], "seconds": round(gen_s, 2)},
            "nice": args.nice,
            "machine": info,
            "stages": stages,
        }
        finalize(result)
        slowest = result["slowest_stage"]
        if not args.no_profile:
            reset_outputs(ws_root, slowest)
            restore_caches(ws_root, base / "caches-before" / slowest)
            stem = args.out_dir / f"{name}_profile_{slowest}"
            args.out_dir.mkdir(parents=True, exist_ok=True)
            prof = measure_rusage(slowest, ws_root, nice=args.nice, profile=stem)
            result["profile"] = {"stage": slowest, "stage_s_under_profiler": prof["stage_s"]}
            result["profile_txt"] = str(stem.with_suffix(".txt").relative_to(REPO)) if stem.is_relative_to(REPO) \
                else str(stem.with_suffix(".txt"))
            log(f"profile of {slowest}: {stem.with_suffix('.txt')}")
        write_results(args.out_dir, name, result, markdown(result))
        plot(result, args.out_dir / f"{name}_stages.png")
        log(markdown(result))
    finally:
        if not args.keep and args.work_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(main))
