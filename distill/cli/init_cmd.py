"""`distill init DIR [--sample]`: create a workspace."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel

from distill.command import JsonOption, console, emit_json, handle_errors
from distill.errors import UsageError
from distill.workspace import Workspace


class InitResult(BaseModel):
    root: str
    sample: bool
    files_copied: int


def sample_kb_dir() -> Path:
    """The bundled sample streams (data/sample/_kb in the repository)."""
    return Path(__file__).resolve().parents[2] / "data" / "sample" / "_kb"


def init_workspace(root: Path, *, sample: bool) -> InitResult:
    ws = Workspace.resolve(root)
    ws.kb_dir.mkdir(parents=True, exist_ok=True)
    copied = 0
    if sample:
        src = sample_kb_dir()
        if not src.is_dir():
            raise UsageError(f"sample data not found at {src} (run `python data/sample/generate.py`)")
        for path in sorted(src.rglob("*")):
            if path.is_file():
                target = ws.kb_dir / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                copied += 1
    return InitResult(root=str(ws.root), sample=sample, files_copied=copied)


def register(app: typer.Typer) -> None:
    @app.command("init")
    @handle_errors
    def init(
        directory: Annotated[Path, typer.Argument(help="workspace directory to create")],
        sample: Annotated[bool, typer.Option("--sample", help="seed _kb/ with the bundled sample streams")] = False,
        json_out: JsonOption = False,
    ) -> None:
        """Create a workspace (optionally seeded with the sample streams)."""
        result = init_workspace(directory, sample=sample)
        if json_out:
            emit_json(result)
        else:
            console().print(f"workspace ready at [bold]{result.root}[/] ({result.files_copied} sample files)")
