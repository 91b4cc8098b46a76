"""The review page's routes: server-rendered HTML over the store, and one form POST per correction
(each kind is curation.KINDS's: the page names none itself)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from .. import curation
from ..config import ImmichSettings, Settings
from ..curation import Correction, Outcome
from ..errors import FacesyncError
from ..localtime import local_time
from ..models import FaceDetail
from ..review import FACE_SORTS, GRID_SORTS, matches, sorted_faces, sorted_sets
from ..store import Store
from .guard import Guard

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
# How many facesets and faces a page shows: a library of 5,000 facesets, or a faceset of 3,000
# faces, is paged.
SETS_PER_PAGE = 200
SUGGESTIONS_PER_PAGE = 50
GROUPS_PER_PAGE = 40
POOL_GROUPED = 2_000  # the pool's newest faces grouped on the page (a pool of 40,000 is a backlog)
FACES_PER_PAGE = 150
THUMBNAIL_SIZES = (96, 160, 320)  # the sizes the page shows faces at, doubled for sharp screens


def _choice(request: Any, name: str, choices: tuple[str, ...]) -> str:
    value = str(request.query_params.get(name, choices[0]))
    return value if value in choices else choices[0]


def _page_number(request: Any) -> int:
    value = request.query_params.get("page", "1")
    return max(1, int(value)) if value.isdigit() else 1


def _here(request: Any) -> str:
    """This page's address with its query (paging, sort, search), without a message: where a form
    sent from it comes back to."""
    query = [(key, value) for key, value in request.query_params.multi_items() if key != "m"]
    return str(request.url.path) + (f"?{urlencode(query)}" if query else "")


def _pages(request: Any, count: int, per_page: int) -> dict[str, Any]:
    """Which slice of `count` items this page shows, and the addresses of its neighbours."""
    pages = max(1, -(-count // per_page))
    page = min(_page_number(request), pages)
    query = [(key, value) for key, value in request.query_params.multi_items() if key not in ("m", "page")]

    def link(number: int) -> str:
        return str(request.url.path) + "?" + urlencode([*query, ("page", str(number))])

    return {
        "page": page,
        "pages": pages,
        "start": (page - 1) * per_page,
        "stop": page * per_page,
        "previous": link(page - 1) if page > 1 else None,
        "next": link(page + 1) if page < pages else None,
    }


class Pages:
    """The handlers; Starlette's types are Any here (it is imported only when the page is served)."""

    def __init__(self, settings: Settings, guard: Guard) -> None:
        from jinja2 import Environment, FileSystemLoader, select_autoescape

        self._settings = settings
        self._guard = guard
        self._templates = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
        self._templates.filters["local"] = local_time  # times in this machine's time zone
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
            csrf=self._guard.csrf, message=request.query_params.get("m"), here=_here(request), **values
        )
        response = HTMLResponse(html, status_code=status)
        self._guard.remember(request, response)
        return response

    def grid(self, request: Any) -> Any:
        showing_hidden = request.query_params.get("hidden") == "1"
        query = request.query_params.get("q", "").strip()
        sort = _choice(request, "sort", GRID_SORTS)
        with self._store() as db:
            live = [summary for summary in db.facesets() if not summary.retired and summary.faces]
            pool = db.pool_size()
        # hidden facesets leave the grid; the filter shows them (alone)
        found = [summary for summary in live if summary.hidden == showing_hidden and matches(summary, query)]
        hidden = sum(1 for summary in live if summary.hidden)
        paging = _pages(request, len(found), SETS_PER_PAGE)
        sets = sorted_sets(found, sort)[paging["start"] : paging["stop"]]
        return self._page(
            request,
            "grid.html",
            sets=sets,
            found=len(found),
            pool=pool,
            hidden=hidden,
            showing_hidden=showing_hidden,
            query=query,
            sort=sort,
            sorts=GRID_SORTS,
            paging=paging,
        )

    def faceset(self, request: Any) -> Any:
        number = int(request.path_params["number"])
        sort = _choice(request, "sort", FACE_SORTS)
        from ..export import exported
        from ..swap import distances_from_centre

        with self._store() as db:
            found = db.facesets(number)
            faces = db.faces_of_identity(number)
            names = db.identity_names()
            # the distance the export decides by: from the centre of the faces it may take
            floor = self._settings.export.min_quality
            candidates = [face.face_id for face in faces if (face.quality or 0.0) >= floor]
            from_centre = distances_from_centre(db.embeddings_of(candidates), candidates)
        # the merge field suggests named facesets (not all 5,000 numbers)
        others = sorted((other, name) for other, name in names.items() if other != number)
        if not found:
            return self._page(request, "missing.html", status=404, what=f"faceset {number:03d}")
        paging = _pages(request, len(faces), FACES_PER_PAGE)
        shown = sorted_faces(faces, sort, from_centre)[paging["start"] : paging["stop"]]
        folder = exported(self._settings.facesets_dir, number)
        return self._page(
            request,
            "faceset.html",
            summary=found[0],
            faces=shown,
            total=len(faces),
            sort=sort,
            sorts=FACE_SORTS,
            others=others,
            paging=paging,
            from_centre=from_centre,
            exported=folder,
        )

    def pool(self, request: Any) -> Any:
        """The pool as a work queue: its faces in groups that look alike (largest first), to be made
        a faceset, moved to one, or put away, a group or a selection at a time."""
        from ..identities import look_alike

        with self._store() as db:
            faces = db.pool(POOL_GROUPED)
            total = db.pool_size()
            vectors = db.embeddings_of([face.face_id for face in faces])
            names = db.identity_names()
        faces = [face for face in faces if face.face_id in vectors]
        groups: list[list[Any]] = []
        if faces:
            import numpy as np

            rows = look_alike(
                np.stack([vectors[face.face_id] for face in faces]), self._settings.identities.pool_group_distance
            )
            groups = [[faces[row] for row in group] for group in rows]
        paging = _pages(request, len(groups), GROUPS_PER_PAGE)
        return self._page(
            request,
            "pool.html",
            groups=groups[paging["start"] : paging["stop"]],
            shown=len(faces),
            total=total,
            names=sorted(names.items()),
            paging=paging,
        )

    def suggestions(self, request: Any) -> Any:
        """ "Same person?" pairs with a preview of both; accept merges, decline keeps them apart."""
        from ..suggestions import suggestions_of

        with self._store() as db:
            every = db.facesets()
            found = suggestions_of(db, self._settings.identities, every)[:SUGGESTIONS_PER_PAGE]
            summaries = {summary.number: summary for summary in every}
            previews = {
                number: db.best_faces(number, 4) for suggestion in found for number in (suggestion.low, suggestion.high)
            }
        return self._page(request, "suggestions.html", found=found, summaries=summaries, previews=previews)

    def photo(self, request: Any) -> Any:
        """A face in its photo: the photo (Immich's preview) with the face's box, the date it was
        taken, its file name and a link to it in Immich."""
        face_id = int(request.path_params["face_id"])
        with self._store() as db:
            face = db.face_detail(face_id)
        if face is None:
            return self._page(request, "missing.html", status=404, what=f"face {face_id}")
        box = None
        if face.photo_size is not None:
            width, height = face.photo_size
            x1, y1, x2, y2 = face.bbox
            box = {
                "left": 100 * x1 / width,
                "top": 100 * y1 / height,
                "width": 100 * (x2 - x1) / width,
                "height": 100 * (y2 - y1) / height,
            }
        source = self._source_of(face)
        link = source.photo_link(face.asset_id) if source is not None and face.asset_id is not None else None
        return self._page(request, "photo.html", face=face, box=box, link=link)

    def photo_image(self, request: Any) -> Any:
        """The photo of a face: Immich's preview, fetched with the source's key (the key never reaches
        the browser); the face's crop when it cannot be had (no key in this process, Immich down)."""
        from starlette.responses import PlainTextResponse, Response

        if not self._guard.allowed(request):
            return PlainTextResponse("a token is needed", status_code=401)
        with self._store() as db:
            face = db.face_detail(int(request.path_params["face_id"]))
        if face is None:
            return PlainTextResponse("no such face", status_code=404)
        preview = self._preview(face)
        if preview is not None:
            return Response(preview, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})
        return self.face_image(request)

    def _source_of(self, face: FaceDetail) -> ImmichSettings | None:
        """The configured source a face's photo came from (None: imported, or no longer configured)."""
        return next((source for source in self._settings.immich if source.name == face.source), None)

    def _preview(self, face: FaceDetail) -> bytes | None:
        from ..immich import ImmichClient

        source = self._source_of(face)
        if source is None or face.asset_id is None or not source.api_key.reveal():
            return None
        directory = self._settings.state_dir / "tmp"
        try:
            with ImmichClient(source, self._settings.sync) as client:
                download = client.download_preview(face.asset_id, directory, 64 * 1024 * 1024)
            try:
                return download.path.read_bytes()
            finally:
                download.path.unlink(missing_ok=True)
        except (FacesyncError, OSError) as error:
            log.info("the photo of face %d cannot be had from Immich: %s", face.face_id, error)
            return None

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
        cached = {"Cache-Control": "private, max-age=3600"}
        size = request.query_params.get("size", "")
        if size.isdigit() and int(size) in THUMBNAIL_SIZES:  # the size the page shows it at
            from starlette.responses import Response

            return Response(_thumbnail(path, int(size)), media_type="image/jpeg", headers=cached)
        return FileResponse(path, media_type="image/jpeg", headers=cached)

    async def act(self, request: Any) -> Any:
        """Every change: one form POST, checked for the token, the CSRF token and its origin."""
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import PlainTextResponse, RedirectResponse

        if not self._guard.allowed(request):
            return PlainTextResponse("a token is needed", status_code=401)
        form = await request.form()
        if not self._guard.form_is_ours(request, form):
            if self._guard.same_origin(request, stated=True):
                # A page of this server, opened before its token changed (a new state directory, a
                # reader's own token): nothing typed is lost; the user checks it and sends it again.
                fields = [(key, value) for key, value in form.multi_items() if isinstance(value, str) and key != "csrf"]
                back = _safe_back(str(form.get("back") or "/"))
                return self._page(request, "resend.html", status=409, action=request.url.path, fields=fields, back=back)
            return PlainTextResponse("refused: this form did not come from this page (CSRF)", status_code=403)
        kind = curation.KINDS.get(request.path_params["action"])
        if kind is None:
            return PlainTextResponse("no such action", status_code=404)
        back = _safe_back(str(form.get("back") or "/"))
        values = {key: str(value).strip() for key, value in form.multi_items() if isinstance(value, str)}
        lists = {key: [str(value) for value in form.getlist(key) if isinstance(value, str)] for key in form}
        if kind.confirm and values.get("confirm") != "yes":
            return RedirectResponse(_with_message(back, kind.confirm), 303)
        try:
            corrections = _corrections_of(kind, curation.Form(values, lists))
            outcomes = [await run_in_threadpool(self._correct, correction) for correction in corrections]
            outcome, applied = outcomes[-1]
            if len(outcomes) > 1:  # a selection moved or rejected face by face: one correction each
                numbers = [str(made.correction) for made, _ in outcomes if made.correction]
                outcome = curation.Outcome(
                    f"{len(outcomes)} faces: {outcome.message.split(' ', 1)[0]} (corrections {', '.join(numbers)})"
                )
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
            Route("/suggestions", self.suggestions),
            Route("/face/{face_id:int}.jpg", self.face_image),
            Route("/photo/{face_id:int}.jpg", self.photo_image),
            Route("/photo/{face_id:int}", self.photo),
            Route("/act/{action}", self.act, methods=["POST"]),
            Route("/metrics", self.metrics),
            Route("/healthz", self.healthz),
        ]


