"""distill.checkpoint_file: a run's checkpoints become the file's whole or not at all (appended
after the last header, or a side file renamed over it), and a file in any other shape offers no
partition's checkpoint."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import distill.checkpoint_file as checkpoint_file
from distill.hashing import sealed
from distill.checkpoint_file import (
    ENTRIES_DIGEST_KEY,
    ENTRIES_KEY,
    ENTRY_LENGTHS_KEY,
    SPILL_BYTES,
    CheckpointFile,
    Entries,
    JsonEntries,
    decode_lengths,
    entries_bytes,
    entries_intact,
)


def _accept(basis: str) -> Any:
    def accept(line: bytes) -> dict[str, Any] | None:
        header = json.loads(line)
        return header if header.get("basis") == basis else None

    return accept


def _saved(path: Path, parts: dict[str, dict[str, Any]], basis: str = "b1") -> None:
    book = CheckpointFile(path, _accept(basis))
    for rel, checkpoint in parts.items():
        book.write(rel, checkpoint)
    book.save({"basis": basis})


def test_the_partitions_written_come_back_one_at_a_time_under_the_same_basis(tmp_path: Path) -> None:
    path = tmp_path / "book.json"
    _saved(path, {"a/x.jsonl": {"end": 1}, "b/y.jsonl": {"end": 2, "t": "é\t"}})
    assert not list(tmp_path.glob("*.tmp"))  # the side file became the file
    book = CheckpointFile(path, _accept("b1"))
    assert book.header == {"basis": "b1"}
    assert json.loads(book.payload("b/y.jsonl") or b"") == {"end": 2, "t": "é\t"}
    assert json.loads(book.payload("a/x.jsonl") or b"") == {"end": 1}
    assert book.payload("c/z.jsonl") is None
    other = CheckpointFile(path, _accept("b2"))  # another basis: nothing is offered
    assert other.header is None and other.payload("a/x.jsonl") is None


def test_a_run_that_does_not_finish_leaves_the_last_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "book.json"
    _saved(path, {"a/x.jsonl": {"end": 1}})
    before = path.read_bytes()
    book = CheckpointFile(path, _accept("b1"))
    book.write("a/x.jsonl", {"end": 9})
    book.discard()
    assert path.read_bytes() == before and not list(tmp_path.glob("*.tmp"))


def test_a_file_of_another_shape_offers_nothing(tmp_path: Path) -> None:
    path = tmp_path / "book.json"
    _saved(path, {"a/x.jsonl": {"end": 1}})
    part, header = path.read_bytes().splitlines(keepends=True)
    for body in (header + part,  # the header first (the layout before the header moved last)
                 part,  # no header
                 part + b"{not json\n",
                 part + header + b"{not json\n",  # after the header: neither a partition's line nor a header
                 part + header + header[:-5] + b"0000\n",  # a damaged header after a good one
                 b'{"basis": "b1"}\n'[:-1] + b"x\n"):
        path.write_bytes(body)
        book = CheckpointFile(path, _accept("b1"))
        assert book.header is None and book.payload("a/x.jsonl") is None, body


def test_opening_a_saved_file_reads_its_last_line_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header says where each partition's line starts: opening the file reads its last line
    (the preference export's file is ~0.9 GB at a million rows), a payload one line."""
    path = tmp_path / "book.json"
    _saved(path, {f"p/{n}.jsonl": {"end": n} for n in range(50)})
    read: list[int] = []  # the lines whose seal was checked: the header's, then each payload's

    def counting(check: Any) -> Any:
        def counted(data: bytes) -> Any:
            read.append(len(data))
            return check(data)
        return counted

    monkeypatch.setattr(checkpoint_file, "unsealed", counting(checkpoint_file.unsealed))
    monkeypatch.setattr(checkpoint_file, "seal_intact", counting(checkpoint_file.seal_intact))
    book = CheckpointFile(path, _accept("b1"))
    assert book.header == {"basis": "b1"}  # the offsets are not part of the stage's header
    assert len(read) == 1  # the header line
    assert all(json.loads(book.payload(f"p/{n}.jsonl") or b"") == {"end": n} for n in range(50))
    assert len(read) == 51


