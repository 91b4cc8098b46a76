"""The review page: server-rendered HTML over the store, forms for every correction, /metrics and
/healthz. A Starlette app served by uvicorn (`facesyncd serve`, or inside `run` with [web] listen).

Safety: bound to 127.0.0.1 by default; with [web] token_file (required beyond loopback) every page
asks for the token (once as ?token=, then a cookie; or an Authorization: Bearer header); every
change is a POST carrying a per-process CSRF token, from a page of the same origin; the Host header
must name this server (no DNS rebinding). Images are facesyncd's own crops; the Immich key never
reaches the page. The access log is off: a ?token= would otherwise be written down.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import curation
from .app import App
from .config import Settings, parse_listen
from .curation import Outcome
from .errors import ConfigError, FacesyncError

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).with_name("templates")
COOKIE = "facesyncd_token"
SORTS = {"quality": "quality", "distance": "distance", "id": "id"}


def read_token(settings: Settings) -> str | None:
    if not settings.web.token_file:
        return None
    try:
        token = Path(settings.web.token_file).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(f"web.token_file: cannot read {settings.web.token_file}: {error.strerror}") from None
    if len(token) < 16:
        raise ConfigError(f"web.token_file: the token in {settings.web.token_file} is shorter than 16 characters")
    from .redact import register

    register(token)  # never in a log line or an error
    return token


def create_app(settings: Settings) -> Any:
    """The ASGI application."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, RedirectResponse, Response
    from starlette.routing import Route

    from . import actions
    from .store import Store

    token = read_token(settings)
    Store(settings.database_path, create=False).close()  # no database yet: say so now, not per page
    csrf = secrets.token_urlsafe(32)
    templates = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    listen = parse_listen(settings.web.listen) or ("127.0.0.1", 8765)

    @contextmanager
    def store() -> Iterator[Store]:
        opened = Store(settings.database_path, create=False)
        try:
            yield opened
        finally:
            opened.close()

    serialised = threading.Lock()

    def one_at_a_time(change: Callable[[App], Outcome], names: dict[int, str | None] | None) -> tuple[Outcome, bool]:
        # Two forms at once would otherwise find the state directory held by this very process, and
        # leave the folders to a daemon that may not run.
        with serialised:
            return actions.correct_in(settings, change, names=names)

    def allowed(request: Request) -> bool:
        if token is None:
            return True
        given = request.cookies.get(COOKIE) or request.query_params.get("token") or ""
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        return hmac.compare_digest(given.encode(), token.encode())

    def page(request: Request, template: str, status: int = 200, **values: Any) -> Response:
        if not allowed(request):
            return PlainTextResponse("a token is needed: open this page with ?token=...", status_code=401)
        html = templates.get_template(template).render(csrf=csrf, message=request.query_params.get("m"), **values)
        response = HTMLResponse(html, status_code=status)
        if token is not None and request.query_params.get("token"):
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    def grid(request: Request) -> Response:
        with store() as db:
            sets = [summary for summary in db.facesets() if not summary.retired]
            pool = db.pool_size()
        return page(request, "grid.html", sets=sets, pool=pool)

    def faceset(request: Request) -> Response:
        number = int(request.path_params["number"])
        sort = SORTS.get(request.query_params.get("sort", "quality"), "quality")
        with store() as db:
            found = db.facesets(number)
            faces = db.faces_of_identity(number)
            others = [summary for summary in db.facesets() if not summary.retired and summary.number != number]
        if not found:
            return page(request, "missing.html", status=404, what=f"faceset {number:03d}")
        if sort == "quality":
            faces.sort(key=lambda face: (-(face.quality or 0.0), face.face_id))
        elif sort == "distance":
            faces.sort(key=lambda face: (face.distance if face.distance is not None else 9.0, face.face_id))
        return page(request, "faceset.html", summary=found[0], faces=faces, sort=sort, others=others)

    def pool(request: Request) -> Response:
        with store() as db:
            faces = db.pool()
            sets = [summary for summary in db.facesets() if not summary.retired]
        return page(request, "pool.html", faces=faces, sets=sets)

    def history(request: Request) -> Response:
        with store() as db:
            entries = list(reversed(db.history()))
        return page(request, "history.html", entries=entries)

    def face_image(request: Request) -> Response:
        if not allowed(request):
            return PlainTextResponse("a token is needed", status_code=401)
        with store() as db:
            face = db.face_detail(int(request.path_params["face_id"]))
        if face is None:
            return PlainTextResponse("no such face", status_code=404)
        crops = settings.state_dir / "crops"
        path = (crops / face.crop).resolve()
        if not path.is_relative_to(crops.resolve()) or not path.is_file():
            return PlainTextResponse("its crop is not there (it comes back at the next sync)", status_code=404)
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    async def act(request: Request) -> Response:
        """Every change: one form POST, checked for the token, the CSRF token and its origin."""
        if not allowed(request):
            return PlainTextResponse("a token is needed", status_code=401)
        form = await request.form()
        origin = request.headers.get("origin") or request.headers.get("referer")
        same_origin = origin is None or urlsplit(origin).netloc == request.headers.get("host")
        if not same_origin or not hmac.compare_digest(str(form.get("csrf", "")).encode(), csrf.encode()):
            return PlainTextResponse("refused: this form did not come from this page (CSRF)", status_code=403)
        action = request.path_params["action"]
        back = str(form.get("back") or "/")
        if not back.startswith("/") or back.startswith("//"):
            back = "/"
        fields = {key: str(value).strip() for key, value in form.multi_items() if isinstance(value, str)}
        faces = [str(value) for value in form.getlist("face") if isinstance(value, str)]
        if action not in ACTIONS:
            return PlainTextResponse("no such action", status_code=404)
        if action == "forget" and fields.get("confirm") != "yes":
            return RedirectResponse(_with_message(back, "tick the box to confirm: forgetting deletes"), 303)
        try:
            change, names = _change(action, fields, faces)
            if action == "undo":
                with store() as db:
                    names = curation.names_restored(db, int(fields["correction"]))
            outcome, applied = await _in_thread(lambda: one_at_a_time(change, names))
        except (KeyError, ValueError):
            return RedirectResponse(_with_message(back, "refused: a number is missing or is not one"), 303)
        except FacesyncError as error:
            return RedirectResponse(_with_message(back, f"refused: {error}"), 303)
        if action == "forget":
            back = "/"
        message = outcome.message + ("" if applied else " (the running facesyncd updates the folders)")
        return RedirectResponse(_with_message(back, message), 303)

    def metrics(request: Request) -> Response:
        if not allowed(request):
            return PlainTextResponse("a token is needed", status_code=401)
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(_registry(settings)), media_type=CONTENT_TYPE_LATEST)

    def healthz(request: Request) -> Response:
        try:
            with store() as db:
                db.corrections_version()
        except FacesyncError as error:
            return PlainTextResponse(f"unhealthy: {error}", status_code=503)
        return PlainTextResponse("ok")

    async def failed(request: Request, error: Exception) -> Response:
        return PlainTextResponse(f"facesyncd: {error}", status_code=503)

    hosts = {"127.0.0.1", "localhost", "[::1]", "::1", listen[0]}
    return Starlette(
        routes=[
            Route("/", grid),
            Route("/faceset/{number:int}", faceset),
            Route("/pool", pool),
            Route("/history", history),
            Route("/face/{face_id:int}.jpg", face_image),
            Route("/act/{action}", act, methods=["POST"]),
            Route("/metrics", metrics),
            Route("/healthz", healthz),
        ],
        exception_handlers={FacesyncError: failed},
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=sorted(hosts) if listen[0] != "0.0.0.0" else ["*"])
        ],
    )


