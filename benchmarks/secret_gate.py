"""The secret gate with and without its Hyperscan prefilter, side by side, with parity.

    python benchmarks/secret_gate.py            # the sample streams' text + the planted-credential corpus
    python benchmarks/secret_gate.py --quick    # the planted corpus only

Per corpus: distinct lines, CPU time per line of the full detector pass and of the prefiltered one
(the same scanner code, one flag apart; each distinct line analysed once, no memo), their ratio,
verdict differences between the two (must be 0), and parity with detect-secrets' own file scan:
lines it flags that the gate misses (must be 0) and the gate's extra findings.
Results: benchmarks/results/secret_gate[_quick].json/.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.report import RESULTS, cli, log, machine, md_table, write_results  # noqa: E402


def sample_lines() -> list[str]:
    """Every line of every string in the sample streams (what an export scans)."""
    lines: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str):
            lines.extend(value.splitlines())
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for path in sorted((REPO / "data" / "sample" / "_kb").glob("*.jsonl")):
        for raw in path.read_bytes().splitlines():
            try:
                walk(json.loads(raw))
            except ValueError:
                continue
    return lines


def planted_lines() -> list[str]:
    from tests.secret_corpus import planted_corpus

    return [ln for p in planted_corpus() for ln in p.text.splitlines()]


def measure(name: str, lines: list[str]) -> dict[str, Any]:
    from distill.secrets import SecretScanner, reference_scan

    distinct = list(dict.fromkeys(lines))
    out: dict[str, Any] = {"corpus": name, "lines": len(lines), "distinct": len(distinct)}
    verdicts = {}
    for label, prefilter in (("full", False), ("prefiltered", True)):
        scanner = SecretScanner(memo_lines=0, prefilter=prefilter)
        scanner.analyse("warm up")
        c0, w0 = time.process_time(), time.perf_counter()
        verdicts[label] = [scanner.analyse(ln) for ln in distinct]
        out[f"{label}_cpu_s"] = round(time.process_time() - c0, 3)
        out[f"{label}_wall_s"] = round(time.perf_counter() - w0, 3)
        out[f"{label}_us_per_line"] = round(out[f"{label}_cpu_s"] / max(1, len(distinct)) * 1e6, 1)
        out[f"{label}_flagged"] = sum(bool(v) for v in verdicts[label])
        out["prefilter_active"] = scanner.prefiltered if prefilter else out.get("prefilter_active")
    out["speedup_cpu"] = round(out["full_cpu_s"] / max(out["prefiltered_cpu_s"], 1e-9), 1)
    out["verdict_differences"] = sum(a != b for a, b in zip(verdicts["full"], verdicts["prefiltered"], strict=True))
    reference = reference_scan(distinct)
    ours = {i for i, v in enumerate(verdicts["prefiltered"]) if v}
    out["detect_secrets_flagged"] = len(reference)
    out["missed_vs_detect_secrets"] = len(reference - ours)
    out["extra_vs_detect_secrets"] = len(ours - reference)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    info = machine()
    corpora = [("planted", planted_lines())] + ([] if args.quick else [("sample", sample_lines())])
    rows = [measure(name, lines) for name, lines in corpora]
    result = {"suite": "secret_gate", "quick": args.quick, "machine": info, "corpora": rows}
    md = (
        "### Secret gate: full detector pass vs Hyperscan prefilter (same scanner, one flag apart)\n\n"
        + md_table(["corpus", "distinct lines", "full µs/line (CPU)", "prefiltered µs/line (CPU)", "speed-up",
                    "verdict differences", "detect-secrets flags", "missed vs detect-secrets", "extra findings"],
                   [[r["corpus"], r["distinct"], r["full_us_per_line"], r["prefiltered_us_per_line"], f"{r['speedup_cpu']}×",
                     r["verdict_differences"], r["detect_secrets_flagged"], r["missed_vs_detect_secrets"],
                     r["extra_vs_detect_secrets"]] for r in rows])
        + f"\n\n- load at start {info.get('loadavg_at_start')}; CPU time is the measure (the machine is shared)\n"
    )
    name = "secret_gate_quick" if args.quick else "secret_gate"
    write_results(args.out_dir, name, result, md)
    log(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(main))