def test_lines_without_their_seal_offer_nothing(tmp_path: Path) -> None:
    """A file of the layout before lines were sealed (or written by hand) is no checkpoint file."""
    path = tmp_path / "book.json"
    path.write_bytes(b'"a/x.jsonl"\t{"end": 1}\n{"basis": "b1", "partition_offsets": {"a/x.jsonl": 0}}\n')
    book = CheckpointFile(path, _accept("b1"))
    assert book.header is None and book.payload("a/x.jsonl") is None


def test_a_changed_byte_anywhere_gives_the_checkpoint_as_written_or_none(tmp_path: Path) -> None:
    """Every byte of a saved file, each changed in turn (one bit, or replaced by a digit or a
    quote): each partition's payload is what was written or None, never a checkpoint it did not
    write (a count one off, another key), and the header is the one saved or none at all."""
    path = tmp_path / "book.json"
    pieces = [b'["c",2,{"k":"v"}]', b'[7]']
    book = CheckpointFile(path, _accept("b1"))
    book.write("a/x.jsonl", {"end": 17, "lines": 3}, Entries(iter(pieces), np.array([len(p) for p in pieces])))
    book.write("b/y.jsonl", {"end": 40, "keys": "QUJD"})
    book.save({"basis": "b1", "parents": {"t1": "r9"}})
    good = path.read_bytes()
    first = CheckpointFile(path, _accept("b1"))
    expected = {rel: first.payload(rel) for rel in ("a/x.jsonl", "b/y.jsonl")}
    assert all(expected.values())
    refused = 0
    for at in range(len(good)):
        for new in {good[at] ^ 1, good[at] ^ 0x10, ord("9"), ord('"')} - {good[at]}:
            path.write_bytes(good[:at] + bytes([new]) + good[at + 1:])
            again = CheckpointFile(path, _accept("b1"))
            assert again.header in (None, {"basis": "b1", "parents": {"t1": "r9"}}), (at, new)
            for rel, payload in expected.items():
                got = again.payload(rel) if again.header is not None else None
                assert got in (None, payload), (at, new, rel, got)
                refused += got is None
    assert refused  # a changed byte inside a line was seen
def test_an_offset_that_lands_on_another_line_offers_nothing_for_that_partition(tmp_path: Path) -> None:
    path = tmp_path / "book.json"
    _saved(path, {"a/x.jsonl": {"end": 1}, "b/y.jsonl": {"end": 2}})
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines[0]) == len(lines[1])
    path.write_bytes(lines[1] + lines[0] + lines[2])  # swapped: each offset finds the other's line
    book = CheckpointFile(path, _accept("b1"))
    assert book.payload("a/x.jsonl") is None and book.payload("b/y.jsonl") is None
    assert not book.keep("a/x.jsonl")
    book.discard()


@pytest.mark.parametrize("delta", [-1, 1, 7])
def test_a_line_length_the_header_gets_wrong_offers_nothing_for_that_partition(tmp_path: Path, delta: int) -> None:
    """The header says how long each line is and the line is read by that length: a header that
    disagrees with its line (sealed as it is, so only the length can tell) is no checkpoint for
    that partition, the others' are offered as before."""
    path = tmp_path / "book.json"
    _saved(path, {"a/x.jsonl": {"end": 1}, "b/y.jsonl": {"end": 22}})
    *lines, header_line = path.read_bytes().splitlines(keepends=True)
    header = json.loads(header_line[:-checkpoint_file.SEAL_BYTES])
    lengths = header[checkpoint_file.LENGTHS_KEY]
    assert lengths["a/x.jsonl"] == len(lines[0])
    lengths["a/x.jsonl"] += delta
    path.write_bytes(b"".join(lines) + sealed(json.dumps(header).encode()))
    book = CheckpointFile(path, _accept("b1"))
    assert book.header is not None
    assert book.payload("a/x.jsonl") is None
    assert json.loads(book.payload("b/y.jsonl") or b"null") == {"end": 22}
    book.discard()


