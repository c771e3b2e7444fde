"""The preference export's per-row decisions, kept from one run to the next.

A row's preference decision (written, deduped, or quarantined with a reason) is a function of
its task's rows (same-task pairing, with the task's exported pairs and the cap) and, for a
verdict-bearing review, of its question's cross-source candidates; never of any other row. So
after an append only the rows a change touches need pairing again; every other row's decision
is last run's, and its quarantine line is the bytes last run wrote (copied from that run's
quarantine file, which is checked to be exactly what that run left).

Within a task, pairs are made per group (the rows that answered one prompt), the groups one
after another, coupled only by the task's cap: a pair is made while the task's pairs (exported
ones and the ones made so far) are under it. A task whose exported pairs already reach the cap
makes no pair in any group, so each of its groups is decided by its own rows and the export
alone: a change to one group leaves the others' decisions as they were. A task under its cap is
paired whole.

Kept per scored row, in input order (partition by partition, row by row): its task, its prompt
and, for a cross-source candidate, its question (the prompt again; codes into digest tables),
its outcome, source, category, reason, the offset and length of its quarantine line, and the
digest of its gate input when it passed the gates (so the gate cache keeps it without the row
being read). A row of the next run takes its kept decision only when:

- the file is of this export basis and was written by the run that wrote the export checkpoint
  the row is replayed from (one token in both), the export and the quarantine file are the
  bytes that run left (size and xxh3-128), and the row is replayed from that checkpoint at the
  position it had then (so it is the same line, with the same evidence);
- its group is clean (`dirty_rows`). Dirty: the group of every row read this run (new or
  changed lines) and of every kept row not replayed this run (changed, removed); the whole task
  of such a group when the task is under its cap, and of every row whose pair could not be built
  (schema_violation: see below); then, until nothing changes, every question a dirty row asks,
  every group with a row asking a dirty question (a cross-source pair spans tasks), and the
  whole task of a dirty group under its cap. A question whose accepted and rejected answers, last
  run's and this run's together, do not come from two sources and two tasks can have no
  cross-source pair, then or now (`pairable_questions`), so it reaches no other group: a template
  prompt that one reviewer stream answers in every task does not make every task dirty. Two rows with one key (a revision scored twice)
  are one evidence revision, so they share their task and prompt: the duplicate check sees both.

A capped group that only gained rows (appended: none of its kept rows changed or went) is not
paired again whole when the proof holds that its old rows' decisions stand (`appended_groups`).
In a capped task every pair not already exported is refused, and a row's reason is that of its
first such pair in grid order, which new rows can change: self-pairing if the two rows share a
run, identical texts if they share a text, else the cap. So when no run id and no text is on
both sides of the group (old and new rows together), every such pair is refused for the cap,
and an old row that had a pair keeps its decision whatever the order; when both sides held an
old row in the grid, every old row had one, and each new row on a side has one: its reason is
the cap (`_Pairer.refuse_appended`). A new row with the run id of an old row (a revision, or the
same key read twice) fails the proof. The new rows' questions still spread; a group one of them
makes dirty again is paired whole. Kept per row for this: 64 bits of its run id's and its text's
digests and its side in the grid (a digest collision only fails the proof).

A row a new pair used was `written`; pairing its task again, with that pair now in the export,
makes it `deduped` and changes nothing else, but for one case: a pair the walk tried to build
before the task's last new pair and that failed the PreferenceSample schema is refused with the
cap's reason once the new pairs count from the start (the walk through offered pairs is the same,
every valid pair before the cap was built, and every later one is refused for the same first
reason). So a kept `written` is taken as `deduped`, and a task with a schema_violation row is
paired again (rare: the pair checks before building refuse what the schema would).

Rows of dirty tasks are read back from the checkpoint and paired as before. `distill run --force`
deletes the file (`Stage.caches`); anything that does not check out means none is kept.
"""

from __future__ import annotations

import contextlib
import zipfile
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import xxhash

from distill.export.scored_index import key_digest, write_cache
from distill.hashing import WholeFileDigests, file_digest, split_digests
from distill.jsonl import loads
from distill.errors import UsageError
from distill.records import Category, QuarantineReason
from distill.records.stage import TallyKey

if TYPE_CHECKING:
    from distill.export.quarantine import QuarantineLines

