"""The sample generator is byte-reproducible and the committed sample is its output."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


def _generator():
    spec = importlib.util.spec_from_file_location("sample_generate", SAMPLE / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_is_byte_reproducible_and_matches_committed_sample(tmp_path: Path) -> None:
    gen = _generator()
    gen.write(tmp_path / "a" / "_kb")
    gen.write(tmp_path / "b" / "_kb")
    names = sorted(p.name for p in (tmp_path / "a" / "_kb").iterdir())
    assert names == sorted(p.name for p in (SAMPLE / "_kb").iterdir())
    for name in names:
        a = (tmp_path / "a" / "_kb" / name).read_bytes()
        assert a == (tmp_path / "b" / "_kb" / name).read_bytes(), name
        assert a == (SAMPLE / "_kb" / name).read_bytes(), f"{name}: regenerate with python data/sample/generate.py"
    assert (tmp_path / "a" / "bad_rows.json").read_bytes() == (SAMPLE / "bad_rows.json").read_bytes()


def test_manifest_is_consistent_with_files() -> None:
    manifest = json.loads((SAMPLE / "bad_rows.json").read_text())
    for bad in manifest["bad_rows"]:
        lines = (SAMPLE / "_kb" / bad["file"]).read_bytes().split(b"\n")
        assert lines[bad["line_number"] - 1], bad
    big = [b for b in manifest["bad_rows"] if b["kind"] == "huge_line"]
    [huge] = big
    line = (SAMPLE / "_kb" / huge["file"]).read_bytes().split(b"\n")[huge["line_number"] - 1]
    assert len(line) > 2 * 1024 * 1024
    torn = [b for b in manifest["bad_rows"] if b["kind"] == "torn_line"]
    assert len(torn) == 1
    assert not (SAMPLE / "_kb" / torn[0]["file"]).read_bytes().endswith(b"\n")