def _array(pieces: Iterable[bytes]) -> list[Any]:
    """The entries `JsonEntries.take` handed out, as the checkpoint's array holds them."""
    return json.loads(b"[" + b",".join(pieces) + b"]")


SPILLS = pytest.mark.parametrize("spill", [0, 50, SPILL_BYTES], ids=["file", "spills-midway", "memory"])


@SPILLS
def test_entries_are_written_one_at_a_time_and_read_back_as_the_checkpoints_array(tmp_path: Path, spill: int) -> None:
    """A partition's entries are held as JSON (JsonEntries) and streamed into its line: read back,
    the line is the checkpoint with an `entries` array in input order, whatever order they were
    decided in; none, and a checkpoint without other fields, are still one JSON object."""
    path = tmp_path / "book.json"
    entries = JsonEntries(spill)
    for index, entry in [(2, ["c", "src", None]), (0, ["q", "é\t", {"b": 1, "a": [2]}]), (1, [])]:
        entries.add(index, entry)
    assert len(entries) == 3
    book = CheckpointFile(path, _accept("b1"))
    book.write("a/x.jsonl", {"end": 7, "lines": 3}, entries.take())
    book.write("b/y.jsonl", {}, JsonEntries().take())
    book.write("c/z.jsonl", {"end": 1})
    book.save({"basis": "b1"})
    assert len(entries) == 0  # taken: the next partition starts empty
    read = CheckpointFile(path, _accept("b1"))
    def without_digest(payload: bytes | None) -> dict[str, Any]:
        """The checkpoint, each entry's length checked against its bytes in the line and dropped."""
        assert payload is not None and entries_intact(payload)
        found = json.loads(payload)
        del found[ENTRIES_DIGEST_KEY]
        body = bytes(entries_bytes(payload) or b"")
        lengths = decode_lengths(found.pop(ENTRY_LENGTHS_KEY), len(found[ENTRIES_KEY]), len(body))
        assert lengths is not None
        starts = [sum(int(n) + 1 for n in lengths[:k]) for k in range(len(lengths))]
        assert [json.loads(body[a:a + int(n)]) for a, n in zip(starts, lengths)] == found[ENTRIES_KEY]
        return found

    assert without_digest(read.payload("a/x.jsonl")) == {
        "end": 7, "lines": 3, ENTRIES_KEY: [["q", "é\t", {"a": [2], "b": 1}], [], ["c", "src", None]]}
    assert without_digest(read.payload("b/y.jsonl")) == {ENTRIES_KEY: []}
    assert json.loads(read.payload("c/z.jsonl") or b"") == {"end": 1}


@SPILLS
def test_an_entry_json_cannot_carry_leaves_its_partition_without_a_checkpoint(spill: int) -> None:
    entries = JsonEntries(spill)
    entries.add(0, ["ok"])
    entries.add(1, ["lone \ud800 surrogate"])
    assert entries.take() is None
    entries.add(0, ["ok"])  # the next partition is judged on its own entries
    taken = entries.take()
    assert taken is not None and _array(taken) == [["ok"]]
    entries.close()


@SPILLS
def test_entries_of_one_partition_do_not_leak_into_the_next(spill: int) -> None:
    """The spill file is one temporary file for the exporter's life, rewritten from its start:
    what a partition took is gone when the next adds, also when the next is shorter (no tail of
    the longer one read back)."""
    entries = JsonEntries(spill)
    for index in (5, 3, 4):
        entries.add(index, {"row": index, "pad": "x" * 40})
    first = entries.take()
    assert first is not None and [e["row"] for e in _array(first)] == [3, 4, 5]
    entries.add(6, {"row": 6})
    second = entries.take()
    assert second is not None and _array(second) == [{"row": 6}]
    empty = entries.take()
    assert empty is not None and list(empty) == []
    entries.close()


