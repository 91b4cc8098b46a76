"""Who may see the review page and change things through it: the token (with [web] token_file), the
per-process CSRF token of every form, the same-origin check, the Host header."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..config import Settings
from ..errors import ConfigError

COOKIE = "facesyncd_token"


def read_token(settings: Settings) -> str | None:
    if not settings.web.token_file:
        return None
    try:
        token = Path(settings.web.token_file).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(f"web.token_file: cannot read {settings.web.token_file}: {error.strerror}") from None
    if len(token) < 16:
        raise ConfigError(f"web.token_file: the token in {settings.web.token_file} is shorter than 16 characters")
    from ..redact import register

    register(token)  # never in a log line or an error
    return token


class Guard:
    """The checks every request passes. Requests are Starlette's (typed Any: Starlette is imported
    only when the page is served)."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self.csrf = secrets.token_urlsafe(32)

    def allowed(self, request: Any) -> bool:
        """With a token: it came as a cookie, as ?token=, or as an Authorization: Bearer header."""
        if self.token is None:
            return True
        given = request.cookies.get(COOKIE) or request.query_params.get("token") or ""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        return hmac.compare_digest(given.encode(), self.token.encode())

    def form_is_ours(self, request: Any, form: Any) -> bool:
        """A form posted from a page of this server: its origin (or referer) is this host, and it
        carries this process's CSRF token."""
        origin = request.headers.get("origin") or request.headers.get("referer")
        same_origin = origin is None or urlsplit(origin).netloc == request.headers.get("host")
        return same_origin and hmac.compare_digest(str(form.get("csrf", "")).encode(), self.csrf.encode())

    def remember(self, request: Any, response: Any) -> None:
        """A token given as ?token= becomes a cookie, so the page's links need not carry it."""
        if self.token is not None and request.query_params.get("token"):
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")


def allowed_hosts(listen_host: str) -> list[str]:
    """Host headers this server answers (no DNS rebinding): loopback names and the one it listens on;
    any when it listens on every address."""
    if listen_host == "0.0.0.0":
        return ["*"]
    return sorted({"127.0.0.1", "localhost", "[::1]", "::1", listen_host})
