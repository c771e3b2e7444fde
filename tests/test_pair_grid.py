"""Pairs addressed by position (distill.export.pair_grid) decide exactly what walking every pair did.

The reference below is the pairer as it was before grids: every candidate pair built in a list
and walked one by one. The grid pairer must leave every row with the same standing (used by a
new pair, by an earlier one, or the same reason why not), make the same pairs in the same order and
count the same pairs per task, for any group: self-pairs, identical texts, texts the schema
refuses, pairs exported earlier, caps already reached, and the cross-source filter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from distill.export.pair_grid import Grid
from distill.export.preference import (
    Row,
    Spilled,
    ACROSS,
    _build,
    _Pairer,
    _Payload,
    _text_digest,
    pref_id,
)
from distill.export.quarantine import validation_errors
from distill.export.spill import Spill
from distill.jsonl import dumps
from distill.records import Category, QuarantineReason


def _across(chosen: Row, rejected: Row) -> bool:
    """The cross-source filter as the pairer applied it to every pair before grids skipped."""
    return chosen.source != rejected.source and chosen.task_id != rejected.task_id


def _old_spread(chosen: list, rejected: list) -> list:
    a, b = len(chosen), len(rejected)
    return [(chosen[i], rejected[s - i]) for s in range(a + b - 1) for i in range(max(0, s - b + 1), min(a, s + 1))]


def _reference_offer(p: _Pairer, pairs: list[tuple[Row, Row]], *, task_id: str, pairing: str,
                     prompt_of: str | None, sort_key: tuple[str, ...]) -> int:
    made = 0
    kept: set[int] = set()
    to_find = p.existing_per_task[task_id] if p.existing_ids else 0
    for n, (chosen, rejected) in enumerate(pairs):
        if not to_find:
            break
        if pref_id(chosen.key, rejected.key) in p.existing_ids:
            p.use((chosen, rejected), new=False)
            kept.add(n)
            to_find -= 1
    full = f"{task_id} already has {p.cap} pairs (max_pairs_per_task)"
    for n, (chosen, rejected) in enumerate(pairs):
        if n in kept:
            continue
        if chosen.key[0] == rejected.key[0]:
            p._note((chosen, rejected), (QuarantineReason.SELF_PAIRING,
                                         f"only counterpart is another revision of run {chosen.key[0]}"))
            continue
        if chosen.text_digest == rejected.text_digest:
            p._note((chosen, rejected), (QuarantineReason.INVALID_PREFERENCE_PAIRING,
                                         "chosen and rejected texts are identical"))
            continue
        if p.existing_per_task[task_id] + p.made_per_task[task_id] >= p.cap:
            p._note((chosen, rejected), (QuarantineReason.INVALID_PREFERENCE_PAIRING, full))
            continue
        prompt = prompt_of if prompt_of is not None else chosen.prompt
        try:
            sample = _build(p.payload.with_text(chosen), p.payload.with_text(rejected), task_id=task_id,
                            pairing=pairing, prompt=prompt)
        except ValidationError as exc:
            p._note((chosen, rejected), (QuarantineReason.SCHEMA_VIOLATION, "; ".join(validation_errors(exc))))
            continue
        p.pairs.append((sort_key, dumps(sample.model_dump(mode="json"))))
        p.use((chosen, rejected), new=True)
        p.made_per_task[task_id] += 1
        made += 1
    return made


@settings(max_examples=300, deadline=None)
@given(a=st.integers(0, 9), b=st.integers(0, 9), offset=st.integers(0, 50), after=st.integers(-2, 140))
def test_grid_positions_are_the_spread_order(a: int, b: int, offset: int, after: int) -> None:
    chosen, rejected = [f"c{i}" for i in range(a)], [f"r{j}" for j in range(b)]
    grid = Grid(chosen, rejected, offset=offset)
    listed = _old_spread(chosen, rejected)
    assert [(c, r) for _, c, r in grid] == listed
    assert [n for n, _, _ in grid] == list(range(offset, offset + len(listed)))
    assert grid.end == offset + a * b
    for i in range(a):
        expected = [(offset + n, c, r) for n, (c, r) in enumerate(listed) if c == chosen[i] and offset + n > after]
        assert list(grid.after_chosen(i, after)) == expected
    for j in range(b):
        expected = [(offset + n, c, r) for n, (c, r) in enumerate(listed) if r == rejected[j] and offset + n > after]
        assert list(grid.after_rejected(j, after)) == expected


@settings(max_examples=300, deadline=None)
@given(chosen=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), max_size=9),
       rejected=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), max_size=9),
       offset=st.integers(0, 50), after=st.integers(-2, 140))
def test_a_grid_that_admits_only_differing_rows_walks_the_filtered_spread_order(
        chosen: list[tuple[int, int]], rejected: list[tuple[int, int]], offset: int, after: int) -> None:
    """Rows are (source, task); runs of equal values (rows sorted by key group them) are jumped."""
    def admitted(c: tuple[int, int], r: tuple[int, int]) -> bool:
        return c[0] != r[0] and c[1] != r[1]

    cs = [(s, t, f"c{i}") for i, (s, t) in enumerate(chosen)]
    rs = [(s, t, f"r{j}") for j, (s, t) in enumerate(rejected)]
    differ = (lambda row: row[0], lambda row: row[1])
    grid = Grid(cs, rs, offset=offset, differ=differ)
    plain = list(Grid(cs, rs, offset=offset))
    assert list(grid) == [p for p in plain if admitted(p[1], p[2])]
    assert grid.end == offset + len(cs) * len(rs)
    for i in range(len(cs)):
        expected = [p for p in plain if p[1] is cs[i] and p[0] > after and admitted(p[1], p[2])]
        assert list(grid.after_chosen(i, after)) == expected
    for j in range(len(rs)):
        expected = [p for p in plain if p[2] is rs[j] and p[0] > after and admitted(p[1], p[2])]
        assert list(grid.after_rejected(j, after)) == expected


_TEXTS = ["fix the parser", "fix the parser ", "rewrite the lexer", "", "add a test", "drop the cache"]
_CATEGORIES = [Category.ACCEPTED, Category.REJECTED, Category.PARTIALLY_ACCEPTED]


def _row(payload: _Payload, index: int, run: int, text: int, category: Category, source: int, task: int) -> Row:
    key = (f"run-{run}", f"{index:064x}")
    provenance = {"source_file": f"_kb/s{source}.jsonl", "unit": "line", "line_offset": index, "line_number": index + 1,
                  "sig_hash": f"{index:064x}", "recorded_at": "2026-01-01T00:00:00Z"}
    spilled = Spilled(key=key, evidence_source=f"s{source}", text=_TEXTS[text], created_at="2026-01-01T00:00:00+00:00",
                      provenance=provenance, category=category.value, first_reason="reviewed", scored_source=f"s{source}",
                      detail={"scored_file": "scored-runs/x.jsonl"})
    offset = payload.put((spilled.key, spilled.evidence_source, spilled.text, spilled.created_at, spilled.provenance,
                          spilled.category, spilled.first_reason, spilled.scored_source, spilled.detail))
    return Row(index=index, key=key, task_id=f"task-{task}", prompt="Which change fixes the bug?", category=category,
               source=f"s{source}", text_digest=_text_digest(_TEXTS[text]), cross_candidate=True,
               failure=None, offset=offset)


_ROW = st.tuples(st.integers(0, 5), st.integers(0, len(_TEXTS) - 1), st.sampled_from(_CATEGORIES),
                 st.integers(0, 2), st.integers(0, 2))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_ROW, max_size=16), cap=st.integers(0, 6), made_before=st.integers(0, 3),
       exported=st.lists(st.integers(0, 400), max_size=8), extra_existing=st.integers(0, 3), cross=st.booleans())
def test_grid_pairer_decides_what_walking_every_pair_did(
    tmp_path: Path, rows: list, cap: int, made_before: int, exported: list[int], extra_existing: int, cross: bool
) -> None:
    task_id = "question-x" if cross else "task-0"
    with Spill(tmp_path) as spill:
        payload = _Payload(spill.records("payload"), lambda _f, _k: None)
        group = [_row(payload, n, run, text, cat, source, task if cross else 0)
                 for n, (run, text, cat, source, task) in enumerate(rows)]
        acc = sorted((r for r in group if r.category is Category.ACCEPTED), key=lambda r: (r.key, r.index))
        rej = sorted((r for r in group if r.category is Category.REJECTED), key=lambda r: (r.key, r.index))
        part = sorted((r for r in group if r.category is Category.PARTIALLY_ACCEPTED), key=lambda r: (r.key, r.index))
        rejected_groups = [rej] if cross else [rej, part]
        admit: Callable[[Row, Row], bool] | None = _across if cross else None
        listed = [(c, r) for g in rejected_groups for c, r in _old_spread(acc, g) if admit is None or admit(c, r)]
        # earlier exports: some of this group's pairs (picked by index) and ids of other tasks' pairs
        existing = {pref_id(listed[k % len(listed)][0].key, listed[k % len(listed)][1].key) for k in exported if listed}
        existing |= {f"pref-elsewhere-{k}" for k in range(extra_existing)}
        per_task = Counter({task_id: len(existing)})

        def pairer(name: str) -> _Pairer:
            p = _Pairer(existing, per_task, cap, payload, spill.records(name))
            p.made_per_task[task_id] = made_before
            return p

        old, new = pairer("old"), pairer("new")
        made_old = _reference_offer(old, listed, task_id=task_id, pairing="cross_source" if cross else "same_task",
                                    prompt_of="Which change fixes the bug?" if cross else None, sort_key=("k",))
        made_new = new.offer(acc, rejected_groups, task_id=task_id, pairing="cross_source" if cross else "same_task",
                             prompt_of="Which change fixes the bug?" if cross else None, sort_key=("k",), differ=ACROSS if cross else ())
        assert made_new == made_old
        assert new.made_per_task == old.made_per_task

        def standing(p: _Pairer) -> dict[int, tuple[bool, bool, object]]:
            return {i: (f.in_new, f.in_existing, f.why) for i, f in p.fates().items()
                    if (f.in_new, f.in_existing, f.why) != (False, False, None)}

        assert standing(new) == standing(old)
        assert list(new.pairs) == list(old.pairs)


def test_a_task_retried_thousands_of_times_is_paired_in_row_time(tmp_path: Path) -> None:
    """3,000 accepted x 3,000 rejected answers to one question are 9 million candidate pairs; the
    cap takes 5. Walking them all took minutes and the list of pairs gigabytes; the grid pairer
    notes every row's reason after the fifth pair."""
    with Spill(tmp_path) as spill:
        payload = _Payload(spill.records("payload"), lambda _f, _k: None)
        one = _row(payload, 0, 0, 0, Category.ACCEPTED, 0, 0)
        acc = [Row(*(i, (f"run-a{i}", one.key[1]), *one.as_tuple()[2:])) for i in range(3000)]
        other = _row(payload, 1, 1, 2, Category.REJECTED, 0, 0)
        rej = [Row(*(3000 + j, (f"run-r{j}", other.key[1]), *other.as_tuple()[2:])) for j in range(3000)]
        p = _Pairer(set(), Counter(), 5, payload, spill.records("pairs"))
        assert p.offer(acc, [rej, []], task_id="task-0", pairing="same_task", prompt_of=None, sort_key=("k",)) == 5
        used = sum(f.in_new for f in p.fates().values())
        capped = [f.why for f in p.fates().values() if not f.in_new]
        assert used == 5 and len(capped) == 6000 - 5  # the first pairs share rows (spread order)
        assert None not in capped and {w[1] for w in capped} == {"task-0 already has 5 pairs (max_pairs_per_task)"}