KEPT_DECISIONS_VERSION = 3
# the reasons only a row offered in a grid gets (`preference._final`; SCHEMA_VIOLATION rows are unsettled)
_PAIRING_REASONS = (QuarantineReason.INVALID_PREFERENCE_PAIRING, QuarantineReason.SELF_PAIRING)
COPY_BLOCK = 4 << 20  # bytes of kept quarantine lines copied per read
WRITTEN, DEDUPED, QUARANTINED = 0, 1, 2
# a row's side in its group's same-task grid (preference._SIDE_OF): chosen, the other side, or neither
CHOSEN, OPPOSITE = 1, 2
NONE = -1  # no task or prompt (refused before pairing), no question (not a cross candidate), no category or reason

# (index, source, category or None, reason or None, quarantine line or b"", deduped?): preference.Decided
Decided = tuple[int, str, "str | None", "str | None", bytes, bool]


class Codes:
    """Strings (tasks, prompts) as small ints, a table of their 128-bit digests behind them: a
    kept table's codes stay valid, a new string gets the next code."""

    def __init__(self, digests: np.ndarray | None = None) -> None:
        self._digests: list[bytes] = split_digests(b"" if digests is None else digests.tobytes())
        self._old: dict[bytes, int] = {d: i for i, d in enumerate(self._digests)}
        self._of: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._digests)

    def code(self, text: str) -> int:
        found = self._of.get(text)
        if found is None:
            digest = key_digest(text)
            found = self._old.get(digest)
            if found is None:
                found = self._old[digest] = len(self._digests)
                self._digests.append(digest)
            self._of[text] = found
        return found

    def digests(self) -> np.ndarray:
        return np.array(self._digests, dtype="S16").reshape(-1)

    def digest_list(self) -> list[bytes]:
        """By code (the table itself: not to be changed)."""
        return self._digests


class Names:
    """Short strings (sources, categories, reasons) as codes, in the order first seen."""

    def __init__(self, names: list[str] | None = None) -> None:
        self.names: list[str] = list(names or [])
        self._of = {n: i for i, n in enumerate(self.names)}

    def code(self, name: str | None) -> int:
        if name is None:
            return NONE
        found = self._of.get(name)
        if found is None:
            found = self._of[name] = len(self.names)
            self.names.append(name)
        return found


_ROW_ARRAYS = {"task": np.int32, "prompt": np.int32, "question": np.int32, "outcome": np.int8, "source": np.int32,
               "category": np.int32, "reason": np.int32, "line_at": np.int64, "line_len": np.int64,
               "run": np.uint64, "text": np.uint64, "side": np.int8}
_PAIRING_ARRAYS = ("task", "prompt", "question", "run", "text", "side")  # known before the row is decided


