"""Vector + lexical index over the RAG export (or any (id, text, metadata) document set)."""
