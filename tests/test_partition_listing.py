"""workspace.iter_partition_files lists with scandir what `base.glob("*/*/*/*.jsonl")` filtered by
`is_file()` finds, in the same order, whatever the tree holds (hidden names, odd characters, files
where folders belong, links to files and folders, dangling links)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from distill.workspace import iter_partition_files

NAMES = ["a", "a-b", "a.b", ".h", "01", "1", "Z", "a b", "é"]


def _by_glob(base: Path) -> list[Path]:
    if not base.exists():
        return []
    return sorted(p for p in base.glob("*/*/*/*.jsonl") if p.is_file())


@pytest.mark.parametrize("seed", range(4))
def test_the_listing_is_what_glob_finds(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(200):
        folder = tmp_path / rng.choice(NAMES) / rng.choice(NAMES) / rng.choice(NAMES)
        folder.mkdir(parents=True, exist_ok=True)
        leaf = folder / (rng.choice(NAMES) + rng.choice([".jsonl", ".json", ".jsonl.tmp", "", ".JSONL"]))
        if not leaf.exists():
            if rng.random() < 0.1:
                leaf.mkdir()
            else:
                leaf.write_text("x")
    day = tmp_path / "a" / "a" / "a"
    day.mkdir(parents=True, exist_ok=True)
    (day / "s.jsonl").write_text("x")
    os.symlink(day, tmp_path / "a" / "a" / "linked-day")
    os.symlink(day / "s.jsonl", day / "linked.jsonl")
    os.symlink(tmp_path / "nowhere", day / "dangling.jsonl")
    os.symlink(tmp_path / "a", tmp_path / "linked-year")
    (tmp_path / "x.jsonl").write_text("x")
    (tmp_path / "a" / "shallow.jsonl").write_text("x")

    found = iter_partition_files(tmp_path)
    assert found == _by_glob(tmp_path)
    assert day / "linked.jsonl" in found and day / "dangling.jsonl" not in found


def test_a_missing_base_or_a_file_lists_nothing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert iter_partition_files(tmp_path / "missing") == [] == iter_partition_files(tmp_path / "file")


@pytest.mark.parametrize("year", [1, 42, 999, 1968, 9999])
def test_a_partition_folder_has_four_year_digits_and_sorts_by_date(tmp_path: Path, year: int) -> None:
    """A row dated 0001-01-01 (the zero time some loggers write) went to evidence/1/01/01: a
    folder the workspace check does not know as a partition, sorted after 1000/ and before 2/."""
    from datetime import UTC, datetime

    from distill.workspace import PARTITION_FOLDER, partition_path

    when = datetime(year, 3, 4, tzinfo=UTC)
    path = partition_path(tmp_path, when, "s")
    assert path.relative_to(tmp_path).parts == (f"{year:04d}", "03", "04", "s.jsonl")
    assert all(p.fullmatch(name) for p, name in zip(PARTITION_FOLDER, path.relative_to(tmp_path).parts[:3]))
    later = partition_path(tmp_path, datetime(2026, 1, 1, tzinfo=UTC), "s")
    assert sorted([later, path]) == ([path, later] if year < 2026 else [later, path])
