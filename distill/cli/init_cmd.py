"""`distill init DIR [--sample]`: create a workspace."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel
from rich.text import Text

from distill.command import JsonOption, console, directory_path, emit_json, handle_errors
from distill.errors import UsageError
from distill.workspace import Workspace


class InitResult(BaseModel):
    root: str
    sample: bool
    files_copied: int
    files_kept: list[str] = []
    """Sample files already in the workspace with other content: never overwritten (a user's own rows)."""


def sample_kb_dir() -> Path:
    """The bundled sample streams (data/sample/_kb in the repository)."""
    return Path(__file__).resolve().parents[2] / "data" / "sample" / "_kb"


def init_workspace(root: Path, *, sample: bool) -> InitResult:
    """Create ROOT/_kb (and seed it with the sample streams). Never overwrites a file that is
    already there: a workspace's source rows are the user's data."""
    ws = Workspace.resolve(root)
    if ws.root.exists() and not ws.root.is_dir():
        raise UsageError(f"{ws.root} exists and is not a directory")
    src = sample_kb_dir()
    if sample and not src.is_dir():
        raise UsageError(f"sample data not found at {src} (run `python data/sample/generate.py`)")
    ws.root.mkdir(parents=True, exist_ok=True)
    with ws.exclusive("init"):
        ws.kb_dir.mkdir(exist_ok=True)
        copied = 0
        kept: list[str] = []
        if sample:
            for path in sorted(src.rglob("*")):
                if not path.is_file():
                    continue
                target = ws.kb_dir / path.relative_to(src)
                if target.exists():
                    if not target.is_file() or target.read_bytes() != path.read_bytes():
                        kept.append(ws.relative(target))
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                copied += 1
    return InitResult(root=str(ws.root), sample=sample, files_copied=copied, files_kept=kept)


def register(app: typer.Typer) -> None:
    @app.command("init")
    @handle_errors
    def init(
        directory: Annotated[Path, typer.Argument(parser=directory_path, help="workspace directory to create")],
        sample: Annotated[bool, typer.Option("--sample", help="seed _kb/ with the bundled sample streams")] = False,
        json_out: JsonOption = False,
    ) -> None:
        """Create a workspace (optionally seeded with the sample streams)."""
        result = init_workspace(directory, sample=sample)
        if json_out:
            emit_json(result)
        else:
            console().print(Text.assemble("workspace ready at ", (result.root, "bold"), f" ({result.files_copied} sample files)"))
            for kept in result.files_kept:
                console().print(Text.assemble(("kept", "yellow"), f" {kept}: it differs from the sample file and is never overwritten"))
