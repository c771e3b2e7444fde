"""What a periodic `distill run` costs: a full run, an unchanged re-run, and a run after +1 % rows.

    python benchmarks/rerun.py [--rows 30000] [--quick]

A synthetic workspace of N source rows (data/sample/generate.py's write_scaled, prefix-stable:
the N + 1 % workspace is the N-row one with rows appended to each stream) goes through
`distill run --no-index --continue-on-failure` three times, each a child process timed with its own
rusage: the full run, the same command again with nothing changed, and again after the streams
grow by 1 %. Reported: wall and CPU seconds, peak RSS, each re-run as a fraction of the full run,
which stages the re-runs skipped and the seconds inside each stage, the exit code (1 when the
firewall stopped the run, e.g. appended verdicts re-scored a run that had shipped), and the sha256
of every export file after the full run. --check-force also runs the append on a twin workspace
with `--force` (every cache and checkpoint deleted) and says whether the exports and every stage's
counters are the same.
Results: benchmarks/results/rerun[_quick].json and .md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
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

from benchmarks.pipeline import ISO_DATE, ONE_DAY, onto_one_day  # noqa: E402
from benchmarks.report import RESULTS, cli, count, log, machine, md_table, scaled_sources, targets_line, write_results  # noqa: E402

TARGET_UNCHANGED = 0.01
TARGET_ONE_PERCENT = 0.05


def stage_actions(result: dict[str, Any]) -> dict[str, str]:
    """stage -> ran / skipped, from `distill run --json`'s summary."""
    return {str(s.get("stage")): str(s.get("status")) for s in result.get("summary", {}).get("stages", [])}


def stage_seconds(result: dict[str, Any]) -> dict[str, float]:
    """stage -> wall seconds inside the stage, from the same summary: where a re-run's time goes."""
    return {str(s.get("stage")): round(float(s.get("duration_s") or 0.0), 2)
            for s in result.get("summary", {}).get("stages", [])}


