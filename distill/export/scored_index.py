"""The categories score gave, as the firewall's ground truth: per evidence revision and per run.

Built from the scored-runs partitions in bounded memory (16-byte key digests and a small code per
scored line), asked one lookup at a time by the export check or many at once (a verification
re-checking what an earlier one asked).
"""

from __future__ import annotations

import contextlib
import hashlib
import zipfile
from array import array
from pathlib import Path
from typing import Any

import numpy as np

from distill.hashing import LineEndHash, PrefixHash
from distill.jsonl import atomic_writer, dumps, json_rows, loads
from distill.workspace import Workspace, iter_partition_files


def write_cache(path: Path, meta: dict[str, Any], **arrays: np.ndarray) -> None:
    """Save an export cache (.npz: its JSON meta plus arrays) atomically; one that cannot be
    written costs the next run a full pass, nothing more."""
    with contextlib.suppress(OSError), atomic_writer(path) as fh:
        np.savez(fh, meta=np.frombuffer(dumps(meta), dtype=np.uint8), **arrays)


def key_digest(*parts: str) -> bytes:
    """128 bits of blake2b over length-prefixed parts: the key every export cache keeps."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.digest()


class _SortedCodes:
    """128-bit key digests, sorted, with a small category code each: about 26 bytes per scored
    row where a dict of string tuples took ~600 (646 MiB at 1M rows), so verifying an export
    stays in bounded memory as the workspace grows. Frozen, equal keys become one group that
    knows its last code (in insertion order) and its code when all agree (-1 when they do not)."""

    def __init__(self) -> None:
        self._keys = bytearray()
        self._codes = array("I")
        self.keys = np.empty(0, dtype="S16")
        self.last = np.empty(0, dtype=np.int32)
        self.single = np.empty(0, dtype=np.int32)

    def add(self, key: bytes, code: int) -> None:
        self._keys += key
        self._codes.append(code)

    def extend(self, keys: bytes, codes: array[int]) -> None:
        self._keys += keys
        self._codes.extend(codes)

    def freeze(self) -> None:
        keys = np.frombuffer(bytes(self._keys), dtype="S16")
        order = np.argsort(keys, kind="stable")
        keys, codes = keys[order], np.frombuffer(self._codes, dtype=np.uint32)[order].astype(np.int32)
        self._keys, self._codes = bytearray(), array("I")
        if not len(keys):
            return
        starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
        ends = np.concatenate((starts[1:], [len(keys)]))
        low, high = np.minimum.reduceat(codes, starts), np.maximum.reduceat(codes, starts)
        self.keys, self.last, self.single = keys[starts], codes[ends - 1], np.where(low == high, low, -1)

    def at(self, key: bytes) -> int | None:
        """The group of one key, None when it is not a key."""
        probe = np.array(key, dtype="S16")
        at = int(np.searchsorted(self.keys, probe))
        return at if at < len(self.keys) and self.keys[at] == probe else None

    def find(self, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each probe digest: whether it is a key, and its group's position (valid when found)."""
        if not len(self.keys):
            return np.zeros(len(probes), dtype=bool), np.zeros(len(probes), dtype=np.int64)
        at = np.minimum(np.searchsorted(self.keys, probes), len(self.keys) - 1)
        return self.keys[at] == probes, at


LOOKUP_NONE, LOOKUP_RUN, LOOKUP_VERSION = 0, 1, 2
"""What a category lookup had to go on: no run id (a string), a run id only, a run id and a sig."""


def lookup_keys(run_id: Any, sig: Any) -> tuple[int, bytes, bytes]:
    """(what the lookup has, run digest, version digest) of one (run_id, sig_hash) question."""
    if not isinstance(run_id, str):
        return LOOKUP_NONE, bytes(16), bytes(16)
    if not isinstance(sig, str):
        return LOOKUP_RUN, key_digest(run_id), bytes(16)
    return LOOKUP_VERSION, key_digest(run_id), key_digest(run_id, sig)


