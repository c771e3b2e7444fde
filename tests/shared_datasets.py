"""Where the shared public datasets are: ../shared/datasets beside the checkout (CI and a fresh
clone), else /work/shared/datasets (the development machine), else $DISTILL_SHARED_DATASETS."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_dataset(name: str) -> Path:
    """The first existing candidate for datasets/<name> (the first candidate when none exists,
    so a skip message names where it was looked for)."""
    candidates = [REPO.parent / "shared" / "datasets" / name, Path("/work/shared/datasets") / name]
    if os.environ.get("DISTILL_SHARED_DATASETS"):
        candidates.insert(0, Path(os.environ["DISTILL_SHARED_DATASETS"]) / name)
    return next((c for c in candidates if c.exists()), candidates[0])
