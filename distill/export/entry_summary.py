"""What a RAG/SFT partition's checkpoint entries add up to, kept beside them.

After an append most partitions only grew, and their checkpoint is replayed whole. Asking each of
its entries (is its id new to this input, is a shipped one still in the export, which counter does
it bump) was a line of Python per row, the bulk of a +1 % export. The summary answers the same
questions for the whole partition: the counters to add (keys in the order the entries first bump
them, so the report comes out as a replay row by row makes it), the key digests of the ids the
partition's candidates produced (checked against the ids seen so far and the export's with set
operations), the dropped rows whose id could be a stale row of the export (with those ids' key
digests, checked the same way), and the size of the partition's quarantine lines. A run of
entries inside a rewritten partition gets its summary from its entries (`of`). The summary is
written with its own digest and checked against the entries' count when read; anything else is
no checkpoint.
"""

from __future__ import annotations

import base64
import itertools
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import xxhash

from distill.export.exported import ExportedIds
from distill.export.scored_index import key_digest
from distill.hashing import split_digests
from distill.jsonl import dumps
from distill.records.stage import TallyKey

SUMMARY_KEY = "summary"
SUMMARY_DIGEST_KEY = "summary_digest"
DIGEST = 16  # bytes per id digest (scored_index.key_digest)
FIELDS = {"counts": ("deduped", "quarantined"), "gated": ("quarantined",)}  # what a replay counts


