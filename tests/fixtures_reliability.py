"""Helpers for the reliability tests (issue 8): small real workspaces, CLI subprocesses, file checks.

Everything here drives the real CLIs in subprocesses (the way a user or a scheduler runs them),
so a crash, a lock or a torn write is the real thing, not a simulation inside one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SAMPLE_KB = REPO / "data" / "sample" / "_kb"
DISTILL = [sys.executable, "-c", "import sys; from distill.cli import main; sys.argv[0] = 'distill'; main()"]
REPLAY = [sys.executable, "-m", "runtime.cli"]
MODEL = "qwen2.5:7b-instruct"


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("DISTILL_ROOT", None)
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def run_cli(args: list[str], *, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, env=cli_env(**env), capture_output=True, text=True, timeout=timeout)


def small_workspace(root: Path, rows_per_stream: int = 6) -> Path:
    """ROOT/_kb with the first rows of every sample stream (good and planted bad rows alike)."""
    (root / "_kb").mkdir(parents=True)
    for f in sorted(SAMPLE_KB.glob("*.jsonl")):
        lines = f.read_bytes().splitlines(keepends=True)[:rows_per_stream]
        (root / "_kb" / f.name).write_bytes(b"".join(lines))
    return root


def tree_bytes(base: Path) -> dict[str, bytes]:
    """Files under base, lock files and hidden temp files aside."""
    if not base.is_dir():
        return {}
    return {
        p.relative_to(base).as_posix(): p.read_bytes()
        for p in sorted(base.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock") and not p.name.startswith(".")
    }


def jsonl_problems(base: Path) -> list[str]:
    """Every *.jsonl under base: terminated lines, each one JSON value."""
    problems = []
    for p in sorted(base.rglob("*.jsonl")):
        data = p.read_bytes()
        if data and not data.endswith(b"\n"):
            problems.append(f"{p}: torn tail")
        for n, line in enumerate(data.splitlines(), 1):
            if line.strip():
                try:
                    json.loads(line)
                except ValueError:
                    problems.append(f"{p}:{n}: not JSON")
    return problems


def write_runtime_toml(root: Path, url: str, *, timeout_s: float = 30, extra: str = "") -> None:
    (root / "distill.toml").write_text(
        f'[runtime]\nollama_host = "{url}"\nollama_model = "{MODEL}"\ntimeout_s = {timeout_s}\n{extra}'
    )


def json_from(output: str) -> Any:
    return json.loads(output[output.index("{") if "{" in output else 0 :])
