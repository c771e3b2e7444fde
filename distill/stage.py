"""The stage contract: everything `distill run` needs to know about a stage, owned by the stage.

A stage is a small object. It names itself and the stages it runs after, says what it reads and
writes in a workspace, which configuration sections and code it depends on and whether it can
run here, and it runs, returning its counters (a StageReport: rows in = written + quarantined +
deduped + skipped, per source, plus any firewall violations). The pipeline (distill.pipeline)
only orders stages and runs them; resume, receipts and drift work the same for every stage.

Stages are registered under the `distill.stages` entry-point group (pyproject.toml), so a
package such as `index` adds its stage without `distill` importing that package.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from distill import __version__
from distill.config import Settings
from distill.fold_cache import FoldCache
from distill.records.receipts import FileDigest
from distill.records.stage import StageReport
from distill.workspace import Workspace, is_data, text_name


def files_under(base: Path) -> list[Path]:
    """Every data file below `base`, sorted (lock files, temp files, dot files and names that are
    not valid UTF-8 left out)."""
    if not base.is_dir():
        return []
    return sorted(
        p for p in base.rglob("*")
        if p.is_file() and is_data(p.name)
        and text_name(p.relative_to(base))
    )


def existing(*paths: Path) -> list[Path]:
    return [p for p in paths if p.exists()]


class Stage(ABC):
    """One step of `distill run`. Subclasses set the class attributes and the abstract methods."""

    name: str
    after: tuple[str, ...] = ()
    """Stages whose outputs this one reads: the pipeline runs it after them."""
    config_sections: tuple[str, ...] = ()
    """Sections of distill.toml this stage reads: a change there reruns it."""
    packages: tuple[str, ...] = ("distill",)
    """Top-level packages whose source files it runs: an edit there reruns it."""

    def version(self, settings: Settings) -> str:
        """The code version a receipt records (rules can add their own version, e.g. the scorer's)."""
        return f"distill {__version__}"

    def unavailable(self) -> str | None:
        """Why this stage cannot run in this installation (a missing extra), or None."""
        return None

    def check_usable(self, ws: Workspace, settings: Settings) -> None:
        """Raise a UsageError when the workspace and configuration cannot be run as given (two
        sources with one name, an index built in another store). `distill run` asks every stage
        before it starts, so such a mistake is one line and exit 2, like a bad distill.toml,
        not a failed stage in a recorded run."""

    @abstractmethod
    def inputs(self, ws: Workspace, settings: Settings) -> list[Path]:
        """Files the stage reads, as found before it runs."""

    def input_trees(self, ws: Workspace, settings: Settings) -> list[Path]:
        """Directory trees whose file listing the stage depends on (not their contents)."""
        return []

    @abstractmethod
    def outputs(self, ws: Workspace, settings: Settings) -> list[Path]:
        """Files the stage owns, as found on disk."""

    def tracks(self, path: str) -> bool:
        """Whether an output (ROOT-relative path) belongs in this stage's receipt. Files another
        stage rewrites, or that change when merely opened, are left out."""
        return True

    def caches(self, ws: Workspace) -> list[Path]:
        """Files the stage keeps only to save work on the next run; `distill run --force` removes
        them first, and losing them must never change an output."""
        return []

    def rerun_reason(self, ws: Workspace, settings: Settings) -> str | None:
        """A reason to rerun that the receipts cannot see (state outside the tracked outputs)."""
        return None

    @abstractmethod
    def run(self, ws: Workspace, settings: Settings) -> StageReport:
        """Do the work; bad rows become quarantine rows counted in the report, never exceptions."""

    def output_categories(self, ws: Workspace, outputs: list[FileDigest],
                          folds: FoldCache | None = None) -> dict[str, int]:
        """Rows per category in the outputs as written (drift compares these between runs).
        `folds`: the run's fold cache, for `distill.receipts.count_categories`."""
        return {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
