"""All configuration in one typed place.

Precedence: explicit overrides > environment (DISTILL_<SECTION>__<FIELD>) > ROOT/distill.toml
> defaults. Each stage reads only its own section. Strict on purpose: an unknown key in any section
(a typo such as `repo_rot` would silently turn a check off), an unknown DISTILL_* variable and a
number outside its meaningful range are refused with a ConfigError that names them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import os
import stat

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from distill.errors import ConfigError
from distill.jsonl import utf16_problem


ENV_PREFIX = "DISTILL_"
NON_SETTING_VARS = frozenset({"DISTILL_ROOT", "DISTILL_SHARED_DATASETS"})
"""DISTILL_* variables that are not settings: the default workspace root, and where the test suite
finds the shared public datasets."""


def parse_http_url(url: str) -> tuple[str, int | None, bool]:
    """http(s)://host[:port][/path] -> (host, port or None, ssl); no scheme means http. A ValueError
    says what is wrong: the one parser for every server address a setting or a flag names (each
    caller knows its server's default port)."""
    from urllib.parse import urlparse

    try:
        parsed = urlparse(url if "://" in url else f"http://{url}")
        port = parsed.port
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535"
        raise ValueError(f"{url!r} is not a usable URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{url!r} is not a usable URL: expected http(s)://HOST[:PORT]")
    return parsed.hostname, port, parsed.scheme == "https"


def _http_url(value: str) -> str:
    parse_http_url(value)
    return value


HttpUrlText = Annotated[str, AfterValidator(_http_url)]
"""A server address as the user wrote it (kept as text), checked by parse_http_url."""


class Section(BaseModel):
    """A section of distill.toml: unknown keys are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")


class CollectSettings(Section):
    max_line_bytes: int = Field(1_048_576, gt=0, description="longer source lines are skipped")
    include_replay_runs: bool = True


class ScoreSettings(Section):
    scorer_version: str | None = Field(
        None, min_length=1, description="None: the rules' own version (distill.score_rules.SCORER_VERSION)"
    )
    mode_latency_partial_s: float = Field(120.0, gt=0)
    grounded_accept: float = Field(0.8, ge=0, le=1)
    grounded_partial: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> ScoreSettings:
        if self.grounded_partial > self.grounded_accept:
            raise ValueError(f"grounded_partial ({self.grounded_partial}) must not exceed grounded_accept ({self.grounded_accept})")
        return self


class ExportSettings(Section):
    repo_root: Path | None = Field(None, description="checks cited file paths; None skips the check")
    benchmark_files: list[Path] = Field(default_factory=list, description="eval tasks (JSONL/text)")
    contamination_ngram: int = Field(13, ge=3, le=100, description="word n-gram length compared with benchmark tasks")
    contamination_threshold: float = Field(0.1, ge=0, le=1)
    max_pairs_per_task: int = Field(5, ge=0)
    cross_source_pairs: bool = True


def default_model_cache_dir() -> Path:
    """Models assembled or derived on this machine (GGUFs, the embedder's ONNX export)."""
    return Path.home() / ".cache" / "distill" / "models"


class IndexSettings(Section):
    model: str | None = Field(None, description="sentence-transformers name/path; None = packaged MiniLM")
    chroma_url: HttpUrlText | None = None
    collection: str = "playbooks"
    hnsw_space: Literal["cosine", "l2", "ip"] = "cosine"
    hnsw_m: int = Field(16, ge=2, le=512)
    hnsw_construction_ef: int = Field(200, ge=1)
    hnsw_search_ef: int = Field(
        192, ge=1, description="192: recall@10 vs exact search 0.993 at 100k documents, 128 gave 0.977 (benchmarks/index.py)"
    )
    batch_size: int = Field(64, ge=1)
    rrf_k: int = Field(60, ge=1, description="the k of reciprocal-rank fusion (fusion = rrf)")
    fusion: Literal["rrf", "score"] = Field("score", description="how hybrid merges dense and BM25 (index/fusion.py)")
    dense_weight: float = Field(
        0.5, ge=0.0, le=1.0,
        description="dense's share in the hybrid fusion, BM25 gets the rest (chosen on dev splits: benchmarks/fusion.py)",
    )
    query_threads: int = Field(
        1, ge=0, description="threads for one query embedding; 1 avoids OpenMP spin on a busy CPU, 0 = library default"
    )
    query_backend: Literal["onnx", "torch"] = Field(
        "onnx", description="onnx: queries embed through ONNX Runtime (exported once from the local weights), no torch"
    )
    query_precision: Literal["int8", "fp32"] = Field(
        "int8",
        description="weights of the ONNX query graph: int8 (per-channel dynamic quantisation, ~2x faster; SciFact/PubMedQA "
        "nDCG@10 within 0.001 of fp32: benchmarks/fusion.py) or fp32 (the torch vectors to float precision)",
    )
    document_backend: Literal["onnx", "torch"] = Field(
        "onnx",
        description="onnx: documents embed through ONNX Runtime with fp32 weights on every core (the torch vectors to "
        "float precision, ~10% less CPU on SciFact: benchmarks/index.py); torch: sentence-transformers",
    )
    model_cache_dir: Path | None = Field(None, description="where the ONNX export is kept; None: ~/.cache/distill/models")


class RuntimeSettings(Section):
    backend: Literal["auto", "ollama", "openai", "llamacpp"] = "auto"
    ollama_host: HttpUrlText | None = Field(None, description="None: the ollama client reads OLLAMA_HOST")
    ollama_model: str = "qwen2.5:7b-instruct"
    ollama_probe_timeout_s: float = Field(1.0, gt=0, description="how long `auto` waits for Ollama")
    openai_base_url: HttpUrlText | None = None
    openai_model: str = "gpt-4o-mini"
    openai_api_key_env: str = "OPENAI_API_KEY"
    gguf_path: Path | None = Field(None, description="local GGUF for the embedded backend; None: packaged Qwen2.5-Coder-0.5B")
    gguf_chat_template: str | None = Field(
        None, description="a llama.cpp built-in chat template name; None: the GGUF's own"
    )
    model_cache_dir: Path | None = Field(None, description="None: ~/.cache/distill/models")
    embedded_threads: int | None = Field(None, ge=1, description="None: every CPU core")
    num_ctx: int = Field(4096, ge=256)
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    timeout_s: float = Field(120.0, gt=0)
    k: int = Field(8, ge=1, le=1000)
    mode: Literal["hybrid", "dense", "bm25", "jaccard"] = "hybrid"
    exemplars: int = Field(3, ge=0, description="accepted hits kept in the bundle")
    warnings: int = Field(2, ge=0, description="partially accepted hits kept in the bundle")
    max_validation_steps: int = Field(10, ge=0)
    item_max_chars: int = Field(2000, ge=100, description="one retrieved text is cut to this before budgeting")
    chars_per_token: float = Field(3.0, gt=0, description="conservative estimate used by the prompt budget")
    escalation_backend: Literal["ollama", "openai", "llamacpp"] = "llamacpp"
    escalation_model: str | None = Field(
        None,
        description="llamacpp: a GGUF path or a packaged key (None: packaged Qwen2.5-Coder-1.5B); "
        "ollama/openai: the model name (required)",
    )
    escalation_base_url: HttpUrlText | None = Field(None, description="None: openai_base_url")


class GateSettings(Section):
    min_chars: int = Field(40, ge=0)
    max_chars: int = Field(8000, ge=1)
    min_checklist_overlap: float = Field(0.2, ge=0, le=1)
    require_citation: bool = Field(False, description="fail answers that cite no path or record id")
    echo_ngram: int = Field(
        6, ge=2, description="word n-gram length the echo check compares (answer vs task + prompt instructions)"
    )
    max_echo_fraction: float = Field(
        0.5,
        ge=0,
        le=1,
        description="fail when more than this fraction of the answer's word n-grams repeat the task or the "
        "prompt's fixed instructions (n-grams also found in retrieved bundle text are not counted)",
    )
    min_word_support: float = Field(
        0.2, ge=0, le=1,
        description="support: share of the answer's specific content beyond the task (words weighted by rarity) "
        "that must appear in the retrieved bundle (chosen on the PubMedQA dev split)",
    )
    min_identifier_support: float = Field(
        0.5, ge=0, le=1, description="support: share of the code identifiers the answer names that must appear there"
    )
    hedging_phrases: list[str] = Field(
        default_factory=lambda: [
            "i'm not sure",
            "i am not sure",
            "i cannot be certain",
            "as an ai",
            "it is possible that",
            "i don't know",
            "i do not know",
            "hard to say",
            "might be",
            "may or may not",
            "i think",
            "i believe",
            "i guess",
            "i suppose",
            "perhaps",
            "not certain",
        ]
    )
    placeholder_patterns: list[str] = Field(
        default_factory=lambda: [
            r"\bTODO\b",
            r"\bFIXME\b",
            r"\btodo!\s*\(",
            r"\bunimplemented!?\s*\(",
            r"\bunimplemented\b",
            r"\bnot (?:yet )?implemented\b",
            r"\bNotImplementedError\b",
            r"\bXXX\b",
            r"\bTBD\b",
            r"(?:^|[(:\[-])\s*to be (?:written|added|done|filled in)\b",
            r"\bfill in\b[^.\n]{0,40}\blater\b",
            r"\blorem ipsum\b",
            r"<\s*(?:insert|placeholder|your)[^>]*>",
            r"\[\s*(?:insert|placeholder)[^\]]*\]",
        ],
        description="regular expressions (case-insensitive)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> GateSettings:
        import re

        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) must not exceed max_chars ({self.max_chars})")
        for pattern in self.placeholder_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"placeholder pattern {pattern!r} is not a regular expression: {exc}") from None
        return self


class DriftSettings(Section):
    """`distill run`: drift thresholds and what counts as a change for resume."""

    threshold_pct: float = Field(20.0, ge=0, description="count changes above this percentage warn")
    rerun_on_code_change: bool = Field(
        True, description="a change in the stage's source files reruns it (off: only the code version counts)"
    )


class RunSettings(Section):
    """How many processes a run uses: independent stages at once, and collect's sources and score's
    partitions (outputs are the same bytes either way)."""

    jobs: int = Field(0, ge=0, description="stages run at once when none needs another's outputs, and the "
                      "processes collect's sources and score's partitions are spread over; 0: every available core")
    parallel_min_input_mib: float = Field(
        16.0, ge=0,
        description="stages run side by side, and collect or a score pass on several processes, only when it reads at "
        "least this much: below it, starting a process costs more than it saves",
    )


class AuditSettings(Section):
    """`distill audit`: how claims are checked and how recurrence raises severity. Placeholder
    patterns are the gate's (`[gate] placeholder_patterns`): one list for answers and diffs."""

    test_command: str | None = Field(
        None, description="run with a timeout in the audited repository to check test claims (split like a shell, no shell)"
    )
    test_timeout_s: float = Field(600.0, gt=0, le=86_400, description="the test command is stopped after this")
    info_at: int = Field(2, ge=1, description="a finding seen in this many distinct ranges is reported as recurring (info)")
    warn_at: int = Field(3, ge=1, description="... in this many: warn")
    block_at: int = Field(5, ge=1, description="... in this many: block")

    @model_validator(mode="after")
    def _ordered(self) -> AuditSettings:
        if not self.info_at <= self.warn_at <= self.block_at:
            raise ValueError(
                f"info_at ({self.info_at}) <= warn_at ({self.warn_at}) <= block_at ({self.block_at}) must hold"
            )
        return self


class ServeSettings(Section):
    """`distill serve`: where it listens, who may call it, how much it queues."""

    host: str = Field("127.0.0.1", min_length=1, description="bind address; a non-loopback one needs an API key")
    port: int = Field(8008, ge=0, le=65535)
    api_key_env: str | None = Field(
        None, description="name of the environment variable holding the bearer token callers must send (unset: no auth)"
    )
    max_queue: int = Field(8, ge=0, le=10_000, description="requests waiting for the local model; beyond it: 429")
    allow_escalation: bool = Field(True, description="a request whose local answer fails the gate goes to the escalation model")
    unvalidated_answers: Literal["return", "withhold"] = Field(
        "return",
        description='an answer that failed the gate: "return" it (its verdict in the `distill` field) or '
        '"withhold" it (content null, finish_reason "content_filter", the text kept in the `distill` field)',
    )
    max_request_bytes: int = Field(1 << 20, ge=1024, le=1 << 30, description="larger request bodies get 413")
    stream: Literal["gated", "live"] = Field(
        "gated",
        description='a streaming request: "gated" sends the answer once the gate has judged it; "live" sends the '
        "local model's text as it is written and the verdict in the last chunk (needs allow_escalation = false "
        'and unvalidated_answers = "return": a streamed answer can be neither replaced nor withheld)',
    )

    @model_validator(mode="after")
    def _live_stream_is_final(self) -> ServeSettings:
        if self.stream == "live" and (self.allow_escalation or self.unvalidated_answers == "withhold"):
            raise ValueError(
                'stream = "live" sends the local answer before the gate has judged it, so it can be neither '
                'escalated nor withheld: set allow_escalation = false and unvalidated_answers = "return", '
                'or stream = "gated"'
            )
        return self


class FieldMapping(Section):
    """A declarative adapter for any other JSONL stream (see distill.sources.mapping)."""

    name: str
    path: str = Field(min_length=1, description="file or glob under ROOT/_kb")
    role: Literal["executor", "reviewer", "applier", "observer", "extractor"] = "executor"
    score_class: Literal["A", "B", "C"] = "B"
    natural_key: list[str] = Field(default_factory=list, description="fields that identify a run")
    task_id: str = Field(description="field path holding the task id")
    text: str = Field(description="field path holding the model output")
    instruction: str | None = None
    created_at: str = "created_at"
    model_name: str | None = None
    source_files: str | None = None
    markers: list[str] = Field(default_factory=list)
    metadata: list[str] = Field(default_factory=list)
    verdict: str | None = Field(None, description="field path the scorer maps to a category via verdict_map")
    verdict_map: dict[str, Literal["accepted", "partially_accepted", "rejected", "needs_human_review"]] = Field(
        default_factory=dict, description="raw verdict value -> category; unmapped values need human review"
    )

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        from pathlib import PurePosixPath

        pure = PurePosixPath(value)
        if pure.is_absolute() or ".." in pure.parts:
            raise ValueError(f"path {value!r} must be relative to ROOT/_kb (no absolute path, no '..')")
        return value

    @field_validator("task_id", "text", "instruction", "created_at", "model_name", "source_files", "verdict",
                     "natural_key", "markers", "metadata")
    @classmethod
    def _field_paths(cls, value: str | list[str] | None) -> str | list[str] | None:
        """A field path names a field, or nested ones joined by '.': a blank one (`text = ""`, "a..b")
        matches no row, and every row would be quarantined for a typo in the config."""
        for path in [value] if isinstance(value, str) else value or []:
            if any(not part.strip() for part in path.split(".")):
                raise ValueError(f"{path!r} is no field path: name a field, or nested fields joined by '.' (\"a.b\")")
        return value

    @field_validator("name")
    @classmethod
    def _file_name(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}", value):
            raise ValueError(f"name {value!r} names evidence files: letters, digits, '_', '.', '-' only")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DISTILL_", env_nested_delimiter="__", extra="forbid"
    )

    collect: CollectSettings = Field(default_factory=CollectSettings)
    score: ScoreSettings = Field(default_factory=ScoreSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    run: RunSettings = Field(default_factory=RunSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    sources: list[FieldMapping] = Field(default_factory=list)


class _TomlSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO would block every command until written to
            raise ConfigError(f"{path}: not a regular file")
        data = path.read_bytes()
        if problem := utf16_problem(data):
            raise ConfigError(f"{path}: {problem}")
        return tomllib.loads(data.decode("utf-8-sig"))  # a byte-order mark (Notepad writes one) is not a statement
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except RecursionError:  # tomllib parses arrays and inline tables recursively
        raise ConfigError(f"{path}: not valid TOML this reader accepts: arrays or tables nested too deeply") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read as a file ({exc.strerror or exc})") from exc


def unknown_env_settings(environ: dict[str, str] | None = None) -> list[str]:
    """DISTILL_* variables that name no setting (pydantic-settings would ignore them silently)."""
    env = os.environ if environ is None else environ
    sections = Settings.model_fields
    out: list[str] = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in NON_SETTING_VARS:
            continue
        section, _, field = name[len(ENV_PREFIX):].lower().partition("__")
        info = sections.get(section)
        if info is None:
            out.append(f"{name}: no section [{section}]")
            continue
        model = info.annotation
        if field and not (isinstance(model, type) and issubclass(model, BaseModel) and field.split("__")[0] in model.model_fields):
            out.append(f"{name}: no setting {field!r} in [{section}]")
    return out


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "<settings>"
        parts.append(f"{where}: {err['msg']}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return "; ".join(parts) + more


def load_settings(root: Path, **overrides: Any) -> Settings:
    """Settings for a workspace: overrides > env > ROOT/distill.toml > defaults."""
    toml_data = read_toml(root / "distill.toml")

    class _RootSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _TomlSource(settings_cls, toml_data))

    unknown = unknown_env_settings()
    if unknown:
        raise ConfigError("unknown DISTILL_* setting(s): " + "; ".join(unknown))
    try:
        loaded = _RootSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration ({root / 'distill.toml'} or DISTILL_* env): {_short(exc)}") from exc
    except SettingsError as exc:  # a DISTILL_* value that is not the JSON its setting needs
        cause = f" ({exc.__cause__})" if exc.__cause__ else ""
        raise ConfigError(f"invalid DISTILL_* environment setting: {exc}{cause}") from exc
    except RecursionError:  # pydantic-settings parses a complex DISTILL_* value with the stdlib's json
        raise ConfigError("invalid DISTILL_* environment setting: a JSON value nested too deeply") from None
    return Settings.model_validate(loaded.model_dump())


def config_hash(settings: Settings) -> str:
    """Hash of the effective configuration (receipts and resume compare it)."""
    from distill.hashing import sha256_hex
    from distill.jsonl import dumps

    return sha256_hex(dumps(settings.model_dump(mode="json")))
