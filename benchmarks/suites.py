"""Task suites for the escalation benchmark, all in one form (`--suite DIR`):

    tasks.jsonl   {"id", "task", "gold": str | [str], "judge": "exact"|"contains"|"choice"|"path", "family",
                   optional "choices": [str] (judge choice; default yes/no/maybe),
                   optional "exclude": [corpus _id] (documents that must never be retrieved for this task)}
    corpus.jsonl  {"_id", "title", "text", optional "category" (default accepted)}

Built-in suites are generated from real data into that form (deterministic: same data, same files),
each with two disjoint splits: `test` (what results report) and `dev` (what gate thresholds and
prompts may be tuned on):
- pubmedqa: expert-labelled PubMedQA (pqa-l) questions, gold yes/no/maybe; the corpus is every
  question's abstract (its contexts, without the conclusion that holds the answer);
- swebench: "which file must change to fix this issue?" for the issues a real coding agent
  resolved in its SWE-bench Lite run; gold = the files its accepted patch changed; the corpus is the
  other resolved instances' trajectories (issue + accepted patch), never the task's own;
- sample: the sample workspace's code reviews: "what severity does finding X in file Y get?"; gold
  = the severity the accepted reviews give it; the corpus is the sample's RAG export (collect ->
  score -> export), without the reviews of that file.
"""

from __future__ import annotations

import json
import random
import re
import tarfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SEVERITIES = ["info", "low", "medium", "high", "critical"]
YES_NO_MAYBE = ["yes", "no", "maybe"]
_DIFF_FILE = re.compile(r"^diff --git a/(\S+) b/", re.MULTILINE)
FAMILIES = ("pubmedqa", "swebench", "sample")


def shared_dataset(name: str) -> Path:
    """../shared/datasets beside the checkout, else /work/shared/datasets."""
    for base in (REPO.parent / "shared" / "datasets", Path("/work/shared/datasets")):
        if (base / name).exists():
            return base / name
    return REPO.parent / "shared" / "datasets" / name


def write_suite(folder: Path, tasks: Iterable[dict[str, Any]], corpus: Iterable[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tasks.jsonl").write_text("".join(json.dumps(t, sort_keys=True) + "\n" for t in tasks))
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d, sort_keys=True) + "\n" for d in corpus))
    return folder


def _spread(items: list[Any], n: int, key: Any) -> list[Any]:
    """n items, round-robin over the groups `key` puts them in (stable, deterministic)."""
    groups: dict[Any, list[Any]] = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    order = sorted(groups)
    out: list[Any] = []
    while len(out) < n and any(groups.values()):
        for g in order:
            if groups[g] and len(out) < n:
                out.append(groups[g].pop(0))
    return out


# ---------------------------------------------------------------------------------------------- pubmedqa


def pubmedqa(n: int, folder: Path | None = None, *, split: str = "test") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """n questions of the split (test: PubMedQA's own 500 test ids; dev: the other 500), labels
    spread yes/no/maybe as far as the data allows, lowest PMIDs first."""
    root = folder or shared_dataset("pubmedqa_pqal")
    data = json.loads((root / "ori_pqal.json").read_text())
    test_ids = set(json.loads((root / "test_ground_truth.json").read_text()))
    pmids = sorted(data, key=int)
    pool = [p for p in pmids if (p in test_ids) == (split == "test")]
    picked = _spread(pool, n, key=lambda p: YES_NO_MAYBE.index(data[p]["final_decision"]))
    tasks = [
        {
            "id": f"pubmedqa:{p}",
            "family": "pubmedqa",
            "judge": "choice",
            "choices": YES_NO_MAYBE,
            "gold": data[p]["final_decision"],
            "task": (f"{data[p]['QUESTION']}\nAnswer yes, no or maybe as the first word, then quote the sentence "
                     "of the evidence that decides it."),
        }
        for p in picked
    ]
    corpus = [
        {"_id": f"pubmed:{p}", "title": data[p]["QUESTION"], "text": " ".join(data[p]["CONTEXTS"])} for p in pmids
    ]
    return tasks, corpus


# ---------------------------------------------------------------------------------------------- swebench


def _trajectory_issues(tar_path: Path) -> dict[str, str]:
    """instance id -> issue text, from the first user turn of each .traj."""
    from distill.sources.swe_agent import problem_statement

    issues: dict[str, str] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".traj"):
                continue
            fh = tar.extractfile(member)
            if fh is None:
                continue
            try:
                doc = json.loads(fh.read())
            except ValueError:
                continue
            text = problem_statement(doc.get("history")) if isinstance(doc, dict) else None
            if text:
                issues[Path(member.name).stem] = text
    return issues