ACTIONS = ("name", "merge", "split", "move", "reject", "lock", "unlock", "forget", "undo")


def _numbers(text: str) -> list[int]:
    return [int(part) for part in text.replace(",", " ").split()]


def _change(
    action: str, fields: dict[str, str], faces: list[str]
) -> tuple[Callable[[App], Outcome], dict[int, str | None] | None]:
    """The correction a form asks for (ValueError/KeyError: a field missing or not a number)."""
    from . import actions

    number = int(fields["number"]) if action in ("name", "merge", "split", "lock", "unlock", "forget") else 0
    if action == "name":
        given = fields.get("name", "")
        return (lambda app: curation.name(app.store, number, given)), {number: given or None}
    if action == "merge":
        others = _numbers(fields.get("others", ""))
        return (lambda app: curation.merge(app.store, number, others)), None
    if action == "split":
        chosen = [int(face) for face in faces]
        return (lambda app: curation.split(app.store, number, chosen)), None
    if action in ("lock", "unlock"):
        return (lambda app: curation.lock(app.store, number, action == "lock")), None
    if action == "forget":
        return (lambda app: curation.forget(app.store, number, actions.file_hashes(app))), None
    if action == "move":
        face, target = int(fields["face"]), int(fields["to"])
        return (lambda app: curation.move(app.store, face, target)), None
    if action == "reject":
        face = int(fields["face"])
        return (lambda app: curation.reject(app.store, face)), None
    correction = int(fields["correction"])
    return (lambda app: curation.undo(app.store, correction)), None


