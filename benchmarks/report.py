"""Result writing shared by the benchmark suites: JSON + markdown table + PNG plots, and the
machine facts every result carries (so a number is never quoted without where it came from).

Writes go through distill.jsonl (atomic), plots through matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"


def bounded_int(low: int, high: int | None = None) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is less than {low}")
        return value

    parse.__name__ = "number"  # argparse names the type in its messages
    return parse


count = bounded_int(1)  # an argparse type: how many of something (at least 1)
niceness = bounded_int(0, 19)  # an argparse type: a process niceness the OS honours as given


def cli(main: Any) -> int:
    """Run a benchmark's main: a file or folder it cannot read or write is a one-line error (exit
    2), as in the distill CLI, not a traceback."""
    try:
        return int(main() or 0)
    except OSError as exc:
        from distill.command import os_error_message

        print(f"{Path(sys.argv[0]).name}: error: {os_error_message(exc)}", file=sys.stderr)
        return 2


def scaled_sources(kb: Path, rows: int) -> dict[str, Any]:
    """`rows` synthetic source rows in the sample's shape written to `kb` (data/sample/generate.py's
    `write_scaled`, prefix-stable: the sources of N + k rows are those of N with rows appended to
    each stream); what the generator reports of them."""
    sample = str(REPO / "data" / "sample")
    if sample not in sys.path:
        sys.path.insert(0, sample)
    import generate  # type: ignore[import-not-found]

    return generate.write_scaled(kb, rows)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    """Where and when: CPU count, load, Python, git commit (the figures are only comparable within one run)."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "when": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "loadavg_at_start": load,
        "git_commit": commit,
    }


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return "" if v is None else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(out_dir: Path, name: str, data: dict[str, Any], markdown: str) -> list[Path]:
    """<name>.json and <name>.md under out_dir, atomically."""
    from distill.jsonl import write_atomic

    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / f"{name}.json"
    md = out_dir / f"{name}.md"
    write_atomic(js, (json.dumps(data, indent=2, sort_keys=True, default=str) + "\n").encode())
    write_atomic(md, markdown.encode())
    return [js, md]


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported only when a suite plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> Path:
    """Save through a temporary name + rename, like every other output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    pyplot().close(fig)
    return path


def targets_line(targets: dict[str, bool]) -> str:
    """"Targets: name: **met**; name: **missed**" for a results markdown."""
    return "Targets: " + "; ".join(f"{k}: **{'met' if v else 'missed'}**" for k, v in targets.items())
