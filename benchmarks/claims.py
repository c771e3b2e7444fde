"""The gate on claims taken from real abstracts and turned round, every word still the abstract's.
Every sentence of PubMedQA (all 1,000 PQA-L abstracts) and of the SciFact corpus that

- compares two single words ("higher in men than in women", "lower in IMA compared with VG", "X was
  superior to Y", "surgery outperformed physiotherapy", "compared with X, Y had a higher risk") is given as the answer as the abstract says it
  (should pass), with its two sides swapped (should fail), and said from its other side with the
  opposite word ("lower in women than in men"; should pass);
- says "without" is given as it says it (should pass) and with its first "without" made "with"
  (should fail); one that says "with" and not "without", with its first "with" made "without"
  (should fail);
- denies a change with a verb ("did not reduce", "failed to improve") is given as it says it (should
  pass) and with the denial made the change ("reduced", "improved"; should fail).

A changed sentence the abstract also states is left out.

The abstract is the evidence; what is read is the gate's `support` check, the one that judges claims.

    python benchmarks/claims.py            # every such sentence
    python benchmarks/claims.py --quick    # the first 300 abstracts of each corpus

Sentences are built by pattern, so some are garbled English; the rates compare gates on the same
sentences (run it on two commits), they are not a recall on natural answers.
Results: benchmarks/results/claims[_quick].json/.md.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.gate_check import OPPOSITE_COMPARATIVE  # noqa: E402
from benchmarks.report import RESULTS, cli, log, machine, md_table, write_results  # noqa: E402
from benchmarks.suites import shared_dataset  # noqa: E402

_COMPARATIVE = r"(higher|lower|greater|more|less|fewer|better|worse|longer|shorter|larger|smaller)"
_LINK = r"(than|compared\s+with|compared\s+to|versus|vs\.?|relative\s+to|in\s+comparison\s+with)"
_ITEM = r"([a-z][a-z-]{2,})"
_PHRASE = r"([a-z][a-z-]{2,}(?:\s+(?!(?:than|compared|versus|vs|relative|in)\b)[a-z][a-z-]{2,})?)"
"""One or two words ("NSCLC patients"), never running into the link."""
PATTERNS = {
    # "higher [risk of] in men than in women", "lower in IMA compared with VG"
    "in_x_than_y": re.compile(_COMPARATIVE + r"\s+((?:[a-z-]+\s+){0,2}?)(in|among|with|for)\s+(?:the\s+)?" + _PHRASE + r"\s+"
                              + _LINK + r"\s+((?:in|among|with|for)\s+)?(?:the\s+)?" + _ITEM + r"\b", re.IGNORECASE),
    # "statins were significantly more effective than placebo"
    "x_was_than_y": re.compile(r"\b" + _ITEM + r"\s+(was|were|is|are|had)\s+((?:significantly\s+)?)" + _COMPARATIVE
                               + r"\s+((?:[a-z-]+\s+){0,2}?)" + _LINK + r"\s+" + _ITEM + r"\b", re.IGNORECASE),
    # "Compared with chloroquine, mefloquine users had a significantly higher risk"
    "compared_first": re.compile(r"\b(compared\s+(?:with|to))\s+(?:the\s+)?" + _PHRASE + r",\s+(?:the\s+)?" + _PHRASE
                                 + r"\s+(was|were|is|are|had|has|have|showed)\s+((?:a\s+)?(?:significantly\s+)?)" + _COMPARATIVE
                                 + r"\b", re.IGNORECASE),
    # "CT was superior to MRI"
    "superior_to": re.compile(r"\b" + _ITEM + r"\s+(was|were|is|are)\s+((?:significantly\s+)?)(superior|inferior)\s+to\s+"
                              + _ITEM + r"\b", re.IGNORECASE),
    # "surgery outperformed physiotherapy" (no converse: no opposite verb)
    "outperformed": re.compile(r"\b" + _ITEM + r"\s+(outperformed|exceeded|surpassed)\s+" + _ITEM + r"\b", re.IGNORECASE),
}
_NOT_AN_ITEM = frozenset("""the this that these those its their which who there they both each all and or than was were
    is are had has have also not only significantly in among with for during of to by on at from after before""".split())


def _link_group(link: str) -> str:
    return "than" if link.lower() == "than" else "compared with / versus / relative to"


def _variants(kind: str, m: re.Match[str]) -> tuple[str, str, str, str | None] | None:
    """(group, as written, swapped, converse) of one match; None where the two items are no two things.
    The group is the link's kind: "than", the other words that link after a comparative, or the form."""
    g = m.group
    if kind == "in_x_than_y":
        a, b, link = g(4), g(7), g(5)
        swapped = f"{g(1)} {g(2)}{g(3)} {b} {link} {g(6) or ''}{a}"
        converse = f"{OPPOSITE_COMPARATIVE[g(1).lower()]} {g(2)}{g(3)} {b} {link} {g(6) or ''}{a}"
        group = _link_group(link)
    elif kind == "x_was_than_y":
        a, b, link = g(1), g(7), g(6)
        swapped = f"{b} {g(2)} {g(3)}{g(4)} {g(5)}{link} {a}"
        converse = f"{b} {g(2)} {g(3)}{OPPOSITE_COMPARATIVE[g(4).lower()]} {g(5)}{link} {a}"
        group = _link_group(link)
    elif kind == "compared_first":
        b, a, group = g(2), g(3), "compared with X, Y ... (the link first)"
        swapped = f"{g(1)} {a}, {b} {g(4)} {g(5)}{g(6)}"
        converse = f"{g(1)} {a}, {b} {g(4)} {g(5)}{OPPOSITE_COMPARATIVE[g(6).lower()]}"
    elif kind == "superior_to":
        a, b, group = g(1), g(5), "superior/inferior to"
        swapped = f"{b} {g(2)} {g(3)}{g(4)} to {a}"
        converse = f"{b} {g(2)} {g(3)}{OPPOSITE_COMPARATIVE[g(4).lower()]} to {a}"
    else:
        a, b, group = g(1), g(3), "outperformed/exceeded/surpassed"
        swapped, converse = f"{b} {g(2)} {a}", None
    words = {*a.lower().split(), *b.lower().split()}
    if a.lower() == b.lower() or words & _NOT_AN_ITEM or any(w.endswith("ly") for w in words):
        return None
    return group, m.group(0), swapped, converse


