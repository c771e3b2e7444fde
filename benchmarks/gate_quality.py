"""Gate quality: false-accept and false-reject rates of runtime.gate.validate on a labelled set.

    python benchmarks/gate_quality.py [--quick] [--data benchmarks/data/gate_labelled.jsonl]

The set (written by benchmarks/gate_set.py from the sample workspace) holds model answers with
the bundle and task they answer and a label: grounded answers should be accepted; hedging,
placeholder, ungrounded and prompt-echo ones rejected. The gate runs with the default GateSettings.
false-accept rate = rejected-labelled answers the gate passed / rejected-labelled answers;
false-reject rate = accept-labelled answers the gate failed / accept-labelled answers.
Results: benchmarks/results/gate_quality[_quick].json, .md, .png.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.report import RESULTS, cli, log, machine, md_table, pyplot, save_figure, write_results  # noqa: E402

DATA = REPO / "benchmarks" / "data" / "gate_labelled.jsonl"
KINDS = ("grounded", "hedging", "placeholder", "ungrounded", "echo")


def load(path: Path) -> list[dict[str, Any]]:
    from distill.jsonl import iter_json

    return [row for row in iter_json(path) if isinstance(row, dict)]


def evaluate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Run the gate on every item and count errors by kind and by failing check."""
    from distill.config import GateSettings
    from distill.records.replay import ContextBundle
    from runtime.gate import validate

    settings = GateSettings()
    per_item = []
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    failing_checks: dict[str, Counter[str]] = defaultdict(Counter)
    for it in items:
        result = validate(it["output"], ContextBundle.model_validate(it["bundle"]), it["task"], settings)
        failed = [c.name for c in result.checks if not c.passed]
        per_item.append({"id": it["id"], "kind": it["kind"], "label": it["label"], "passed": result.passed,
                         "failed_checks": failed, "note": it.get("note")})
        by_kind[it["kind"]]["n"] += 1
        by_kind[it["kind"]]["passed"] += int(result.passed)
        for name in failed:
            failing_checks[it["kind"]][name] += 1
    neg = [p for p in per_item if p["label"] == "reject"]
    pos = [p for p in per_item if p["label"] == "accept"]
    fa = sum(p["passed"] for p in neg)
    fr = sum(not p["passed"] for p in pos)
    return {
        "n": len(per_item),
        "n_accept_labelled": len(pos),
        "n_reject_labelled": len(neg),
        "false_accepts": fa,
        "false_rejects": fr,
        "false_accept_rate": fa / len(neg) if neg else None,
        "false_reject_rate": fr / len(pos) if pos else None,
        "by_kind": {k: {"n": c["n"], "gate_passed": c["passed"], "pass_rate": c["passed"] / c["n"]}
                    for k, c in sorted(by_kind.items())},
        "failing_checks_by_kind": {k: dict(v) for k, v in sorted(failing_checks.items())},
        "errors": [p for p in per_item if p["passed"] != (p["label"] == "accept")],
        "items": per_item,
    }


def markdown(r: dict[str, Any]) -> str:
    rows = []
    for kind in KINDS:
        k = r["by_kind"].get(kind)
        if not k:
            continue
        expected = "accept" if kind == "grounded" else "reject"
        wrong = k["n"] - k["gate_passed"] if expected == "accept" else k["gate_passed"]
        rows.append([kind, expected, k["n"], k["gate_passed"], wrong,
                     ", ".join(f"{c} {n}" for c, n in sorted(r["failing_checks_by_kind"].get(kind, {}).items()))])
    lines = [
        f"### Gate quality ({r['n']} labelled answers from the sample workspace)\n",
        md_table(["kind", "label", "n", "gate passed", "gate wrong", "failing checks"], rows),
        "",
        f"- false-accept rate: **{r['false_accept_rate']:.1%}** ({r['false_accepts']}/{r['n_reject_labelled']} "
        "hedging/placeholder/ungrounded/echo answers passed)",
        f"- false-reject rate: **{r['false_reject_rate']:.1%}** ({r['false_rejects']}/{r['n_accept_labelled']} grounded answers failed)",
    ]
    if r["errors"]:
        lines.append("- gate errors: " + "; ".join(f"`{e['id']}` ({e['note']})" for e in r["errors"][:12]))
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    kinds = [k for k in KINDS if k in r["by_kind"]]
    ax.bar(kinds, [r["by_kind"][k]["pass_rate"] for k in kinds],
           color=["#55a868" if k == "grounded" else "#c44e52" for k in kinds])
    ax.set_ylim(0, 1)
    ax.set_ylabel("gate pass rate")
    ax.set_title(f"gate on labelled answers: FA {r['false_accept_rate']:.0%}, FR {r['false_reject_rate']:.0%}")
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--quick", action="store_true", help="the same set (it takes well under a second); quick-named files")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    items = load(args.data)
    if not items:
        raise SystemExit(f"no labelled items in {args.data}: run python benchmarks/gate_set.py")
    result = {"suite": "gate_quality", "quick": args.quick, "data": str(args.data.relative_to(REPO))
              if args.data.is_relative_to(REPO) else str(args.data), "machine": machine(), **evaluate(items)}
    name = "gate_quality_quick" if args.quick else "gate_quality"
    md = markdown(result)
    write_results(args.out_dir, name, result, md)
    plot(result, args.out_dir / f"{name}.png")
    log(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(main))