def timed_run(root: Path, *extra: str, jobs: int | None = None, pythonpath: Path | None = None) -> dict[str, Any]:
    """`pythonpath`: a tree whose `distill` package the run imports instead (benchmarks/rerun_ab.py)."""
    exe = str(Path(sys.executable).with_name("distill"))
    env = dict(os.environ)
    if jobs is not None:
        env["DISTILL_RUN__JOBS"] = str(jobs)  # [run] jobs: stages side by side (0: every core)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), env.get("PYTHONPATH")) if p)
    start = time.perf_counter()
    # --continue-on-failure: a run the firewall stops (exit 1) still does every stage's work, so
    # the timings compare whole runs
    proc = subprocess.Popen([exe, "run", "--no-index", "--continue-on-failure", *extra, "--root", str(root), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    try:
        summary = json.loads(out)
    except ValueError:
        summary = None
    if summary is None or proc.returncode not in (0, 1):
        raise SystemExit(f"distill run failed ({proc.returncode}): {err.decode()[-2000:]}")
    result = {"wall_s": round(wall, 2), "exit_code": proc.returncode, "stages": stage_actions(summary),
              "stage_wall_s": stage_seconds(summary),
              "counters": {str(s.get("stage")): {"totals": s.get("totals"), "by_source": s.get("by_source")}
                           for s in summary.get("summary", {}).get("stages", [])}}
    if proc.returncode == 1:
        # exit 1 is the firewall stopping the run (e.g. appended verdicts re-scored a run that had
        # shipped as rejected): the work was done and timed; the codes say why it stopped
        result["error_codes"] = sorted({str(c) for s in summary.get("summary", {}).get("stages", [])
                                        for c in s.get("error_codes") or []})
    return result


NEW_DAY = "2026-12-01"


def onto_new_day(base_kb: Path, grown_kb: Path) -> None:
    """Every ISO timestamp of the rows the grown streams add moves to NEW_DAY; the base's bytes
    are kept, so each grown stream still starts with them. Epoch-number timestamps stay. Streamed:
    this process forks the timed runs, and a child's peak RSS starts at this process's RSS."""
    from distill.jsonl import atomic_writer, iter_raw_lines

    new_day = b'"' + NEW_DAY.encode() + b"T"
    for grown in sorted(grown_kb.glob("*.jsonl")):
        base = base_kb / grown.name
        kept = base.stat().st_size if base.exists() else 0
        # one pass: the base's prefix is checked as it is copied (a mismatch leaves the file as it was)
        with atomic_writer(grown) as out, grown.open("rb") as src, \
                (base.open("rb") if kept else open(os.devnull, "rb")) as old:
            left = kept
            while left:
                chunk = src.read(min(left, 1 << 20))
                if not chunk or chunk != old.read(len(chunk)):
                    raise SystemExit(f"{grown.name}: the grown stream does not start with the base's bytes")
                out.write(chunk)
                left -= len(chunk)
            for raw in iter_raw_lines(grown, start=kept):
                line = raw.data or b""
                later = [d for d in (m.group(0)[1:11] for m in ISO_DATE.finditer(line)) if d >= NEW_DAY.encode()]
                if later:
                    raise SystemExit(f"{grown.name}: an appended row is dated {later[0].decode()}, not before {NEW_DAY}")
                out.write(ISO_DATE.sub(new_day, line) + (b"\n" if raw.terminated else b""))


def brief(measured: dict[str, Any]) -> dict[str, Any]:
    """A run's figures for the log, without its counters."""
    return {k: v for k, v in measured.items() if k != "counters"}


def run_with_rusage(root: Path, jobs: int | None = None, pythonpath: Path | None = None,
                    extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """timed_run with its CPU time taken from RUSAGE_CHILDREN before and after (a run's worker
    processes are its children, waited for, so they count; peak RSS: the largest process so far;
    written: what its processes wrote to files, also a count that does not drift with the machine)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = timed_run(root, *extra, jobs=jobs, pythonpath=pythonpath)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    r["cpu_s"] = round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2)
    r["peak_rss_mib"] = round(after.ru_maxrss / 1024, 1)  # the largest child so far (Linux: KiB)
    # bytes the run's processes wrote to files (Linux counts them as pages are dirtied, in 512-byte blocks)
    r["written_mib"] = round((after.ru_oublock - before.ru_oublock) * 512 / 2**20, 1)
    return r


def export_hashes(root: Path) -> dict[str, str]:
    """sha256 of every export file, streamed: this process forks the next timed run, and Linux
    reports a child's peak RSS as at least this process's RSS at the fork (exec keeps the high-water
    mark), so reading a 1 GB export whole here showed up as the next run's peak."""
    exports = root / "exports"
    out = {}
    for p in sorted(exports.rglob("*")):
        if p.is_file() and (p.suffix == ".jsonl" or p.name == "README.md"):
            with p.open("rb") as fh:
                out[p.relative_to(root).as_posix()] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=count, default=30_000)
    ap.add_argument("--quick", action="store_true", help="2,000 rows (CI smoke)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--no-append", action="store_true",
                    help="skip the +1 %% run (at 1M rows it is a second full-length run)")
    ap.add_argument("--name", help="result file stem (default rerun / rerun_quick)")
    ap.add_argument("--jobs", type=count, default=None,
                    help="[run] jobs for every timed run (default: the setting's own default, every core); "
                         "1 runs the stages one by one")
    ap.add_argument("--one-day", action="store_true",
                    help="every ISO timestamp on one date (benchmarks/pipeline.py --one-day): partitions of ~N/12 rows")
    ap.add_argument("--appended-on-new-day", action="store_true",
                    help=f"the appended rows' ISO timestamps all on {NEW_DAY}, after every date of the workspace (a "
                         "periodic run sees new runs, which are recent): they land in new partitions instead of "
                         "growing old ones")
    ap.add_argument("--check-force", action="store_true",
                    help="also run the +1 %% append on a twin with --force (no caches, untimed) and "
                         "compare every export file and every stage's counters")
    args = ap.parse_args(argv)
    rows = 2_000 if args.quick else args.rows
    more = rows + max(1, rows // 100)
    with tempfile.TemporaryDirectory(prefix="distill-rerun-") as tmp:
        base, grown = Path(tmp) / "ws", Path(tmp) / "grown"
        scaled_sources(base / "_kb", rows)
        if not args.no_append:
            scaled_sources(grown / "_kb", more)
        if args.one_day:
            for kb in (base / "_kb", grown / "_kb"):
                if kb.exists():
                    onto_one_day(kb)  # line by line, so the grown streams still start with the base's bytes
        if args.appended_on_new_day and not args.no_append:
            onto_new_day(base / "_kb", grown / "_kb")
        log(f"{rows:,} rows; then +{more - rows:,}")
        full = run_with_rusage(base, args.jobs)
        hashes = export_hashes(base)
        log(f"full {brief(full)}")
        unchanged = run_with_rusage(base, args.jobs)
        log(f"unchanged {brief(unchanged)}")
        plus = None
        same_as_force = None
        if not args.no_append:
            twin = Path(tmp) / "twin"
            if args.check_force:
                shutil.copytree(base, twin)
            for ws in (base, twin) if args.check_force else (base,):
                for src in (grown / "_kb").glob("*.jsonl"):
                    shutil.copyfile(src, ws / "_kb" / src.name)  # prefix-stable: the same rows plus 1 %
            plus = run_with_rusage(base, args.jobs)
            log(f"+1% {brief(plus)}")
            if args.check_force:
                forced = timed_run(twin, "--force", jobs=args.jobs)
                same_as_force = {
                    "exports_identical": export_hashes(base) == export_hashes(twin),
                    "counters_identical": plus["counters"] == forced["counters"],
                    "exit_codes": [plus["exit_code"], forced["exit_code"]],
                }
                log(f"against --force: {same_as_force}")

    for measured in (full, unchanged, plus):
        if measured is not None:
            measured.pop("counters")  # compared above; the per-source tables are not results
    result = {
        "suite": "rerun", "quick": args.quick, "rows": rows, "rows_added": more - rows,
        "jobs": "default (every core)" if args.jobs is None else args.jobs,
        "dates": ONE_DAY if args.one_day else "spread (the generator's dates)",
        "appended_rows_dates": (f"every ISO timestamp on {NEW_DAY} (new partitions)" if args.appended_on_new_day
                                else "as generated (spread over the workspace's dates: they grow old partitions)"),
        "full": full, "unchanged": unchanged, "plus_one_percent": plus,
        "unchanged_fraction_wall": round(unchanged["wall_s"] / full["wall_s"], 4),
        "unchanged_fraction_cpu": round(unchanged["cpu_s"] / full["cpu_s"], 4),
        "plus_one_percent_fraction_wall": round(plus["wall_s"] / full["wall_s"], 4) if plus else None,
        "plus_one_percent_fraction_cpu": round(plus["cpu_s"] / full["cpu_s"], 4) if plus else None,
        "export_sha256_after_full_run": hashes,
        "plus_one_percent_vs_force": same_as_force,
        "machine": machine(),
    }
    result["targets"] = {
        f"unchanged re-run <= {TARGET_UNCHANGED:.0%} of a full run (CPU)": result["unchanged_fraction_cpu"] <= TARGET_UNCHANGED,
    }
    if plus is not None:
        result["targets"][f"+1 % rows <= {TARGET_ONE_PERCENT:.0%} of a full run (CPU)"] = (
            result["plus_one_percent_fraction_cpu"] <= TARGET_ONE_PERCENT)
    name = args.name or "rerun" + ("_quick" if args.quick else "")
    write_results(args.out_dir, name, result, markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    rows = []
    for label, key in (("full run", "full"), ("unchanged re-run", "unchanged"), (f"after +{r['rows_added']:,} rows (1 %)", "plus_one_percent")):
        m = r[key]
        if m is None:
            continue
        seconds = m.get("stage_wall_s", {})
        exit_code = str(m.get("exit_code", 0)) + (f" ({', '.join(m['error_codes'])})" if m.get("error_codes") else "")
        rows.append([label, exit_code, m["wall_s"], m["cpu_s"], m["peak_rss_mib"],
                     ", ".join(f"{s}: {a}" + (f" {seconds[s]:.1f} s" if s in seconds else "")
                               for s, a in m["stages"].items())])
    lines = [
        f"### Periodic runs ({r['rows']:,} source rows, `distill run --no-index --continue-on-failure`, "
        f"[run] jobs: {r.get('jobs', 'default')})",
        "",
        md_table(["run", "exit", "wall s", "CPU s", "peak RSS MiB (largest so far)", "stages (wall s inside each)"], rows),
        "",
        f"- unchanged re-run: {r['unchanged_fraction_cpu']:.2%} of the full run's CPU ({r['unchanged_fraction_wall']:.2%} wall)",
        (f"- after +1 % rows: {r['plus_one_percent_fraction_cpu']:.2%} of the full run's CPU "
         f"({r['plus_one_percent_fraction_wall']:.2%} wall)" if r["plus_one_percent"] else "- +1 % run: not run (--no-append)"),
        *([f"- the +1 % run against the same append with `--force` (no caches): exports identical: "
           f"{r['plus_one_percent_vs_force']['exports_identical']}, counters identical: "
           f"{r['plus_one_percent_vs_force']['counters_identical']}"] if r.get("plus_one_percent_vs_force") else []),
        *([f"- dates: {r['dates']}"] if r.get("dates") else []),
        *([f"- the appended rows' dates: {r['appended_rows_dates']}"] if r.get("appended_rows_dates") else []),
        "- " + targets_line(r["targets"]),
        f"- machine: {r['machine']}",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(cli(main))
