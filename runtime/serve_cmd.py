"""`distill serve` on the command line (kept apart so that building the CLI does not import the web stack)."""

from __future__ import annotations

import socket
from typing import Annotated

import typer

from distill.command import RootOption, handle_errors, open_workspace
from distill.config import ServeSettings
from distill.errors import UsageError


def bind_address(cfg: ServeSettings, host: str | None, port: int | None) -> tuple[str, int]:
    """Flags win over [serve] settings."""
    return (host or cfg.host, port if port is not None else cfg.port)


def listen_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything is loaded: a port in use or a host that does
    not resolve is a one-line error at once, not a log line after the model has loaded."""
    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: a port is 0..65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def register(app: typer.Typer) -> None:
    @app.command("serve")
    @handle_errors
    def serve_command(
        host: Annotated[str | None, typer.Option("--host", help="bind address (default \\[serve] host, 127.0.0.1)")] = None,
        port: Annotated[int | None, typer.Option("--port", help="port (default \\[serve] port, 8008)")] = None,
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
        sock = listen_socket(bind_host, bind_port)
        session = open_session(ws.root, settings)
        session.local_backend()  # load the model now, not on the first request
        session.open_index()  # a missing index is the same one-line error `replay` gives
        config = uvicorn.Config(create_app(session, settings, key), log_level="warning", timeout_graceful_shutdown=30)
        server = uvicorn.Server(config)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            pass  # uvicorn re-raises the SIGTERM/Ctrl-C it drained on: a drained shutdown exits 0
        if not server.started:
            raise UsageError(f"the server on {bind_host}:{bind_port} did not start (see the log line above)")