def swebench(
    n: int, folder: Path | None = None, *, split: str = "test", issue_chars: int = 800
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """n resolved instances of the split (every 4th instance is dev, the rest test)."""
    root = folder or shared_dataset("swebench_lite_coder")
    resolved = {
        row["instance_id"]
        for row in (json.loads(line) for line in (root / "labels.jsonl").read_text().splitlines() if line.strip())
        if row.get("resolved")
    }
    patches = {
        row["instance_id"]: row.get("model_patch") or ""
        for row in (json.loads(line) for line in (root / "all_preds.jsonl").read_text().splitlines() if line.strip())
    }
    issues = _trajectory_issues(root / "trajs.tar.gz")
    usable = sorted(i for i in resolved if i in issues and _DIFF_FILE.search(patches.get(i, "")))
    corpus = []
    for iid in usable:
        files = sorted(set(_DIFF_FILE.findall(patches[iid])))
        patch = patches[iid].strip()
        corpus.append({
            "_id": f"swe:{iid}",
            "title": f"{iid}: fixed in {', '.join(files)}",
            "text": f"Issue ({iid}):\n{issues[iid][:issue_chars]}\n\nAccepted fix changed {', '.join(files)}:\n{patch[:1000]}",
        })
    pool = [iid for k, iid in enumerate(usable) if (k % 4 == 3) == (split == "dev")]
    picked = _spread(pool, n, key=lambda i: i.split("__")[0])
    tasks = [
        {
            "id": f"swebench:{iid}",
            "family": "swebench",
            "judge": "path",
            "gold": sorted(set(_DIFF_FILE.findall(patches[iid]))),
            "exclude": [f"swe:{iid}"],
            "task": (f"Issue in {iid.split('__')[0]}/{iid.split('__')[1].rsplit('-', 1)[0]}:\n{issues[iid][:issue_chars]}\n\n"
                     "Which file must change to fix this issue? Answer with the file path, then one sentence on why."),
        }
        for iid in picked
    ]
    return tasks, corpus


# ---------------------------------------------------------------------------------------------- sample


def _severity_of(text: str, title: str) -> str | None:
    m = re.search(re.escape(title) + r"\s*—\s*severity:\s*([a-z]+)", text)
    return m.group(1) if m and m.group(1) in SEVERITIES else None


def sample(n: int, work: Path, *, split: str = "test") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Review tasks over the sample workspace, with its RAG export (built by the product) as corpus
    (every 3rd (file, finding) pair is dev, the rest test)."""
    from distill.cli.init_cmd import init_workspace
    from distill.collect import run_collect
    from distill.config import load_settings
    from distill.export import run_export
    from distill.jsonl import iter_json
    from distill.score import run_score
    from distill.workspace import Workspace

    init_workspace(work, sample=True)
    ws = Workspace.resolve(work)
    settings = load_settings(ws.root)
    run_collect(ws, settings)
    run_score(ws, settings)
    run_export(ws, settings, "rag")
    rows = [r for r in iter_json(ws.rag_path) if isinstance(r, dict)]
    corpus = [
        {"_id": r["id"], "title": r.get("title") or r["id"], "text": r["text"], "category": r["success_score"],
         "file": (r.get("source_files") or [""])[0], "task_id": r.get("task_id")}
        for r in rows
    ]
    # (file, finding title) -> severities the accepted scrum reviews give it
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in rows:
        if r.get("source_category") != "scrum_reviews" or r.get("success_score") != "accepted":
            continue
        for title in re.findall(r"### \d+\. (.+?) — severity:", r["text"]):
            sev = _severity_of(r["text"], title)
            if sev and r.get("source_files"):
                found[(r["source_files"][0], title)].add(sev)
    pairs = sorted((k, next(iter(v))) for k, v in found.items() if len(v) == 1 and not k[1].startswith("`"))
    pool = [pair for k, pair in enumerate(pairs) if (k % 3 == 2) == (split == "dev")]
    picked = _spread(pool, n, key=lambda kv: kv[0][1])
    tasks = []
    for (path, title), sev in picked:
        own = sorted(d["_id"] for d in corpus if d["file"] == path)
        tasks.append({
            "id": f"sample:{path}:{title}",
            "family": "sample",
            "judge": "choice",
            "choices": SEVERITIES,
            "gold": sev,
            "exclude": own,
            "task": (f"A review of `{path}` found: {title}. What severity should this finding get? Answer info, low, "
                     "medium, high or critical as the first word, then quote the earlier review that supports it."),
        })
    for d in corpus:
        d.pop("file", None)
        d.pop("task_id", None)
    return tasks, corpus


def build(family: str, n: int, out: Path, *, split: str = "test", work: Path | None = None) -> Path:
    """Generate one built-in suite into `out` (tasks.jsonl + corpus.jsonl)."""
    if split not in ("test", "dev"):
        raise ValueError(f"split must be test or dev, not {split!r}")
    if family == "pubmedqa":
        tasks, corpus = pubmedqa(n, split=split)
    elif family == "swebench":
        tasks, corpus = swebench(n, split=split)
    elif family == "sample":
        tasks, corpus = sample(n, work or out / "workspace", split=split)
    else:
        raise ValueError(f"unknown suite {family!r} (built-in: {', '.join(FAMILIES)})")
    return write_suite(out, tasks, corpus)


def load_suite(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """tasks and corpus of a suite folder, validated enough to fail early with a clear message."""
    problems: list[str] = []
    tasks = [json.loads(line) for line in (folder / "tasks.jsonl").read_text().splitlines() if line.strip()]
    corpus = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines() if line.strip()]
    for t in tasks:
        missing = [k for k in ("id", "task", "gold", "judge", "family") if k not in t]
        if missing or t.get("judge") not in ("exact", "contains", "choice", "path"):
            problems.append(f"task {t.get('id')}: missing {missing} or bad judge {t.get('judge')!r}")
    for d in corpus:
        if not all(k in d for k in ("_id", "title", "text")):
            problems.append(f"corpus row {d.get('_id')}: needs _id, title, text")
    if problems:
        raise SystemExit(f"{folder}: not a suite: " + "; ".join(problems[:5]))
    return tasks, corpus


def split_rounds(tasks: list[dict[str, Any]], rounds: int, seed: int = 0) -> list[list[dict[str, Any]]]:
    """Disjoint rounds, each with every family in the same proportion (seeded shuffle per family)."""
    out: list[list[dict[str, Any]]] = [[] for _ in range(rounds)]
    by_family: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for t in tasks:
        by_family[t["family"]].append(t)
    for fam in sorted(by_family):
        items = by_family[fam][:]
        random.Random(seed).shuffle(items)
        for i, t in enumerate(items):
            out[i % rounds].append(t)
    return out
