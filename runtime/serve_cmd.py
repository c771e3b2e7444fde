"""`distill serve` on the command line (kept apart so that building the CLI does not import the web stack)."""

from __future__ import annotations

from typing import Annotated

import typer

from distill.command import RootOption, handle_errors, open_workspace
from distill.config import ServeSettings


def bind_address(cfg: ServeSettings, host: str | None, port: int | None) -> tuple[str, int]:
    """Flags win over [serve] settings."""
    return (host or cfg.host, port if port is not None else cfg.port)


def register(app: typer.Typer) -> None:
    @app.command("serve")
    @handle_errors
    def serve_command(
        host: Annotated[str | None, typer.Option("--host", help="bind address (default [serve] host, 127.0.0.1)")] = None,
        port: Annotated[int | None, typer.Option("--port", help="port (default [serve] port, 8008)")] = None,
        root: RootOption = None,
    ) -> None:
        """Serve grounded answers over HTTP (OpenAI-compatible), models and index loaded once."""
        import uvicorn

        from runtime.serve import check_bind, create_app, open_session, required_key

        ws, settings = open_workspace(root)
        cfg = settings.serve
        key = required_key(cfg)
        bind_host, bind_port = bind_address(cfg, host, port)
        check_bind(bind_host, key)
        session = open_session(ws.root, settings)
        session.local_backend()  # load the model now, not on the first request
        session.open_index()  # a missing index is the same one-line error `replay` gives
        uvicorn.run(create_app(session, settings, key), host=bind_host, port=bind_port,
                    log_level="warning", timeout_graceful_shutdown=30)
