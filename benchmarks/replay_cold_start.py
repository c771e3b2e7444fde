"""Cold start of `replay`: wall time from process start to the first backend call.

Measured from outside, with nothing in the product instrumented: the benchmark starts a loopback
Ollama-protocol server (tests/ollama_server.py) that timestamps every request, spawns
`python -m runtime.cli --task ...` against it, and reports
- first_call_s: spawn -> the first request to the backend (the /api/tags model check),
- first_chat_s: spawn -> the /api/chat request (prompt sent),
- total_s: spawn -> process exit,
for the baseline (--no-retrieval: no index stack imported) and with hybrid retrieval over a small
real index (sentence-transformers + Chroma + BM25 load). Results: benchmarks/results/replay_cold_start.{json,md}.

    .venv/bin/python benchmarks/replay_cold_start.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.report import cli, count  # noqa: E402
from distill.config import load_settings  # noqa: E402
from distill.jsonl import write_atomic, write_jsonl_atomic  # noqa: E402
from distill.workspace import Workspace  # noqa: E402
from tests.fixtures_runtime import GROUNDED_ANSWER, LOCAL_MODEL, ROUTING_TASK, playbook_rows  # noqa: E402
from tests.ollama_server import OllamaLoopback, Reply  # noqa: E402

HEAVY = ("torch", "sentence_transformers", "chromadb", "transformers", "openai", "xllamacpp", "ollama")


def make_workspace(root: Path, server_url: str, *, with_index: bool) -> Workspace:
    ws = Workspace(root)
    ws.kb_dir.mkdir(parents=True, exist_ok=True)
    (root / "distill.toml").write_text(
        f'[runtime]\nollama_host = "{server_url}"\nollama_model = "{LOCAL_MODEL}"\ntimeout_s = 30\n'
    )
    if with_index:
        from index.build import run_index

        write_jsonl_atomic(ws.rag_path, playbook_rows())
        run_index(ws, load_settings(root), progress=False)
    return ws


def one_run(srv: OllamaLoopback, ws: Workspace, *, retrieval: bool) -> dict[str, float]:
    with srv.state.lock:
        srv.state.requests.clear()
    args = [sys.executable, "-m", "runtime.cli", "--root", str(ws.root), "--task", ROUTING_TASK, "--backend", "ollama", "--json"]
    if not retrieval:
        args.append("--no-retrieval")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    start = time.time()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, env=env, timeout=300)
    end = time.time()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"replay failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    reqs = list(srv.state.requests)
    first = min(r.at for r in reqs)
    chat = min(r.at for r in reqs if r.path == "/api/chat")
    return {"first_call_s": first - start, "first_chat_s": chat - start, "total_s": end - start}


def import_cost() -> dict[str, object]:
    """Seconds to import the CLI module, and which heavy modules that import pulls in (should be none)."""
    code = (
        "import time, sys; t = time.perf_counter(); import runtime.cli; dt = time.perf_counter() - t; "
        f"print(dt, [m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    seconds, _, loaded = out.strip().partition(" ")
    return {"import_runtime_cli_s": float(seconds), "heavy_modules_after_import": loaded}


def python_startup() -> float:
    start = time.time()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.time() - start


def summarise(samples: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = samples[0].keys()
    return {
        k: {"median": statistics.median(s[k] for s in samples), "min": min(s[k] for s in samples), "max": max(s[k] for s in samples)}
        for k in keys
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=count, default=5)
    ap.add_argument("--quick", action="store_true", help="one repeat each (CI smoke)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats

    results: dict[str, object] = {
        "benchmark": "replay_cold_start",
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_1m_at_start": os.getloadavg()[0],
        "repeats": repeats,
        "python_startup_s": python_startup(),
        **import_cost(),
    }
    with OllamaLoopback(models=[LOCAL_MODEL]) as srv, tempfile.TemporaryDirectory() as tmp:
        srv.set_default(Reply(content=GROUNDED_ANSWER))
        base_ws = make_workspace(Path(tmp) / "baseline", srv.url, with_index=False)
        idx_ws = make_workspace(Path(tmp) / "indexed", srv.url, with_index=True)
        one_run(srv, idx_ws, retrieval=True)  # warm the OS page cache once; every measured run is a new process
        scenarios = {
            "baseline_no_retrieval": [one_run(srv, base_ws, retrieval=False) for _ in range(repeats)],
            "hybrid_retrieval": [one_run(srv, idx_ws, retrieval=True) for _ in range(repeats)],
        }
    results["scenarios"] = {name: summarise(s) for name, s in scenarios.items()}
    results["load_avg_1m_at_end"] = os.getloadavg()[0]

    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "replay_cold_start.json", json.dumps(results, indent=2).encode() + b"\n")
    lines = [
        "# replay cold start",
        "",
        f"Process start -> first backend request, measured by a loopback Ollama server; {repeats} run(s) each, "
        f"{results['cpus']} CPUs, load average {results['load_avg_1m_at_start']:.1f} at start. "
        f"Python startup alone: {results['python_startup_s']:.3f} s; `import runtime.cli`: "
        f"{results['import_runtime_cli_s']:.3f} s (heavy modules loaded: {results['heavy_modules_after_import']}).",
        "",
        "| scenario | first backend call (s, median) | prompt sent (s, median) | process total (s, median) |",
        "|---|---|---|---|",
    ]
    for name, s in results["scenarios"].items():  # type: ignore[union-attr]
        lines.append(f"| {name} | {s['first_call_s']['median']:.3f} | {s['first_chat_s']['median']:.3f} | {s['total_s']['median']:.3f} |")
    write_atomic(args.out / "replay_cold_start.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(cli(main))
