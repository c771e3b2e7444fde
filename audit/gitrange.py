"""The audited change, read from git: the commits of BASE..HEAD, their messages and their diff."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pydantic import BaseModel

from distill.errors import UsageError


class Change(BaseModel):
    repo: Path
    base: str  # resolved commit ids
    head: str
    messages: list[str]
    diff: str

    @property
    def range_key(self) -> str:
        return f"{self.base[:12]}..{self.head[:12]}"


GIT_TIMEOUT_S = 120


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False, timeout=GIT_TIMEOUT_S)
    except FileNotFoundError:
        raise UsageError("git is not installed") from None
    except subprocess.TimeoutExpired:
        raise UsageError(f"git {args[0]} took over {GIT_TIMEOUT_S} s in {repo}") from None
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        raise UsageError(f"git {args[0]} failed in {repo}: {err[-1] if err else 'exit ' + str(done.returncode)}")
    return done.stdout.decode("utf-8", errors="replace")


def _commit(repo: Path, rev: str, revision_range: str) -> str:
    """The commit id `rev` names (a revision that starts with `-` would be read by git as an option)."""
    if not rev.startswith("-"):
        try:
            return _git(repo, "rev-parse", "--verify", "--quiet", rev + "^{commit}").strip()
        except UsageError:
            pass
    raise UsageError(f"--range {revision_range!r}: {rev!r} names no commit in {repo}")


def read_change(repo: Path, revision_range: str) -> Change:
    """`BASE..HEAD` of the repository at `repo`; `BASE...HEAD` (a pull request's range, as GitHub
    compares) is HEAD against its merge base with BASE, so what BASE gained since is not audited."""
    if not repo.is_dir():
        raise UsageError(f"--repo {repo} is not a directory")
    merge_base = "..." in revision_range
    base, sep, head = revision_range.partition("..." if merge_base else "..")
    if not sep or not base or not head or head.startswith("."):
        raise UsageError(f"--range {revision_range!r} is not BASE..HEAD (or BASE...HEAD)")
    _git(repo, "rev-parse", "--git-dir")
    base_id, head_id = (_commit(repo, rev, revision_range) for rev in (base, head))
    if merge_base:
        try:
            base_id = _git(repo, "merge-base", base_id, head_id).strip()
        except UsageError:
            raise UsageError(f"--range {revision_range!r}: {base} and {head} share no history (no merge base)") from None
    log = _git(repo, "log", "--no-show-signature", "--format=%B%x00", f"{base_id}..{head_id}")
    messages = [m.strip() for m in log.split("\x00") if m.strip()]
    # the default a/ and b/ prefixes whatever the repository's diff.noprefix / diff.mnemonicPrefix
    # say: the parser tells a path from its prefix by them (audit.diff)
    diff = _git(repo, "diff", "--no-color", "--no-ext-diff", "--src-prefix=a/", "--dst-prefix=b/", "-U3",
                base_id, head_id)
    return Change(repo=repo, base=base_id, head=head_id, messages=messages, diff=diff)


def tree_mismatch(repo: Path, commit: str) -> str | None:
    """Why tests run in `repo`'s working tree would not test `commit` (None when they would): the
    checkout holds another tree, or tracked files changed since. Untracked files (build outputs, a
    virtual environment) do not count. A CI merge checkout whose tree is the audited HEAD's passes."""
    want = _git(repo, "rev-parse", commit + "^{tree}").strip()
    try:
        have = _git(repo, "rev-parse", "HEAD^{tree}").strip()
    except UsageError:  # nothing checked out yet
        have = ""
    if have != want:
        return f"the working tree is not at {commit[:12]}: check out the audited HEAD for [audit] test_command to test it"
    if _git(repo, "status", "--porcelain", "--untracked-files=no").strip():
        return f"tracked files in the working tree differ from {commit[:12]} (uncommitted changes)"
    return None


def read_file_at(repo: Path, commit: str, path: str) -> str | None:
    """A file's text at `commit` (None when it is not there or not text)."""
    try:
        done = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{path}"], capture_output=True, check=False,
                              timeout=GIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise UsageError(f"git show {commit[:12]}:{path} took over {GIT_TIMEOUT_S} s in {repo}") from None
    if done.returncode != 0 or b"\x00" in done.stdout[:8192]:
        return None
    return done.stdout.decode("utf-8", errors="replace")


def files_at(repo: Path, commit: str) -> list[str]:
    """Every file path in the tree of `commit`."""
    return [name for name in _git(repo, "ls-tree", "-r", "-z", "--name-only", commit).split("\x00") if name]  # unquoted
