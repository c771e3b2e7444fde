"""`replay --check` on real grounded answers: PubMedQA long answers with their own abstracts (should
pass) and with another question's abstract (should fail).

    python benchmarks/gate_check.py              # the 500 PubMedQA test questions
    python benchmarks/gate_check.py --split dev  # the other 500 (where the support thresholds were chosen)
    python benchmarks/gate_check.py --quick      # 60 questions

Each expert-written conclusion (LONG_ANSWER) becomes an answer to its question, once with the
question's own contexts as the evidence and once with the contexts of another question (the next
one in PMID order): the files are written in the `replay --check` input form and run through the
real command, so what is measured is what a user gets. Targets: >= 90% of grounded answers pass,
>= 90% of mismatched ones fail. Per check, how many of each it failed. Then fabricated figures: the
grounded answers with their first figure the abstract holds changed (in digits, in words), unchanged
but in words, or put in another time unit, and with a change they state as the abstract does
("reduced 30-day mortality") turned the other way round; counted where the unaltered answer passes.
Results: benchmarks/results/gate_check[_quick|_dev].json/.md.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.report import RESULTS, cli, log, machine, md_table, write_results  # noqa: E402
from benchmarks.suites import shared_dataset  # noqa: E402


def build(split: str, limit: int | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    root = shared_dataset("pubmedqa_pqal")
    data = json.loads((root / "ori_pqal.json").read_text())
    test_ids = set(json.loads((root / "test_ground_truth.json").read_text()))
    pmids = [p for p in sorted(data, key=int) if (p in test_ids) == (split == "test")][:limit]
    grounded, mismatched = [], []
    for i, p in enumerate(pmids):
        q = data[p]
        other = data[pmids[(i + 1) % len(pmids)]]
        answer = q["LONG_ANSWER"]
        grounded.append({"id": f"{p}:own", "task": q["QUESTION"], "answer": answer,
                         "context": [{"id": f"pubmed:{p}:{k}", "text": t} for k, t in enumerate(q["CONTEXTS"])]})
        mismatched.append({"id": f"{p}:other", "task": q["QUESTION"], "answer": answer,
                           "context": [{"id": f"other:{k}", "text": t} for k, t in enumerate(other["CONTEXTS"])]})
    return grounded, mismatched


_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
# a whole number from 11 to 998 standing alone (not inside 1.5, 2,300, 3e-4, H100, 25(OH)D, 32-A1 or a path)
_INTEGER = re.compile(r"(?<![\w.,/-])([1-9]\d{1,2})(?![\w.,/(]|-[A-Z\d])")


def spelled(n: int) -> str:
    """11..999 in words, as an author writes them: "two hundred and twelve", "forty-five"."""
    hundreds, rest = divmod(n, 100)
    words = [f"{_ONES[hundreds]} hundred"] if hundreds else []
    if rest:
        tens, ones = divmod(rest, 10)
        small = _ONES[rest] if rest < 20 else _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
        words.append(("and " if hundreds else "") + small)
    return " ".join(words)


def states(evidence: str, n: int) -> bool:
    """`evidence` holds the whole number n (not as a part of 1.5, 2,300 or 130)."""
    return re.search(rf"(?<![\w.,]){n}(?![\w.,]\d)", evidence) is not None


def altered(grounded: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """From each grounded answer whose first stand-alone whole number (11-998) its own evidence
    holds: that figure changed (to the next number the evidence does not state) in digits, changed in
    words, and unchanged but in words. The first two invent a figure and should fail; the third
    says what the evidence says."""
    out: dict[str, list[dict[str, Any]]] = {"changed_digits": [], "changed_words": [], "same_words": []}
    for row in grounded:
        evidence = row["task"] + "\n" + "\n".join(c["text"] for c in row["context"])
        m = next((m for m in _INTEGER.finditer(row["answer"]) if 10 < int(m.group(1)) < 999
                  and states(evidence, int(m.group(1)))), None)
        if m is None or int(m.group(1)) > 900:
            continue
        n = int(m.group(1))
        # the changed figure is one the evidence does not state (30 -> 32 where the abstract also says 31)
        changed = next((k for k in range(n + 1, n + 100) if not states(evidence, k)), None)
        if changed is None:
            continue
        for kind, text in (("changed_digits", str(changed)), ("changed_words", spelled(changed)),
                           ("same_words", spelled(n))):
            answer = row["answer"][:m.start()] + text + row["answer"][m.end():]
            out[kind].append({**row, "id": f"{row['id']}:{kind}", "answer": answer})
    return out


_TIME_FIGURE = re.compile(r"(?<![\w.,])(\d+)(\s|-)(day|week|month|year|hour|minute)(s?)\b", re.IGNORECASE)
_OTHER_UNIT = {"day": "week", "week": "month", "month": "year", "year": "month", "hour": "day", "minute": "hour"}


def unit_changed(grounded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """From each grounded answer with a figure in days, weeks, months, years, hours or minutes that
    its evidence states in the same unit: that figure in the next unit (30-day -> 30-week). The
    number is the evidence's, the claim is not: it should fail."""
    out = []
    for row in grounded:
        evidence = row["task"] + "\n" + "\n".join(c["text"] for c in row["context"])
        for m in _TIME_FIGURE.finditer(row["answer"]):
            same = rf"(?<![\w.,]){m.group(1)}[\s-]{m.group(3)}s?\b"
            other = rf"(?<![\w.,]){m.group(1)}[\s-]{_OTHER_UNIT[m.group(3).lower()]}s?\b"
            if re.search(same, evidence, re.IGNORECASE) and not re.search(other, evidence, re.IGNORECASE):
                unit = _OTHER_UNIT[m.group(3).lower()]
                answer = row["answer"][:m.start(3)] + unit + row["answer"][m.end(3):]
                out.append({**row, "id": f"{row['id']}:unit_changed", "answer": answer})
                break
    return out


