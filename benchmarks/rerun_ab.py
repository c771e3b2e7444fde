"""Two revisions' periodic runs side by side: what a `distill run` after +1 % rows costs with each.

    python benchmarks/rerun_ab.py --base REV [--head REV] [--rows 100000] [--pairs 5] [--jobs 1]

A single pair of runs cannot show a 10 % change on a machine where full runs of one revision
vary by 20 % (benchmarks/rerun.py measures one sequence per call). Here each revision's code,
from a git worktree (`--head` defaults to this checkout as it is, uncommitted changes included),
builds the same synthetic workspace with a full `distill run --no-index`, so that its checkpoints
and caches are the ones that code writes; the streams then grow by 1 % as in benchmarks/rerun.py.
The +1 % runs alternate between the revisions `--pairs` times (which goes first alternates too),
each on a fresh copy of its revision's workspace, its CPU seconds taken from the child's rusage.
The copy's saved file digests are carried over to the copied files (`carry_digests`), so that a
run finds what a periodic run in place finds (they were not carried before: every copy's run
re-hashed every file, ~3 % of a +1 % run at 100,000 rows, for both revisions alike).
With `--rebuild-first` each revision's workspace is run once more with `--force` before the
streams grow (every cache removed, the evidence collected again: what the first run after an
upgrade of distill or a changed [collect] rule does), so the +1 % runs measure the run after a
rebuild.
Reported: per revision the median CPU, wall and per-stage wall seconds; head/base of the medians
and the range of the per-pair ratios; and whether both revisions left identical exports.
Results: benchmarks/results/<name>.json and .md (default rerun_ab_<rows>). Both revisions run in
this checkout's virtualenv, so they must share its dependencies.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.report import (  # noqa: E402
    RESULTS,
    cli,
    count,
    log,
    machine,
    md_table,
    scaled_sources,
    write_results,
)
from benchmarks.rerun import export_hashes, onto_new_day, run_with_rusage  # noqa: E402
from distill.hashing import sealed, unsealed  # noqa: E402


def _git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {proc.stderr.strip() or 'failed'}")
    return proc.stdout.strip()


class Revision:
    """One side of the comparison: a code tree and the workspace that code built."""

    def __init__(self, label: str, tree: Path, commit: str) -> None:
        self.label, self.tree, self.commit = label, tree, commit
        self.snapshot: Path | None = None
        self.runs: list[dict[str, Any]] = []
        self.exports: dict[str, str] = {}


def _revision(spec: str | None, tmp: Path, side: str) -> Revision:
    """REV checked out in a worktree under tmp; None: this checkout as it is."""
    if spec is None:
        dirty = bool(_git("status", "--porcelain", "--", "distill"))
        commit = _git("rev-parse", "--short", "HEAD")
        return Revision(f"{commit} (this checkout{', changed' if dirty else ''})", REPO, commit)
    commit = _git("rev-parse", "--verify", "--short", f"{spec}^{{commit}}")
    tree = tmp / f"tree-{side}"
    _git("worktree", "add", "--detach", str(tree), commit)
    return Revision(commit, tree, commit)


def _build(rev: Revision, base_kb: Path, grown_kb: Path, tmp: Path, jobs: int | None, side: str,
           rebuild_first: bool = False) -> None:
    """The full run with this revision's code (and a `--force` run after it), then the grown
    streams in place: its snapshot."""
    ws = tmp / f"ws-{side}"
    shutil.copytree(base_kb, ws / "_kb")
    full = run_with_rusage(ws, jobs, pythonpath=rev.tree)
    log(f"{rev.label}: full run {full['cpu_s']} s CPU, exit {full['exit_code']}")
    if rebuild_first:
        forced = run_with_rusage(ws, jobs, pythonpath=rev.tree, extra=("--force",))
        log(f"{rev.label}: --force run {forced['cpu_s']} s CPU, exit {forced['exit_code']}")
    for src in grown_kb.glob("*.jsonl"):
        shutil.copyfile(src, ws / "_kb" / src.name)  # prefix-stable: the same rows plus 1 %
    rev.snapshot = ws


def _plus_one_percent(rev: Revision, tmp: Path, jobs: int | None, keep_exports: bool) -> None:
    assert rev.snapshot is not None
    run = tmp / "run"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(rev.snapshot, run, symlinks=True)
    carried = carry_digests(rev.snapshot, run)
    measured = run_with_rusage(run, jobs, pythonpath=rev.tree)
    measured["digests_carried"] = carried
    measured.pop("counters")
    rev.runs.append(measured)
    if keep_exports:
        rev.exports = export_hashes(run)
    log(f"{rev.label}: +1 % run {measured['cpu_s']} s CPU, {measured['wall_s']} s wall, exit {measured['exit_code']}")
    shutil.rmtree(run)


def carry_digests(snapshot: Path, copy: Path) -> int | None:
    """The copy's digest cache (ROOT/.distill.digests.json) made to describe the copy as the
    snapshot's describes the snapshot. It keys each digest by path, inode, mtime and ctime, so a
    copied workspace would find none and its run would re-hash every file, which a periodic run in
    place does not. An entry is carried over only if it matched its snapshot file (the stat key
    saved is the file's now; the grown sources no longer match theirs), with the copy's path and
    stat: the copy holds the same bytes. Returns how many were carried (None: no cache, or one of
    another format, left as it is). A revision that seals its caches (hashing.sealed) gets its
    file back sealed; one from before, as it wrote it. An entry with a sha256 state (version 3)
    whose file has changed since is carried too, with the copy's inode and its own size and
    times: it is never a hit, only what the copy's file, if it only grew, is hashed on from
    (receipts.DigestCache.earlier asks the same inode), as in place."""
    path = copy / ".distill.digests.json"
    try:
        data = path.read_bytes()
        body = unsealed(data)
        saved = orjson.loads(data if body is None else body)
    except (OSError, ValueError):
        return None
    # entries are [path, inode, size, mtime, ctime, *digests] in every version (2 adds a PREFIX_HASH,
    # 3 a sha256 state)
    version = saved.get("version") if isinstance(saved, dict) else None
    if version not in (1, 2, 3):
        return None
    entries = []
    for entry in saved["entries"]:
        try:
            rel = Path(entry[0]).relative_to(snapshot)
            was = (snapshot / rel).stat()
        except (ValueError, OSError):
            continue  # outside the snapshot, or gone
        if [was.st_ino, was.st_size, was.st_mtime_ns, was.st_ctime_ns] != entry[1:5]:
            if len(entry) > 9 and entry[9] is not None:
                entries.append([str(copy / rel), (copy / rel).stat().st_ino, *entry[2:]])
            continue
        now = (copy / rel).stat()
        entries.append([str(copy / rel), now.st_ino, now.st_size, now.st_mtime_ns, now.st_ctime_ns, *entry[5:]])
    out = orjson.dumps({"version": version, "entries": entries})
    path.write_bytes(out + b"\n" if body is None else sealed(out))
    return len(entries)


def _summary(rev: Revision) -> dict[str, Any]:
    stages = sorted({s for r in rev.runs for s in r["stage_wall_s"]})
    return {
        "revision": rev.label,
        "cpu_s": [r["cpu_s"] for r in rev.runs],
        "median_cpu_s": round(statistics.median(r["cpu_s"] for r in rev.runs), 2),
        "median_wall_s": round(statistics.median(r["wall_s"] for r in rev.runs), 2),
        "median_written_mib": round(statistics.median(r.get("written_mib", 0.0) for r in rev.runs), 1),
        "median_stage_wall_s": {s: round(statistics.median(r["stage_wall_s"].get(s, 0.0) for r in rev.runs), 2)
                                for s in stages},
        "exit_codes": sorted({r["exit_code"] for r in rev.runs}),
        "digests_carried": sorted({r.get("digests_carried") or 0 for r in rev.runs}),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the revision to compare against (a commit, tag or branch)")
    ap.add_argument("--head", help="the revision measured (default: this checkout as it is)")
    ap.add_argument("--rows", type=count, default=100_000)
    ap.add_argument("--quick", action="store_true", help="2,000 rows, 1 pair (CI smoke)")
    ap.add_argument("--pairs", type=count, default=5)
    ap.add_argument("--jobs", type=count, default=None,
                    help="[run] jobs for every run (default: the setting's own, every core); 1 runs the stages one by one")
    ap.add_argument("--tmp-dir", type=Path, default=None, help="where the workspaces go (e.g. /dev/shm)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.add_argument("--name", help="result file stem (default rerun_ab_<rows>, rerun_ab_quick)")
    ap.add_argument("--appended-on-new-day", action="store_true",
                    help="the appended rows' ISO timestamps all on 2026-12-01, after every date of the workspace "
                         "(as benchmarks/rerun.py --appended-on-new-day): new partitions instead of grown ones")
    ap.add_argument("--rebuild-first", action="store_true",
                    help="a `distill run --force` after each full run (the evidence collected again): the +1 %% "
                         "runs measure the run after a rebuild")
    args = ap.parse_args(argv)
    rows, pairs = (2_000, 1) if args.quick else (args.rows, args.pairs)
    if pairs < 1:
        raise SystemExit("--pairs must be at least 1")
    more = rows + max(1, rows // 100)
    with tempfile.TemporaryDirectory(prefix="distill-rerun-ab-", dir=args.tmp_dir) as name:
        tmp = Path(name)
        revisions: list[Revision] = []
        try:
            revisions = [_revision(args.base, tmp, "base"), _revision(args.head, tmp, "head")]
            scaled_sources(tmp / "kb-base", rows)
            scaled_sources(tmp / "kb-grown", more)
            if args.appended_on_new_day:
                onto_new_day(tmp / "kb-base", tmp / "kb-grown")
            log(f"{rows:,} rows, then +{more - rows:,}: {revisions[0].label} against {revisions[1].label}")
            for side, rev in zip(("base", "head"), revisions, strict=True):
                _build(rev, tmp / "kb-base", tmp / "kb-grown", tmp, args.jobs, side, args.rebuild_first)
            for i in range(pairs):
                for rev in revisions if i % 2 == 0 else revisions[::-1]:
                    _plus_one_percent(rev, tmp, args.jobs, keep_exports=i == pairs - 1)
        finally:
            for rev in revisions:
                if rev.tree != REPO:
                    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(rev.tree)],
                                   capture_output=True, timeout=120)

    base, head = (_summary(r) for r in revisions)
    ratios = [h["cpu_s"] / b["cpu_s"] for b, h in zip(revisions[0].runs, revisions[1].runs, strict=True)]
    result = {
        "suite": "rerun_ab", "quick": args.quick, "rows": rows, "rows_added": more - rows, "pairs": pairs,
        "appended_on_new_day": args.appended_on_new_day, "rebuild_first": args.rebuild_first,
        "jobs": "default (every core)" if args.jobs is None else args.jobs,
        "base": base, "head": head,
        "head_over_base_median_cpu": round(head["median_cpu_s"] / base["median_cpu_s"], 3),
        "pairwise_ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
        "exports_identical": revisions[0].exports == revisions[1].exports,
        "machine": machine(),
    }
    out = args.name or ("rerun_ab_quick" if args.quick else f"rerun_ab_{rows}")
    write_results(args.out_dir, out, result, markdown(result))
    print(markdown(result))
    return 0


def markdown(r: dict[str, Any]) -> str:
    b, h = r["base"], r["head"]
    stages = sorted(set(b["median_stage_wall_s"]) | set(h["median_stage_wall_s"]))
    rows = [[side["revision"], side["median_cpu_s"], ", ".join(f"{c:g}" for c in side["cpu_s"]), side["median_wall_s"],
             side.get("median_written_mib", "-"),
             ", ".join(f"{s} {side['median_stage_wall_s'].get(s, 0.0):.1f}" for s in stages),
             ", ".join(str(c) for c in side["exit_codes"])] for side in (b, h)]
    return "\n".join([
        f"### A run after +1 % rows, two revisions alternating ({r['rows']:,} source rows + {r['rows_added']:,}, "
        f"{r['pairs']} pairs, [run] jobs: {r['jobs']}"
        f"{', the appended rows on one new day' if r.get('appended_on_new_day') else ''}"
        f"{', after a --force run (the evidence collected again)' if r.get('rebuild_first') else ''})",
        "",
        md_table(["revision", "median CPU s", "CPU s per run", "median wall s", "median MiB written",
                  "median wall s per stage", "exit"], rows),
        "",
        f"- head / base, median CPU: **{r['head_over_base_median_cpu']:.3f}x** (per pair "
        f"{r['pairwise_ratio_range'][0]:.3f}-{r['pairwise_ratio_range'][1]:.3f})",
        f"- exports after the last +1 % run identical: {r['exports_identical']}",
        f"- file digests carried to each copied workspace (carry_digests): {b['revision']} "
        f"{', '.join(map(str, b.get('digests_carried', [])))}; {h['revision']} "
        f"{', '.join(map(str, h.get('digests_carried', [])))}",
        f"- machine: {r['machine']}",
    ]) + "\n"


if __name__ == "__main__":
    raise SystemExit(cli(main))