class PartitionSummary:
    """Counters, id digests and quarantine-line size of a run of RowExporter entries (see
    quarantine.ENTRY_DOC for the entry layout)."""

    def __init__(self) -> None:
        self.counts: Counter[TallyKey] = Counter()  # what a replay adds to the report at once
        self.gated: Counter[TallyKey] = Counter()  # candidates the firewall refused (counted in input order)
        self.shipped = bytearray()  # key digests of the "c" entries' ids
        self.refused = bytearray()  # key digests of the "g" entries' ids
        self.stale: list[tuple[str, str, str, str]] = []  # (id, run id, category, reason) of unsafe drops
        self.stale_digests = bytearray()  # their ids' key digests, in the same order
        self.line_bytes = 0  # the entries' quarantine lines, a newline after each
        self.lines = 0
        self.entries = 0
        self.replayable = True  # False once an entry no replay takes ("x": a repeated id) was added

    @classmethod
    def of(cls, entries: Iterable[Sequence[Any]]) -> PartitionSummary:
        summary = cls()
        for entry in entries:
            summary.add(entry)
        return summary

    def add(self, entry: Sequence[Any], digest: bytes | None = None) -> None:
        """One entry, as a replay counts it: a shipped candidate is in the export by then
        (deduped). `digest`: its id's key digest when the caller has it."""
        code, source, category, reason, sid, run_id, length = entry
        self.entries += 1
        if length is not None:
            self.line_bytes += length + 1
            self.lines += 1
        if code == "c" or code == "g":
            found = digest if digest is not None else key_digest(sid)
            if code == "c":
                self.shipped += found
                self.counts[(source, "deduped", None, category)] += 1
            else:
                self.refused += found
                self.gated[(source, "quarantined", reason, category)] += 1
        elif code == "b" or code == "d":
            self.counts[(source, "quarantined", reason, category)] += 1
            if code == "d" and sid is not None:
                self.stale.append((sid, run_id, category, reason))
                self.stale_digests += key_digest(sid)
        else:
            self.replayable = False

    def merge(self, other: PartitionSummary) -> None:
        """`other`'s entries come after these."""
        self.counts.update(other.counts)
        self.gated.update(other.gated)
        self.shipped += other.shipped
        self.refused += other.refused
        self.stale.extend(other.stale)
        self.stale_digests += other.stale_digests
        self.line_bytes += other.line_bytes
        self.lines += other.lines
        self.entries += other.entries
        self.replayable = self.replayable and other.replayable

    def quarantine_reasons(self) -> Counter[str]:
        """The entries' quarantine lines per reason (every quarantined entry has one)."""
        reasons: Counter[str] = Counter()
        for (_, field, reason, _), n in itertools.chain(self.counts.items(), self.gated.items()):
            if field == "quarantined":
                reasons[str(reason)] += n
        return reasons

    def ids(self) -> tuple[list[bytes], list[bytes]]:
        """The digests of the shipped and of the refused candidates' ids."""
        return split_digests(self.shipped, DIGEST), split_digests(self.refused, DIGEST)

    def stale_in(self, existing: ExportedIds) -> list[tuple[str, str, str, str]]:
        """The unsafe drops whose id the export holds: by the kept digests, one set check when it
        holds none of them (a replay hashed each id: ~590k a +1 % run at 1,000,000 rows)."""
        digests = split_digests(self.stale_digests, DIGEST)
        if existing.has_none(digests):
            return []
        return [stale for stale, digest in zip(self.stale, digests, strict=True) if existing.has(digest)]

    def replays_against(self, seen: set[bytes], existing: ExportedIds) -> bool:
        """Whether replaying gives what reading the rows would: no candidate's id was produced
        earlier in this input (or twice here), every shipped one is still in the export and no
        refused one is in it now."""
        if not self.replayable:
            return False
        shipped, refused = self.ids()
        both = set(shipped)
        both.update(refused)
        return (len(both) == len(shipped) + len(refused) and seen.isdisjoint(both)
                and existing.has_all(shipped) and existing.has_none(refused))

    def fields(self) -> dict[str, Any]:
        """What the checkpoint line carries: the summary and its digest."""
        body = {
            "counts": [[*key, n] for key, n in self.counts.items()],
            "gated": [[*key, n] for key, n in self.gated.items()],
            "shipped": base64.b64encode(self.shipped).decode("ascii"),
            "refused": base64.b64encode(self.refused).decode("ascii"),
            "stale": [list(s) for s in self.stale],
            "stale_digests": base64.b64encode(self.stale_digests).decode("ascii"),
            "line_bytes": self.line_bytes,
            "lines": self.lines,
        }
        return {SUMMARY_KEY: body, SUMMARY_DIGEST_KEY: xxhash.xxh3_128(dumps(body)).hexdigest()}

    @classmethod
    def from_fields(cls, found: dict[str, Any], count: int) -> PartitionSummary | None:
        """The summary a checkpoint line holds for its `count` entries; None when it is absent,
        not the bytes written, or does not add up to them."""
        body, digest = found.get(SUMMARY_KEY), found.get(SUMMARY_DIGEST_KEY)
        if not isinstance(body, dict) or not isinstance(digest, str):
            return None
        try:
            if xxhash.xxh3_128(dumps(body)).hexdigest() != digest:
                return None
            summary = cls()
            for name, counter in (("counts", summary.counts), ("gated", summary.gated)):
                for row in body[name]:
                    source, field, reason, category, n = row
                    if (not isinstance(source, str) or field not in FIELDS[name] or type(n) is not int or n <= 0
                            or not all(v is None or isinstance(v, str) for v in (reason, category))
                            or (field == "deduped") != (reason is None)):
                        return None
                    counter[(source, field, reason, category)] += n
            summary.shipped = bytearray(base64.b64decode(body["shipped"], validate=True))
            summary.refused = bytearray(base64.b64decode(body["refused"], validate=True))
            summary.stale = [(sid, run_id, category, reason) for sid, run_id, category, reason in body["stale"]]
            summary.stale_digests = bytearray(base64.b64decode(body["stale_digests"], validate=True))
            summary.line_bytes, summary.lines = body["line_bytes"], body["lines"]
        except (KeyError, TypeError, ValueError):
            return None
        if not set(map(type, itertools.chain.from_iterable(summary.stale))) <= {str}:  # one C-level pass
            return None
        if len(summary.stale_digests) != DIGEST * len(summary.stale):
            return None
        summary.entries = sum(summary.counts.values()) + sum(summary.gated.values())
        deduped = sum(n for key, n in summary.counts.items() if key[1] == "deduped")
        quarantined = summary.entries - deduped
        if (summary.entries != count or len(summary.shipped) != DIGEST * deduped
                or len(summary.refused) != DIGEST * sum(summary.gated.values())
                or type(summary.line_bytes) is not int or type(summary.lines) is not int
                or summary.lines != quarantined or summary.line_bytes < 3 * summary.lines):
            return None
        return summary
