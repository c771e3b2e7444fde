"""The preference export's disk spill: records come back as written, buckets are stable, nothing stays behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from distill.export.spill import MAX_BUCKETS, Spill, bucket_count, bucket_of, merge_sorted


def test_records_come_back_in_order_and_by_offset(tmp_path: Path) -> None:
    with Spill(tmp_path) as spill:
        f = spill.records("rows")
        offsets = [f.append((i, "x" * i, {"n": i})) for i in range(50)]
        assert list(f) == [(i, "x" * i, {"n": i}) for i in range(50)]
        assert [f.read_at(o)[0] for o in reversed(offsets)] == list(range(49, -1, -1))
        with pytest.raises(RuntimeError, match="sealed"):
            f.append("late")  # a file being read takes no more rows
        assert list(spill.records("empty")) == []


@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 1000])
def test_a_batched_file_gives_its_records_back_in_order(tmp_path: Path, n: int) -> None:
    with Spill(tmp_path) as spill:
        f = spill.records("run", batch=256)
        records = [(i, f"row {i}", {"i": i}) for i in range(n)]
        assert {f.append(r) for r in records} <= {-1}
        assert list(f) == records and f.count == n
        assert list(f) == records  # read twice, same records
        with pytest.raises(RuntimeError, match="sealed"):
            f.append((n,))
        with pytest.raises(RuntimeError, match="in order only"):
            f.read_at(0)


def test_spill_folder_is_removed_even_on_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError), Spill(tmp_path) as spill:
        spill.records("a").append(1)
        raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_bucket_of_is_stable_across_processes() -> None:
    """Python's str hash is salted per process; a bucket must not be."""
    keys = ["task-1", "Ünïcode task", "", "a" * 500]
    here = [bucket_of(k, 13) for k in keys]
    code = f"from distill.export.spill import bucket_of; print([bucket_of(k, 13) for k in {keys!r}])"
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert there.strip() == repr(here)


def test_bucket_count_grows_with_input_and_is_capped() -> None:
    assert bucket_count(0) == 1 and bucket_count(10) == 1
    assert bucket_count(200 * 2**20) == 4
    assert bucket_count(10**15) == MAX_BUCKETS


def test_merge_keeps_run_order_on_ties() -> None:
    runs = [[(1, "a"), (3, "a")], [(1, "b"), (2, "b")]]
    assert list(merge_sorted(runs, key=lambda r: r[0])) == [(1, "a"), (1, "b"), (2, "b"), (3, "a")]


def test_a_killed_exports_spill_is_removed_by_the_next(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    orphan = tmp_path / f".spill-{dead}-abc"
    orphan.mkdir()
    (orphan / "payload.pkl").write_bytes(b"x")
    live = tmp_path / ".spill-1-keep"  # pid 1 is alive: another export's folder stays
    live.mkdir()
    with Spill(tmp_path) as spill:
        assert spill.root.name.startswith(".spill-") and spill.root.exists()
    assert not orphan.exists() and live.exists()
