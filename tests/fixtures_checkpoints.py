"""Shared by the checkpoint tests: generated streams and a counter of the rows a stage redoes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
ROWS = 1_500


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Source streams of ROWS rows, and the same streams grown by 2 % (prefix-stable)."""
    sys.path.insert(0, str(REPO / "data" / "sample"))
    import generate  # type: ignore[import-not-found]

    base = tmp_path_factory.mktemp("streams")
    generate.write_scaled(base / "small", ROWS)
    generate.write_scaled(base / "grown", ROWS + ROWS // 50)
    return base / "small", base / "grown"


class Calls:
    """How many times a module-level function was called (the rows a resumed stage redid)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
        self.rows = 0
        real = getattr(module, name)

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.rows += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)


def flip_byte_after(path: Path, marker: bytes) -> None:
    """Change the byte just after the first `marker` in the file, keeping its size (an edit that
    only a content hash can see)."""
    data = bytearray(path.read_bytes())
    at = data.index(marker) + len(marker)
    data[at] = ord("Q") if data[at] != ord("Q") else ord("R")
    path.write_bytes(bytes(data))


def assert_counted_as_written(ws: Any, stage: str) -> None:
    """The export's count of the quarantine file it wrote (what the receipt takes instead of
    reading it) is exactly what folding the file counts: size, hash, lines, reasons."""
    import xxhash

    from distill.fold_cache import WriterTally, fold_lines
    from distill.receipts import quarantine_reason

    path = ws.quarantine_path(stage)
    written = WriterTally.load(ws.quarantine_tally_path(stage))
    if not path.exists():
        assert written is None
        return
    assert written is not None, f"the {stage} export left no count of its quarantine file"
    data = path.read_bytes()
    folded = fold_lines(path, quarantine_reason)
    assert (written.size, written.xxh3) == (len(data), xxhash.xxh3_128(data).hexdigest())
    assert folded.torn is None and folded.bad == 0 and folded.nonblank == folded.lines
    assert written.tally() == folded
