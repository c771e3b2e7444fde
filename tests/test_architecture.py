"""The structure the code promises: layered packages, stages and commands that plug in through entry
points, and nothing that disappears silently when it is broken."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from distill import plugins
from distill.errors import PluginError
from distill.stage import Stage

REPO = Path(__file__).resolve().parent.parent


def test_packages_import_downwards_only() -> None:
    """audit -> runtime -> index -> distill; distill imports none of them (pyproject [tool.importlinter])."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--config", str(REPO / "pyproject.toml")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


def test_registered_stages_run_in_dependency_order() -> None:
    names = [s.name for s in plugins.registered_stages()]
    # the three exports read only the scored runs (ready together: by name); the card reads all three
    assert names == ["collect", "score", "export-preference", "export-rag", "export-sft", "export-card", "index"]


class _Named(Stage):
    def __init__(self, name: str, after: tuple[str, ...] = ()) -> None:
        self.name = name
        self.after = after

    def inputs(self, ws, settings):  # type: ignore[no-untyped-def]
        return []

    def outputs(self, ws, settings):  # type: ignore[no-untyped-def]
        return []

    def run(self, ws, settings):  # type: ignore[no-untyped-def]
        raise AssertionError("not run here")


def test_order_is_by_dependency_then_name_and_cycles_are_errors() -> None:
    ordered = plugins.order_stages([_Named("b", ("a",)), _Named("c"), _Named("a"), _Named("d", ("zzz-missing",))])
    assert [s.name for s in ordered] == ["a", "b", "c", "d"]
    with pytest.raises(PluginError, match="cycle"):
        plugins.order_stages([_Named("x", ("y",)), _Named("y", ("x",))])
    with pytest.raises(PluginError, match="two stages"):
        plugins.order_stages([_Named("x"), _Named("x")])


def _with_entry_point(monkeypatch: pytest.MonkeyPatch, group: str, name: str, value: str) -> None:
    real = metadata.entry_points

    def entry_points(**kw):  # type: ignore[no-untyped-def]
        found = list(real(**kw))
        if kw.get("group") == group:
            found.append(metadata.EntryPoint(name=name, value=value, group=group))
        return found

    monkeypatch.setattr(metadata, "entry_points", entry_points)


def test_a_broken_command_registration_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_entry_point(monkeypatch, plugins.COMMANDS_GROUP, "broken", "distill.no_such_module:register")
    with pytest.raises(PluginError, match="broken"):
        plugins.registered_commands()


def test_a_broken_stage_registration_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_entry_point(monkeypatch, plugins.STAGES_GROUP, "broken", "distill.collect:NoSuchStage")
    with pytest.raises(PluginError, match="broken"):
        plugins.registered_stages()


def test_the_cli_reports_a_broken_registration_in_one_line(tmp_path: Path) -> None:
    """A stale or broken installation: one line naming the problem, exit 2, no traceback."""
    code = (
        "import importlib.metadata as m\n"
        "real = m.entry_points\n"
        "def eps(**kw):\n"
        "    found = list(real(**kw))\n"
        "    if kw.get('group') == 'distill.commands':\n"
        "        found.append(m.EntryPoint(name='broken', value='distill.no_such_module:register', group='distill.commands'))\n"
        "    return found\n"
        "m.entry_points = eps\n"
        "import sys; sys.argv = ['distill', '--help']\n"
        "from distill.cli import main; main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "broken" in done.stderr and "failed to load" in done.stderr


_IMPORT_EACH_FIRST = r"""
import os, sys
import numpy, orjson, pydantic, pydantic_settings, rich, typer  # third-party, shared by every child
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            __import__(name)
        except BaseException as exc:  # noqa: BLE001 - report any failure to import
            sys.stderr.write(f"{name}: {type(exc).__name__}: {exc}\n")
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        failed.append(name)
print(" ".join(failed))
"""


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_every_module_imports_first_in_a_fresh_process() -> None:
    """No import cycle hides behind import order: each module, imported before any other of ours
    (a forked child of an interpreter that loaded only third-party packages), loads."""
    names = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts[:-1] if p.name == "__init__.py"
                 else p.relative_to(REPO).with_suffix("").parts)
        for pkg in ("distill", "index", "runtime", "audit") for p in (REPO / pkg).rglob("*.py")
        if p.name != "__main__.py"
    )
    assert len(names) > 50
    done = subprocess.run([sys.executable, "-c", _IMPORT_EACH_FIRST, *names], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"cannot be imported first: {done.stdout.strip()}\n{done.stderr}"


def test_records_exports_every_name_it_loads_lazily() -> None:
    import distill.records as records

    assert sorted(records.__all__) == sorted(records._HOME)
    assert all(getattr(records, name).__name__ == name for name in records.__all__)


_BLAS_PROBE = """
import os, sys
import distill.cli
loaded_before_main = "numpy" in sys.modules
sys.argv = ["distill", "run", "--help"]
try:
    distill.cli.main()
except SystemExit:
    pass
import numpy  # noqa: F401
print(loaded_before_main, os.environ.get("OPENBLAS_NUM_THREADS"))
"""


@pytest.mark.parametrize(("preset", "expected"), [(None, "1"), ("3", "3")])
def test_the_cli_keeps_openblas_to_one_thread_unless_told_otherwise(preset: str | None, expected: str) -> None:
    """`distill` sets OPENBLAS_NUM_THREADS before numpy is loaded (its idle threads cost every
    stage worker CPU for nothing), and keeps a value the user set."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if preset is not None:
        env["OPENBLAS_NUM_THREADS"] = preset
    done = subprocess.run([sys.executable, "-c", _BLAS_PROBE], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["False", expected]