@dataclass
class KeptDecisions:
    """Last run's decisions (see the module docstring); `load` says whether they may be used."""

    parts: dict[str, tuple[int, int]]  # scored partition -> (its first row, its rows)
    rows: dict[str, np.ndarray]  # _ROW_ARRAYS, one value per row
    passed: np.ndarray  # S16 per row, zeros: the row's gate input did not pass (or was never gated)
    tasks: np.ndarray  # S16 digests, by code
    prompts: np.ndarray  # the questions' codes are prompt codes
    sources: list[str]
    categories: list[str]
    reasons: list[str]
    quarantine: Path

    @property
    def count(self) -> int:
        return len(self.passed)

    def in_grid(self) -> np.ndarray:
        """The kept rows that were surely offered in their group's same-task grid: on a side of it,
        through the gates, and decided by pairing (a pair used them, or a pairing reason refused
        them: not a duplicate revision). A row this misses only costs its group a pairing."""
        r = self.rows
        pairing = [self.reasons.index(reason.value) for reason in _PAIRING_REASONS if reason.value in self.reasons]
        decided_by_pairing = (r["outcome"] != QUARANTINED) | np.isin(r["reason"], pairing)
        return (r["side"] != 0) & self.gated() & decided_by_pairing

    def gated(self) -> np.ndarray:
        """The kept rows whose gate input passed the gates (a `passed` digest that is not zeros)."""
        return self.passed.view(np.uint64).reshape(-1, 2).any(axis=1)

    def unsettled(self) -> np.ndarray:
        """The kept rows whose task must be paired again even when nothing of it changed."""
        try:
            schema = self.reasons.index(QuarantineReason.SCHEMA_VIOLATION.value)
        except ValueError:
            return np.zeros(self.count, dtype=bool)
        return self.rows["reason"] == schema

    def eligible(self, rel: str, position: int, n: int) -> bool:
        """Whether rows position .. position + n of the partition have kept decisions."""
        found = self.parts.get(rel)
        return found is not None and position + n <= found[1]

    def first_row(self, rel: str) -> int:
        return self.parts[rel][0]

    @classmethod
    def load(cls, path: Path, *, basis: str, token: str | None, export: Path, quarantine: Path,
             known: WholeFileDigests | None = None) -> KeptDecisions | None:
        """`known`: whole-file digests known without a read (the export and quarantine file as
        the last run's receipts hashed them)."""
        if token is None:
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = loads(data["meta"].tobytes())
                arrays = {name: data[name] for name in (*_ROW_ARRAYS, "passed", "tasks", "prompts")}
        except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
            return None
        try:
            if not (isinstance(meta, dict) and meta.get("version") == KEPT_DECISIONS_VERSION
                    and meta.get("basis") == basis and meta.get("token") == token):
                return None
            if (file_digest(export, known) != _pair(meta["export"])
                    or file_digest(quarantine, known) != _pair(meta["quarantine"])):
                return None
            kept = cls(parts={}, rows={name: arrays[name] for name in _ROW_ARRAYS}, passed=arrays["passed"],
                       tasks=arrays["tasks"], prompts=arrays["prompts"], sources=_strings(meta["sources"]),
                       categories=_strings(meta["categories"]), reasons=_strings(meta["reasons"]),
                       quarantine=quarantine)
            start = 0
            for rel, n in meta["parts"]:
                if not isinstance(rel, str) or type(n) is not int or n < 0 or rel in kept.parts:
                    return None
                kept.parts[rel] = (start, n)
                start += n
            return kept if kept._consistent(start, meta["quarantine"][0]) else None
        except (KeyError, TypeError, ValueError, IndexError):
            return None

    def _consistent(self, rows: int, quarantine_size: int) -> bool:
        """Every array as `save` writes it: a damaged or foreign file is not half trusted."""
        r = self.rows
        if self.passed.dtype != np.dtype("S16") or self.passed.shape != (rows,):
            return False
        if any(r[name].dtype != np.dtype(t) or r[name].shape != (rows,) for name, t in _ROW_ARRAYS.items()):
            return False
        if self.tasks.dtype != np.dtype("S16") or self.prompts.dtype != np.dtype("S16"):
            return False
        cross = r["question"] != NONE
        if not (np.array_equal(r["task"] == NONE, r["prompt"] == NONE)
                and np.array_equal(r["question"][cross], r["prompt"][cross])):
            return False  # a question is its row's prompt; a row has both a task and a prompt or neither

        def within(a: np.ndarray, n: int) -> bool:
            return not len(a) or bool(a.min() >= NONE and a.max() < n)

        quarantined = r["outcome"] == QUARANTINED
        return (within(r["task"], len(self.tasks)) and within(r["prompt"], len(self.prompts))
                and within(r["source"], len(self.sources)) and bool(np.all(r["source"] >= 0))
                and within(r["category"], len(self.categories)) and within(r["reason"], len(self.reasons))
                and bool(np.all((r["outcome"] >= WRITTEN) & (r["outcome"] <= QUARANTINED)))
                and bool(np.all((r["side"] >= 0) & (r["side"] <= OPPOSITE)))
                and bool(np.all((r["reason"] >= 0) == quarantined))
                and bool(np.all(r["line_at"][quarantined] >= 0)) and bool(np.all(r["line_len"][quarantined] > 0))
                and bool(np.all(r["line_at"][quarantined] + r["line_len"][quarantined] <= quarantine_size)))

    def counts(self, clean: KeptRows) -> dict[TallyKey, tuple[int, int]]:
        """The rows' counts as a row at a time would bump them: key -> (first input index, rows). A
        kept `written` counts as `deduped` now (its pair is in the export: see the module docstring)."""
        r = self.rows
        source, category, reason = (r[name][clean.rows].astype(np.int64) for name in ("source", "category", "reason"))
        quarantined = (r["outcome"][clean.rows] == QUARANTINED).astype(np.int64)
        code = ((source * (len(self.categories) + 1) + category + 1) * (len(self.reasons) + 1) + reason + 1) * 2 + quarantined
        keys, first, counts = np.unique(code, return_index=True, return_counts=True)
        out: dict[TallyKey, tuple[int, int]] = {}
        for k, at, n in zip(keys.tolist(), first.tolist(), counts.tolist(), strict=True):
            s, c, q, o = int(source[at]), int(category[at]), int(reason[at]), int(quarantined[at])
            out[(self.sources[s], "quarantined" if o else "deduped", self.reasons[q] if o else None,
                 None if c == NONE else self.categories[c])] = (int(clean.indexes[at]), n)
        return out