def _safe_back(back: str) -> str:
    """Where a form returns to: a path of this server only (never another site's address)."""
    return back if back.startswith("/") and not back.startswith("//") and "\\" not in back else "/"


def _corrections_of(kind: type[Correction], form: curation.Form) -> list[Correction]:
    """What one form asks: a move or a rejection of several ticked faces is one correction per face
    (each undoable on its own); anything else, one."""
    faces = form.lists.get("face") or []
    if kind in (curation.Move, curation.Reject) and len(faces) > 1:
        return [kind.from_form(curation.Form({**form.values, "face": face}, {})) for face in faces]
    return [kind.from_form(form)]


def _with_message(path: str, message: str) -> str:
    """The page a form came from (its paging, sort and search kept), with the outcome to show."""
    base, _, query = path.partition("?")
    kept = [(key, value) for key, value in parse_qsl(query) if key != "m"]
    return f"{base}?{urlencode([*kept, ('m', message)])}"


def _thumbnail(path: Path, size: int) -> bytes:
    """A face's crop at the size the page shows it (a crop may be 512 px and more: a page of 150
    faces would load megabytes); JPEG's own scaling does most of it."""
    import io

    from PIL import Image

    with Image.open(path) as image:
        image.draft("RGB", (size, size))
        picture = image.convert("RGB")
        picture.thumbnail((size, size))
        output = io.BytesIO()
        picture.save(output, "JPEG", quality=85)
    return output.getvalue()
