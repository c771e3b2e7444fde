"""What pairing decided for each task, kept so that a run after an append pairs again only the
tasks whose rows or exported pairs changed.

A task's pairing is a function of its eligible rows (in input order: the row each holds, the
line it came from and what a quarantine line of it would say), the pairs of that task already in
the export and the per-task cap. That is the entry's key (`task_key`); its value says, per row,
what pairing made of it: a decision (written, deduped, or the quarantine line with its reason)
or, for a cross-source candidate, its same-task standing, handed on to cross-source pairing, which
is redone every run.

An entry is stored only for a state that pairs nothing new, so that the next run with the same
key gets exactly this result: a task that paired nothing, or a task that paired but stayed under
the cap, stored under the state after its new pairs are appended (the same walk then keeps each of
them as an exported pair: its rows become deduped instead of written; every refusal is the same,
because the cap is never reached). A task that reached the cap is paired again next run.

Kept in `ROOT/.distill.pairing-preference.json` (`checkpoint_file.CheckpointFile`: one line per
task entry, the header with the export basis last) and trusted only under the same basis as the
export checkpoints (code, [export] settings, gates); an entry that does not parse as one this
module writes is paired again. Losing the file costs one full pairing, never a different result.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.checkpoint_file import CheckpointFile
from distill.jsonl import dumps, loads
from distill.records import QuarantineReason

PAIRING_CACHE_VERSION = 1

# One row's item (JSON):
#   ["d", reason | None, quarantine line | "", deduped]    decided by same-task pairing
#   ["x", in_new, in_existing, reason | None, message | None]    a cross-source candidate's standing
Item = list[Any]


def _valid_item(item: Any, cross: bool) -> bool:
    if not isinstance(item, list) or not item:
        return False
    if item[0] == "d" and not cross:
        return (len(item) == 4 and (item[1] is None or item[1] in _REASONS) and isinstance(item[2], str)
                and isinstance(item[3], bool) and (item[1] is None) == (item[2] == ""))
    if item[0] == "x" and cross:
        return (len(item) == 5 and isinstance(item[1], bool) and isinstance(item[2], bool)
                and (item[3] is None or item[3] in _REASONS) and (item[3] is None) == (item[4] is None)
                and (item[4] is None or isinstance(item[4], str)))
    return False


_REASONS = frozenset(r.value for r in QuarantineReason)


def after_append(items: list[Item]) -> list[Item]:
    """The same task's result once its new pairs are in the export (below the cap): a row a new
    pair used is now used by an exported one."""
    out: list[Item] = []
    for item in items:
        if item[0] == "d":
            _, reason, line, deduped = item
            out.append(["d", reason, line, deduped or reason is None])
        else:
            _, in_new, in_existing, reason, message = item
            out.append(["x", False, in_new or in_existing, reason, message])
    return out


class PairingCache:
    """Per-task pairing results of the last run (`get`), and this run's (`keep` / `put`), saved
    with the export checkpoints."""

    def __init__(self, path: Path, basis: str, *, writable: bool, existing_ids: dict[str, list[str]],
                 existing_count: Callable[[str], int], cap: int) -> None:
        self.basis = basis
        self.writable = writable
        self.existing_ids = existing_ids
        self.existing_count = existing_count
        self.cap = cap
        self.file = CheckpointFile(path, self._accept)
        self.reused = 0
        self.paired = 0

    def _accept(self, header_line: bytes) -> Any | None:
        header = loads(header_line)
        ok = (isinstance(header, dict) and header.get("version") == PAIRING_CACHE_VERSION
              and header.get("basis") == self.basis)
        return header if ok else None

    def key(self, task_id: str, rows: list[tuple[bytes, ...]], new_ids: list[str] | None = None) -> str | None:
        """The task's state: `rows` are each row's identity (`preference.Row.identity`), in input
        order; `new_ids`: pairs about to be appended (the state after this run). None when a row
        has no identity (a value JSON cannot carry): such a task is always paired."""
        ids = sorted([*self.existing_ids.get(task_id, ()), *(new_ids or ())])
        h = hashlib.blake2b(dumps([PAIRING_CACHE_VERSION, task_id, self.cap,
                                   self.existing_count(task_id) + len(new_ids or ()), ids]), digest_size=16)
        for identity in rows:
            if not identity:
                return None
            for part in identity:
                h.update(len(part).to_bytes(4, "little"))
                h.update(part)
        return h.hexdigest()

    def get(self, key: str | None, cross: list[bool]) -> list[Item] | None:
        """The stored result for this state, one item per row (`cross`: which rows are cross
        candidates), or None."""
        if key is None:
            return None
        raw = self.file.payload(key)
        if raw is None:
            return None
        try:
            value = loads(raw)
        except ValueError:
            return None
        items = value.get("items") if isinstance(value, dict) else None
        if (not isinstance(items, list) or len(items) != len(cross)
                or not all(_valid_item(i, c) for i, c in zip(items, cross, strict=True))):
            return None
        self.reused += 1
        if self.writable:
            self.file.write(key, {"items": items})
        return items

    def put(self, task_id: str, rows: list[tuple[bytes, ...]], key: str | None, items: list[Item],
            new_ids: list[str]) -> None:
        """This run's pairing of a task, stored for the state in which it pairs nothing new."""
        self.paired += 1
        if not self.writable or key is None:
            return
        if not new_ids:
            self.file.write(key, {"items": items})
            return
        if self.existing_count(task_id) + len(new_ids) >= self.cap:
            # at the cap the next walk refuses every pair it does not keep for the cap, where this
            # one tried to build it (a pair the schema refused would get another reason): paired
            # again next run, which then stores its result
            return
        after = self.key(task_id, rows, new_ids)
        if after is not None:
            self.file.write(after, {"items": after_append(items)})

    def save(self) -> None:
        if self.writable:
            self.file.save({"version": PAIRING_CACHE_VERSION, "basis": self.basis})

    def discard(self) -> None:
        self.file.discard()
