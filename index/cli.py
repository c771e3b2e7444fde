"""`distill index` (incremental re-indexing of the RAG export) and `distill search QUERY`.

chromadb, bm25s and sentence-transformers are imported inside the command bodies, so
`distill --help` stays fast.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from distill.command import JsonOption, RootOption, console, emit_json, handle_errors, open_workspace
from distill.errors import UsageError
from distill.records import Category
from distill.records.common import is_blank_text, unicode_problem

ChromaUrlOption = Annotated[
    str | None,
    typer.Option("--chroma-url", help="a Chroma server (`chroma run`), e.g. http://127.0.0.1:8000; default: embedded under ROOT/index/chroma"),
]
MODES = ("hybrid", "dense", "bm25", "jaccard")


def register(app: typer.Typer) -> None:
    @app.command("index")
    @handle_errors
    def index_command(
        rebuild: Annotated[bool, typer.Option("--rebuild", help="drop the index and embed everything again")] = False,
        chroma_url: ChromaUrlOption = None,
        root: RootOption = None,
        json_out: JsonOption = False,
    ) -> None:
        """Bring ROOT/index in step with exports/rag/playbooks.jsonl: embed only new/changed rows."""
        from index.build import run_index

        ws, settings = open_workspace(root)
        with ws.exclusive("index"):
            report = run_index(ws, settings, rebuild=rebuild, chroma_url=chroma_url, progress=None if not json_out else False)
        if json_out:
            emit_json(report)
            return
        out = console()
        out.print(Text.assemble(
            "index: ", (str(report.count), "bold"),
            f" documents — added {report.added}, updated {report.updated}, deleted {report.deleted}, "
            f"unchanged {report.unchanged}; embedded {report.embedded} in {report.timings_s.get('total', 0):.2f}s",
        ))
        quarantined = report.stage_report.totals.quarantined
        if quarantined:
            out.print(Text.assemble((f"{quarantined} export rows could not be indexed", "yellow"), " (see exports/quarantine/index.jsonl)"))
        out.print(f"model {report.model_id} ({report.dimension}d), chroma {report.chroma}", highlight=False)

    @app.command("search")
    @handle_errors
    def search_command(
        query: Annotated[str, typer.Argument(help="what to look for")],
        k: Annotated[int, typer.Option("--k", min=1, max=1000, help="how many hits")] = 8,
        mode: Annotated[str, typer.Option("--mode", help="hybrid | dense | bm25 | jaccard")] = "hybrid",
        category: Annotated[
            list[str] | None,
            typer.Option("--category", help="keep only hits of this category (repeatable), e.g. accepted"),
        ] = None,
        chroma_url: ChromaUrlOption = None,
        root: RootOption = None,
        json_out: JsonOption = False,
    ) -> None:
        """Search the index built by `distill index`."""
        if mode not in MODES:
            raise UsageError(f"--mode {mode!r}: choose one of {', '.join(MODES)}")
        if is_blank_text(query):  # as /v1/search: a blank query matches nothing, which would read as "no hits"
            raise UsageError("the query is blank: give the words to look for")
        if (problem := unicode_problem(query)) is not None:  # a command-line argument that is not UTF-8
            raise UsageError(f"the query is {problem}")
        known = [c.value for c in Category]  # a RAG row's success_score; a misspelt filter would match nothing
        unknown = [c for c in category or [] if c not in known]
        if unknown:
            raise UsageError(f"--category {unknown[0]!r}: choose from {', '.join(known)}")
        from index.hits import SearchHit
        from index.search import IndexSearcher, index_signature, open_searcher, unless_rewritten

        def search(searcher: IndexSearcher) -> list[SearchHit]:
            return searcher.search(query, k=k, mode=mode, categories=category or None)  # type: ignore[arg-type]

        ws, settings = open_workspace(root)
        seen = index_signature(ws)
        searcher = open_searcher(ws, settings, chroma_url=chroma_url)
        hits = unless_rewritten(ws, seen, lambda: search(searcher))
        if hits is None:  # rebuilt while it searched: once more on the new index, with the model it loaded
            searcher = open_searcher(ws, settings, chroma_url=chroma_url, embedder=searcher._embedder, reopen=True)
            hits = search(searcher)
        stale = searcher.export_changed(ws)
        if json_out:
            emit_json(
                {
                    "query": query,
                    "mode": mode,
                    "k": k,
                    "categories": category or [],
                    "index_stale": stale,
                    "hits": [h.model_dump(mode="json") for h in hits],
                }
            )
            return
        out = console()
        if stale:
            out.print(Text("the RAG export changed since the last `distill index`", style="yellow"))
        if not hits:
            out.print("no hits")
        for hit in hits:
            first = " ".join(hit.text.split())[:160]
            n = len(hit.same_text_ids)
            also = f" (the same text in {n} more row{'s' if n > 1 else ''})" if n else ""
            out.print(
                Text.assemble(f"{hit.rank:>2}. ", (hit.title or hit.id, "bold"), " ",
                              (f"{hit.id} {hit.category or ''} score={hit.score:.4f}{also}", "dim"), f"\n    {first}"),
                highlight=False,
            )
