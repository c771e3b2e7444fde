"""Trainer views rendered from where the last rendering stopped (distill.export.view_state): after
an append, a torn line, an edited view, a rebuilt native file, a damaged state, an error or a kill
while appending, the view files are the bytes of a whole rendering; after an append only the
appended rows are read, and they are appended to the view files in place."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import distill.export.formats as formats
import distill.export.view_state as view_state
from distill.export.formats import render_view, view_paths
from distill.firewall import ExportKind
from distill.workspace import Workspace
from tests.export_helpers import sample_scored

VIEWS = [("sft", "trl"), ("sft", "openai"), ("preference", "trl"), ("preference", "openai")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The sample workspace collected, scored and exported: native SFT and preference files."""
    return sample_scored(tmp_path_factory.mktemp("views") / "ws", "sft", "preference")


def _native(ws: Workspace, kind: str) -> Path:
    return ws.sft_path if kind == "sft" else ws.preference_path


def _fresh(exported: Workspace, root: Path, kind: str, lines: list[bytes]) -> Workspace:
    """A workspace whose native `kind` file holds `lines`, with no view rendered yet."""
    shutil.copytree(exported.root, root)
    ws = Workspace.resolve(root)
    for fmt in ("trl", "openai"):
        for path in view_paths(ws, kind, fmt).values():
            path.unlink(missing_ok=True)
        ws.view_state_path(kind, fmt).unlink(missing_ok=True)
    _native(ws, kind).write_bytes(b"".join(lines))
    return ws


def _view_bytes(ws: Workspace, kind: str, fmt: str) -> dict[str, bytes]:
    return {name: path.read_bytes() for name, path in view_paths(ws, kind, fmt).items()}


def _whole(exported: Workspace, root: Path, kind: str, fmt: str, lines: list[bytes]) -> dict[str, bytes]:
    """The view rendered whole, with no state, from a native file of `lines`."""
    ws = _fresh(exported, root, kind, lines)
    render_view(ws, kind, fmt)
    return _view_bytes(ws, kind, fmt)


def _spy_starts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    starts: list[int] = []
    real = formats._valid_rows

    def spy(path: Path, model: Any, **kw: Any) -> Any:
        starts.append(kw.get("start", 0))
        return real(path, model, **kw)

    monkeypatch.setattr(formats, "_valid_rows", spy)
    return starts


@pytest.mark.parametrize(("kind", "fmt"), VIEWS)
def test_after_an_append_only_new_rows_are_rendered_and_the_bytes_are_a_whole_rendering(
        exported: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, fmt: str) -> None:
    lines = _native(exported, kind).read_bytes().splitlines(keepends=True)
    assert len(lines) >= 4, "the sample must export a few rows of each kind"
    half = len(lines) // 2
    ws = _fresh(exported, tmp_path / "inc", kind, lines[:half])
    render_view(ws, kind, fmt)
    with open(_native(ws, kind), "ab") as fh:
        fh.writelines(lines[half:])
    starts = _spy_starts(monkeypatch)
    render_view(ws, kind, fmt)
    assert starts == [len(b"".join(lines[:half]))]  # the first half was not read again
    monkeypatch.undo()
    assert _view_bytes(ws, kind, fmt) == _whole(exported, tmp_path / "whole", kind, fmt, lines)
    # nothing appended: nothing read, nothing changed
    starts = _spy_starts(monkeypatch)
    render_view(ws, kind, fmt)
    assert starts == [len(b"".join(lines))]
    assert _view_bytes(ws, kind, fmt) == _whole(exported, tmp_path / "whole2", kind, fmt, lines)