def test_a_partition_that_spills_midway_keeps_input_order_and_the_next_starts_in_memory() -> None:
    """Entries decided out of order, some held in memory and then moved to the file when the
    partition passes the limit, some written after: all come back in input order (equal indexes
    in the order added); a small partition after a spilled one does not touch the file."""
    entries = JsonEntries(spill_bytes=200)
    order = [7, 2, 9, 0, 5, 5, 1, 8, 3, 6, 4]
    for n, index in enumerate(order):
        entries.add(index, {"i": index, "n": n, "pad": "x" * 20})
    assert len(entries) == len(order)
    taken = entries.take()
    assert taken is not None
    back = _array(taken)
    assert [(e["i"], e["n"]) for e in back] == sorted((i, n) for n, i in enumerate(order))
    entries.add(1, ["b"])
    entries.add(0, ["a"])
    small = entries.take()
    assert small is not None and _array(small) == [["a"], ["b"]]
    entries.close()


def test_a_kept_partition_is_carried_over_byte_for_byte_and_a_cut_copy_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import distill.checkpoint_file as checkpoint_file

    path = tmp_path / "book.json"
    big = {"end": 7, "t": "x" * 5000}
    _saved(path, {"a/x.jsonl": {"end": 1}, "b/y.jsonl": big, "c/z.jsonl": {"end": 3}})
    old = CheckpointFile(path, _accept("b1"))
    line_b = old.payload("b/y.jsonl")
    monkeypatch.setattr(checkpoint_file, "READ_CHUNK", 64)  # the line is copied in many pieces
    book = CheckpointFile(path, _accept("b1"))
    assert book.keep("b/y.jsonl")
    assert not book.keep("d/none.jsonl")
    book.write("c/z.jsonl", {"end": 4})
    book.save({"basis": "b1"})
    again = CheckpointFile(path, _accept("b1"))
    assert again.payload("b/y.jsonl") == line_b and json.loads(line_b or b"") == big
    assert json.loads(again.payload("c/z.jsonl") or b"") == {"end": 4}
    assert again.payload("a/x.jsonl") is None  # neither written nor kept

    # the old file loses its tail while the line is copied: what was copied is taken back
    book = CheckpointFile(path, _accept("b1"))
    at = book.offsets["b/y.jsonl"]
    with open(path, "r+b") as fh:
        fh.truncate(at + 1000)
    assert not book.keep("b/y.jsonl")
    book.write("c/z.jsonl", {"end": 5})
    book.save({"basis": "b1"})
    last = CheckpointFile(path, _accept("b1"))
    assert last.header == {"basis": "b1"} and last.payload("b/y.jsonl") is None
    assert json.loads(last.payload("c/z.jsonl") or b"") == {"end": 5}


def test_entries_are_trusted_only_as_written(tmp_path: Path) -> None:
    from distill.checkpoint_file import entries_intact

    path = tmp_path / "book.json"
    book = CheckpointFile(path, _accept("b1"))
    pieces = [b'["c","s",{"k":"],\\"entries_digest\\":\\""}]', b'["d"]']
    book.write("a/x.jsonl", {"end": 1}, Entries(iter(pieces), np.array([len(p) for p in pieces])))
    book.save({"basis": "b1"})
    payload = CheckpointFile(path, _accept("b1")).payload("a/x.jsonl") or b""
    assert entries_intact(payload) and json.loads(payload)[ENTRIES_KEY][1] == ["d"]
    assert not entries_intact(payload.replace(b'"d"', b'"e"'))  # same length, still JSON
    assert not entries_intact(payload.replace(b'{"end"', b'{"end2"').replace(b'"entries_digest"', b'"other"'))
    assert not entries_intact(b'{"end": 1}')


def test_entry_lengths_are_taken_only_when_they_cut_the_body_into_its_entries() -> None:
    """A reader parses one entry by its length (the preference export's rows read back alone):
    lengths that do not add up, with the commas between them, to the entries' bytes are no lengths."""
    from distill.checkpoint_file import encode_lengths

    body = b'["a"],[1,2],{}'
    good = encode_lengths(np.array([5, 5, 2]))
    found = decode_lengths(good, 3, len(body))
    assert found is not None and found.tolist() == [5, 5, 2]
    assert decode_lengths(good, 2, len(body)) is None  # another count
    assert decode_lengths(good, 3, len(body) + 1) is None  # another body
    assert decode_lengths(encode_lengths(np.array([6, 4, 2])), 3, len(body)) is not None  # (a cut the reader checks)
    assert decode_lengths(encode_lengths(np.array([0, 10, 2])), 3, len(body)) is None  # an empty entry
    assert decode_lengths("not base64!", 3, len(body)) is None
    assert decode_lengths(None, 3, len(body)) is None
    assert decode_lengths(encode_lengths(np.array([], dtype=np.int64)), 0, 0) is not None
    assert decode_lengths(encode_lengths(np.array([], dtype=np.int64)), 0, 1) is None


