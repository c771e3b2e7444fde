"""Load a BEIR-format folder: corpus.jsonl {_id,title,text}, queries.jsonl {_id,text}, qrels/test.tsv."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATASET_CANDIDATES = (Path("/work/shared/datasets/scifact"), REPO.parent / "shared" / "datasets" / "scifact")


@dataclass
class BeirDataset:
    name: str
    corpus: dict[str, tuple[str, str]]  # id -> (title, text)
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def default_dataset() -> Path:
    for cand in DEFAULT_DATASET_CANDIDATES:
        if (cand / "corpus.jsonl").exists():
            return cand
    raise SystemExit("SciFact not found at /work/shared/datasets/scifact or ../shared/datasets/scifact: pass --dataset DIR")


def resolve_dataset(arg: str | None) -> Path:
    if arg is None:
        return default_dataset()
    p = Path(arg)
    for cand in (p, REPO / p, Path.cwd() / p):
        if (cand / "corpus.jsonl").exists():
            return cand.resolve()
    raise SystemExit(f"{arg}: not a BEIR folder (needs corpus.jsonl, queries.jsonl, qrels/test.tsv)")


def load_beir(folder: Path, split: str = "test") -> BeirDataset:
    corpus: dict[str, tuple[str, str]] = {}
    with open(folder / "corpus.jsonl", "rb") as fh:
        for line in fh:
            if line.strip():
                row = orjson.loads(line)
                corpus[str(row["_id"])] = (row.get("title") or "", row.get("text") or "")
    queries: dict[str, str] = {}
    with open(folder / "queries.jsonl", "rb") as fh:
        for line in fh:
            if line.strip():
                row = orjson.loads(line)
                queries[str(row["_id"])] = row["text"]
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / f"{split}.tsv", newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t")
        for row in reader:
            if not row or row[0] == "query-id":
                continue
            qid, did, score = row[0], row[1], int(row[2])
            qrels.setdefault(qid, {})[did] = score
    qrels = {q: r for q, r in qrels.items() if q in queries}
    return BeirDataset(name=folder.name, corpus=corpus, queries=queries, qrels=qrels)