@dataclass(frozen=True)
class KeptRows:
    """The rows of this run that keep last run's decision: their input indexes (ascending) and the
    kept row that decides each (kept rows keep their order, so also ascending)."""

    indexes: np.ndarray
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.indexes)


class KeptLines:
    """The quarantine lines of the rows that keep their decision, copied from the last quarantine
    file to this run's in input order, between the lines of the other rows: consecutive kept rows
    are consecutive lines there, so each stretch of them that no other row's line interrupts is
    one block, copied in reads of at most COPY_BLOCK bytes (not a seek and a read per row; a
    buffered read, not a mapping whose pages would count as this process's memory)."""

    def __init__(self, kept: KeptDecisions, clean: KeptRows, lines: IO[bytes], sink: QuarantineLines) -> None:
        self._kept, self._clean, self._lines, self._sink = kept, clean, lines, sink
        r = kept.rows
        self._is_quarantined = r["outcome"][clean.rows] == QUARANTINED
        quarantined = np.flatnonzero(self._is_quarantined)
        self._quarantined = quarantined  # positions in `clean`
        at = r["line_at"][clean.rows[quarantined]]
        self._len = r["line_len"][clean.rows[quarantined]]  # a kept length leaves out the line's newline
        self._reason = r["reason"][clean.rows[quarantined]].astype(np.int64)  # codes into kept.reasons
        ends = at + self._len + 1
        index = clean.indexes[quarantined]
        # a block ends where the next line is not the next in the old file, or another row's line comes between
        # (input indexes of clean rows that are not consecutive: a row that is not kept lies between them)
        gap = np.diff(clean.indexes) != 1
        run = np.concatenate(([0], np.cumsum(gap)))[quarantined]  # which stretch of consecutive kept rows
        breaks = np.flatnonzero((at[1:] != ends[:-1]) | (run[1:] != run[:-1])) + 1
        self._starts = np.concatenate(([0], breaks)).astype(np.int64)  # block -> its first quarantined row
        self._stops = np.concatenate((breaks, [len(at)])).astype(np.int64)
        self._at, self._ends, self._index = at, ends, index
        self._written_at = np.zeros(len(self._starts), dtype=np.int64)  # where each block went in this run's file

    def __len__(self) -> int:
        """Blocks."""
        return len(self._starts) if len(self._at) else 0

    def first_index(self, block: int) -> int:
        return int(self._index[self._starts[block]])

    def last_index(self, block: int) -> int:
        return int(self._index[self._stops[block] - 1])

    def copy(self, block: int) -> None:
        """The block's lines, to the sink now (every line before them in input order is there)."""
        lo, hi = int(self._starts[block]), int(self._stops[block])
        start, stop = int(self._at[lo]), int(self._ends[hi - 1])
        self._written_at[block] = self._sink.at
        self._lines.seek(start)
        left, newlines, last = stop - start, 0, b""
        while left:
            data = self._lines.read(min(left, COPY_BLOCK))
            if not data:
                break
            newlines += data.count(b"\n")
            last = data[-1:]
            self._sink.write_lines(data)
            left -= len(data)
        if left or last != b"\n" or newlines != hi - lo:
            raise UsageError("the preference export's quarantine file does not hold the lines its kept "
                             "decisions say; `distill run --force` starts the exports from their inputs")
        codes = self._reason[lo:hi]
        names = self._kept.reasons
        per_code = np.bincount(codes[(codes >= 0) & (codes < len(names))], minlength=len(names)).tolist()
        self._sink.copied(hi - lo, {names[c]: n for c, n in enumerate(per_code) if n})  # a bad code: no count

    def record(self, into: NextDecisions) -> None:
        """Once every block is copied: the rows' decisions, with where their lines are now, for the next run."""
        kept, clean = self._kept, self._clean
        r = kept.rows
        line_at = np.full(len(clean), NONE, dtype=np.int64)
        line_len = np.zeros(len(clean), dtype=np.int64)
        if len(self):
            block_of = np.repeat(np.arange(len(self._starts)), self._stops - self._starts)
            line_at[self._quarantined] = self._written_at[block_of] + (self._at - self._at[self._starts][block_of])
            line_len[self._quarantined] = self._len
        outcome = np.where(self._is_quarantined, QUARANTINED, DEDUPED)
        into.decided_rows(clean.indexes, outcome, source=(r["source"][clean.rows], kept.sources),
                          category=(r["category"][clean.rows], kept.categories),
                          reason=(r["reason"][clean.rows], kept.reasons), line_at=line_at, line_len=line_len)


