"""Who may see the review page and change things through it: the token (with [web] token_file), the
CSRF token of every form (kept in state_dir, so a tab opened before a restart still works), the
same-origin check, the Host header."""

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

    def __init__(self, token: str | None, state_dir: Path | None = None) -> None:
        self.token = token
        self.csrf = _lasting_csrf(state_dir) if state_dir is not None else secrets.token_urlsafe(32)

    def allowed(self, request: Any) -> bool:
        """With a token: it came as a cookie, as ?token=, or as an Authorization: Bearer header."""
        if self.token is None:
            return True
        given = request.cookies.get(COOKIE) or request.query_params.get("token") or ""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        return hmac.compare_digest(given.encode(), self.token.encode())

    def same_origin(self, request: Any, *, stated: bool = False) -> bool:
        """The request comes from a page of this host (stated: it says so, as a browser's form does)."""
        origin = request.headers.get("origin") or request.headers.get("referer")
        if origin is None:
            return not stated
        return bool(urlsplit(origin).netloc == request.headers.get("host"))

    def form_is_ours(self, request: Any, form: Any) -> bool:
        """A form posted from a page of this server: its origin (or referer) is this host, and it
        carries the CSRF token."""
        return self.same_origin(request) and hmac.compare_digest(str(form.get("csrf", "")).encode(), self.csrf.encode())

    def remember(self, request: Any, response: Any) -> None:
        """A token given as ?token= becomes a cookie, so the page's links need not carry it."""
        if self.token is not None and request.query_params.get("token"):
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")


def _lasting_csrf(state_dir: Path) -> str:
    """The CSRF token, kept in state_dir (mode 600) so that a form of a tab opened before a restart is
    still this server's; a fresh one per process where the state directory cannot keep it."""
    path = state_dir / "web-csrf"
    try:
        kept = path.read_text(encoding="ascii").strip()
        if len(kept) >= 32:
            return kept
    except (OSError, UnicodeDecodeError):
        pass
    fresh = secrets.token_urlsafe(32)
    try:
        from ..atomic import write_atomic

        write_atomic(path, fresh.encode(), mode=0o600)
    except OSError:
        pass  # a reader of someone else's state directory: this process's own token
    return fresh


def allowed_hosts(listen_host: str) -> list[str]:
    """Host headers this server answers (no DNS rebinding): loopback names and the one it listens on;
    any when it listens on every address."""
    if listen_host == "0.0.0.0":
        return ["*"]
    return sorted({"127.0.0.1", "localhost", "[::1]", "::1", listen_host})
