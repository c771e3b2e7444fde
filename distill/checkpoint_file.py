"""The file a stage keeps its per-partition checkpoints in (score, the RAG/SFT exports).

One line per partition, `"<rel>"\\t{checkpoint}`, then a header line last. Opening it indexes
where each partition's line starts, so a run reads one partition's checkpoint at a time and memory
does not grow with the workspace. The next run's lines go to a side file as partitions are done;
at the end the header is appended and the side file renamed over the file (atomically), or it is
thrown away when the run does not finish. The header comes last because it is known last (score's
holds the task parents it saw): the side file becomes the file without being copied.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from distill.jsonl import dumps, loads


class CheckpointFile:
    """`accept` reads the header line and returns it (parsed) when the checkpoints were made on
    this run's basis, None otherwise: then no partition's checkpoint is offered."""

    def __init__(self, path: Path, accept: Callable[[bytes], Any | None]) -> None:
        self.path = path
        self.header: Any | None = None
        self.offsets: dict[str, int] = {}
        self._parts_path = path.with_name(path.name + ".parts.tmp")
        self._out: IO[bytes] | None = None
        try:
            with open(path, "rb") as fh:
                offsets: dict[str, int] = {}
                header_line: bytes | None = None
                while True:
                    at = fh.tell()
                    line = fh.readline()
                    if not line:
                        break
                    if header_line is not None:
                        return  # the header is the last line; anything after it is damage
                    if not line.startswith(b'"'):
                        header_line = line
                        continue
                    rel = loads(line[: line.index(b"\t")])
                    if not isinstance(rel, str):
                        return
                    offsets[rel] = at
                header = accept(header_line) if header_line is not None else None
        except (OSError, ValueError):
            return
        if header is None:
            return
        self.header, self.offsets = header, offsets

    def payload(self, rel: str) -> bytes | None:
        """The raw checkpoint of one partition (its JSON), None when there is none."""
        at = self.offsets.get(rel)
        if at is None:
            return None
        try:
            with open(self.path, "rb") as fh:
                fh.seek(at)
                line = fh.readline()
            return line[line.index(b"\t") + 1:]
        except (OSError, ValueError):
            return None

    def write(self, rel: str, checkpoint: dict[str, Any]) -> None:
        """One partition's next checkpoint (kept in the side file until `save`)."""
        try:
            line = dumps(rel) + b"\t" + dumps(checkpoint) + b"\n"
        except (UnicodeEncodeError, ValueError):
            return  # a value JSON cannot carry (a lone surrogate): this partition keeps no checkpoint
        if self._out is None:
            self._out = open(self._parts_path, "wb")  # noqa: SIM115 - closed by save/discard
        self._out.write(line)

    def save(self, header: dict[str, Any]) -> None:
        """Replace the file: the partitions written this run, then the header."""
        if self._out is None:
            self._out = open(self._parts_path, "wb")  # noqa: SIM115 - closed below
        out, self._out = self._out, None
        with out:
            out.write(dumps(header) + b"\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(self._parts_path, self.path)

    def discard(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        self._parts_path.unlink(missing_ok=True)