def test_a_run_appends_what_it_writes_and_leaves_kept_lines_where_they_are(tmp_path: Path) -> None:
    """A run after an append keeps most partitions: their lines are not copied (the file up to the
    last header stays byte for byte), only the written partition's line and the header are added."""
    path = tmp_path / "book.json"
    big = {"end": 7, "t": "x" * 5000}
    _saved(path, {"a/x.jsonl": {"end": 1}, "b/y.jsonl": big})
    before = path.read_bytes()
    old = CheckpointFile(path, _accept("b1"))
    book = CheckpointFile(path, _accept("b1"))
    assert book.keep("b/y.jsonl")
    book.write("a/x.jsonl", {"end": 2})
    book.write("c/z.jsonl", {"end": 3})
    book.save({"basis": "b1"})
    after = path.read_bytes()
    assert after.startswith(before) and len(after) < len(before) + 500
    assert not list(tmp_path.glob("*.tmp"))
    again = CheckpointFile(path, _accept("b1"))
    assert again.offsets["b/y.jsonl"] == old.offsets["b/y.jsonl"]
    assert again.payload("b/y.jsonl") == old.payload("b/y.jsonl") and json.loads(again.payload("b/y.jsonl") or b"") == big
    assert json.loads(again.payload("a/x.jsonl") or b"") == {"end": 2}
    assert json.loads(again.payload("c/z.jsonl") or b"") == {"end": 3}