_OPPOSITE = {"reduced": "increased", "reduces": "increases", "reduce": "increase", "reducing": "increasing",
             "decreased": "increased", "decreases": "increases", "decrease": "increase", "decreasing": "increasing",
             "increased": "decreased", "increases": "decreases", "increase": "decrease", "increasing": "decreasing",
             "higher": "lower", "lower": "higher", "more": "less", "less": "more", "greater": "smaller", "fewer": "more"}
_CHANGE = re.compile(r"\b(" + "|".join(_OPPOSITE) + r")\s+(?:(?:the|a|an)\s+)?([a-z0-9][a-z0-9-]*)", re.IGNORECASE)


def direction_flipped(grounded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """From each grounded answer with a change word ("reduced", "higher", "more", ...) whose next word
    follows the same change word in its evidence, and never the opposite one: that word turned into
    its opposite ("reduced 30-day mortality" -> "increased 30-day mortality"). Every word and figure
    is still the evidence's; the claim is reversed: it should fail."""
    out = []
    for row in grounded:
        evidence = "\n".join(c["text"] for c in row["context"])
        for m in _CHANGE.finditer(row["answer"]):
            word, after = m.group(1).lower(), re.escape(m.group(2))
            opposite = _OPPOSITE[word]
            said = rf"\b{{}}\s+(?:(?:the|a|an)\s+)?{after}\b"
            if (re.search(said.format(word), evidence, re.IGNORECASE)
                    and not re.search(said.format(opposite), evidence, re.IGNORECASE)):
                turned = opposite.capitalize() if m.group(1)[0].isupper() else opposite
                answer = row["answer"][:m.start(1)] + turned + row["answer"][m.end(1):]
                out.append({**row, "id": f"{row['id']}:direction_flipped", "answer": answer})
                break
    return out


_VERB_OPPOSITE = {"reduced": "increased", "decreased": "increased", "increased": "decreased", "lowered": "raised",
                  "raised": "lowered"}
_NOT_A_NOUN = frozenset("with from over after during their this that those these when were than into both each".split())
_ACTIVE = re.compile(r"\b(" + "|".join(_VERB_OPPOSITE) + r")\s+(?:the\s+)?(?:[\w-]*\d[\w-]*\s+)?([a-z][a-z-]{3,})\b",
                     re.IGNORECASE)


def restated(grounded: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """From each grounded answer whose evidence states a change actively ("statins reduced 30-day
    mortality") and never the opposite change of that noun: the answer with one sentence added
    that restates it in the passive ("Mortality was reduced.", should pass) or turns it round
    ("Mortality was increased.", should fail). Every word is the evidence's; only the claim differs."""
    out: dict[str, list[dict[str, Any]]] = {"restated_same": [], "restated_flipped": []}
    for row in grounded:
        evidence = "\n".join(c["text"] for c in row["context"])
        for m in _ACTIVE.finditer(evidence):
            verb, noun = m.group(1).lower(), m.group(2).lower()
            opposite = _VERB_OPPOSITE[verb]
            if noun in _NOT_A_NOUN or re.search(
                    rf"\b{opposite}\s+(?:\S+\s+){{0,2}}{re.escape(noun)}\b|\b{re.escape(noun)}\s+(?:\S+\s+){{0,3}}{opposite}\b",
                    evidence, re.IGNORECASE):
                continue
            for kind, said in (("restated_same", verb), ("restated_flipped", opposite)):
                answer = f"{row['answer'].rstrip()} {noun.capitalize()} was {said}."
                out[kind].append({**row, "id": f"{row['id']}:{kind}", "answer": answer})
            break
    return out


_SENTENCE = re.compile(r"[^.?!]+[.?!]")
_NEGATOR = re.compile(r"\b(not|no|never)\b", re.IGNORECASE)
_AUXILIARY = re.compile(r"\b(was|were|is|are)\s+(?=[a-z])", re.IGNORECASE)


def negation_quoted(grounded: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """From each grounded answer whose abstract has a plain sentence (8-40 words) with one negation
    three or more words from either end: the answer with that sentence quoted after it as is (should
    pass), with its negation left out ("not"/"never" dropped, "no" turned into "a" or "some": should
    fail), and, from a sentence with no negation and a "was/were/is/are", with a "not" put after it
    (should fail). Every other word of the quote is the abstract's, so the quote check (80 % of its
    word 3-grams) passes it; only the claim differs."""
    out: dict[str, list[dict[str, Any]]] = {"quoted_as_is": [], "quoted_negation_dropped": [], "quoted_negation_added": []}
    for row in grounded:
        text = row["context"][0]["text"]
        sentences = [m.group(0).strip() for m in _SENTENCE.finditer(text)]
        plain = [t for t in sentences if 8 <= len(t.split()) <= 40 and '"' not in t and "whether" not in t.lower()]
        negated = next((t for t in plain if len(_NEGATOR.findall(t)) == 1
                        and 3 <= len(t[:_NEGATOR.search(t).start()].split()) <= len(t.split()) - 4), None)
        affirmed = next((t for t in plain if not _NEGATOR.search(t) and _AUXILIARY.search(t)
                         and len(t[:_AUXILIARY.search(t).start()].split()) >= 3), None)
        quote = lambda sentence: f'{row["answer"].rstrip()} Reference 1 says: "{sentence}"'  # noqa: E731
        if negated:
            m = _NEGATOR.search(negated)
            word = m.group(1).lower()
            after = negated[m.end():].split()[0]
            instead = "" if word != "no" else ("some " if after.endswith("s") else "a ")
            dropped = negated[:m.start()] + instead + negated[m.end():].lstrip()
            out["quoted_as_is"].append({**row, "id": f"{row['id']}:quoted_as_is", "answer": quote(negated)})
            out["quoted_negation_dropped"].append({**row, "id": f"{row['id']}:quoted_negation_dropped",
                                                   "answer": quote(dropped)})
        if affirmed:
            m = _AUXILIARY.search(affirmed)
            added = affirmed[:m.end()] + "not " + affirmed[m.end():]
            out["quoted_negation_added"].append({**row, "id": f"{row['id']}:quoted_negation_added", "answer": quote(added)})
    return out


_THAN_IN = re.compile(r"\b(higher|lower|greater|more|less|better|worse|longer|shorter|larger|smaller)\s+((?:[a-z-]+\s+){0,2}?)"
                      r"(in|among|with|for)\s+([a-z]{3,})\s+than\s+(in|among|with|for)\s+([a-z]{3,})\b", re.IGNORECASE)
_LINKED_IN = re.compile(r"\b(higher|lower|greater|more|less|better|worse|longer|shorter|larger|smaller)\s+((?:[a-z-]+\s+){0,2}?)"
                        r"(in|among|with|for)\s+([a-z]{3,})\s+(compared\s+with|compared\s+to|versus|vs\.?|relative\s+to)\s+"
                        r"((?:in|among|with|for)\s+)?([a-z]{3,})\b", re.IGNORECASE)
_RANKED = re.compile(r"\b([a-z]{3,})\s+(was|were|is|are)\s+((?:significantly\s+)?)(superior|inferior)\s+to\s+([a-z]{3,})\b|"
                     r"\b([a-z]{3,})\s+(outperformed|exceeded|surpassed)\s+([a-z]{3,})\b", re.IGNORECASE)
_NOT_AN_ITEM = frozenset("the this that these those its their which who".split())
OPPOSITE_COMPARATIVE = dict(zip("higher lower greater more less fewer better worse longer shorter larger smaller superior inferior".split(),
                                "lower higher smaller less more more worse better shorter longer smaller larger inferior superior".split(),
                                strict=True))
"""The word that states a comparison from its other side ("higher in men than in women": "lower in
women than in men"); benchmarks/claims.py builds its converses with it too."""


def comparison_swapped(grounded: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """From each grounded answer whose abstract compares two things by a single word each ("higher in
    men than in women", "CT was superior to MRI", "surgery outperformed physiotherapy", and where it
    has none of those, "lower in IMA compared with VG", "versus", "relative to"): the answer
    with that sentence added as the abstract says it (should pass), with the two things swapped
    (should fail), and said from its other side with the opposite word, "lower in women than in men",
    "MRI was inferior to CT" (should pass; none for a ranking verb). Every word but the opposite is the
    abstract's."""
    out: dict[str, list[dict[str, Any]]] = {"comparison_as_is": [], "comparison_swapped": [], "comparison_converse": []}
    for row in grounded:
        evidence = "\n".join(c["text"] for c in row["context"])
        for m in [*_THAN_IN.finditer(evidence), *_RANKED.finditer(evidence), *_LINKED_IN.finditer(evidence)]:
            if m.re is _THAN_IN:
                first, second = m.group(4), m.group(6)
                swapped = (f"{m.group(1)} {m.group(2)}{m.group(3)} {second} than {m.group(5)} {first}")
                converse = (f"{OPPOSITE_COMPARATIVE[m.group(1).lower()]} {m.group(2)}{m.group(3)} {second} than {m.group(5)} {first}")
            elif m.re is _LINKED_IN:
                first, second = m.group(4), m.group(7)
                link = f"{m.group(5)} {m.group(6) or ''}"
                swapped = f"{m.group(1)} {m.group(2)}{m.group(3)} {second} {link}{first}"
                converse = f"{OPPOSITE_COMPARATIVE[m.group(1).lower()]} {m.group(2)}{m.group(3)} {second} {link}{first}"
            elif m.group(1):
                first, second = m.group(1), m.group(5)
                swapped = f"{second} {m.group(2)} {m.group(3)}{m.group(4)} to {first}"
                converse = f"{second} {m.group(2)} {m.group(3)}{OPPOSITE_COMPARATIVE[m.group(4).lower()]} to {first}"
            else:
                first, second = m.group(6), m.group(8)
                swapped, converse = f"{second} {m.group(7)} {first}", None
            if (first.lower() == second.lower() or {first.lower(), second.lower()} & _NOT_AN_ITEM
                    or first.lower().endswith("ly") or second.lower().endswith("ly")):
                continue  # "significantly outperformed": an adverb, not a thing compared
            for kind, said in (("comparison_as_is", m.group(0)), ("comparison_swapped", swapped),
                               ("comparison_converse", converse)):
                if said is None:
                    continue
                answer = f"{row['answer'].rstrip()} {said[0].upper()}{said[1:]}."
                out[kind].append({**row, "id": f"{row['id']}:{kind}", "answer": answer})
            break
    return out


def run_check(rows: list[dict[str, Any]], work: Path) -> tuple[list[dict[str, Any]], int, float]:
    path = work / "answers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "runtime.cli", "--check", str(path), "--root", str(work)],
                          cwd=REPO, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if done.returncode not in (0, 1):
        raise SystemExit(f"replay --check exited {done.returncode}: {done.stderr[-2000:]}")
    return [json.loads(line) for line in done.stdout.splitlines()], done.returncode, wall


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", choices=("test", "dev"), default="test")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    grounded, mismatched = build(args.split, 60 if args.quick else None)
    variants = {**altered(grounded), "unit_changed": unit_changed(grounded), "direction_flipped": direction_flipped(grounded),
                **restated(grounded), **negation_quoted(grounded), **comparison_swapped(grounded)}
    with tempfile.TemporaryDirectory(prefix="distill-gate-check-") as tmp:
        own, _, wall_own = run_check(grounded, Path(tmp))
        other, _, wall_other = run_check(mismatched, Path(tmp))
        judged = {kind: run_check(rows, Path(tmp))[0] for kind, rows in variants.items()}
    passed_own = {v["id"] for v in own if v["passed"]}

    def figure_row(kind: str) -> dict[str, Any]:
        """Among the altered answers whose unaltered answer passed (so the figure decides)."""
        verdicts = [v for v in judged[kind] if v["id"].rsplit(":", 1)[0] in passed_own]
        return {"n": len(verdicts), "passed": sum(v["passed"] for v in verdicts),
                "failed_by_support": sum(any(c["name"] == "support" and not c["passed"] for c in v["checks"]) for v in verdicts)}

    def failures(verdicts: list[dict[str, Any]]) -> dict[str, int]:
        return dict(Counter(c["name"] for v in verdicts for c in v["checks"] if not c["passed"]))

    result = {
        "suite": "gate_check", "split": args.split, "quick": args.quick, "machine": machine(), "n": len(own),
        "grounded_pass_rate": sum(v["passed"] for v in own) / len(own),
        "mismatched_fail_rate": sum(not v["passed"] for v in other) / len(other),
        "grounded_failed_by": failures(own), "mismatched_failed_by": failures(other),
        "figures": {kind: figure_row(kind) for kind in variants},
        "wall_s": {"grounded": round(wall_own, 2), "mismatched": round(wall_other, 2)},
        "targets": {"grounded_pass": 0.9, "mismatched_fail": 0.9},
        "grounded_failures": [{"id": v["id"], "reasons": [c["reason"] for c in v["checks"] if not c["passed"]]}
                              for v in own if not v["passed"]][:20],
    }
    name = "gate_check" + ("_quick" if args.quick else "") + ("_dev" if args.split == "dev" else "")
    md = markdown(result)
    write_results(args.out_dir, name, result, md)
    log(md)
    return 0


def markdown(r: dict[str, Any]) -> str:
    checks = sorted(set(r["grounded_failed_by"]) | set(r["mismatched_failed_by"]))
    met = lambda v, t, more=True: "met" if (v >= t if more else v <= t) else "missed"  # noqa: E731
    return (
        f"### replay --check on PubMedQA ({r['split']} split, {r['n']} questions)\n\n"
        + md_table(["answers", "n", "result", "target", ""],
                   [["long answer + its own abstract", r["n"], f"{r['grounded_pass_rate']:.1%} pass", "≥ 90% pass",
                     met(r["grounded_pass_rate"], 0.9)],
                    ["long answer + another question's abstract", r["n"], f"{r['mismatched_fail_rate']:.1%} fail", "≥ 90% fail",
                     met(r["mismatched_fail_rate"], 0.9)]])
        + figures_markdown(r.get("figures"))
        + "\nFailed checks (grounded / mismatched): "
        + ", ".join(f"{c} {r['grounded_failed_by'].get(c, 0)}/{r['mismatched_failed_by'].get(c, 0)}" for c in checks)
        + f"\n\n- `replay --check` wall time {r['wall_s']['grounded']} s + {r['wall_s']['mismatched']} s; "
          f"load {r['machine']['loadavg_at_start']}; commit {r['machine']['git_commit']}\n"
    )


def figures_markdown(figures: dict[str, dict[str, int]] | None) -> str:
    if not figures:
        return ""
    what = {"changed_digits": ("one figure changed, in digits", "fail"),
            "changed_words": ("one figure changed, in words", "fail"),
            "same_words": ("one figure unchanged, in words", "pass"),
            "unit_changed": ("a figure in days/weeks/months/years/hours/minutes put in another of them", "fail"),
            "direction_flipped": ("a change turned the other way round (reduced -> increased, higher -> lower)", "fail"),
            "restated_same": ("a sentence added that restates a change of the abstract in the passive", "pass"),
            "restated_flipped": ("a sentence added that states a change of the abstract the other way round, in the passive",
                                 "fail"),
            "quoted_as_is": ("a sentence of the abstract with one negation quoted after it as is", "pass"),
            "quoted_negation_dropped": ("the same sentence quoted with its negation left out (no -> a/some)", "fail"),
            "quoted_negation_added": ("a sentence of the abstract quoted with a 'not' put after its was/were/is/are", "fail"),
            "comparison_as_is": ("a comparison of the abstract added as it says it (higher in X than in Y, X superior to Y, "
                                 "lower in X compared with Y)", "pass"),
            "comparison_swapped": ("the same comparison added with its two sides swapped", "fail"),
            "comparison_converse": ("the same comparison said from its other side (lower in Y than in X, Y inferior to X)",
                                    "pass")}
    rows = []
    for kind, (label, should) in what.items():
        f = figures.get(kind)
        if not f or not f["n"]:
            continue
        share = (f["n"] - f["passed"]) / f["n"] if should == "fail" else f["passed"] / f["n"]
        rows.append([label, f["n"], f"{share:.1%} {should}", f"support failed {f['failed_by_support']}"])
    return ("\nThe same long answers, with their first whole number (11-998) that the abstract holds altered, or "
            "a change they state as their abstract does turned the other way round, or with a sentence added that "
            "restates a change of the abstract (as it is, or turned round), or quotes a sentence of it (as it is, "
            "its negation left out, or one added), or states a comparison of it (as it is, swapped, or from its other side); counted where the unaltered "
            "answer passed, so the alteration decides:\n\n"
            + md_table(["answers", "n", "result", ""], rows))


if __name__ == "__main__":
    raise SystemExit(cli(main))
