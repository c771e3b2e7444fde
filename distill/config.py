"""All configuration in one typed place.

Precedence: explicit overrides > environment (DISTILL_<SECTION>__<FIELD>) > ROOT/distill.toml
> defaults. Each stage reads only its own section.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from distill.errors import ConfigError


class CollectSettings(BaseModel):
    max_line_bytes: int = Field(1_048_576, gt=0, description="longer source lines are skipped")
    include_replay_runs: bool = True


class ScoreSettings(BaseModel):
    scorer_version: str | None = Field(
        None, min_length=1, description="None: the rules' own version (distill.score_rules.SCORER_VERSION)"
    )
    mode_latency_partial_s: float = 120.0
    grounded_accept: float = 0.8
    grounded_partial: float = 0.5


class ExportSettings(BaseModel):
    repo_root: Path | None = Field(None, description="checks cited file paths; None skips the check")
    benchmark_files: list[Path] = Field(default_factory=list, description="eval tasks (JSONL/text)")
    contamination_ngram: int = 13
    contamination_threshold: float = Field(0.1, ge=0, le=1)
    max_pairs_per_task: int = 5
    cross_source_pairs: bool = True


class IndexSettings(BaseModel):
    model: str | None = Field(None, description="sentence-transformers name/path; None = packaged MiniLM")
    chroma_url: str | None = None
    collection: str = "playbooks"
    hnsw_space: Literal["cosine", "l2", "ip"] = "cosine"
    hnsw_m: int = 16
    hnsw_construction_ef: int = 200
    hnsw_search_ef: int = 128
    batch_size: int = 64
    rrf_k: int = 60
    query_threads: int = Field(
        1, ge=0, description="torch threads for one query embedding; 1 avoids OpenMP spin on a busy CPU, 0 = torch default"
    )


class RuntimeSettings(BaseModel):
    backend: Literal["auto", "ollama", "openai", "llamacpp"] = "auto"
    ollama_host: str | None = Field(None, description="None: the ollama client reads OLLAMA_HOST")
    ollama_model: str = "qwen2.5:7b-instruct"
    ollama_probe_timeout_s: float = Field(1.0, gt=0, description="how long `auto` waits for Ollama")
    openai_base_url: str | None = None
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
    temperature: float = 0.0
    timeout_s: float = Field(120.0, gt=0)
    k: int = 8
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
    escalation_base_url: str | None = Field(None, description="None: openai_base_url")


class GateSettings(BaseModel):
    min_chars: int = 40
    max_chars: int = 8000
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
            r"\blorem ipsum\b",
            r"<\s*(?:insert|placeholder|your)[^>]*>",
            r"\[\s*(?:insert|placeholder)[^\]]*\]",
        ],
        description="regular expressions (case-insensitive)",
    )


class DriftSettings(BaseModel):
    """`distill run`: drift thresholds and what counts as a change for resume."""

    threshold_pct: float = Field(20.0, ge=0, description="count changes above this percentage warn")
    rerun_on_code_change: bool = Field(
        True, description="a change in the stage's source files reruns it (off: only the code version counts)"
    )


class FieldMapping(BaseModel):
    """A declarative adapter for any other JSONL stream (see distill.sources.mapping)."""

    name: str
    path: str = Field(description="file or glob under ROOT/_kb")
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
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


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

    try:
        loaded = _RootSettings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid configuration ({root / 'distill.toml'} or DISTILL_* env): {exc}") from exc
    return Settings.model_validate(loaded.model_dump())


def config_hash(settings: Settings) -> str:
    """Hash of the effective configuration (receipts and resume compare it)."""
    from distill.hashing import sha256_hex
    from distill.jsonl import dumps

    return sha256_hex(dumps(settings.model_dump(mode="json")))