@pytest.mark.parametrize("chunk", [1 << 20, 5], ids=["one-chunk", "5-byte-chunks"])
def test_a_run_that_does_not_finish_leaves_lines_the_next_reads_past_and_cuts_off(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """A run killed after it appended (no `discard`): its lines after the last header, cut at any
    byte, offer the last saved checkpoints; the next run's file holds none of them. A header that
    was written whole is the file's, whatever follows it. (`chunk`: the file read backwards in
    pieces that cut lines anywhere.)"""
    monkeypatch.setattr(checkpoint_file, "READ_CHUNK", chunk)
    path = tmp_path / "book.json"
    _saved(path, {"a/x.jsonl": {"end": 1}, "b/y.jsonl": {"end": 2}})
    saved = path.read_bytes()
    book = CheckpointFile(path, _accept("b1"))
    assert book.keep("a/x.jsonl")
    book.write("b/y.jsonl", {"end": 9})
    book.write("c/z.jsonl", {"end": 4, "pad": "p" * 300})
    assert book._out is not None
    book._out.flush()
    appended = path.read_bytes()
    book._out.close()
    assert appended.startswith(saved) and len(appended) > len(saved) + 300
    for cut in range(len(saved), len(appended) + 1):
        path.write_bytes(appended[:cut])
        again = CheckpointFile(path, _accept("b1"))
        assert again.header == {"basis": "b1"}, cut
        assert json.loads(again.payload("a/x.jsonl") or b"") == {"end": 1}, cut
        assert json.loads(again.payload("b/y.jsonl") or b"") == {"end": 2}, cut
        assert again.payload("c/z.jsonl") is None
    path.write_bytes(appended[:len(appended) - 7])
    book = CheckpointFile(path, _accept("b1"))
    assert book.keep("b/y.jsonl")
    book.save({"basis": "b1", "n": 2})
    after = path.read_bytes()
    assert after.startswith(saved) and b'"c/z.jsonl"' not in after and after.count(b"\n") == saved.count(b"\n") + 1
    last = CheckpointFile(path, _accept("b1"))
    assert json.loads(last.payload("b/y.jsonl") or b"") == {"end": 2} and last.payload("a/x.jsonl") is None
    path.write_bytes(after + b'"d/w.jsonl"\t{"end":')  # a whole header, then a line cut short
    assert CheckpointFile(path, _accept("b1")).header == {"basis": "b1", "n": 2}


def test_dead_lines_are_dropped_once_they_outweigh_the_live_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Partitions written again and again leave their old lines behind: the file is rewritten with
    the live lines once those are outnumbered, so it stays within about twice what it holds."""
    monkeypatch.setattr(checkpoint_file, "COMPACT_BYTES", 0)
    path = tmp_path / "book.json"
    _saved(path, {"a/x.jsonl": {"end": 0, "t": "a" * 1000}, "b/y.jsonl": {"end": 0, "t": "b" * 1000}})
    sizes = []
    for n in range(1, 8):
        book = CheckpointFile(path, _accept("b1"))
        assert book.keep("b/y.jsonl")
        book.write("a/x.jsonl", {"end": n, "t": "a" * 1000})
        book.save({"basis": "b1"})
        sizes.append(path.stat().st_size)
        again = CheckpointFile(path, _accept("b1"))
        assert json.loads(again.payload("a/x.jsonl") or b"")["end"] == n
        assert json.loads(again.payload("b/y.jsonl") or b"")["t"] == "b" * 1000
    assert max(sizes) < 3 * 1100 + 600 and min(sizes) < 2 * 1100 + 300  # rewritten at least once
    assert not list(tmp_path.glob("*.tmp"))


def test_a_file_of_another_basis_is_left_as_it_was_by_a_run_that_does_not_finish(tmp_path: Path) -> None:
    path = tmp_path / "book.json"
    _saved(path, {"a/x.jsonl": {"end": 1}}, basis="b1")
    before = path.read_bytes()
    book = CheckpointFile(path, _accept("b2"))
    assert not book.keep("a/x.jsonl")
    book.write("a/x.jsonl", {"end": 5})
    book.discard()
    assert path.read_bytes() == before and not list(tmp_path.glob("*.tmp"))
    book = CheckpointFile(path, _accept("b2"))
    book.write("a/x.jsonl", {"end": 5})
    book.save({"basis": "b2"})
    assert b'"end":1' not in path.read_bytes()  # replaced, not appended to
    assert json.loads(CheckpointFile(path, _accept("b2")).payload("a/x.jsonl") or b"") == {"end": 5}


def test_a_file_saved_before_line_lengths_were_kept_is_read_and_rewritten_once(tmp_path: Path) -> None:
    path = tmp_path / "book.json"
    line = b'"a/x.jsonl"\t{"end":1}'
    body = sealed(line)
    path.write_bytes(body + sealed(b'{"basis":"b1","partition_offsets":{"a/x.jsonl":0}}'))
    book = CheckpointFile(path, _accept("b1"))
    assert json.loads(book.payload("a/x.jsonl") or b"") == {"end": 1}
    assert book.keep("a/x.jsonl")
    book.save({"basis": "b1"})
    saved = path.read_bytes()
    assert saved.startswith(body) and saved.count(b"\n") == 2 and b'"partition_bytes":{"a/x.jsonl":' in saved
    assert json.loads(CheckpointFile(path, _accept("b1")).payload("a/x.jsonl") or b"") == {"end": 1}


def test_opening_reads_past_a_bounded_number_of_lines_after_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "book.json"
    _saved(path, {"a/x.jsonl": {"end": 1}})
    saved = path.read_bytes()
    extra = b"".join(sealed(b'"p/%d.jsonl"\t{}' % n) for n in range(3))
    path.write_bytes(saved + extra)
    monkeypatch.setattr(checkpoint_file, "MAX_LINES_AFTER_HEADER", 3)
    assert json.loads(CheckpointFile(path, _accept("b1")).payload("a/x.jsonl") or b"") == {"end": 1}
    path.write_bytes(saved + extra + sealed(b'"p/3.jsonl"\t{}'))
    assert CheckpointFile(path, _accept("b1")).header is None  # more than a run could have left