def _with_message(path: str, message: str) -> str:
    from urllib.parse import urlencode

    base = path.split("?", 1)[0]
    return f"{base}?{urlencode({'m': message})}"


async def _in_thread(work: Callable[[], Any]) -> Any:
    """Corrections open the store and may export: off the event loop."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(work)


def _registry(settings: Settings) -> Any:
    """A registry whose collector reads the store at each scrape."""
    from prometheus_client.core import CollectorRegistry, GaugeMetricFamily

    from .status import collect_status
    from .store import Store

    class Collector:
        def collect(self) -> Iterator[Any]:
            data = collect_status(settings)
            database = Store(settings.database_path, readonly=True)
            try:
                health = database.health()
            finally:
                database.close()
            assets = GaugeMetricFamily("facesyncd_assets", "Assets per state", labels=["state"])
            for state, count in data["assets"].items():
                assets.add_metric([state], count)
            yield assets
            faces = GaugeMetricFamily("facesyncd_faces", "Faces, by whether they are in a faceset", labels=["kind"])
            faces.add_metric(["assigned"], data["faces"]["assigned"])
            faces.add_metric(["pending"], data["faces"]["pending"])
            yield faces
            yield GaugeMetricFamily("facesyncd_identities", "Facesets (live identities)", value=data["identities"])
            if health["last_cycle_seconds"] is not None:
                yield GaugeMetricFamily(
                    "facesyncd_cycle_duration_seconds", "Length of the last cycle", value=health["last_cycle_seconds"]
                )
            if data["faces_per_second"] is not None:
                yield GaugeMetricFamily(
                    "facesyncd_faces_per_second",
                    "Faces embedded per second, last cycle",
                    value=data["faces_per_second"],
                )
            errors = GaugeMetricFamily(
                "facesyncd_source_errors",
                "Assets failing per source, and 1 while a source fails",
                labels=["source", "kind"],
            )
            for source in data["sources"]:
                errors.add_metric([source["name"], "assets"], health["failing_by_source"].get(source["name"], 0))
                errors.add_metric([source["name"], "source"], 1 if source["last_error"] else 0)
            yield errors
            if health["last_success_at"]:
                from datetime import datetime

                at = datetime.fromisoformat(health["last_success_at"].replace("Z", "+00:00")).timestamp()
                yield GaugeMetricFamily(
                    "facesyncd_last_success_timestamp_seconds", "When the last sync succeeded", value=at
                )

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return registry


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

    def serve(self) -> None:
        self._server.run()

    def start(self) -> None:
        # uvicorn listens to signals only in the main thread: the daemon keeps its own handlers.
        self._thread = threading.Thread(target=self._server.run, name="facesyncd-web", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