@pytest.mark.parametrize("a,b", [(0, 0), (0, 3), (3, 0)])
def test_an_empty_side_has_no_pairs(a: int, b: int) -> None:
    grid = Grid(list(range(a)), list(range(b)), offset=7)
    assert list(grid) == [] and grid.end == 7


def test_one_sources_verdicts_on_one_question_cost_rows_not_pairs(tmp_path: Path) -> None:
    """20,000 accepted x 20,000 rejected reviews of one question from one source: 400 million
    candidate pairs, none of them cross-source. Filtering every pair took minutes; the grid
    finds none in row time. One other source's rows, sorted last, pair with the first rows."""
    with Spill(tmp_path) as spill:
        payload = _Payload(spill.records("payload"), lambda _f, _k: None)
        one = _row(payload, 0, 0, 0, Category.ACCEPTED, 0, 0)
        other = _row(payload, 1, 1, 2, Category.REJECTED, 0, 0)
        acc = [Row(*(i, (f"run-a{i}", one.key[1]), *one.as_tuple()[2:])) for i in range(20_000)]
        rej = [Row(*(20_000 + j, (f"run-r{j}", other.key[1]), *other.as_tuple()[2:])) for j in range(20_000)]
        looked = Counter[str]()

        def counted(name: str, key: Callable[[Row], str]) -> Callable[[Row], str]:
            def look(row: Row) -> str:
                looked[name] += 1
                return key(row)
            return look

        p = _Pairer(set(), Counter(), 5, payload, spill.records("pairs"))
        across = tuple(counted(str(k), key) for k, key in enumerate(ACROSS))
        assert p.offer(acc, [rej], task_id="q", pairing="cross_source", prompt_of="Which change fixes the bug?",
                       sort_key=("k",), differ=across) == 0
        assert p.fates() == {}
        assert looked == {"0": 40_000, "1": 40_000}  # each key once per row, not per pair
        late = _row(payload, 2, 2, 4, Category.REJECTED, 1, 1)
        rej.append(Row(*(40_000, ("run-z", late.key[1]), *late.as_tuple()[2:])))
        p = _Pairer(set(), Counter(), 5, payload, spill.records("pairs-2"))
        assert p.offer(acc, [rej], task_id="q", pairing="cross_source", prompt_of="Which change fixes the bug?",
                       sort_key=("k",), differ=ACROSS) == 5
        used = sorted(i for i, f in p.fates().items() if f.in_new)
        assert used == [0, 1, 2, 3, 4, 40_000]  # the last rejected row with the first chosen rows
        # every other chosen row's only admitted pair is refused by the cap (so are the later ones
        # of the rejected row the pairs used: a row keeps the first reason it is told)
        capped = {i for i, f in p.fates().items() if f.why is not None}
        assert capped == set(range(5, 20_000)) | {40_000}


