"""The workspace layout (docs/DESIGN.md, "The workspace"): every path a stage reads or writes, and
the workspace lock every command that changes the workspace holds."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

STAGES_WITH_QUARANTINE = ("collect", "score", "rag", "sft", "preference")
OWN_DIRS = ("evidence", "scored-runs", "exports", "reports", "index")  # what the stages write (and read back)
OWN_PREFIX = ".distill"  # the caches, checkpoints and locks at ROOT
FOLDER = "a folder"  # what scan_own_files calls a folder named as one of distill's files
NOT_FOLDER = "a file"  # what it calls a file named as one of the partition folders (YYYY, MM, DD)
TRANSIENT_SUFFIXES = (".lock", ".tmp")  # lock files and atomic writes' temps: never data, never an input
PARTITIONED = {"evidence": "the collected evidence", "scored-runs": "the scored runs"}  # base/YYYY/MM/DD/*.jsonl
PARTITION_FOLDER = (re.compile(r"\d{4}"), re.compile(r"\d{2}"), re.compile(r"\d{2}"))  # partition_path's folders
# ROOT/.distill-<what>-*.tmp: a directory a locked command works in (collect's sources read side by
# side, score's partitions in forked children) and removes when done; a killed command leaves it
SCRATCH_DIR = re.compile(r"\.distill-[a-z]+-[A-Za-z0-9_]+\.tmp")


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, root: Path | str | None = None) -> Workspace:
        """--root, else $DISTILL_ROOT, else the current directory."""
        chosen = root if root is not None else os.environ.get("DISTILL_ROOT") or Path.cwd()
        return cls(Path(chosen).expanduser().resolve())

    # inputs
    @property
    def kb_dir(self) -> Path:
        return self.root / "_kb"

    @property
    def replay_log(self) -> Path:
        return self.kb_dir / "replay_runs.jsonl"

    @property
    def config_path(self) -> Path:
        return self.root / "distill.toml"

    # stage outputs
    @property
    def evidence_dir(self) -> Path:
        return self.root / "evidence"

    @property
    def scored_dir(self) -> Path:
        return self.root / "scored-runs"

    @property
    def exports_dir(self) -> Path:
        return self.root / "exports"

    @property
    def rag_path(self) -> Path:
        return self.exports_dir / "rag" / "playbooks.jsonl"

    @property
    def sft_path(self) -> Path:
        return self.exports_dir / "sft" / "instruction_response.jsonl"

    @property
    def preference_path(self) -> Path:
        return self.exports_dir / "preference" / "chosen_rejected.jsonl"

    @property
    def quarantine_dir(self) -> Path:
        return self.exports_dir / "quarantine"

    def quarantine_path(self, stage: str) -> Path:
        return self.quarantine_dir / f"{stage}.jsonl"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def own_folders(self) -> list[tuple[Path, str]]:
        """The folders distill makes and writes into, parents first, each with what it holds."""
        return [(self.evidence_dir, "the collected evidence"), (self.scored_dir, "the scored runs"),
                (self.exports_dir, "the exports"), (self.reports_dir, "the run reports"),
                (self.index_dir, "the index"), (self.rag_path.parent, "the RAG export"),
                (self.sft_path.parent, "the SFT export"), (self.preference_path.parent, "the preference export"),
                (self.quarantine_dir, "the quarantine files")]

    @property
    def lock_path(self) -> Path:
        return self.root / ".distill.lock"

    @property
    def lock_owner_path(self) -> Path:
        return self.root / ".distill.lock.owner"

    @property
    def collect_checkpoint_path(self) -> Path:
        """What collect already read of each JSONL source (distill.collect_checkpoints), so that a
        run after an append reads only the new lines; deleting it only costs one full read."""
        return self.root / ".distill.collect.json"

    @property
    def evidence_basis_path(self) -> Path:
        """The rules the evidence was collected under (distill.collect: code, [collect] and
        [[sources]]). A run that finds other rules, or no record beside existing evidence,
        collects the evidence again; deleting it only costs that."""
        return self.root / ".distill.evidence.json"

    @property
    def score_checkpoint_path(self) -> Path:
        """What score already scored of each evidence partition (distill.score_checkpoints)."""
        return self.root / ".distill.score.json"

    @property
    def fold_cache_path(self) -> Path:
        """What receipts and the dataset card counted in each JSONL file (distill.fold_cache), so
        that a run after an append counts only the appended lines; deleting it costs one re-read."""
        return self.root / ".distill.folds.json"

    @property
    def scored_index_path(self) -> Path:
        """The export check's index of scored categories, per scored partition
        (distill.export.scored_index), so that a run after an append parses only the new lines."""
        return self.root / ".distill.scored-index.npz"

    def export_checkpoint_path(self, kind: str) -> Path:
        """What each scored partition's lines gave in the last export of `kind`
        (distill.export.checkpoints), so that a run after an append reads only the new lines."""
        return self.root / f".distill.export-{kind}.json"

    def kept_decisions_path(self, kind: str) -> Path:
        """Every row's decision in the last export of `kind` that pairs rows (distill.export.kept_decisions)."""
        return self.root / f".distill.decisions-{kind}.npz"

    def passed_gates_path(self, kind: str) -> Path:
        """Digests of the gate inputs that passed the last export of `kind` (distill.export.passed_gates)."""
        return self.root / f".distill.gates-{kind}.npz"

    def view_state_path(self, kind: str, fmt: str) -> Path:
        """What the last rendering of a trainer view covered (distill.export.view_state)."""
        return self.root / f".distill.view-{kind}-{fmt}.json"

    def verified_path(self, kind: str) -> Path:
        """What the last clean verification of an export saw (distill.export.verified)."""
        return self.root / f".distill.verified-{kind}.npz"

    def quarantine_tally_path(self, stage: str) -> Path:
        """What the export that last wrote `stage`'s quarantine file counted in it
        (distill.fold_cache.WriterTally): the receipt's line check then need not read the file."""
        return self.root / f".distill.quarantine-{stage}.json"

    def written_by_command_path(self, stage: str) -> Path:
        """The outputs of `stage` as the last command outside `distill run` that writes them
        (`distill export`) left them (distill.receipts.vouch_outputs)."""
        return self.root / f".distill.written-{stage}.json"

    @property
    def digest_cache_path(self) -> Path:
        """File digests saved by the last run (distill.receipts.DigestCache), so that a run over
        unchanged files does not re-read them; deleting it only costs one re-hash."""
        return self.root / ".distill.digests.json"

    @property
    def secret_prefilter_path(self) -> Path:
        """The secret gate's compiled Hyperscan prefilter (distill.secrets), kept so that each
        process that scans loads it instead of compiling it; deleting it costs one compile."""
        return self.root / ".distill.secret-prefilter.hs"

    @property
    def clock_path(self) -> Path:
        """An empty file the digest cache touches to read the file system's clock (its ctime), so
        that it can tell a file that changed after it was hashed from one that did not."""
        return self.root / ".distill.clock"

    @contextlib.contextmanager
    def exclusive(self, command: str) -> Iterator[None]:
        """Hold the workspace lock while `command` changes the workspace.

        Every mutating command (init, collect, score, export, index, run) takes it, so two of them
        never interleave their writes (two collects doubling the evidence, a collect during a run).
        It is not waited for: a busy workspace is a WorkspaceBusy error that names the holder.
        Read-only commands (search, receipts) and replay (whole-line appends to its log) do not
        take it.
        """
        from filelock import FileLock, Timeout

        from distill.errors import WorkspaceBusy

        lock = FileLock(str(self.lock_path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise WorkspaceBusy(f"another distill command is changing {self.root} ({self._owner()}); "
                                "wait for it to finish") from None
        try:
            owner = {"pid": os.getpid(), "command": command, "since": datetime.now(UTC).isoformat(timespec="seconds")}
            # first: the owner file itself could be a FIFO; every writer of distill's own files
            # holds this lock, so a temporary file of an atomic write found now is one whose
            # process was killed (a SIGKILL runs no handler): it goes, not on disk for ever
            self.refuse_special_files(remove_abandoned=True)
            self.lock_owner_path.write_text(json.dumps(owner) + "\n")
            yield
        finally:
            with contextlib.suppress(OSError):
                self.lock_owner_path.unlink()
            lock.release()

    def refuse_special_files(self, *, remove_abandoned: bool = False) -> int:
        """A FIFO, socket or device where distill keeps its own files (an evidence partition, an
        export, a checkpoint) would block the first open of it for ever, or feed it endless bytes:
        the command stops before it starts, naming the entry. Directories are listed, not stat'ed
        per file (their entries know their type), so this costs a listing of the workspace. A file
        where distill makes one of its folders (`own_folders`), and a folder where it keeps one of
        its files (a `*.jsonl`, a ROOT/.distill.* cache: FOLDER in that listing), are refused the
        same way.

        `remove_abandoned` (only under the workspace lock) also removes, in the same listing, the
        temporary files of atomic writes and the scratch directories (SCRATCH_DIR) whose process
        was killed; returns how many."""
        from distill.errors import UsageError

        for folder, holds in self.own_folders():
            # a file (or a link to nothing) where distill makes a folder failed a stage halfway with an errno
            try:
                mode = os.stat(folder).st_mode  # a link to a folder is a folder
            except FileNotFoundError:
                if not os.path.islink(folder):
                    continue
                what = "a link to nothing"
            except OSError:  # under a file already reported, or unreadable: left to whoever opens it
                continue
            else:
                if stat.S_ISDIR(mode):
                    continue
                what = "a file" if stat.S_ISREG(mode) else (special_kind(mode) or "not a folder")
            raise UsageError(f"{folder.relative_to(self.root).as_posix()} is {what}, not a folder: distill keeps "
                             f"{holds} there; move it away")
        found, abandoned = scan_own_files(self.root, abandoned_temps=remove_abandoned)
        if found is not None:
            where, kind = found
            rel = Path(where).relative_to(self.root).as_posix()
            if kind.endswith(FOLDER):  # the stage that writes that file failed with IsADirectoryError
                holds = "a JSONL file" if rel.endswith(".jsonl") else f"its caches and checkpoints ({OWN_PREFIX}.*)"
                raise UsageError(f"{rel} is {kind}, not a file: distill keeps {holds} there; move it away")
            if kind.endswith(NOT_FOLDER):  # the stage that writes a partition under it failed with NotADirectoryError
                holds = PARTITIONED[rel.split("/")[0]]
                raise UsageError(f"{rel} is {kind}, not a folder: distill keeps {holds} there "
                                 "(YYYY/MM/DD/<source>.jsonl); move it away")
            raise UsageError(f"{rel} is {kind}, not a regular file: "
                             "distill keeps only regular files in its workspace; remove it")
        for path in abandoned:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        return len(abandoned)

    def _owner(self) -> str:
        try:
            owner = json.loads(self.lock_owner_path.read_text())
            return f"`distill {owner['command']}`, pid {owner['pid']}, since {owner['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def relative(self, path: Path) -> str:
        """Path as stored in provenance: relative to the root when inside it, POSIX style."""
        try:
            return path.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return path.resolve().as_posix()

    def absolute(self, stored: str) -> Path:
        p = Path(stored)
        return p if p.is_absolute() else self.root / p


def is_data(name: str) -> bool:
    """Not a lock file, an atomic write's temp or a dot file, which are never data nor an input
    (what a stage reads or outputs, what a receipt digests, what collect reports as not read)."""
    return not (name.endswith(TRANSIENT_SUFFIXES) or name.startswith("."))


def text_name(relative: Path) -> bool:
    """Whether a path (relative to the folder it was found in) can be written as text: a name
    that is not valid UTF-8 (its bytes kept as surrogates) cannot go into a receipt, a provenance
    field or a JSON line, so such a file is reported and not read (collect's unread inputs)."""
    try:
        str(relative).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_name(path: Path | str) -> str:
    """A path as text whatever its bytes (a byte that is not UTF-8 shown as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def special_kind(mode: int) -> str | None:
    """What a file type is when it is a FIFO, socket or device, which no open should wait on
    (None for anything else): the workspace check and collect's source listing both ask."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a socket or device"
    return None


def scan_own_files(root: Path, *, abandoned_temps: bool = False) -> tuple[tuple[str, str] | None, list[str]]:
    """The first FIFO, socket or device (or a symlink to one), folder (or a link to one) named
    as a file (FOLDER: a `*.jsonl`, or a ROOT/.distill.* other than the fold cache's memo folder),
    or file (or a link to one) named as a partition folder (NOT_FOLDER: `evidence/2026`,
    `scored-runs/2026/01`, whose partitions a stage would fail to write with NotADirectoryError),
    among distill's own files under `root` (OWN_DIRS and the ROOT/.distill* entries), as (path,
    what it is), or None; with
    `abandoned_temps`, also the temporary files and folders found: named by jsonl.ATOMIC_TEMP
    (ROOT's own named `..distill*`), and ROOT's scratch folders (SCRATCH_DIR); a folder found is
    not listed inside. Symlinks are not followed into directories (a loop would never end), nor
    taken for a temporary folder; a broken one is left to whoever reads it."""
    from distill.fold_cache import memo_dir
    from distill.jsonl import ATOMIC_TEMP

    temps: list[str] = []
    memo = memo_dir(Workspace(root).fold_cache_path).name  # the one ROOT/.distill.* that is a folder

    def a_file_by_name(entry: os.DirEntry[str]) -> bool:
        # a partition, an export, a quarantine file; a cache or checkpoint at ROOT
        return entry.name.endswith(".jsonl") or (
            entry.path in at_root and entry.name.startswith(OWN_PREFIX + ".") and entry.name != memo)

    top_level = len(os.fspath(root)) + 1

    def a_folder_by_name(entry: os.DirEntry[str]) -> bool:
        # YYYY, MM or DD in a partitioned folder: where a stage makes a partition's folder
        parts = entry.path[top_level:].split(os.sep)
        return (2 <= len(parts) <= 4 and parts[0] in PARTITIONED
                and PARTITION_FOLDER[len(parts) - 2].fullmatch(entry.name) is not None)

    def kind_of(entry: os.DirEntry[str]) -> str | None:
        jsonl = a_file_by_name(entry)
        try:
            if entry.is_dir(follow_symlinks=False):
                return FOLDER if jsonl else None
            if entry.is_file(follow_symlinks=False):
                if abandoned_temps and ATOMIC_TEMP.fullmatch(entry.name):
                    temps.append(entry.path)
                return NOT_FOLDER if a_folder_by_name(entry) else None
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                st = entry.stat()
                if jsonl and stat.S_ISDIR(st.st_mode):
                    return f"a symlink to {FOLDER}"
                if stat.S_ISREG(st.st_mode) and a_folder_by_name(entry):
                    return f"a symlink to {NOT_FOLDER}"
                return None if (what := special_kind(st.st_mode)) is None else f"a symlink to {what}"
            return special_kind(st.st_mode)
        except OSError:
            return None

    try:
        with os.scandir(root) as top:
            todo = [entry for entry in top
                    if entry.name in OWN_DIRS or entry.name.startswith((OWN_PREFIX, "." + OWN_PREFIX))]
    except OSError:
        return None, temps
    at_root = {entry.path for entry in todo}
    while todo:
        entry = todo.pop()
        if (what := kind_of(entry)) is not None:
            return (entry.path, what), temps
        try:
            if entry.is_dir(follow_symlinks=False):
                if abandoned_temps and (ATOMIC_TEMP.fullmatch(entry.name)
                                        or (entry.path in at_root and SCRATCH_DIR.fullmatch(entry.name))):
                    temps.append(entry.path)
                    continue
                with os.scandir(entry.path) as entries:
                    todo.extend(entries)
        except OSError:
            continue
    return None, temps


def partition_path(base: Path, created_at: datetime, source: str) -> Path:
    """base/YYYY/MM/DD/<source>.jsonl, by the record's own created_at (UTC). The year has four
    digits whatever it is (strftime's %Y gives year 1 as "1"): the folders sort in date order and
    are the ones the workspace check knows as partitions."""
    return (base / f"{created_at.year:04d}" / f"{created_at.month:02d}" / f"{created_at.day:02d}"
            / f"{source}.jsonl")


def iter_partition_files(base: Path) -> list[Path]:
    """Every partition file under base (base/*/*/*/*.jsonl as Path.glob matches it, links
    followed), in a stable (sorted) order. Listed with scandir, whose entries know their type: a
    stat per file only for links (a run lists the partitions a dozen times)."""

    def listed(path: str) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(path) as entries:
                return list(entries)
        except OSError:  # gone, not a folder, unreadable: as glob, nothing under it
            return []

    def is_dir(entry: os.DirEntry[str]) -> bool:
        try:
            return entry.is_dir()
        except OSError:
            return False

    found: list[tuple[tuple[str, ...], str]] = []
    for year in listed(os.fspath(base)):
        if not is_dir(year):
            continue
        for month in listed(year.path):
            if not is_dir(month):
                continue
            for day in listed(month.path):
                if not is_dir(day):
                    continue
                for entry in listed(day.path):
                    try:
                        if entry.name.endswith(".jsonl") and entry.is_file():
                            found.append(((year.name, month.name, day.name, entry.name), entry.path))
                    except OSError:
                        continue
    found.sort()  # by parts, as Paths sort
    return [Path(path) for _, path in found]
