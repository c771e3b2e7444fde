"""The search contract between the index and its callers (CLI `distill search`, the replay runtime)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from distill.workspace import Workspace

SearchMode = Literal["hybrid", "dense", "bm25", "jaccard"]


class SearchHit(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    score: float
    rank: int = Field(ge=1)
    text: str
    title: str | None = None
    category: str | None = Field(None, description="the RAG row's success_score, when indexed from exports")
    metadata: dict[str, Any] = Field(default_factory=dict)


class Searcher(Protocol):
    """What the replay runtime and the CLI need from an index."""

    def search(
        self, query: str, *, k: int = 8, mode: SearchMode = "hybrid", categories: list[str] | None = None
    ) -> list[SearchHit]: ...

    def export_changed(self, ws: Workspace) -> bool:
        """Whether the RAG export's content differs from the one the index was built from."""
        ...
