"""`distill serve` under load: concurrent clients against a real server process.

    python benchmarks/serve_load.py [--clients 8] [--requests 50] [--quick]

A workspace with a small real index (the runtime test playbooks, built by `distill index`'s own
path) is served by `distill serve` in its own process; the local model is a loopback
Ollama-protocol server (tests/ollama_server.py) that answers after a fixed delay, so the figures
are the server's own cost and behaviour, not a model's. Each client thread sends its requests
back to back with the official `openai` client (every third one streaming); a few requests per
client are abandoned mid-flight (a 50 ms client timeout) to check that a disconnect leaves no
half-written log line. Measured:
- outcomes: answers, 429/503 with Retry-After, anything else (must be 0);
- `_kb/replay_runs.jsonl` afterwards: every line a complete JSON object (torn = 0), one line per
  answered request's run id (lost = 0);
- the server's RSS sampled every 0.25 s: after warm-up, peak, at the end;
- latency of an answer and, for streamed ones, time to the first content chunk, beside the model's
  own time (the loopback's delay): the gate judges a whole answer before any of it is sent.
Results: benchmarks/results/serve_load[_quick].json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.report import RESULTS, bounded_int, cli, count, log, machine, md_table, targets_line, write_results  # noqa: E402
from distill.config import load_settings  # noqa: E402
from distill.jsonl import iter_raw_lines, write_jsonl_atomic  # noqa: E402
from distill.workspace import Workspace  # noqa: E402
from tests.fixtures_runtime import GROUNDED_ANSWER, LOCAL_MODEL, ROUTING_TASK, playbook_rows  # noqa: E402
from tests.ollama_server import OllamaLoopback, Reply  # noqa: E402

MODEL_DELAY_S = 0.05
ABANDON_EVERY = 17  # every 17th request of a client gives up after 50 ms


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def make_workspace(root: Path, ollama_url: str, max_queue: int, stream: str = "gated") -> Workspace:
    from index.build import run_index

    ws = Workspace(root)
    ws.kb_dir.mkdir(parents=True, exist_ok=True)
    (root / "distill.toml").write_text(
        f'[runtime]\nbackend = "ollama"\nollama_host = "{ollama_url}"\nollama_model = "{LOCAL_MODEL}"\ntimeout_s = 30\n\n'
        f'[serve]\nallow_escalation = false\nmax_queue = {max_queue}\nstream = "{stream}"\n'
    )
    write_jsonl_atomic(ws.rag_path, playbook_rows())
    run_index(ws, load_settings(root), progress=False)
    return ws


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> float:
    import httpx

    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"distill serve exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit("distill serve did not answer /healthz in time")


def client(url: str, n: int, index: int, out: list[dict[str, Any]]) -> None:
    from openai import APIStatusError, APITimeoutError, OpenAI

    api = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
    # seconds as a number: openai 3.63 builds its client on httpx2, which refuses an httpx.Timeout
    hasty = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=0.05)
    messages = [{"role": "user", "content": ROUTING_TASK}]
    for i in range(n):
        stream = i % 3 == 2
        abandon = i % ABANDON_EVERY == ABANDON_EVERY - 1
        rec: dict[str, Any] = {"client": index, "i": i, "stream": stream, "abandoned": abandon}
        t0 = time.perf_counter()
        try:
            if abandon:
                hasty.chat.completions.create(model="distill", messages=messages)
                rec["outcome"] = "answer"
            elif stream:
                first = None
                text, run_id = [], None
                for chunk in api.chat.completions.create(model="distill", messages=messages, stream=True):
                    if chunk.choices and chunk.choices[0].delta.content:
                        first = first or time.perf_counter() - t0
                        text.append(chunk.choices[0].delta.content)
                    run_id = (chunk.model_extra or {}).get("distill", {}).get("run_id") or run_id
                rec.update(outcome="answer", ttft_s=first, run_id=run_id, ok="".join(text) == GROUNDED_ANSWER)
            else:
                resp = api.chat.completions.create(model="distill", messages=messages)
                ext = resp.model_extra["distill"]
                rec.update(outcome="answer", run_id=ext["run_id"], timings_ms=ext.get("timings_ms", {}),
                           ok=resp.choices[0].message.content == GROUNDED_ANSWER)
        except APITimeoutError:
            rec["outcome"] = "abandoned" if abandon else "timeout"
        except APIStatusError as exc:
            retry = exc.response.headers.get("retry-after")
            rec["outcome"] = f"{exc.status_code}" + ("+retry-after" if retry else "")
        except Exception as exc:  # noqa: BLE001 - every other failure is a finding, recorded
            rec["outcome"] = f"error:{exc.__class__.__name__}"
        rec["latency_s"] = time.perf_counter() - t0
        out.append(rec)


def single_client_ttft(url: str, n: int) -> dict[str, Any]:
    """One client, streaming, back to back: time to the first content chunk against the server's own
    time in the local model (what the model costs) and in the whole replay run."""
    import httpx

    ttft, local, total = [], [], []
    body = {"model": "distill", "stream": True, "messages": [{"role": "user", "content": ROUTING_TASK}]}
    with httpx.Client(timeout=60) as http:
        for _ in range(n):
            t0 = time.perf_counter()
            first = None
            last: dict[str, Any] = {}
            with http.stream("POST", url + "/v1/chat/completions", json=body) as resp:
                for line in resp.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if first is None and event["choices"] and event["choices"][0]["delta"].get("content"):
                        first = time.perf_counter() - t0
                    last = event
            timings = last.get("distill", {}).get("timings_ms", {})
            ttft.append(first or 0.0)
            local.append(timings.get("local", 0.0) / 1000)
            total.append(timings.get("total", 0.0) / 1000)
    over = sorted(t - m for t, m in zip(ttft, local, strict=True))
    return {"requests": n, "ttft_s_p50": round(statistics.median(ttft), 4),
            "local_model_s_p50": round(statistics.median(local), 4), "replay_total_s_p50": round(statistics.median(total), 4),
            "ttft_minus_model_s_p50": round(statistics.median(over), 4), "ttft_minus_model_s_max": round(over[-1], 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=count, default=8)
    ap.add_argument("--requests", type=count, default=50, help="requests per client")
    ap.add_argument("--max-queue", type=bounded_int(0, 10_000), default=4, help="[serve] max_queue for the run (small, to see 429s)")
    ap.add_argument("--stream", choices=("gated", "live"), default="gated", help="[serve] stream for the run")
    ap.add_argument("--quick", action="store_true", help="3 clients x 6 requests (CI smoke)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.requests = 3, 6

    with OllamaLoopback(models=[LOCAL_MODEL]) as ollama, tempfile.TemporaryDirectory(prefix="distill-serve-") as tmp:
        ollama.set_default(Reply(content=GROUNDED_ANSWER, delay_s=MODEL_DELAY_S))
        ws = make_workspace(Path(tmp) / "ws", ollama.url, args.max_queue, args.stream)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("distill")), "serve", "--root", str(ws.root), "--port", str(port)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
        try:
            ready_s = wait_ready(url, proc)
            log(f"server ready in {ready_s:.2f}s (pid {proc.pid})")
            warm: list[dict[str, Any]] = []
            client(url, 3, -1, warm)  # warm-up: first query embedding, first model call
            alone = single_client_ttft(url, 5 if args.quick else 30)
            rss: list[tuple[float, int]] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    value = rss_bytes(proc.pid)
                    if value:
                        rss.append((time.perf_counter() - started, value))
                    stop.wait(0.25)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            records: list[dict[str, Any]] = []
            t0 = time.perf_counter()
            threads = [threading.Thread(target=client, args=(url, args.requests, c, records)) for c in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            time.sleep(0.5)  # let abandoned requests finish and log
            stop.set()
            sampler.join()
            proc.send_signal(signal.SIGTERM)
            exit_code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        lines = list(iter_raw_lines(ws.kb_dir / "replay_runs.jsonl"))
        torn, logged_ids = 0, []
        for raw in lines:
            try:
                row = json.loads(raw.data or b"") if raw.terminated else None
            except ValueError:
                row = None
            if not isinstance(row, dict):
                torn += 1
                continue
            logged_ids.append(row.get("run_id"))
        model_calls = len(ollama.chat_requests)

    outcomes: dict[str, int] = {}
    for r in records:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    answered = [r for r in records if r["outcome"] == "answer" and r.get("run_id")]
    logged = set(logged_ids)
    lost = sum(1 for r in answered if r["run_id"] not in logged)
    unclear = sum(v for k, v in outcomes.items() if k not in ("answer", "abandoned", "429+retry-after", "503+retry-after"))
    lat = sorted(r["latency_s"] for r in answered)
    ttft = sorted(r["ttft_s"] for r in answered if r.get("ttft_s"))
    after_warm = rss[0][1] if rss else 0
    stages = sorted({k for r in answered for k in r.get("timings_ms", {})})
    server_ms = {k: round(statistics.median(r["timings_ms"][k] for r in answered if k in r.get("timings_ms", {})), 2)
                 for k in stages}
    result = {
        "suite": "serve_load", "quick": args.quick, "clients": args.clients, "requests_per_client": args.requests,
        "max_queue": args.max_queue, "stream": args.stream, "model_delay_s": MODEL_DELAY_S, "server_ready_s": round(ready_s, 2),
        "wall_s": round(wall, 2), "outcomes": outcomes, "answers_wrong_text": sum(1 for r in answered if not r.get("ok", True)),
        "log_lines": len(lines), "torn_log_lines": torn, "lost_log_lines": lost, "duplicate_run_ids": len(logged_ids) - len(logged),
        "model_calls": model_calls, "unclear_responses": unclear, "single_client_stream": alone, "server_stage_ms_p50": server_ms,
        "latency_s": {"p50": round(statistics.median(lat), 4), "p95": round(lat[int(0.95 * (len(lat) - 1))], 4)} if lat else {},
        "stream_ttft_s": {"p50": round(statistics.median(ttft), 4), "p95": round(ttft[int(0.95 * (len(ttft) - 1))], 4)} if ttft else {},
        "rss_mib": {"after_warmup": round(after_warm / 2**20, 1), "peak": round(max(v for _, v in rss) / 2**20, 1) if rss else 0,
                    "end": round(rss[-1][1] / 2**20, 1) if rss else 0, "samples": len(rss)},
        "server_exit_code_after_sigterm": exit_code,
        "machine": machine(),
    }
    rs = result["rss_mib"]
    result["targets"] = {
        "0 torn log lines": torn == 0, "0 lost log lines": lost == 0,
        "every response an answer or a clear 429/503": unclear == 0,
        "one client: first chunk <= model time + 100 ms (p50)": alone["ttft_minus_model_s_p50"] <= 0.1,
        "RSS flat (end within 10% of after-warm-up)": bool(rs["after_warmup"]) and rs["end"] <= 1.1 * rs["after_warmup"],
    }
    name = "serve_load" + ("_live" if args.stream == "live" else "") + ("_quick" if args.quick else "")
    write_results(args.out_dir, name, result, markdown(result))
    print(markdown(result))
    return 0  # targets are reported, met or missed; a timing figure is not a reason to fail the command


def markdown(r: dict[str, Any]) -> str:
    rs = r["rss_mib"]
    lines = [
        f"# distill serve under load{' (quick)' if r['quick'] else ''}",
        "",
        f"{r['clients']} clients x {r['requests_per_client']} requests (openai client; every third streaming; every "
        f"{ABANDON_EVERY}th abandoned after 50 ms) against `distill serve` in its own process, `[serve] max_queue = "
        f"{r['max_queue']}`, `stream = \"{r.get('stream', 'gated')}\"`; the local model is a loopback Ollama server answering after {r['model_delay_s']} s. "
        f"Server ready {r['server_ready_s']} s after spawn; the run took {r['wall_s']} s.",
        "",
        md_table(["outcome", "count"], sorted(r["outcomes"].items())),
        "",
        md_table(["measure", "value"], [
            ["log lines / torn / lost / duplicate run ids", f"{r['log_lines']} / {r['torn_log_lines']} / {r['lost_log_lines']} / {r['duplicate_run_ids']}"],
            ["model calls", r["model_calls"]],
            ["one client, streaming: first chunk / model time / replay total p50 s",
             f"{r['single_client_stream']['ttft_s_p50']} / {r['single_client_stream']['local_model_s_p50']} / "
             f"{r['single_client_stream']['replay_total_s_p50']} (first chunk - model: p50 "
             f"{r['single_client_stream']['ttft_minus_model_s_p50']}, max {r['single_client_stream']['ttft_minus_model_s_max']})"],
            ["server-side ms by stage (p50, plain requests)", ", ".join(f"{k} {v}" for k, v in r["server_stage_ms_p50"].items())],
            ["answer latency p50 / p95 s", f"{r['latency_s'].get('p50')} / {r['latency_s'].get('p95')}"],
            ["streamed: first content chunk p50 / p95 s", f"{r['stream_ttft_s'].get('p50')} / {r['stream_ttft_s'].get('p95')}"],
            ["server RSS MiB after warm-up / peak / end", f"{rs['after_warmup']} / {rs['peak']} / {rs['end']} ({rs['samples']} samples)"],
            ["exit code after SIGTERM", r["server_exit_code_after_sigterm"]],
        ]),
        "",
        targets_line(r["targets"]),
        "",
        f"Machine: {r['machine']}",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(cli(main))
