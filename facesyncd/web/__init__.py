"""The review page: server-rendered HTML over the store, forms for every correction, /metrics and
/healthz. A Starlette app served by uvicorn (`facesyncd serve`, or inside `run` with [web] listen).

    guard.py    the token, the CSRF token of every form, the same-origin and Host checks
    pages.py    the routes: the pages, the face images, one POST per correction, /healthz, /metrics
    metrics.py  the Prometheus collector (the store read once per scrape)

Safety: bound to 127.0.0.1 by default; with [web] token_file (required beyond loopback) every page
asks for the token (once as ?token=, then a cookie; or an Authorization: Bearer header); every
change is a POST carrying a per-process CSRF token, from a page of the same origin; the Host header
must name this server (no DNS rebinding). Images are facesyncd's own crops; the Immich key never
reaches the page. The access log is off: a ?token= would otherwise be written down.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from ..config import Settings, parse_listen
from ..errors import AddressInUse, FacesyncError
from .guard import Guard, allowed_hosts, read_token
from .pages import Pages

__all__ = ["WebServer", "create_app", "read_token"]


def create_app(settings: Settings) -> Any:
    """The ASGI application."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response

    from ..store import Store

    guard = Guard(read_token(settings), settings.state_dir)
    Store(settings.database_path, create=False).close()  # no database yet: say so now, not per page
    listen = parse_listen(settings.web.listen) or ("127.0.0.1", 8765)

    async def failed(request: Request, error: Exception) -> Response:
        return PlainTextResponse(f"facesyncd: {error}", status_code=503)

    return Starlette(
        routes=Pages(settings, guard).routes(),
        exception_handlers={FacesyncError: failed},
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(listen[0])),
            Middleware(SafetyHeaders),
        ],
    )


class SafetyHeaders:
    """Headers on every answer: no other site may frame the page (clickjacking a correction), a
    response is never sniffed as another type, and no Referer carries a ?token= to another site."""

    HEADERS = [
        (b"x-frame-options", b"DENY"),
        (b"content-security-policy", b"frame-ancestors 'none'"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
    ]

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


class WebServer:
    """uvicorn in a thread (inside `run`), or in the foreground (`serve`)."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        host, port = parse_listen(settings.web.listen) or ("127.0.0.1", 8765)
        config = uvicorn.Config(
            create_app(settings), host=host, port=port, access_log=False, log_config=None, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self.address = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"

        self._listen = (host, port)
        self._socket: socket.socket | None = None

    def bind(self) -> None:
        """Take the address now, so that a busy one is one clear error (uvicorn would log it among
        its own lines and exit from inside its thread)."""
        host, port = self._listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host, port))
            listener.listen(128)
        except OSError as error:
            listener.close()
            raise AddressInUse(
                f"cannot serve the review page on {host}:{port}: {error.strerror or error} (another program, "
                "perhaps `facesyncd run` with [web] listen, has it: choose another with --listen or [web] listen)"
            ) from None
        self._socket = listener

    def _run(self) -> None:
        if self._socket is None:
            self.bind()
        assert self._socket is not None
        self._server.run(sockets=[self._socket])

    def serve(self) -> None:
        self._run()

    def start(self) -> None:
        # uvicorn listens to signals only in the main thread: the daemon keeps its own handlers.
        self.bind()
        self._thread = threading.Thread(target=self._run, name="facesyncd-web", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