def _pair(value: Any) -> tuple[int, str]:
    size, digest = value
    if type(size) is not int or not isinstance(digest, str):
        raise TypeError("malformed digest")
    return size, digest


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeError("malformed names")
    return value


class NextDecisions:
    """This run's decisions, collected by input index as the first pass and the final merge see
    the rows; saved for the next run once the export and its checkpoint are."""

    def __init__(self, kept: KeptDecisions | None) -> None:
        self.tasks = Codes(kept.tasks if kept is not None else None)
        self.prompts = Codes(kept.prompts if kept is not None else None)
        self.sources = Names()
        self.categories = Names()
        self.reasons = Names()
        self.parts: list[tuple[str, int]] = []
        self._task = array("i")
        self._prompt = array("i")
        self._question = array("i")
        self._run = array("Q")
        self._text = array("Q")
        self._side = array("b")
        self._passed = bytearray()
        self._decided: dict[str, np.ndarray] | None = None  # by input index, once the first pass has seen every row
        self._undecided = 0
        # (question, task, source, category) of each cross-source candidate the first pass read or
        # spilled from its entry this run, when there are kept decisions to settle against
        self.answers: list[tuple[int, int, str, str]] | None = [] if kept is not None else None

    def _grow(self, index: int) -> None:
        short = index + 1 - len(self._task)
        if short > 0:
            self._task.extend([NONE] * short)
            self._prompt.extend([NONE] * short)
            self._question.extend([NONE] * short)
            self._run.extend([0] * short)
            self._text.extend([0] * short)
            self._side.extend([0] * short)
            self._passed.extend(bytes(16 * short))

    def row(self, index: int, task: str | None, prompt: str | None, *, asks: bool, passed: bytes | None,
            answer: tuple[str, str] | None = None, grid: tuple[str, bytes, int] | None = None) -> None:
        """A row the first pass read or replayed from its entry (`task`, `prompt`: None for a row
        refused before pairing; `asks`: a cross-source candidate, whose question is its prompt, and
        `answer` its (source, category); `grid`: its run id, text digest and side, CHOSEN, OPPOSITE
        or 0, in its group's same-task grid)."""
        self._grow(index)
        if grid is not None:
            run_id, text_digest, side = grid
            self._run[index] = xxhash.xxh3_64_intdigest(run_id.encode("utf-8", "surrogatepass"))
            self._text[index] = int.from_bytes(text_digest[:8], "little")
            self._side[index] = side
        if task is not None and prompt is not None:
            self._task[index] = task_code = self.tasks.code(task)
            self._prompt[index] = code = self.prompts.code(prompt)
            if asks:
                self._question[index] = code
                if self.answers is not None and answer is not None:
                    self.answers.append((code, task_code, *answer))
        if passed is not None:
            self._passed[16 * index:16 * index + 16] = passed

    def kept_rows(self, first_index: int, kept: KeptDecisions, rows: slice) -> None:
        """Rows whose entries were not read: their codes are the kept ones (same tables)."""
        n = rows.stop - rows.start
        self._grow(first_index + n - 1)
        self._task[first_index:first_index + n] = array("i", kept.rows["task"][rows].tobytes())
        self._prompt[first_index:first_index + n] = array("i", kept.rows["prompt"][rows].tobytes())
        self._question[first_index:first_index + n] = array("i", kept.rows["question"][rows].tobytes())
        self._run[first_index:first_index + n] = array("Q", kept.rows["run"][rows].tobytes())
        self._text[first_index:first_index + n] = array("Q", kept.rows["text"][rows].tobytes())
        self._side[first_index:first_index + n] = array("b", kept.rows["side"][rows].tobytes())
        self._passed[16 * first_index:16 * (first_index + n)] = kept.passed[rows].tobytes()

    def task_codes(self) -> np.ndarray:
        return _codes(self._task)

    def prompt_codes(self) -> np.ndarray:
        return _codes(self._prompt)

    def question_codes(self) -> np.ndarray:
        return _codes(self._question)

    def grid_columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """By input index: each row's run id digest, text digest (64 bits of each) and grid side."""
        return (np.frombuffer(self._run, dtype=np.uint64), np.frombuffer(self._text, dtype=np.uint64),
                np.frombuffer(self._side, dtype=np.int8))

    def _columns(self) -> dict[str, np.ndarray]:
        if self._decided is None:
            n = len(self._task)
            self._decided = {name: np.full(n, NONE, dtype=np.int64)
                             for name in ("outcome", "source", "category", "reason", "line_at", "line_len")}
            self._undecided = n
        return self._decided

    def decided(self, row: Decided, line_at: int) -> None:
        """The final decision of one row (each row is decided once)."""
        index, source, category, reason, line, deduped = row
        d = self._columns()
        if not 0 <= index < len(d["outcome"]) or d["outcome"][index] != NONE:
            raise RuntimeError(f"preference decision {index} out of range or made twice")
        d["outcome"][index] = QUARANTINED if reason is not None else DEDUPED if deduped else WRITTEN
        d["source"][index] = self.sources.code(source)
        d["category"][index] = self.categories.code(category)
        d["reason"][index] = self.reasons.code(reason)
        d["line_at"][index] = line_at if reason is not None else NONE
        d["line_len"][index] = len(line) if reason is not None else 0
        self._undecided -= 1

    def decided_rows(self, indexes: np.ndarray, outcome: np.ndarray, *, source: tuple[np.ndarray, list[str]],
                     category: tuple[np.ndarray, list[str]], reason: tuple[np.ndarray, list[str]],
                     line_at: np.ndarray, line_len: np.ndarray) -> None:
        """The final decisions of many rows at once (`KeptLines.record`), `indexes` ascending;
        each name column as (codes, the names they index)."""
        d = self._columns()
        if len(indexes) and (int(indexes[0]) < 0 or int(indexes[-1]) >= len(d["outcome"])
                             or not bool(np.all(indexes[1:] > indexes[:-1]))  # ascending: no row twice
                             or bool(np.any(d["outcome"][indexes] != NONE))):
            raise RuntimeError("preference decisions out of order, out of range or made twice")
        d["outcome"][indexes] = outcome
        for column, table, (codes, names) in (("source", self.sources, source), ("category", self.categories, category),
                                              ("reason", self.reasons, reason)):
            d[column][indexes] = _recoded(codes, names, table)
        d["line_at"][indexes] = line_at
        d["line_len"][indexes] = line_len
        self._undecided -= len(indexes)

    def complete(self) -> bool:
        """Every row the first pass saw was decided."""
        return self._undecided == 0 and len(self._columns()["outcome"]) == len(self._task)

    def save(self, path: Path, *, basis: str, token: str, export: Path, quarantine: tuple[int, str]) -> None:
        """Kept only when every row was decided and the files are readable; else removed (the next
        run pairs every task, as without it)."""
        rows = len(self._task)
        exported = file_digest(export)
        if exported is None or not self.complete() or sum(n for _, n in self.parts) != rows:
            with contextlib.suppress(OSError):
                path.unlink()
            return
        decided = self._columns()
        arrays = {name: decided[name].astype(t) for name, t in _ROW_ARRAYS.items() if name not in _PAIRING_ARRAYS}
        arrays["task"] = self.task_codes()[:rows].copy()
        arrays["prompt"] = self.prompt_codes()[:rows].copy()
        arrays["question"] = self.question_codes()[:rows].copy()
        for name, column in zip(("run", "text", "side"), self.grid_columns(), strict=True):
            arrays[name] = column[:rows].copy()
        passed = np.frombuffer(bytes(self._passed[:16 * rows]), dtype="S16")
        meta = {"version": KEPT_DECISIONS_VERSION, "basis": basis, "token": token, "export": list(exported),
                "quarantine": list(quarantine), "parts": [[rel, n] for rel, n in self.parts],
                "sources": self.sources.names, "categories": self.categories.names, "reasons": self.reasons.names}
        write_cache(path, meta, passed=passed, tasks=self.tasks.digests(), prompts=self.prompts.digests(), **arrays)


