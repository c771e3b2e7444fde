"""distill.checkpoint_file: the side file becomes the checkpoint file whole or not at all, and a
file in any other shape offers no partition's checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.checkpoint_file import CheckpointFile


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
                 part + header + part,  # a line after the header
                 part,  # no header
                 part + b"{not json\n",
                 b'{"basis": "b1"}\n'[:-1] + b"x\n"):
        path.write_bytes(body)
        book = CheckpointFile(path, _accept("b1"))
        assert book.header is None and book.payload("a/x.jsonl") is None, body