class ScoredIndex:
    """Categories score gave, per evidence revision (run id + sig_hash) and per run id.

    A source row edited in place yields a second evidence revision of the same run; each export
    row names its revision through provenance.sig_hash, so it is judged by that revision's score
    (the last scored line for that revision, as a mapping would keep); without a sig (or with an
    unknown one) the run's category counts when all its scored lines agree.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self._code: dict[str, int] = {}
        self._by_version = _SortedCodes()
        self._by_run = _SortedCodes()

    def add(self, run_id: str, sig: str | None, category: str) -> None:
        code = self._code_of(category)
        self._by_run.add(key_digest(run_id), code)
        if sig is not None:
            self._by_version.add(key_digest(run_id, sig), code)

    def add_part(self, part: _Part) -> None:
        """Every line of a partition, in order (what `add` does line by line)."""
        codes = array("I", (self._code_of(c) for c in part.categories))
        self._by_run.extend(bytes(part.runs), codes)
        if all(part.has_sig):
            self._by_version.extend(bytes(part.versions), codes)
        else:
            for i, has in enumerate(part.has_sig):
                if has:
                    self._by_version.add(bytes(part.versions[16 * i:16 * i + 16]), codes[i])

    def _code_of(self, category: str) -> int:
        code = self._code.setdefault(category, len(self._code))
        if code == len(self.names):
            self.names.append(category)
        return code

    def freeze(self) -> ScoredIndex:
        self._by_version.freeze()
        self._by_run.freeze()
        return self

    def codes(self, has: np.ndarray, runs: np.ndarray, versions: np.ndarray) -> np.ndarray:
        """The answer to many lookups at once, as indexes into `names` (-1: None); each lookup
        given as lookup_keys gives it."""
        v_found, v_at = self._by_version.find(versions)
        r_found, r_at = self._by_run.find(runs)
        by_run = np.where(r_found, self._by_run.single[r_at] if len(self._by_run.keys) else -1, -1)
        by_version = self._by_version.last[v_at] if len(self._by_version.keys) else np.full(len(has), -1)
        out = np.where((has == LOOKUP_VERSION) & v_found, by_version, by_run)
        return np.where(has == LOOKUP_NONE, -1, out)

    def category(self, run_id: Any, sig: Any) -> str | None:
        """One lookup (what `codes` answers for many)."""
        return self.category_of(*lookup_keys(run_id, sig))

    def category_of(self, has: int, run: bytes, version: bytes) -> str | None:
        """One lookup given as lookup_keys gives it (a caller that keeps the digests hashes once)."""
        if has == LOOKUP_NONE:
            return None
        if has == LOOKUP_VERSION:
            at = self._by_version.at(version)
            if at is not None:
                return self.names[int(self._by_version.last[at])]
        at = self._by_run.at(run)
        code = -1 if at is None else int(self._by_run.single[at])
        return self.names[code] if code >= 0 else None


class _Part:
    """One scored partition's lines as the index keeps them, and how far into the file they go."""

    def __init__(self, end: int = 0, lines: int = 0, runs: bytes = b"", versions: bytes = b"",
                 has_sig: bytes = b"", categories: list[str] | None = None) -> None:
        self.end, self.lines = end, lines
        self.runs, self.versions, self.has_sig = bytearray(runs), bytearray(versions), bytearray(has_sig)
        self.categories = categories if categories is not None else []
        self.prefix_hash = ""

    def add(self, run_id: str, sig: str | None, category: str) -> None:
        self.runs += key_digest(run_id)
        self.versions += key_digest(run_id, sig) if sig is not None else bytes(16)
        self.has_sig.append(sig is not None)
        self.categories.append(category)


def scored_categories(ws: Workspace) -> ScoredIndex:
    """The scored-runs partitions as the firewall's ground truth. What an earlier build read of a
    partition is taken from `.distill.scored-index.npz` while the file still starts with those
    bytes (their prefix hash), so a run after an append parses only the appended lines; the index is the same
    either way (the cache only saves work)."""
    store = ws.scored_index_path
    saved = _load_parts(store)
    index = ScoredIndex()
    parts: dict[str, _Part] = {}
    changed = set(saved) != {rel for rel in (p.relative_to(ws.root).as_posix() for p in iter_partition_files(ws.scored_dir))}
    for path in iter_partition_files(ws.scored_dir):
        rel = path.relative_to(ws.root).as_posix()
        part = saved.get(rel)
        hasher = PrefixHash.resume(path, part.end, part.prefix_hash) if part is not None else None
        if part is None or hasher is None:
            part, hasher = _Part(), PrefixHash()
        tail = LineEndHash(hasher)
        for _, row in json_rows(path, start=part.end, lines_before=part.lines, on_chunk=tail):
            rid, cat = row.get("evidence_run_id"), row.get("category")
            prov = row.get("provenance")
            sig = prov.get("sig_hash") if isinstance(prov, dict) else None
            if isinstance(rid, str) and isinstance(cat, str):
                part.add(rid, sig if isinstance(sig, str) else None, cat)
        sha = tail.hexdigest(path)
        changed = changed or tail.end != part.end or sha != part.prefix_hash
        part.end, part.lines, part.prefix_hash = tail.end, part.lines + tail.newlines, sha or ""
        index.add_part(part)
        parts[rel] = part
    if changed:
        _save_parts(store, parts)
    return index.freeze()


SCORED_INDEX_VERSION = 2  # 2: prefixes hashed with xxh3-128, not sha256


def _load_parts(store: Path) -> dict[str, _Part]:
    """The saved parts, or none when the file is missing, damaged or of another version."""
    try:
        with np.load(store, allow_pickle=False) as saved:
            meta = loads(bytes(saved["meta"]))
            runs, versions, has_sig, codes = (saved["runs"].tobytes(), saved["versions"].tobytes(),
                                              saved["has_sig"].tobytes(), saved["codes"].tolist())
        if meta.get("version") != SCORED_INDEX_VERSION:
            return {}
        names: list[str] = meta["names"]
        parts: dict[str, _Part] = {}
        at = 0
        for rel, end, lines, sha, count in meta["parts"]:
            cats = [names[c] for c in codes[at:at + count]]
            parts[str(rel)] = part = _Part(int(end), int(lines), runs[16 * at:16 * (at + count)],
                                           versions[16 * at:16 * (at + count)], has_sig[at:at + count], cats)
            part.prefix_hash = str(sha)
            at += count
            if len(part.runs) != 16 * count or len(part.has_sig) != count or len(cats) != count:
                return {}
        return parts
    except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile):
        return {}


def _save_parts(store: Path, parts: dict[str, _Part]) -> None:
    names = sorted({c for p in parts.values() for c in p.categories})
    code = {n: i for i, n in enumerate(names)}
    meta = {"version": SCORED_INDEX_VERSION, "names": names,
            "parts": [[rel, p.end, p.lines, p.prefix_hash, len(p.categories)] for rel, p in parts.items()]}
    write_cache(store, meta,
                runs=np.frombuffer(b"".join(bytes(p.runs) for p in parts.values()), dtype=np.uint8),
                versions=np.frombuffer(b"".join(bytes(p.versions) for p in parts.values()), dtype=np.uint8),
                has_sig=np.frombuffer(b"".join(bytes(p.has_sig) for p in parts.values()), dtype=np.uint8),
                codes=np.array([code[c] for p in parts.values() for c in p.categories], dtype=np.uint16))
