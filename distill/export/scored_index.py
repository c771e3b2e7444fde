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
import xxhash

from distill.hashing import LineEndHash, PrefixHash, WholeFileDigests
from distill.jsonl import atomic_writer, dumps, iter_raw_lines, loads
from distill.sorted_search import search_sorted
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
        self._keys = bytearray()  # concatenated digests, in insertion order
        self._codes = array("i")
        self.keys = np.empty(0, dtype="S16")
        self.last = np.empty(0, dtype=np.int32)
        self.single = np.empty(0, dtype=np.int32)
        self._high: np.ndarray | None = None  # the keys' first halves as integers, made on the first `find`

    def add(self, key: bytes, code: int) -> None:
        self._keys += key
        self._codes.append(code)

    def extend(self, keys: bytes, codes: np.ndarray) -> None:
        self._keys += keys
        self._codes.frombytes(codes.astype(np.int32).tobytes())

    def freeze(self) -> None:
        keys = np.frombuffer(bytes(self._keys), dtype="S16")
        codes = np.frombuffer(self._codes, dtype=np.int32).copy()
        self._keys, self._codes = bytearray(), array("i")
        if not len(keys):
            return
        order = sort_digests(keys)
        keys, codes = keys[order], codes[order]
        starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
        ends = np.concatenate((starts[1:], [len(keys)]))
        low, high = np.minimum.reduceat(codes, starts), np.maximum.reduceat(codes, starts)
        self.keys, self.last, self.single = keys[starts], codes[ends - 1], np.where(low == high, low, -1)
        self._high = None

    def frozen(self) -> dict[str, np.ndarray]:
        """What `freeze` made, for a cache to keep (`thaw` takes it back)."""
        return {"keys": self.keys, "last": self.last, "single": self.single}

    def thaw(self, keys: np.ndarray, last: np.ndarray, single: np.ndarray, *, codes: int) -> bool:
        """Take what an earlier `freeze` made of the same additions (no sort); False, keeping
        nothing, when it is not that shape: keys strictly ascending, a last and a single code (or
        -1) each, all below `codes`."""
        if keys.dtype != np.dtype("S16") or not len(keys) == len(last) == len(single):
            return False
        high, low = _halves(keys)
        ascending = (high[1:] > high[:-1]) | ((high[1:] == high[:-1]) & (low[1:] > low[:-1]))
        if not (bool(ascending.all()) and _codes_within(last, 0, codes) and _codes_within(single, -1, codes)):
            return False
        self.keys, self.last, self.single = keys, last.astype(np.int32), single.astype(np.int32)
        self._keys, self._codes, self._high = bytearray(), array("i"), None
        return True

    def at(self, key: bytes) -> int | None:
        """The group of one key, None when it is not a key."""
        return digest_position(self.keys, key)

    def find(self, probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each probe digest: whether it is a key, and its group's position (valid when found).
        Searched by the keys' first 64-bit halves as integers (a string search of a million probes
        took ~1 s of every export's verification); a probe whose half some other key shares is
        searched again as a string."""
        if not len(self.keys):
            return np.zeros(len(probes), dtype=bool), np.zeros(len(probes), dtype=np.int64)
        probes = np.asarray(probes, dtype="S16")
        if self._high is None:
            self._high = _halves(self.keys)[0].astype(np.uint64)  # native order: a faster search
        high = _halves(probes)[0].astype(np.uint64)
        at = np.minimum(search_sorted(self._high, high), len(self.keys) - 1)
        found = self.keys[at] == probes
        again = np.flatnonzero(~found & (self._high[at] == high))  # the half is shared: another key may match
        if len(again):
            at[again] = np.minimum(search_sorted(self.keys, probes[again]), len(self.keys) - 1)
            found[again] = self.keys[at[again]] == probes[again]
        return found, at


def _codes_within(codes: np.ndarray, low: int, count: int) -> bool:
    return codes.dtype.kind == "i" and (not len(codes) or (low <= int(codes.min()) and int(codes.max()) < count))


def digest_position(keys: np.ndarray, digest: bytes) -> int | None:
    """Where a 16-byte digest is in sorted unique S16 `keys`, None when it is not there."""
    probe = np.array(digest, dtype="S16")
    at = int(np.searchsorted(keys, probe))
    return at if at < len(keys) and keys[at] == probe else None


def _halves(digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first and last 8 bytes of each 16-byte digest as big-endian integers (the bytes' order)."""
    halves = np.frombuffer(digests.astype("S16").tobytes(), dtype=">u8").reshape(-1, 2)
    return halves[:, 0], halves[:, 1]


def sort_digests(keys: np.ndarray) -> np.ndarray:
    """`np.argsort(keys, kind="stable")` of 16-byte digests (an S16 array), in about half the time:
    bytes compare as unsigned, so the order is that of the big-endian 64-bit halves, and sorting by
    the first half alone is already the order unless two different keys share it (checked; then
    both halves are sorted)."""
    high, low = _halves(keys)
    order = np.argsort(high, kind="stable")
    high_sorted, low_sorted = high[order], low[order]
    if bool(np.any((high_sorted[1:] == high_sorted[:-1]) & (low_sorted[1:] < low_sorted[:-1]))):
        order = np.lexsort((low, high))
    return order


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
        code = self.code_of(category)
        self._by_run.add(key_digest(run_id), code)
        if sig is not None:
            self._by_version.add(key_digest(run_id, sig), code)

    def add_part(self, part: _Part) -> None:
        """Every line of a partition, in order (what `add` does line by line); the part's codes
        are this index's (`code_of`)."""
        codes = part.codes_array()
        self._by_run.extend(bytes(part.runs), codes)
        has_sig = np.frombuffer(bytes(part.has_sig), dtype=np.uint8).astype(bool)
        if has_sig.all():
            self._by_version.extend(bytes(part.versions), codes)
        elif has_sig.any():
            versions = np.frombuffer(bytes(part.versions), dtype="S16")
            self._by_version.extend(versions[has_sig].tobytes(), codes[has_sig])

    def code_of(self, category: str) -> int:
        """The code this index gives a category (the next free one for a new category)."""
        code = self._code.setdefault(category, len(self._code))
        if code == len(self.names):
            self.names.append(category)
        return code

    def freeze(self) -> ScoredIndex:
        self._by_version.freeze()
        self._by_run.freeze()
        return self

    def frozen(self) -> dict[str, np.ndarray]:
        """The frozen index's arrays, for the cache (`thaw`)."""
        return {**{f"version_{k}": v for k, v in self._by_version.frozen().items()},
                **{f"run_{k}": v for k, v in self._by_run.frozen().items()}}

    def thaw(self, arrays: dict[str, np.ndarray]) -> bool:
        """Frozen from what `frozen` gave for the same parts, instead of adding them and sorting
        (the exports of one run ask for the same index one after another); False when the arrays
        are not that (the caller adds the parts and freezes)."""
        try:
            by_version, by_run = ([arrays[f"{side}_{k}"] for k in ("keys", "last", "single")]
                                  for side in ("version", "run"))
        except KeyError:
            return False
        thawed = (self._by_version.thaw(*by_version, codes=len(self.names))
                  and self._by_run.thaw(*by_run, codes=len(self.names)))
        if not thawed:
            self._by_version, self._by_run = _SortedCodes(), _SortedCodes()
        return thawed

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
    """One scored partition's lines as the index keeps them, and how far into the file they go:
    per line that gave an entry, its run and revision digests, whether it had a sig, its category
    code and the xxh3-128 of the line's bytes (what a rewritten partition's unchanged lines are
    found by)."""

    def __init__(self, end: int = 0, lines: int = 0, runs: bytes = b"", versions: bytes = b"",
                 has_sig: bytes = b"", codes: bytes = b"", digests: bytes = b"") -> None:
        self.end, self.lines = end, lines
        self.runs, self.versions, self.has_sig = bytearray(runs), bytearray(versions), bytearray(has_sig)
        self.codes = array("i")
        self.codes.frombytes(codes)
        self.digests = bytearray(digests)
        self.prefix_hash = ""

    def __len__(self) -> int:
        return len(self.codes)

    def add(self, run_id: str, sig: str | None, code: int, digest: bytes) -> None:
        self.runs += key_digest(run_id)
        self.versions += key_digest(run_id, sig) if sig is not None else bytes(16)
        self.has_sig.append(sig is not None)
        self.codes.append(code)
        self.digests += digest

    @classmethod
    def mixed(cls, known: _Part, fresh: _Part, picks: list[int]) -> _Part:
        """A part whose entries are, in order, `known`'s entry p for each p >= 0 in `picks` and
        `fresh`'s entry -p-1 for each p < 0 (the lines a rewrite left as they were, and the others)."""
        at = np.array(picks, dtype=np.int64)
        at = np.where(at >= 0, at, len(known) - at - 1)

        def pick(field: str, dtype: str) -> bytes:
            both = np.frombuffer(bytes(getattr(known, field)) + bytes(getattr(fresh, field)), dtype=dtype)
            return both[at].tobytes()

        return cls(0, 0, pick("runs", "S16"), pick("versions", "S16"), pick("has_sig", "u1"), pick("codes", "i4"),
                   pick("digests", "S16"))

    def codes_array(self) -> np.ndarray:
        return np.frombuffer(self.codes, dtype=np.int32)

    def by_digest(self) -> dict[bytes, int]:
        """Each line digest's first entry."""
        found: dict[bytes, int] = {}
        digests = bytes(self.digests)
        for at in range(len(self.codes)):
            found.setdefault(digests[16 * at:16 * at + 16], at)
        return found


def _entry(data: bytes) -> tuple[str, str | None, str] | None:
    """(run id, sig or None, category) of one scored line, None for a line that gives no entry."""
    if not data.strip():
        return None
    try:
        row = loads(data)
    except ValueError:
        return None
    if not isinstance(row, dict):
        return None
    rid, cat = row.get("evidence_run_id"), row.get("category")
    if not (isinstance(rid, str) and isinstance(cat, str)):
        return None
    prov = row.get("provenance")
    sig = prov.get("sig_hash") if isinstance(prov, dict) else None
    return rid, sig if isinstance(sig, str) else None, cat


def _read_into(part: _Part, index: ScoredIndex, path: Path, *, start: int, lines_before: int,
               on_chunk: LineEndHash) -> None:
    """The entries of the complete lines from `start`, each line parsed."""
    for raw in iter_raw_lines(path, start=start, lines_before=lines_before, on_chunk=on_chunk):
        if raw.terminated and raw.data is not None and (entry := _entry(raw.data)) is not None:
            rid, sig, cat = entry
            part.add(rid, sig, index.code_of(cat), xxhash.xxh3_128_digest(raw.data))


def _reread(known: _Part, index: ScoredIndex, path: Path, on_chunk: LineEndHash) -> _Part:
    """A partition rewritten since `known` was read: every line again, but a line whose bytes
    `known` holds (by xxh3-128) takes its entry from there instead of being parsed."""
    seen = known.by_digest()
    fresh = _Part()
    picks: list[int] = []
    for raw in iter_raw_lines(path, on_chunk=on_chunk):
        if not raw.terminated or raw.data is None:
            continue
        digest = xxhash.xxh3_128_digest(raw.data)
        at = seen.get(digest)
        if at is not None:
            picks.append(at)
        elif (entry := _entry(raw.data)) is not None:
            rid, sig, cat = entry
            fresh.add(rid, sig, index.code_of(cat), digest)
            picks.append(-len(fresh))
    return _Part.mixed(known, fresh, picks)


def scored_categories(ws: Workspace, *, known: WholeFileDigests | None = None) -> ScoredIndex:
    """The scored-runs partitions as the firewall's ground truth. What an earlier build read of a
    partition is taken from `.distill.scored-index.npz`: while the file still starts with those
    bytes (their prefix hash) only the appended lines are parsed; a partition score rewrote in
    place (late verdicts re-score runs) is read again, but a line whose bytes the earlier build
    saw (by xxh3-128) takes its entry from there. The index is the same either way (the cache
    only saves work). When no partition changed since the cache was saved, the index is taken
    frozen from it (no sort: the three exports of a run each ask for it). `known`: whole-file
    digests known without a read (an unchanged partition file is then not read to check its
    prefix)."""
    store = ws.scored_index_path
    index = ScoredIndex()
    saved, frozen = _load_parts(store, index)
    parts: dict[str, _Part] = {}
    files = iter_partition_files(ws.scored_dir)
    rels = [p.relative_to(ws.root).as_posix() for p in files]
    changed = set(saved) != set(rels)
    for path, rel in zip(files, rels, strict=True):
        saved_part = saved.get(rel)
        hasher = PrefixHash.resume(path, saved_part.end, saved_part.prefix_hash, known=known) if saved_part is not None else None
        if saved_part is not None and hasher is not None:
            part = saved_part
            tail = LineEndHash(hasher)
            _read_into(part, index, path, start=part.end, lines_before=part.lines, on_chunk=tail)
        elif saved_part is not None and len(saved_part):
            tail = LineEndHash(PrefixHash())
            part = _reread(saved_part, index, path, tail)
        else:
            part, tail = _Part(), LineEndHash(PrefixHash())
            _read_into(part, index, path, start=0, lines_before=0, on_chunk=tail)
        sha = tail.hexdigest(path)
        changed = changed or hasher is None or tail.end != part.end or sha != part.prefix_hash
        part.end, part.lines, part.prefix_hash = tail.end, part.lines + tail.newlines, sha or ""
        parts[rel] = part
    if not changed and index.thaw(frozen):
        return index  # the parts are the ones the saved index was frozen from
    for part in parts.values():
        index.add_part(part)
    index.freeze()
    _save_parts(store, parts, index)
    return index


SCORED_INDEX_VERSION = 3  # 2: prefixes hashed with xxh3-128, not sha256; 3: a digest per line, codes not names


Frozen = dict[str, np.ndarray]
FROZEN_ARRAYS = tuple(f"{side}_{k}" for side in ("version", "run") for k in ("keys", "last", "single"))


def _load_parts(store: Path, index: ScoredIndex) -> tuple[dict[str, _Part], Frozen]:
    """The saved parts, their codes made `index`'s (it starts empty), and the arrays of the index
    frozen from them (empty when the file has none); nothing when the file is missing, damaged or
    of another version."""
    try:
        with np.load(store, allow_pickle=False) as saved:
            meta = loads(bytes(saved["meta"]))
            if meta.get("version") != SCORED_INDEX_VERSION:
                return {}, {}
            runs, versions, has_sig, digests = (saved["runs"].tobytes(), saved["versions"].tobytes(),
                                                saved["has_sig"].tobytes(), saved["digests"].tobytes())
            codes = saved["codes"]
            frozen = {k: saved[k] for k in FROZEN_ARRAYS} if all(k in saved.files for k in FROZEN_ARRAYS) else {}
        names = meta["names"]
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)) or len(set(names)) != len(names):
            return {}, {}
        for name in names:
            index.code_of(name)  # the index starts empty: saved code i is its code i
        if len(codes) and not (0 <= int(codes.min()) and int(codes.max()) < len(names)):
            return {}, {}
        codes = codes.astype(np.int32).tobytes()
        parts: dict[str, _Part] = {}
        at = 0
        for rel, end, lines, sha, count in meta["parts"]:
            cut = slice(16 * at, 16 * (at + count))
            parts[str(rel)] = part = _Part(int(end), int(lines), runs[cut], versions[cut], has_sig[at:at + count],
                                           codes[4 * at:4 * (at + count)], digests[cut])
            part.prefix_hash = str(sha)
            at += count
            if not (len(part.runs) == len(part.versions) == len(part.digests) == 16 * count
                    and len(part.has_sig) == len(part.codes) == count):
                return {}, {}
        return parts, frozen
    except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile):
        return {}, {}


def _save_parts(store: Path, parts: dict[str, _Part], index: ScoredIndex) -> None:
    """The parts and the index frozen from them (in one file, so they always agree)."""
    meta = {"version": SCORED_INDEX_VERSION, "names": index.names,
            "parts": [[rel, p.end, p.lines, p.prefix_hash, len(p)] for rel, p in parts.items()]}

    def joined(field: str) -> np.ndarray:
        return np.frombuffer(b"".join(bytes(getattr(p, field)) for p in parts.values()), dtype=np.uint8)

    write_cache(store, meta, runs=joined("runs"), versions=joined("versions"), has_sig=joined("has_sig"),
                digests=joined("digests"), codes=np.frombuffer(joined("codes").tobytes(), dtype=np.int32),
                **index.frozen())
