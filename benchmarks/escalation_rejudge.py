"""The gate as it is now, on the answers an escalation benchmark recorded: what it would escalate.

    python benchmarks/escalation_rejudge.py benchmarks/results/escalation_local.json
    python benchmarks/escalation_rejudge.py benchmarks/results/escalation.json --out-dir /tmp/r

The escalation benchmarks take 20-40 minutes of real model calls, and their figures go stale with
every gate change. Their <name>_answers.jsonl keeps what the gate judged in each run (the task, the
bundle, the local answer and the strong model's answer where there was one), so the current gate
can judge the same answers again in seconds, side by side with the verdicts recorded then.

What this measures and what it cannot: per condition and family, the escalation rate (the gate
failing the local answer), gate precision and false accepts against gold, and system accuracy (the
local answer when it passes, else the strong answer when that passes). A run whose local answer
now fails but passed before, without retrieval and with a strong model, was never escalated: its
system outcome is unknown and counted apart. The later feedback rounds indexed what the recorded
gate accepted, so their bundles are the recorded ones, not what this gate would have built.
Results: <name>_rejudged.json / .md beside the input (or under --out-dir).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.escalation import _pct, _rate  # noqa: E402
from benchmarks.report import cli, log, machine, md_table, write_results  # noqa: E402


def _key(row: dict[str, Any]) -> tuple[str, str, int]:
    return row["task_id"], row["condition"], row["round"]


def rejudge(results: dict[str, Any], gate_inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per recorded run: its recorded verdicts and gold, and the current gate's verdicts."""
    from distill.config import GateSettings
    from distill.records.replay import ContextBundle
    from runtime.gate import validate

    settings = GateSettings()
    inputs = {_key(g): g for g in gate_inputs}
    rows = []
    for run in results["runs"]:
        g = inputs.get(_key(run))
        if g is None:
            raise SystemExit(f"no recorded answer for {_key(run)}: the answers file is not this run's")
        bundle = ContextBundle.model_validate(g["bundle"])

        def judged(answer: str | None) -> tuple[bool, list[str]] | None:
            if answer is None:
                return None
            result = validate(answer, bundle, g["task"], settings)
            return result.passed, [c.name for c in result.checks if not c.passed]

        local, strong = judged(g["answer"]), judged(g["strong_answer"])
        rows.append({
            "task_id": run["task_id"], "family": run["family"], "condition": run["condition"], "round": run["round"],
            "correct": run["correct"], "strong_correct": run["strong_correct"],
            "was_passed": run["gate_passed"], "was_failed_checks": run["failed_checks"],
            "passed": bool(local and local[0]), "failed_checks": local[1] if local else ["error"],
            "strong_passed": None if strong is None else strong[0],
            "was_system_correct": run["system_correct"],
        })
    return rows


def system_outcome(row: dict[str, Any], local_only: bool) -> bool | None:
    """Did the system deliver a right answer under the current gate? None: the strong model was
    never asked (the recorded gate passed the local answer), so no one can say."""
    if row["passed"]:
        return bool(row["correct"])
    if local_only:
        return False
    if row["strong_passed"] is None:
        return None if row["was_passed"] else False
    return bool(row["strong_passed"] and row["strong_correct"])


def summarise(rows: list[dict[str, Any]], local_only: bool) -> dict[str, Any]:
    if not rows:
        return {"n": 0}
    n = len(rows)
    was, now = [r for r in rows if r["was_passed"]], [r for r in rows if r["passed"]]
    outcomes = [system_outcome(r, local_only) for r in rows]
    known = [o for o in outcomes if o is not None]
    return {
        "n": n,
        "escalation_rate_recorded": (n - len(was)) / n, "escalation_rate": (n - len(now)) / n,
        "local_accuracy": sum(r["correct"] for r in rows) / n,
        "gate_precision_recorded": _rate(sum(r["correct"] for r in was), len(was)),
        "gate_precision": _rate(sum(r["correct"] for r in now), len(now)),
        "false_accepts_recorded": sum(not r["correct"] for r in was), "false_accepts": sum(not r["correct"] for r in now),
        "system_accuracy_recorded": sum(r["was_system_correct"] for r in rows) / n,
        "system_accuracy_known": _rate(sum(known), len(known)), "system_unknown": len(outcomes) - len(known),
        "verdicts_changed": sum(r["passed"] != r["was_passed"] for r in rows),
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [f"### Escalation answers judged again: {r['source']}", "",
             f"Recorded at {r['recorded_commit']} ({r['recorded_when']}); judged again at {r['machine']['git_commit']}. "
             f"Local model {r['local_model']}, strong model {r['strong_model']}.", ""]
    rows = []
    for cond, by in r["conditions"].items():
        for fam, s in by.items():
            if s["n"]:
                rows.append([cond, fam, s["n"], f"{_pct(s['escalation_rate_recorded'])} -> {_pct(s['escalation_rate'])}",
                             _pct(s["local_accuracy"]),
                             f"{_pct(s['gate_precision_recorded'])} -> {_pct(s['gate_precision'])}",
                             f"{s['false_accepts_recorded']} -> {s['false_accepts']}",
                             f"{_pct(s['system_accuracy_recorded'])} -> {_pct(s['system_accuracy_known'])}"
                             + (f" ({s['system_unknown']} unknown)" if s["system_unknown"] else ""),
                             s["verdicts_changed"]])
    lines.append(md_table(["condition", "family", "n", "escalation", "local acc", "gate precision", "false accepts",
                           "system acc", "verdicts changed"], rows))
    if r["changed"]:
        lines += ["", "Changed verdicts (recorded -> now, the checks that failed):", ""]
        lines += [f"- {c['condition']} r{c['round']} `{c['task_id']}` (correct={int(c['correct'])}): "
                  f"{'pass' if c['was_passed'] else 'fail ' + ','.join(c['was_failed_checks'])} -> "
                  f"{'pass' if c['passed'] else 'fail ' + ','.join(c['failed_checks'])}" for c in r["changed"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="an escalation benchmark's results (.json), its _answers.jsonl beside it")
    ap.add_argument("--out-dir", type=Path, help="where <name>_rejudged.json/.md go (default: beside the results)")
    args = ap.parse_args(argv)
    answers = args.results.with_name(args.results.stem + "_answers.jsonl")
    if not args.results.is_file() or not answers.is_file():
        print(f"escalation_rejudge: error: needs {args.results} and {answers} (escalation.py writes both)", file=sys.stderr)
        return 2
    results = json.loads(args.results.read_text())
    gate_inputs = [json.loads(line) for line in answers.read_text().splitlines() if line.strip()]
    rows = rejudge(results, gate_inputs)
    local_only = bool(results.get("local_only"))
    conditions: dict[str, dict[str, Any]] = {}
    for cond in dict.fromkeys(r["condition"] for r in rows):
        picked = [r for r in rows if r["condition"] == cond]
        conditions[cond] = {"all": summarise(picked, local_only)}
        for fam in sorted({r["family"] for r in picked}):
            conditions[cond][fam] = summarise([r for r in picked if r["family"] == fam], local_only)
    out = {"suite": "escalation_rejudge", "source": args.results.name, "machine": machine(),
           "recorded_commit": results.get("machine", {}).get("git_commit"), "recorded_when": results.get("machine", {}).get("when"),
           "local_model": results.get("local_model"), "strong_model": results.get("strong_model"),
           "conditions": conditions, "changed": [r for r in rows if r["passed"] != r["was_passed"]]}
    md = markdown(out)
    write_results(args.out_dir or args.results.parent, args.results.stem + "_rejudged", out, md)
    log(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(main))