def _recoded(codes: np.ndarray, names: list[str], table: Names) -> np.ndarray:
    """Codes into `names` as `table`'s codes (int64), a name new to `table` coded in the order the
    column first shows it, as a row at a time would; a column holds a few distinct names."""
    distinct, first = np.unique(codes, return_index=True)
    out = np.empty(len(codes), dtype=np.int64)
    for code in distinct[np.argsort(first, kind="stable")].tolist():
        out[codes == code] = table.code(None if code == NONE else names[code])
    return out


def _codes(values: array) -> np.ndarray:
    return np.frombuffer(values, dtype=np.int32) if len(values) else np.zeros(0, np.int32)


_SIDES = {Category.ACCEPTED.value: 1, Category.REJECTED.value: 2}  # cross-source pairs: accepted x rejected


def pairable_questions(kept: KeptDecisions, answers: list[tuple[int, int, str, str]], *,
                       question_count: int) -> np.ndarray:
    """By question code: whether the question's accepted and rejected answers, among last run's
    rows (`kept`, the ones since changed or removed included) and the ones this run read
    (`answers`: question, task, source, category), come from more than one source and more than
    one task. A cross-source pair needs both (the pairing asks the same of the rows it pairs, a
    subset of these), so a question without them had no such pair last run and can have none now:
    every row asking it is decided by its own task's pairing alone."""
    r = kept.rows
    sources = {name: code for code, name in enumerate(kept.sources)}
    side_of = np.array([_SIDES.get(c, 0) for c in kept.categories] + [0], dtype=np.int8)  # NONE -> 0
    new = np.array([(q, t, sources.setdefault(s, len(sources)), _SIDES.get(c, 0)) for q, t, s, c in answers],
                   dtype=np.int64).reshape(-1, 4)
    question = np.concatenate((r["question"], new[:, 0]))
    task = np.concatenate((r["task"], new[:, 1]))
    source = np.concatenate((r["source"], new[:, 2]))
    side = np.concatenate((side_of[r["category"]], new[:, 3]))
    out = np.zeros(question_count, dtype=bool)
    answered = (question != NONE) & (side != 0)
    if not answered.any():
        return out
    question, task, source, side = question[answered], task[answered], source[answered], side[answered]
    order = np.argsort(question, kind="stable")
    question, task, source, side = question[order], task[order], source[order], side[order]
    starts = np.flatnonzero(np.concatenate(([True], question[1:] != question[:-1])))

    def varies(values: np.ndarray) -> np.ndarray:
        return np.minimum.reduceat(values, starts) != np.maximum.reduceat(values, starts)

    out[question[starts]] = (np.bitwise_or.reduceat(side, starts) == 3) & varies(task) & varies(source)
    return out