def abstracts(quick: bool) -> Iterator[tuple[str, str, str]]:
    """(id, question or title, abstract) of PubMedQA's PQA-L and the SciFact corpus."""
    pubmedqa = json.loads((shared_dataset("pubmedqa_pqal") / "ori_pqal.json").read_text(encoding="utf-8"))
    for n, (pmid, row) in enumerate(sorted(pubmedqa.items())):
        if quick and n == 300:
            break
        yield f"pubmed:{pmid}", row["QUESTION"], " ".join(row["CONTEXTS"])
    with (shared_dataset("scifact") / "corpus.jsonl").open(encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            if quick and n == 300:
                break
            row = json.loads(line)
            yield f"scifact:{row['_id']}", row.get("title") or "", row.get("text") or ""


def _sentence_around(text: str, start: int, end: int) -> tuple[int, int]:
    """Where the sentence holding text[start:end] starts and ends."""
    cut = text.rfind(". ", 0, start)
    stop = text.find(". ", end)
    return (cut + 2 if cut >= 0 else 0), (stop + 1 if stop >= 0 else len(text))


def comparison_rows(quick: bool) -> list[dict[str, Any]]:
    """One row per comparison sentence: the sentence as written, swapped and said conversely."""
    rows: list[dict[str, Any]] = []
    for doc_id, task, text in abstracts(quick):
        seen: set[str] = set()
        for kind, pattern in PATTERNS.items():
            for m in pattern.finditer(text):
                made = _variants(kind, m)
                if made is None:
                    continue
                link, _, swapped, converse = made
                start, end = _sentence_around(text, m.start(), m.end())
                sentence = text[start:end].strip()
                if sentence in seen:
                    continue
                seen.add(sentence)
                variants = {"as_is": (sentence, "pass"), "swapped": (text[start:m.start()] + swapped + text[m.end():end], "fail")}
                if converse is not None:
                    variants["converse"] = (text[start:m.start()] + converse + text[m.end():end], "pass")
                rows.append({"id": doc_id, "task": task, "evidence": text, "group": link, "variants": variants})
    return rows


_WITHOUT, _WITH = re.compile(r"\bwithout\b"), re.compile(r"\bwith\b")
NEGATION_GROUPS = ('"without" made "with"', '"with" made "without"')


def without_rows(quick: bool) -> list[dict[str, Any]]:
    """One row per sentence that says "without" (as written, and with it made "with") or, not saying
    it, says "with" (made "without"); sentences under 40 characters and changes the abstract also
    states are left out."""
    rows: list[dict[str, Any]] = []
    for doc_id, task, text in abstracts(quick):
        seen: set[str] = set()
        for sentence in re.split(r"(?<=\.)\s+", text):
            sentence = sentence.strip()
            if len(sentence) < 40 or sentence in seen:
                continue
            seen.add(sentence)
            if _WITHOUT.search(sentence):
                group, changed = NEGATION_GROUPS[0], _WITHOUT.sub("with", sentence, count=1)
            elif _WITH.search(sentence):
                group, changed = NEGATION_GROUPS[1], _WITH.sub("without", sentence, count=1)
            else:
                continue
            if changed in text:
                continue
            rows.append({"id": doc_id, "task": task, "evidence": text, "group": group,
                         "variants": {"as_is": (sentence, "pass"), "changed": (changed, "fail")}})
    return rows


_PAST = {"increase": "increased", "decrease": "decreased", "reduce": "reduced", "lower": "lowered", "raise": "raised",
         "improve": "improved", "rise": "rose", "decline": "declined", "fall": "fell", "drop": "dropped",
         "diminish": "diminished", "elevate": "elevated"}
_DENIED = re.compile(r"\b(?:(?:did|does|do)\s+not|failed\s+to)\s+((?:significantly\s+)?)(" + "|".join(_PAST) + r")\b",
                     re.IGNORECASE)
DENIAL_GROUP = '"did not reduce" / "failed to reduce" made "reduced"'


def denial_rows(quick: bool) -> list[dict[str, Any]]:
    """One row per sentence that denies a change with a verb ("did not reduce", "does not
    significantly improve", "failed to increase"): as written, and with the denial made the change
    ("reduced", "significantly improved"), every other word the abstract's."""
    rows: list[dict[str, Any]] = []
    for doc_id, task, text in abstracts(quick):
        for m in _DENIED.finditer(text):
            start, end = _sentence_around(text, m.start(), m.end())
            changed = text[start:m.start()] + m.group(1) + _PAST[m.group(2).lower()] + text[m.end():end]
            if changed.strip() in text:
                continue
            rows.append({"id": doc_id, "task": task, "evidence": text, "group": DENIAL_GROUP,
                         "variants": {"as_is": (text[start:end], "pass"), "changed": (changed, "fail")}})
    return rows


def judge(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each variant's answer through the real gate, its abstract the one retrieved item."""
    from distill.config import GateSettings
    from distill.records.replay import ContextBundle, RetrievedItem
    from runtime.gate import validate

    settings = GateSettings()
    judged = []
    for row in rows:
        bundle = ContextBundle(exemplars=[RetrievedItem(id=row["id"], score=1.0, rank=1, category="accepted",
                                                        text=row["evidence"])])
        verdict: dict[str, Any] = {"id": row["id"], "group": row["group"]}
        for variant, (answer, should) in row["variants"].items():
            support = next(c for c in validate(answer.strip(), bundle, row["task"], settings).checks if c.name == "support")
            verdict[variant] = {"answer": answer.strip(), "should": should, "support_passed": support.passed,
                                "right": support.passed == (should == "pass"), "reason": support.reason}
        judged.append(verdict)
    return judged


def summarise(judged: list[dict[str, Any]], variants: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Per group (and "all"): sentences, and per variant how many the gate judged right, of how many."""
    out: dict[str, dict[str, int]] = {}
    for group in [*dict.fromkeys(v["group"] for v in judged), "all"]:
        rows = [v for v in judged if group in ("all", v["group"])]
        out[group] = {"sentences": len(rows)}
        for variant in variants:
            out[group][f"{variant}_n"] = sum(variant in v for v in rows)
            out[group][f"{variant}_right"] = sum(v[variant]["right"] for v in rows if variant in v)
    return out


def markdown(r: dict[str, Any]) -> str:
    def share(s: dict[str, int], variant: str) -> str:
        k, n = s[f"{variant}_right"], s[f"{variant}_n"]
        return f"{k}/{n} ({k / n:.0%})" if n else "-"

    comparisons = [[group, s["sentences"], share(s, "as_is"), share(s, "swapped"), share(s, "converse")]
                   for group, s in r["comparisons"].items()]
    negations = [[group, s["sentences"], share(s, "as_is"), share(s, "changed")] for group, s in r["negations"].items()]
    lines = [f"### Claims from real abstracts, turned round ({'quick' if r['quick'] else 'PubMedQA PQA-L + SciFact corpus'})",
             "", "Each sentence given as the answer with its abstract as the evidence; what is read is the gate's "
             "`support` check.", "",
             md_table(["comparison linked by", "sentences", "as written: support passes", "sides swapped: support fails",
                       "said from the other side: support passes"], comparisons), "",
             md_table(["negation", "sentences", "as written: support passes", "changed: support fails"], negations), "",
             f"- gate CPU {r['cpu_s']} s for {r['answers']} answers", f"- machine: {r['machine']}"]
    if r["swapped_passed_examples"]:
        lines += ["", "Swapped comparisons that passed (first few):", *[f"- {m}" for m in r["swapped_passed_examples"][:8]]]
    return "\n".join(lines) + "\n"


WRONG_KEPT = 300
"""Answers the gate judged wrong kept in the JSON (the counts are in the tables)."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    comparison_set, negation_set = comparison_rows(args.quick), without_rows(args.quick) + denial_rows(args.quick)
    started = time.process_time()
    comparisons, negations = judge(comparison_set), judge(negation_set)
    cpu = time.process_time() - started
    result = {"suite": "claims", "quick": args.quick, "machine": machine(),
              "comparisons": summarise(comparisons, ("as_is", "swapped", "converse")),
              "negations": summarise(negations, ("as_is", "changed")),
              "answers": sum(len(row["variants"]) for row in [*comparison_set, *negation_set]),
              "cpu_s": round(cpu, 2),
              "swapped_passed_examples": [v["swapped"]["answer"][:200] for v in comparisons if not v["swapped"]["right"]][:20],
              "wrong": [{"id": v["id"], "group": v["group"], "variant": k, **v[k]} for v in [*comparisons, *negations]
                        for k in ("as_is", "swapped", "converse", "changed") if k in v and not v[k]["right"]][:WRONG_KEPT]}
    md = markdown(result)
    write_results(args.out_dir, "claims" + ("_quick" if args.quick else ""), result, md)
    log(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(cli(main))