_PROMPTS = ["Which change fixes the bug?", "Is the retry budget reset?", "Does the cache stay warm?"]
_CROSS_ROW = st.tuples(st.integers(0, 5), st.integers(0, len(_TEXTS) - 1), st.sampled_from(_CATEGORIES),
                       st.integers(0, 2), st.integers(0, 2), st.integers(0, 2),
                       st.tuples(st.booleans(), st.booleans(),
                                 st.sampled_from([None, (QuarantineReason.SELF_PAIRING, "only counterpart")])))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_CROSS_ROW, max_size=18), parts=st.integers(1, 3), cap=st.integers(0, 4),
       exported=st.lists(st.integers(0, 400), max_size=5))
def test_a_cross_bucket_decides_what_holding_every_row_did(
        tmp_path: Path, rows: list, parts: int, cap: int, exported: list[int]) -> None:
    """The cross phase reads its bucket twice and holds only the rows of questions that can have
    a cross-source pair (an accepted and a rejected answer, two sources, two tasks); the others
    are decided as they are read. Decisions (in input order) and pairs are those of holding every
    row and offering every question, for any mix of sources, tasks, questions, standings from the
    same-task phase, caps and pairs exported earlier."""
    import dataclasses

    from distill.export.preference import Fate, _final, _pair_cross_bucket, cross_task_id
    from distill.export.spill import merge_sorted

    with Spill(tmp_path) as spill:
        payload = _Payload(spill.records("payload"), lambda _f, _k: None)
        held = []
        for n, (run, text, cat, source, task, prompt, fate) in enumerate(rows):
            row = dataclasses.replace(_row(payload, n, run, text, cat, source, task), prompt=_PROMPTS[prompt])
            held.append((row, Fate(*fate)))
        # every candidate pair of every question, for ids exported earlier
        every = [(c, r) for c, _ in held for r, _ in held if c.category is Category.ACCEPTED
                 and r.category is Category.REJECTED and c.prompt == r.prompt and _across(c, r)]
        existing = {pref_id(every[k % len(every)][0].key, every[k % len(every)][1].key) for k in exported if every}
        per_task = Counter({cross_task_id(p): sum(1 for c, r in every if c.prompt == p
                                                  and pref_id(c.key, r.key) in existing) for p in _PROMPTS})

        # reference: every row held, every question offered
        old = _Pairer(existing, per_task, cap, payload, spill.records("old-pairs"))
        by_prompt: dict[str, list[Row]] = {}
        for row, _ in held:
            by_prompt.setdefault(row.prompt, []).append(row)
        made_old = 0
        for prompt in sorted(by_prompt):
            group = by_prompt[prompt]
            made_old += old.offer(sorted((r for r in group if r.category is Category.ACCEPTED), key=lambda r: r.key),
                                  [sorted((r for r in group if r.category is Category.REJECTED), key=lambda r: r.key)],
                                  task_id=cross_task_id(prompt), pairing="cross_source", prompt_of=prompt,
                                  sort_key=(prompt,), differ=ACROSS)
        want = [_final(row, [same_task, old.fate(row.index)], payload) for row, same_task in held]

        # the cross phase: each task bucket's candidates in its own part, in input order
        files = spill.buckets("part", parts, batch=3)
        for row, same_task in held:
            files[int(row.task_id[-1]) % parts].append((row.as_tuple(), (same_task.in_new, same_task.in_existing,
                                                                          same_task.why)))
        new = _Pairer(existing, per_task, cap, payload, spill.records("new-pairs"))
        unpaired, decided = spill.records("unpaired", batch=4), spill.records("decided", batch=4)
        made_new = _pair_cross_bucket(files, new, unpaired, decided)
        got = list(merge_sorted([unpaired, decided], key=lambda d: d[0]))
        assert made_new == made_old
        assert got == want
        assert list(new.pairs) == list(old.pairs)