def _group_keys(task: np.ndarray, prompt: np.ndarray, prompt_count: int) -> np.ndarray:
    """One int per (task, prompt) code pair."""
    return task.astype(np.int64) * (prompt_count + 1) + (prompt.astype(np.int64) + 1)


def _shared_across(group: np.ndarray, value: np.ndarray, bits: np.ndarray) -> np.ndarray:
    """The groups in which one value comes with both bits (1 and 2) among its rows."""
    if not len(group):
        return group
    order = np.lexsort((value, group))
    group, value, bits = group[order], value[order], bits[order]
    starts = np.flatnonzero(np.concatenate(([True], (group[1:] != group[:-1]) | (value[1:] != value[:-1]))))
    both = np.bitwise_or.reduceat(bits, starts) == 3
    return np.unique(group[starts][both])


def appended_groups(tasks: np.ndarray, prompts: np.ndarray, *, prompt_count: int, new: np.ndarray,
                    capped: np.ndarray, changed: tuple[np.ndarray, np.ndarray], run: np.ndarray,
                    text: np.ndarray, side: np.ndarray, in_grid: np.ndarray) -> np.ndarray:
    """A mask over this run's rows: the rows of groups whose old rows keep their decisions while
    the group's new rows are decided (see the module docstring). `new`: the rows read this run
    (the others replayed with kept decisions); `capped`: by task code, whether the task's exported
    pairs reach the cap; `changed`: (task, prompt) codes of groups that lost or changed a kept row;
    `run`/`text`/`side`: each row's run id and text digests and its grid side; `in_grid`: the old
    rows surely offered in their grid (`KeptDecisions.in_grid`). A group qualifies when its task
    is capped, it gained rows and lost or changed none, no run id or text is on both sides, no new
    row's run id is an old row's, and both sides hold an old row in the grid."""
    has_task = tasks != NONE
    keys = _group_keys(tasks, prompts, prompt_count)
    capped_row = has_task & np.concatenate((capped, [False]))[tasks]  # NONE (-1) -> the False at the end
    changed_task, changed_prompt = changed
    known = changed_task != NONE
    seeded = np.setdiff1d(keys[capped_row & new],
                          _group_keys(changed_task[known], changed_prompt[known], prompt_count))
    rows = np.flatnonzero(capped_row & np.isin(keys, seeded))
    group, is_new, row_side = keys[rows], new[rows], side[rows]
    sided = row_side != 0
    bad = np.concatenate((
        _shared_across(group, run[rows], np.where(is_new, 2, 1)),  # a revision of an old row's run
        _shared_across(group[sided], run[rows][sided], row_side[sided]),  # self-pairing
        _shared_across(group[sided], text[rows][sided], row_side[sided]),  # identical texts
    ))
    old = in_grid[rows] & ~is_new
    both_sides = np.intersect1d(group[old & (row_side == CHOSEN)], group[old & (row_side == OPPOSITE)])
    good = np.setdiff1d(both_sides, bad)
    out = np.zeros(len(tasks), dtype=bool)
    out[rows[np.isin(group, good)]] = True
    return out


