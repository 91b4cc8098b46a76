"""The review page's routes: server-rendered HTML over the store, and one form POST per correction
(each kind is curation.KINDS's: the page names none itself)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from .. import curation
from ..config import Settings
from ..curation import Correction, Outcome
from ..errors import FacesyncError
from ..store import Store
from .guard import Guard

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SORTS = {"quality": "quality", "distance": "distance", "id": "id"}


class Pages:
    """The handlers; Starlette's types are Any here (it is imported only when the page is served)."""

    def __init__(self, settings: Settings, guard: Guard) -> None:
        from jinja2 import Environment, FileSystemLoader, select_autoescape

        self._settings = settings
        self._guard = guard
        self._templates = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
        # Two forms at once would otherwise find the state directory held by this very process, and
        # leave the folders to a daemon that may not run.
        self._serialised = threading.Lock()

    @contextmanager
    def _store(self) -> Iterator[Store]:
        opened = Store(self._settings.database_path, create=False)
        try:
            yield opened
        finally:
            opened.close()

    def _page(self, request: Any, template: str, status: int = 200, **values: Any) -> Any:
        from starlette.responses import HTMLResponse, PlainTextResponse

        if not self._guard.allowed(request):
            return PlainTextResponse("a token is needed: open this page with ?token=...", status_code=401)
        html = self._templates.get_template(template).render(
            csrf=self._guard.csrf, message=request.query_params.get("m"), **values
        )
        response = HTMLResponse(html, status_code=status)
        self._guard.remember(request, response)
        return response

    def grid(self, request: Any) -> Any:
        showing_hidden = request.query_params.get("hidden") == "1"
        with self._store() as db:
            live = [summary for summary in db.facesets() if not summary.retired]
            pool = db.pool_size()
        # hidden facesets leave the grid; the filter shows them (alone)
        sets = [summary for summary in live if summary.hidden == showing_hidden]
        hidden = sum(1 for summary in live if summary.hidden)
        return self._page(request, "grid.html", sets=sets, pool=pool, hidden=hidden, showing_hidden=showing_hidden)

    def faceset(self, request: Any) -> Any:
        number = int(request.path_params["number"])
        sort = SORTS.get(request.query_params.get("sort", "quality"), "quality")
        with self._store() as db:
            found = db.facesets(number)
            faces = db.faces_of_identity(number)
            others = [summary for summary in db.facesets() if not summary.retired and summary.number != number]
        if not found:
            return self._page(request, "missing.html", status=404, what=f"faceset {number:03d}")
        if sort == "quality":
            faces.sort(key=lambda face: (-(face.quality or 0.0), face.face_id))
        elif sort == "distance":
            faces.sort(key=lambda face: (face.distance if face.distance is not None else 9.0, face.face_id))
        return self._page(request, "faceset.html", summary=found[0], faces=faces, sort=sort, others=others)

    def pool(self, request: Any) -> Any:
        with self._store() as db:
            faces = db.pool()
            sets = [summary for summary in db.facesets() if not summary.retired]
        return self._page(request, "pool.html", faces=faces, sets=sets)

    def history(self, request: Any) -> Any:
        with self._store() as db:
            entries = list(reversed(db.history()))
        return self._page(request, "history.html", entries=entries)

    def face_image(self, request: Any) -> Any:
        from starlette.responses import FileResponse, PlainTextResponse

        if not self._guard.allowed(request):
            return PlainTextResponse("a token is needed", status_code=401)
        with self._store() as db:
            face = db.face_detail(int(request.path_params["face_id"]))
        if face is None:
            return PlainTextResponse("no such face", status_code=404)
        crops = self._settings.state_dir / "crops"
        path = (crops / face.crop).resolve()
        if not path.is_relative_to(crops.resolve()) or not path.is_file():
            return PlainTextResponse("its crop is not there (it comes back at the next sync)", status_code=404)
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    async def act(self, request: Any) -> Any:
        """Every change: one form POST, checked for the token, the CSRF token and its origin."""
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import PlainTextResponse, RedirectResponse

        if not self._guard.allowed(request):
            return PlainTextResponse("a token is needed", status_code=401)
        form = await request.form()
        if not self._guard.form_is_ours(request, form):
            return PlainTextResponse("refused: this form did not come from this page (CSRF)", status_code=403)
        kind = curation.KINDS.get(request.path_params["action"])
        if kind is None:
            return PlainTextResponse("no such action", status_code=404)
        back = str(form.get("back") or "/")
        if not back.startswith("/") or back.startswith("//"):
            back = "/"
        values = {key: str(value).strip() for key, value in form.multi_items() if isinstance(value, str)}
        lists = {key: [str(value) for value in form.getlist(key) if isinstance(value, str)] for key in form}
        if kind.confirm and values.get("confirm") != "yes":
            return RedirectResponse(_with_message(back, kind.confirm), 303)
        try:
            correction = kind.from_form(curation.Form(values, lists))
            outcome, applied = await run_in_threadpool(self._correct, correction)
        except (KeyError, ValueError):
            return RedirectResponse(_with_message(back, "refused: a number is missing or is not one"), 303)
        except FacesyncError as error:
            return RedirectResponse(_with_message(back, f"refused: {error}"), 303)
        if kind.leaves_faceset:
            back = "/"
        message = outcome.message + ("" if applied else " (the running facesyncd updates the folders)")
        return RedirectResponse(_with_message(back, message), 303)

    def _correct(self, correction: Correction) -> tuple[Outcome, bool]:
        from .. import actions

        with self._serialised:
            return actions.correct_in(self._settings, correction)

    def healthz(self, request: Any) -> Any:
        from starlette.responses import PlainTextResponse

        try:
            with self._store() as db:
                db.corrections_version()
        except FacesyncError as error:
            return PlainTextResponse(f"unhealthy: {error}", status_code=503)
        return PlainTextResponse("ok")

    def metrics(self, request: Any) -> Any:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from starlette.responses import PlainTextResponse, Response

        from .metrics import registry

        if not self._guard.allowed(request):
            return PlainTextResponse("a token is needed", status_code=401)
        return Response(generate_latest(registry(self._settings)), media_type=CONTENT_TYPE_LATEST)

    def routes(self) -> list[Any]:
        from starlette.routing import Route

        return [
            Route("/", self.grid),
            Route("/faceset/{number:int}", self.faceset),
            Route("/pool", self.pool),
            Route("/history", self.history),
            Route("/face/{face_id:int}.jpg", self.face_image),
            Route("/act/{action}", self.act, methods=["POST"]),
            Route("/metrics", self.metrics),
            Route("/healthz", self.healthz),
        ]


def _with_message(path: str, message: str) -> str:
    base = path.split("?", 1)[0]
    return f"{base}?{urlencode({'m': message})}"