# runs and texts from wider ranges than _ROW's: most groups share none across sides, some do
_WIDE_ROW = st.tuples(st.integers(0, 150), st.integers(0, 150), st.sampled_from(_CATEGORIES), st.integers(0, 2))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(old_rows=st.lists(_WIDE_ROW, min_size=2, max_size=10), new_rows=st.lists(_WIDE_ROW, min_size=1, max_size=6),
       exported=st.lists(st.integers(0, 400), max_size=4), cap=st.integers(1, 4))
def test_a_capped_group_that_gained_rows_keeps_the_old_decisions_appended_groups_vouches_for(
        tmp_path: Path, old_rows: list, new_rows: list, exported: list[int], cap: int) -> None:
    """A group of a task at its cap that gained rows (kept_decisions.appended_groups): where it
    says the old rows keep their decisions, pairing the whole group gives each old row the
    standing it had, and each new row the one `refuse_appended` gives it; and it says so exactly
    when no run or text is on both sides, no new row is a revision of an old row's run, and both
    sides held an old row."""
    import dataclasses

    import numpy as np

    from distill.export.kept_decisions import NextDecisions, appended_groups
    from distill.export.preference import Fate

    task_id, sides = "task-0", {Category.ACCEPTED: 1, Category.REJECTED: 2, Category.PARTIALLY_ACCEPTED: 2}
    with Spill(tmp_path) as spill:
        payload = _Payload(spill.records("payload"), lambda _f, _k: None)

        def row(index: int, run: int, text: int, category: Category, source: int) -> Row:
            return dataclasses.replace(_row(payload, index, run, 0, category, source, 0),
                                       text_digest=_text_digest(f"answer {text}"))

        old = [row(n, *fields) for n, fields in enumerate(old_rows)]
        new = [row(len(old) + n, *fields) for n, fields in enumerate(new_rows)]
        every = [(c, r) for c in old for r in old if sides[c.category] == 1 and sides[r.category] == 2]
        existing = {pref_id(every[k % len(every)][0].key, every[k % len(every)][1].key) for k in exported if every}
        per_task = Counter({task_id: max(cap, len(existing))})  # at its cap (other groups' pairs count too)

        def decision(f: Fate) -> tuple[bool, bool, object]:
            """What `_final` reads of a standing: a row a pair used keeps no reason."""
            return f.in_new, f.in_existing, None if f.in_new or f.in_existing else f.why

        def standing(rows: list[Row], name: str) -> dict[int, tuple[bool, bool, object]]:
            p = _Pairer(existing, per_task, cap, payload, spill.records(name))
            by_key = sorted(rows, key=lambda r: r.key)
            assert p.offer([r for r in by_key if r.category is Category.ACCEPTED],
                           [[r for r in by_key if r.category is c]
                            for c in (Category.REJECTED, Category.PARTIALLY_ACCEPTED)],
                           task_id=task_id, pairing="same_task", prompt_of=None, sort_key=("k",)) == 0
            return {r.index: decision(p.fate(r.index)) for r in rows}

        before, after = standing(old, "before"), standing(old + new, "after")

        decisions = NextDecisions(None)
        for r in old + new:
            decisions.row(r.index, task_id, r.prompt, asks=False, passed=None,
                          grid=(r.key[0], r.text_digest, sides[r.category]))
        run, text, side = decisions.grid_columns()
        is_new = np.array([False] * len(old) + [True] * len(new))
        mask = appended_groups(decisions.task_codes(), decisions.prompt_codes(), prompt_count=1, new=is_new,
                               capped=np.array([True]), changed=(np.zeros(0, np.int32), np.zeros(0, np.int32)),
                               run=run, text=text, side=side, in_grid=~is_new)
        assert mask.all() or not mask.any()  # one group

        def on(side_: int, rows: list[Row]) -> list[Row]:
            return [r for r in rows if sides[r.category] == side_]

        everyone = old + new
        vouched = (not {r.key[0] for r in on(1, everyone)} & {r.key[0] for r in on(2, everyone)}
                   and not {r.text_digest for r in on(1, everyone)} & {r.text_digest for r in on(2, everyone)}
                   and not {r.key[0] for r in new} & {r.key[0] for r in old}
                   and bool(on(1, old)) and bool(on(2, old)))
        assert bool(mask.any()) == vouched
        if vouched:
            assert {i: after[i] for i in before} == before
            appended = _Pairer(existing, per_task, cap, payload, spill.records("appended"))
            appended.refuse_appended(new, task_id=task_id)
            assert {r.index: decision(appended.fate(r.index)) for r in new} == {r.index: after[r.index] for r in new}