def test_a_torn_last_line_is_rendered_once_it_is_complete(exported: Workspace, tmp_path: Path) -> None:
    lines = _native(exported, "sft").read_bytes().splitlines(keepends=True)
    torn = lines[-1][: len(lines[-1]) // 2]
    ws = _fresh(exported, tmp_path / "inc", "sft", [*lines[:-1], torn])
    render_view(ws, "sft", "trl")
    assert _view_bytes(ws, "sft", "trl") == _whole(exported, tmp_path / "w1", "sft", "trl", lines[:-1])
    with open(ws.sft_path, "ab") as fh:
        fh.write(lines[-1][len(torn):])  # the interrupted append, completed
    render_view(ws, "sft", "trl")
    assert _view_bytes(ws, "sft", "trl") == _whole(exported, tmp_path / "w2", "sft", "trl", lines)


@pytest.mark.parametrize("damage", ["edit_view", "truncate_view", "longer_view", "delete_view", "rebuild_native",
                                    "state_junk", "state_other_code"])
def test_a_changed_view_native_or_state_means_a_whole_rendering(
        exported: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    lines = _native(exported, "preference").read_bytes().splitlines(keepends=True)
    ws = _fresh(exported, tmp_path / "inc", "preference", lines[:-1])
    render_view(ws, "preference", "trl")
    views = view_paths(ws, "preference", "trl")
    state = ws.view_state_path("preference", "trl")
    expected_lines = lines
    if damage == "edit_view":
        data = views["dpo"].read_bytes()
        views["dpo"].write_bytes(data.replace(b'"role"', b'"r0le"', 1))
    elif damage == "truncate_view":
        views["provenance"].write_bytes(views["provenance"].read_bytes()[:-10])
    elif damage == "longer_view":  # what a process killed while appending leaves: more bytes than recorded
        with open(views["dpo"], "ab") as fh:
            fh.write(b'{"prompt": [')
    elif damage == "delete_view":
        views["dpo"].unlink()
    elif damage == "rebuild_native":
        expected_lines = [lines[-1], *lines[:-2]]  # another file that is no longer the same prefix + rows
    elif damage == "state_junk":
        state.write_bytes(b"\x00not json")
    elif damage == "state_other_code":
        state.write_text(state.read_text().replace('"code":"', '"code":"0', 1))
    if damage != "rebuild_native":
        with open(ws.preference_path, "ab") as fh:
            fh.write(lines[-1])
    else:
        ws.preference_path.write_bytes(b"".join(expected_lines))
    starts = _spy_starts(monkeypatch)
    render_view(ws, "preference", "trl")
    assert starts[-1] == 0  # read from the first byte
    monkeypatch.undo()
    assert _view_bytes(ws, "preference", "trl") == _whole(exported, tmp_path / "whole", "preference", "trl",
                                                         expected_lines)


def test_force_deletes_the_view_states(exported: Workspace) -> None:
    from distill.export.stage import ExportStage

    for kind in (ExportKind.SFT, ExportKind.PREFERENCE):
        caches = ExportStage(kind).caches(exported)
        for fmt in ("trl", "openai"):
            assert exported.view_state_path(kind.value, fmt) in caches


def test_an_append_writes_into_the_view_files_in_place(exported: Workspace, tmp_path: Path) -> None:
    lines = _native(exported, "sft").read_bytes().splitlines(keepends=True)
    ws = _fresh(exported, tmp_path / "inc", "sft", lines[:-2])
    render_view(ws, "sft", "trl")
    inodes = {name: path.stat().st_ino for name, path in view_paths(ws, "sft", "trl").items()}
    with open(ws.sft_path, "ab") as fh:
        fh.writelines(lines[-2:])
    render_view(ws, "sft", "trl")
    assert {name: path.stat().st_ino for name, path in view_paths(ws, "sft", "trl").items()} == inodes
    assert _view_bytes(ws, "sft", "trl") == _whole(exported, tmp_path / "whole", "sft", "trl", lines)


def test_an_error_while_appending_cuts_every_view_file_back(
        exported: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _native(exported, "sft").read_bytes().splitlines(keepends=True)
    half = len(lines) // 2
    ws = _fresh(exported, tmp_path / "inc", "sft", lines[:half])
    render_view(ws, "sft", "trl")
    before = _view_bytes(ws, "sft", "trl")
    state = ws.view_state_path("sft", "trl").read_bytes()
    with open(ws.sft_path, "ab") as fh:
        fh.writelines(lines[half:])
    monkeypatch.setattr(view_state, "HELD_BYTES", 1)  # every line reaches its file at once
    real = formats.sft_to_trl_prompt_completion
    shaped: list[int] = []

    def fails_on_the_second_row(sample: Any) -> dict[str, Any]:
        shaped.append(1)
        if len(shaped) == 2:
            raise RuntimeError("disk full")
        return real(sample)

    monkeypatch.setattr(formats, "sft_to_trl_prompt_completion", fails_on_the_second_row)
    with pytest.raises(RuntimeError, match="disk full"):
        render_view(ws, "sft", "trl")
    assert _view_bytes(ws, "sft", "trl") == before  # the first row's lines were written, then cut off
    assert ws.view_state_path("sft", "trl").read_bytes() == state
    monkeypatch.undo()
    render_view(ws, "sft", "trl")
    assert _view_bytes(ws, "sft", "trl") == _whole(exported, tmp_path / "whole", "sft", "trl", lines)


_KILLED_WHILE_APPENDING = """
import os, signal, sys
from pathlib import Path
import distill.export.formats as formats
import distill.export.view_state as view_state
from distill.workspace import Workspace
view_state.HELD_BYTES = 1
real, shaped = formats.sft_to_openai, []
def killed_on_the_third_row(sample):
    shaped.append(1)
    if len(shaped) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(sample)
formats.sft_to_openai = killed_on_the_third_row
formats.render_view(Workspace.resolve(Path(sys.argv[1])), "sft", "openai")
"""


def test_a_process_killed_while_appending_leaves_a_prefix_and_the_next_rendering_is_whole(
        exported: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _native(exported, "sft").read_bytes().splitlines(keepends=True)
    assert len(lines) >= 6, "the sample must export a few rows to append"
    ws = _fresh(exported, tmp_path / "inc", "sft", lines[:2])
    render_view(ws, "sft", "openai")
    before = _view_bytes(ws, "sft", "openai")
    state = ws.view_state_path("sft", "openai").read_bytes()
    with open(ws.sft_path, "ab") as fh:
        fh.writelines(lines[2:])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    killed = subprocess.run([sys.executable, "-c", _KILLED_WHILE_APPENDING, str(ws.root)], env=env, check=False)
    assert killed.returncode == -9
    whole = _whole(exported, tmp_path / "whole", "sft", "openai", lines)
    after_kill = _view_bytes(ws, "sft", "openai")
    for name, data in after_kill.items():
        assert data.startswith(before[name]) and whole[name].startswith(data)
    assert after_kill != before  # rows were appended before the kill: the state no longer describes the files
    assert ws.view_state_path("sft", "openai").read_bytes() == state
    starts = _spy_starts(monkeypatch)
    render_view(ws, "sft", "openai")
    assert starts[-1] == 0  # the files are longer than recorded: rendered whole
    monkeypatch.undo()
    assert _view_bytes(ws, "sft", "openai") == whole
