"""Generator of the labelled gate set (benchmarks/data/gate_labelled.jsonl): model answers written
from the sample workspace, each with the bundle it was answered from and the label a careful
reviewer gives it.

    python benchmarks/gate_set.py            # rewrites benchmarks/data/gate_labelled.jsonl (deterministic)

Bases are accepted runs of the committed sample (data/sample/_kb): code reviews and support
scenarios. Each base gives a bundle (the run as an exemplar, its checklist as validation steps)
and four answers to the same task:
- grounded (label accept): cites the bundle's file or run, addresses the checklist, no hedging;
- hedging (reject): the same answer with a hedge — half from the gate's phrase list, half not,
  so the set measures what the list misses;
- placeholder (reject): the answer with an unfinished part (TODO, <insert ...>, TBD, ...);
- ungrounded (reject): cites a file or record that is not in the bundle, or answers generically
  without addressing the checklist;
- echo (reject): the model repeats its prompt instead of answering (the first ~400 characters of
  the prompt runtime.prompt renders for this task and bundle) — what the embedded 270M model did
  on every task of benchmarks/escalation.py.
The labels come from how each answer was written, not from running the gate.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SEED = 7
OUT = REPO / "benchmarks" / "data" / "gate_labelled.jsonl"
KB = REPO / "data" / "sample" / "_kb"

LISTED_HEDGES = ["This might be the cause, ", "It is hard to say, but ", "I'm not sure, but ", "It is possible that "]
UNLISTED_HEDGES = ["Possibly, ", "I think ", "Perhaps ", "It is unclear whether this matters, but "]
LISTED_PLACEHOLDERS = ["\n\nTODO: write the patch.", "\n\nPatch: <insert patch here>", "\n\nLorem ipsum dolor sit amet.",
                       "\n\n[placeholder for the validation plan]"]
UNLISTED_PLACEHOLDERS = ["\n\nPatch: TBD.", "\n\nXXX fill in the fix later.", "\n\nValidation: (to be written)",
                         "\n\nSteps: ..."]
GHOST_FILES = ["services/query/src/plan_cache.rs", "api/handlers/legacy_payments.py", "web/src/state/globalStore.ts",
               "services/storage/src/vacuum.rs"]


def _rows(name: str) -> list[dict[str, Any]]:
    out = []
    for line in (KB / f"{name}.jsonl").read_bytes().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            out.append(row)
    return out


EMPTY_BUNDLE: dict[str, Any] = {"exemplars": [], "warnings": [], "validation_steps": []}


def _echo(task: str, bundle: dict[str, Any], k: int) -> str:
    from distill.records.replay import ContextBundle
    from runtime.prompt import make_nonce, render

    b = ContextBundle.model_validate(bundle)
    messages = render(task, b, make_nonce(task, b))
    system, user = messages[0], messages[-1]
    return (system["content"] if k % 2 == 0 else user["content"])[:400]


def _item(base_id: str, kind: str, task: str, bundle: dict[str, Any], output: str, note: str) -> dict[str, Any]:
    return {"id": f"{base_id}:{kind}", "kind": kind, "label": "accept" if kind == "grounded" else "reject",
            "task": task, "bundle": bundle, "output": output, "note": note}


def _bundle(run_key: str, title: str, text: str, files: list[str], rng: random.Random) -> dict[str, Any]:
    from distill.hashing import sha256_hex
    from distill.records.replay import ContextBundle, RetrievedItem
    from distill.validation_steps import extract_validation_steps

    item = RetrievedItem(id=f"rag-{sha256_hex(run_key)[:16]}", score=round(rng.uniform(0.5, 0.9), 4), rank=1,
                         category="accepted", source_run_id=run_key, title=title, text=text, source_files=files)
    return ContextBundle(exemplars=[item], validation_steps=extract_validation_steps(text)[:10]).model_dump(mode="json")


def review_items(rng: random.Random, n: int) -> list[dict[str, Any]]:
    reviews = [r for r in _rows("scrum_reviews") if r.get("accepted") is True and "## Validation" in str(r.get("review"))]
    reviews.sort(key=lambda r: r["review_id"])
    items = []
    for k, r in enumerate(rng.sample(reviews, n)):
        path, text = r["file"], r["review"]
        run_key = f"scrum_reviews:{r['review_id']}"
        bundle = _bundle(run_key, f"Review of {path}", text, [path], rng)
        steps = bundle["validation_steps"]
        finding = next((ln for ln in text.splitlines() if ln.startswith("### 1.")), "### 1. the main finding")
        title = finding[len("### 1. "):].split(" — ")[0]
        task = f"Review `{path}` and report the most important finding, the fix, and how to validate it."
        cite = [f"`{path}`", f"`{path}`:{rng.randrange(20, 400)}", f"`{path}` (run {bundle['exemplars'][0]['id']})"][k % 3]
        plan = "\n".join(f"- {s}" for s in steps[:3])
        grounded = (f"The main problem in {cite} is: {title.lower()}. Apply the patch from the accepted review, "
                    f"keep the change local to this file, and validate it:\n{plan}")
        items.append(_item(r["review_id"], "grounded", task, bundle, grounded, "cites the bundle's file/run, checklist addressed"))
        hedge = (LISTED_HEDGES if k % 2 == 0 else UNLISTED_HEDGES)[k // 2 % 4]
        items.append(_item(r["review_id"], "hedging", task, bundle, hedge + grounded[0].lower() + grounded[1:],
                           f"hedge {'in' if k % 2 == 0 else 'NOT in'} the gate's phrase list: {hedge.strip()!r}"))
        ph = (LISTED_PLACEHOLDERS if k % 2 == 0 else UNLISTED_PLACEHOLDERS)[k // 2 % 4]
        items.append(_item(r["review_id"], "placeholder", task, bundle, grounded + ph,
                           f"placeholder {'matched by' if k % 2 == 0 else 'NOT matched by'} the gate's patterns: {ph.strip()!r}"))
        if k % 2 == 0:
            ghost = GHOST_FILES[k // 2 % len(GHOST_FILES)]
            bad = grounded.replace(cite, f"`{ghost}`")
            note = f"cites {ghost}, which is in neither the bundle nor the task"
        else:
            bad = ("The code could be improved with better error handling and more unit tests. Consider refactoring "
                   "the module for readability and adding logging where useful.")
            note = "generic answer: no citation, checklist not addressed"
        items.append(_item(r["review_id"], "ungrounded", task, bundle, bad, note))
        eb = bundle if k % 2 == 0 else EMPTY_BUNDLE
        items.append(_item(r["review_id"], "echo", task, eb, _echo(task, eb, k),
                           f"repeats the {'system' if k % 2 == 0 else 'user'} message of its prompt"
                           + ("" if k % 2 == 0 else " (answered without retrieval: empty bundle)")))
    return items


def scenario_items(rng: random.Random, n: int) -> list[dict[str, Any]]:
    runs = [r for r in _rows("outcomes") if r.get("all_events_ok") is True and r.get("gap_signals") == 0
            and "Confirm" in str(r.get("answer"))]
    runs.sort(key=lambda r: r["outcome_id"])
    items = []
    for k, r in enumerate(rng.sample(runs, n)):
        run_key = f"outcomes:{r['outcome_id']}"
        bundle = _bundle(run_key, r["scenario"], r["answer"], [], rng)
        rid = bundle["exemplars"][0]["id"]
        events = [e["event"] for e in r["events"]]
        task = f"A customer writes in: {r['scenario'].lower()}. What do you do, step by step?"
        grounded = (f"Follow the accepted playbook {rid}: " + ", then ".join(f"`{e}`" for e in events)
                    + ". Confirm the customer was notified through the account's preferred channel.")
        items.append(_item(r["outcome_id"], "grounded", task, bundle, grounded, "follows the cited playbook, checklist addressed"))
        hedge = (LISTED_HEDGES if k % 2 == 0 else UNLISTED_HEDGES)[(k + 1) % 4]
        items.append(_item(r["outcome_id"], "hedging", task, bundle, hedge + grounded[0].lower() + grounded[1:],
                           f"hedge {'in' if k % 2 == 0 else 'NOT in'} the gate's phrase list: {hedge.strip()!r}"))
        ph = (LISTED_PLACEHOLDERS if k % 2 == 0 else UNLISTED_PLACEHOLDERS)[(k + 1) % 4]
        items.append(_item(r["outcome_id"], "placeholder", task, bundle, grounded + ph,
                           f"placeholder {'matched by' if k % 2 == 0 else 'NOT matched by'} the gate's patterns: {ph.strip()!r}"))
        fake = f"rag-{rng.getrandbits(64):016x}"
        items.append(_item(r["outcome_id"], "ungrounded", task, bundle, grounded.replace(rid, fake),
                           f"cites playbook {fake}, which is not in the bundle"))
        eb = bundle if k % 2 == 0 else EMPTY_BUNDLE
        items.append(_item(r["outcome_id"], "echo", task, eb, _echo(task, eb, k),
                           f"repeats the {'system' if k % 2 == 0 else 'user'} message of its prompt"
                           + ("" if k % 2 == 0 else " (answered without retrieval: empty bundle)")))
    return items


def build() -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    return review_items(rng, 12) + scenario_items(rng, 4)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description='Rewrite benchmarks/data/gate_labelled.jsonl (deterministic).').parse_args(argv)  # --help; refuses stray arguments
    from distill.jsonl import write_jsonl_atomic

    items = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(OUT, items)
    print(f"{len(items)} labelled answers -> {OUT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
