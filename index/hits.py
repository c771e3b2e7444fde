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
    same_text_ids: list[str] = Field(
        default_factory=list,
        description="the other indexed rows with this hit's title, text and category, in index order: the hit "
                    "stands for them all (several runs that wrote the same text)",
    )


class Searcher(Protocol):
    """What the replay runtime and the CLI need from an index. No two hits of one search share a
    title, text and category: a text several runs wrote is one hit, and the k hits are k texts."""

    def search(
        self, query: str, *, k: int = 8, mode: SearchMode = "hybrid", categories: list[str] | None = None
    ) -> list[SearchHit]: ...

    def export_changed(self, ws: Workspace) -> bool:
        """Whether the RAG export's content differs from the one the index was built from."""
        ...