def dirty_rows(tasks: np.ndarray, prompts: np.ndarray, questions: np.ndarray, *, capped: np.ndarray,
               prompt_count: int, seed_groups: tuple[np.ndarray, np.ndarray], seed_tasks: np.ndarray,
               seed_questions: np.ndarray, pairable: np.ndarray | None = None,
               seed_rows: np.ndarray | None = None) -> np.ndarray:
    """A mask over this run's rows: those whose decision is made again (see the module docstring).
    `tasks`/`prompts`/`questions`: the rows' codes (NONE where a row has none; a row with a task
    has a prompt); `capped`: by task code, whether the task's exported pairs reach the cap (its
    groups are decided apart); `seed_groups`: (task, prompt) codes of the groups a change touched;
    `seed_tasks`: tasks paired whole whatever their cap; `seed_questions`: questions a change
    touched; `pairable`: by question code, the questions that may have a cross-source pair
    (`pairable_questions`; None: all): a change to any other question reaches no other group;
    `seed_rows`: a mask of rows decided again without their group (`appended_groups`' new rows),
    whose questions still spread."""
    has_task = tasks != NONE
    asks = has_task & (questions != NONE)
    if pairable is not None:
        asks &= np.concatenate((pairable, [False]))[questions]  # NONE (-1) -> the False at the end
    alone = has_task & seed_rows if seed_rows is not None else np.zeros(len(tasks), dtype=bool)

    groups, group_of = np.unique(_group_keys(tasks, prompts, prompt_count), return_inverse=True)
    group_of = group_of.reshape(-1)
    # by code + 1, so NONE lands on 0 (never dirty)
    whole = np.zeros(len(capped) + 1, dtype=bool)  # tasks paired whole
    capped_at = np.concatenate(([True], capped))
    asked = np.zeros(prompt_count + 1, dtype=bool)
    seed_task, seed_prompt = seed_groups
    known = seed_task != NONE
    whole[seed_task[known & ~capped_at[seed_task + 1]] + 1] = True
    whole[seed_tasks[seed_tasks != NONE] + 1] = True
    asked[seed_questions[seed_questions != NONE] + 1] = True
    group_dirty = np.isin(groups, _group_keys(seed_task[known], seed_prompt[known], prompt_count))
    dirty = np.zeros(len(tasks), dtype=bool)
    while True:  # every mask only grows
        whole[0] = asked[0] = False
        touched = has_task & (group_dirty[group_of] | whole[tasks + 1] | (asks & asked[questions + 1]))
        group_dirty[group_of[touched]] = True
        now = (has_task & group_dirty[group_of]) | alone
        if np.array_equal(now, dirty):
            return dirty
        dirty = now
        whole[tasks[dirty & ~capped_at[tasks + 1]] + 1] = True
        asked[questions[dirty & asks] + 1] = True
