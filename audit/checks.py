"""The deterministic checks: placeholder code on added lines, and each claim against the diff and
the test run. Pure functions of their inputs."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Collection, Mapping, Sequence

from audit.claims import Claim, ClaimKind, figure_number
from audit.diff import AddedLine, FileChange, is_test_path
from audit.findings import Finding, Severity, signature_of
from audit.testrun import MAX_COUNT_DIGITS, TestRun, count_of
from runtime.gate import placeholder_regexes

_STUB_WORD = re.compile(r"\b(?:stub(?:bed|s)?|placeholder)\b", re.IGNORECASE)
_DEF = re.compile(r"^(\s*)(?:async\s+)?def\s+\w+\s*\(.*\)\s*(?:->\s*[^:]+)?:\s*(pass|\.\.\.)?\s*(?:#.*)?$")
_EMPTY = re.compile(r"^\s*(?:pass|\.\.\.)\s*(?:#.*)?$")
_ABSTRACT = re.compile(r"@(?:abc\.)?abstractmethod|@(?:typing\.)?overload|\bProtocol\b")
_DOCSTRING = re.compile(r"^\s*[rbuRBU]?(?:\"\"\"|''')")


CODE_EXTENSIONS = frozenset({
    "py", "pyi", "rs", "ts", "tsx", "js", "jsx", "mjs", "cjs", "go", "java", "kt", "kts", "rb", "c", "h", "cc", "cpp",
    "hpp", "cs", "swift", "sh", "bash", "zsh", "php", "scala", "lua", "sql", "ex", "exs", "dart", "vue", "svelte",
})
"""Files the static checks read. Data, results and docs (jsonl, json, md, txt, ...) quote placeholders
as content; they are not code that can ship one."""


def is_code(path: str) -> bool:
    return path.rsplit(".", 1)[-1].lower() in CODE_EXTENSIONS if "." in path.rsplit("/", 1)[-1] else False


def _python_strings(source: str) -> dict[int, list[tuple[int, int]]]:
    """line -> [(start col, end col)] covered by string literals (docstrings included)."""
    spans: dict[int, list[tuple[int, int]]] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type != tokenize.STRING:
                continue
            (l0, c0), (l1, c1) = tok.start, tok.end
            for line in range(l0, l1 + 1):
                spans.setdefault(line, []).append((c0 if line == l0 else 0, c1 if line == l1 else 10**9))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return {}
    return spans


def _in_quotes(text: str, col: int) -> bool:
    """Whether column `col` of one line lies inside a quoted string (same-line heuristic)."""
    quote: str | None = None
    i = 0
    while i < col and i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if quote is None and ch in "\"'`":
            quote = ch
        elif ch == quote:
            quote = None
        i += 1
    return quote is not None


def _inside_string(added: AddedLine, col: int, strings: dict[int, list[tuple[int, int]]] | None) -> bool:
    if strings is not None:
        return any(a <= col < b for a, b in strings.get(added.line, []))
    return _in_quotes(added.text, col)


_COMMENT_OPENERS = ("#", "//", "/*", "<!--")
_DASH_COMMENT_EXTENSIONS = ("sql", "lua", "hs")  # where `--` opens a comment (in C it decrements)


def _in_comment(added: AddedLine, col: int, strings: dict[int, list[tuple[int, int]]] | None) -> bool:
    """Whether column `col` of a code line lies in a comment (an opener outside strings comes before
    it, or the line continues a block comment: it starts with `*`). Strings are the tokenizer's for
    a Python file (a `#` inside a docstring that ends on this line is no comment), else the
    same-line quote heuristic."""
    text = added.text
    if text.lstrip().startswith("*"):
        return True
    dash = added.path.rsplit(".", 1)[-1].lower() in _DASH_COMMENT_EXTENSIONS
    for opener in _COMMENT_OPENERS + (("--",) if dash else ()):
        at = text.find(opener)
        while 0 <= at < col:
            if not _inside_string(added, at, strings):
                return True
            at = text.find(opener, at + 1)
    return False


def _marker_in_code(added: AddedLine, hit: re.Match[str], strings: dict[int, list[tuple[int, int]]] | None) -> bool:
    """Whether a pattern's hit is a placeholder marker rather than a name: the patterns match
    case-insensitively (an answer's "todo:" is one), but in code `part.todo` or a class `Todo` is
    an identifier. Written as the pattern writes it (TODO, FIXME, todo!() it is a marker anywhere
    outside strings; in other casing, only inside a comment. An exception name counts where raised."""
    word = hit.group(0)
    if re.fullmatch(r"\w+(?:Error|Exception)", word):  # an exception is a stub where it is raised, not
        # where a test expects it (`raises(NotImplementedError, ...)`) or a caller catches it
        return bool(re.search(r"\b(?:raise|throw)\s+(?:new\s+)?(?:\w+\.)*" + re.escape(word) + r"\b", added.text))
    if re.compile(hit.re.pattern).match(added.text, hit.start()):  # the case the pattern was written in
        return True
    return _in_comment(added, hit.start(), strings)


def placeholder_findings(files: Sequence[FileChange], patterns: Sequence[str],
                         sources: Mapping[str, str] | None = None) -> list[Finding]:
    """On added lines of code files, outside string literals (prompts, patterns and test data quote
    placeholders; code, comments and macros are what ship them): the gate's placeholder patterns
    block; in non-test code the words 'stub'/'placeholder' warn and functions whose whole body is
    `pass`/`...` block."""
    found: list[Finding] = []
    compiled = placeholder_regexes(tuple(patterns))
    for change in files:
        if not is_code(change.path):
            continue
        source = (sources or {}).get(change.path)
        strings = _python_strings(source) if source is not None and change.path.endswith(".py") else None
        for added in change.added:
            hit = next((m for p in compiled for m in p.finditer(added.text)
                        if not _inside_string(added, m.start(), strings) and _marker_in_code(added, m, strings)), None)
            if hit is not None:
                found.append(_at(added, "placeholder", Severity.BLOCK, f"{hit.group(0)} in {added.path}",
                                 "added code lines (outside string literals) against [gate] placeholder_patterns",
                                 f"`{hit.group(0)}` on an added line: {added.text.strip()[:160]}", hit.group(0)))
                continue
            if change.is_test:
                continue
            word = next((m for m in _STUB_WORD.finditer(added.text) if not _inside_string(added, m.start(), strings)), None)
            if word is not None:
                found.append(_at(added, "stub_word", Severity.WARN, f"'{word.group(0)}' in non-test code {added.path}",
                                 "added non-test code (outside string literals) for 'stub' / 'placeholder'",
                                 f"an added line says {word.group(0)!r}: {added.text.strip()[:160]}", word.group(0).lower()))
        if not change.is_test and change.path.endswith(".py"):
            parsed = _empty_functions(source, change) if source is not None else None
            found.extend(parsed if parsed is not None else _empty_bodies(change.added))
    return found


def _at(added: AddedLine, check: str, severity: Severity, title: str, checked: str, found: str, key: str) -> Finding:
    return Finding(check=check, severity=severity, title=title, checked=checked, found=found,
                   path=added.path, line=added.line, signature=signature_of(check, key))


def _is_empty_statement(node: ast.stmt) -> bool:
    return isinstance(node, ast.Pass) or (
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node.value.value is Ellipsis
    )


def _exempt(fn: ast.FunctionDef | ast.AsyncFunctionDef, parents: dict[ast.AST, ast.AST]) -> bool:
    for dec in fn.decorator_list:
        name = ast.unparse(dec)
        if name.split(".")[-1] in ("abstractmethod", "overload", "abstractproperty"):
            return True
    parent = parents.get(fn)
    if isinstance(parent, ast.ClassDef):
        bases = {ast.unparse(b).split(".")[-1].split("[")[0] for b in parent.bases}
        if bases & {"Protocol", "ABC"}:
            return True
    return False


def _empty_functions(source: str, change: FileChange) -> list[Finding] | None:
    """Functions of the new file whose body (docstring aside) is only `pass`/`...` and that the
    change added or edited; None when the file does not parse (the line check takes over)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    added = {a.line: a for a in change.added}
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    out: list[Finding] = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or _exempt(node, parents):
            continue
        body = list(node.body)
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            body = body[1:]
        if not body or not all(_is_empty_statement(b) for b in body):
            continue
        touched = [n for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in added]
        if not touched:
            continue
        line = added.get(node.lineno) or added[touched[0]]
        out.append(_at(line, "empty_body", Severity.BLOCK, f"function {node.name} with an empty body in {change.path}",
                       "added or edited non-test functions for a body of only `pass` / `...`",
                       f"def {node.name}(...) has no body but `pass`/`...`", "empty function body"))
    return out


def _empty_bodies(added: list[AddedLine]) -> list[Finding]:
    """Added Python functions whose body is only `pass` or `...` (abstract methods, overloads and
    protocols aside)."""
    out: list[Finding] = []
    by_line = {a.line: a for a in added}
    for a in added:
        m = _DEF.match(a.text)
        if not m:
            continue
        prev = by_line.get(a.line - 1)
        if prev is not None and _ABSTRACT.search(prev.text):
            continue
        indent = len(m.group(1))
        if m.group(2):  # def f(): pass
            body_only_empty = True
        else:
            body = []
            n = a.line + 1
            while n in by_line:
                text = by_line[n].text
                if text.strip():
                    if len(text) - len(text.lstrip()) <= indent:
                        break
                    body.append(text)
                n += 1
            body = [b for b in body if not _DOCSTRING.match(b)]
            body_only_empty = bool(body) and all(_EMPTY.match(b) for b in body)
        if body_only_empty:
            out.append(_at(a, "empty_body", Severity.BLOCK, f"function with an empty body in {a.path}",
                           "added non-test functions for a body of only `pass` / `...`",
                           f"{a.text.strip()[:120]} has no body but `pass`/`...`", "empty function body"))
    return out


def _touched(files: Sequence[FileChange]) -> list[str]:
    return [f.path for f in files] + [f.old_path for f in files if f.old_path]


def _names_touched(claimed: str, touched: Sequence[str]) -> bool:
    claimed = claimed.lstrip("./")
    # " " + name: prose cannot delimit a file name with a space, so a claim holds its last word
    return any(t == claimed or t.endswith(("/" + claimed, " " + claimed)) for t in touched)


def claim_findings(claims: Sequence[Claim], files: Sequence[FileChange], test_run: TestRun | None,
                   repo_files: Collection[str] = (), *, untested: str | None = None) -> list[Finding]:
    """Each claim checked against the diff (and the test run when there is one). A named file the
    repository has and the change does not touch blocks; a name the repository does not have at all
    (a workspace output, a config file the user writes) only warns."""
    touched = _touched(files)
    added_text = "\n".join(a.text for f in files for a in f.added)
    found: list[Finding] = []
    for claim in claims:
        if claim.kind is ClaimKind.FILE:
            if not _names_touched(claim.value, touched):
                in_repo = _names_touched(claim.value, list(repo_files))
                found.append(Finding(
                    check="claim_file", severity=Severity.BLOCK if in_repo else Severity.WARN,
                    title=f"claim names {claim.value}, which the change does not touch",
                    claim=claim.sentence, checked=f"the files the diff touches ({len(touched)}) and the repository's files",
                    found=f"{claim.value} is not among the changed files" + (f" ({', '.join(touched[:5])})" if touched else "")
                    + ("; the repository has it, unchanged" if in_repo else "; no file of that name is in the repository"),
                    signature=signature_of("claim_file", "claimed file not in the diff" if in_repo else "claimed file not in the repo"),
                ))
        elif claim.kind is ClaimKind.TEST_COUNT:
            found.extend(_test_count(claim, test_run, untested))
        elif claim.kind is ClaimKind.ALL_TESTS:
            found.extend(_all_tests(claim, test_run, untested))
        elif claim.kind is ClaimKind.FIGURE:
            number = figure_number(claim.value)
            if not re.search(r"(?<![\d.])" + re.escape(number) + r"(?![\d])", added_text):
                found.append(Finding(
                    check="claim_figure", severity=Severity.WARN, title=f"figure {claim.value} not backed by the change",
                    claim=claim.sentence, checked="the added lines (results, docs, code) for the figure",
                    found=f"{number} appears on no added line: no measurement in the change backs it",
                    signature=signature_of("claim_figure", "figure not in the diff"),
                ))
        elif claim.kind is ClaimKind.FIXED:
            # "fixed the flaky login test" is a fix a test-only change makes; "fixed the retry loop" is not
            about_tests = bool(_TEST_OBJECT.search(claim.value)) or any(is_test_path(w) for w in claim.value.split())
            code = [f for f in files if (f.added or f.removed) and (about_tests or not f.is_test)]
            if not code:
                found.append(Finding(
                    check="claim_fixed", severity=Severity.BLOCK, title=f"claims a fix ({claim.value[:60]}) with no code change",
                    claim=claim.sentence, checked="the diff for changed non-test lines",
                    found="no non-test file has a changed line", signature=signature_of("claim_fixed", "fix without code change"),
                ))
    return found


_TEST_OBJECT = re.compile(r"\b(?:tests?|specs?|flaky)\b", re.IGNORECASE)


def _not_run(claim: Claim, check: str, why: str | None) -> Finding:
    """None: no test command is configured (the user chose not to check: info); else why the
    configured command could not test the audited commit (warn: a claim went unchecked)."""
    return Finding(check=check, severity=Severity.INFO if why is None else Severity.WARN, title="test claim not checked",
                   claim=claim.sentence, checked="the test command ([audit] test_command)",
                   found=f"{why or 'no test command is configured'}: not run",
                   signature=signature_of(check, "test claim not checked"))


def _test_count(claim: Claim, run: TestRun | None, untested: str | None) -> list[Finding]:
    if run is None:
        return [_not_run(claim, "claim_tests", untested)]
    count = count_of(claim.value)
    claimed = str(count) if count is not None else claim.value[:MAX_COUNT_DIGITS] + "…"
    if run.passed is None:
        return [Finding(check="claim_tests", severity=Severity.BLOCK, title=f"claimed {claimed} passing tests, runner gave no count",
                        claim=claim.sentence, checked=f"`{run.command}` (exit {run.exit_code})",
                        found=f"no count in its closing line: {run.closing_line!r}" + (" (timed out)" if run.timed_out else ""),
                        signature=signature_of("claim_tests", "test count not verifiable"))]
    if run.passed != count or run.failed:
        return [Finding(check="claim_tests", severity=Severity.BLOCK,
                        title=f"claimed {claimed} passing tests, the runner passed {run.passed}",
                        claim=claim.sentence, checked=f"`{run.command}` (exit {run.exit_code})",
                        found=f"closing line: {run.closing_line!r}", signature=signature_of("claim_tests", "test count differs"))]
    return []


def _all_tests(claim: Claim, run: TestRun | None, untested: str | None) -> list[Finding]:
    if run is None:
        return [_not_run(claim, "claim_all_tests", untested)]
    if run.exit_code != 0 or run.failed or run.timed_out:
        return [Finding(check="claim_all_tests", severity=Severity.BLOCK, title="claims all tests pass; they do not",
                        claim=claim.sentence, checked=f"`{run.command}`",
                        found=f"exit {run.exit_code}" + (" (timed out)" if run.timed_out else "") + f", closing line: {run.closing_line!r}",
                        signature=signature_of("claim_all_tests", "tests fail"))]
    return []
