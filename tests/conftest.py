"""Fixtures shared by several test modules, registered once for the whole session.

A fixture imported by name into each module that uses it is a separate fixture per module: pytest
ran the "session" MiniLM load and the indexed workspace once per importing module (the embedder
eight times, the index five). Registered here as plugins, each runs once per its scope; a module
asks for it by parameter name and imports only the constants and helpers it needs.
"""

pytest_plugins = (
    "tests.fixtures_index",
    "tests.fixtures_runtime",
    "tests.fixtures_checkpoints",
    "tests.fixtures_pipeline",
)
