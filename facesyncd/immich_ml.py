"""Immich's machine-learning service as the face engine ([model] backend = "immich-ml").

The service (`immich-machine-learning`, read from Immich 3.1's `machine-learning/immich_ml/main.py`
and its facial-recognition models) answers `POST /predict`, a multipart form with

- `entries`: a JSON string naming, per task and model type, the model and its options:
  `{"facial-recognition": {"detection": {"modelName": "buffalo_l", "options": {"minScore": 0.7}},
  "recognition": {"modelName": "buffalo_l"}}}`;
- `image`: the image file (any format Pillow reads; facesyncd sends the decoded, upright photo as
  a JPEG, so the service never sees EXIF orientation or a format it lacks),

with `{"facial-recognition": [{"boundingBox": {"x1", "y1", "x2", "y2"}, "embedding": "<a JSON array
in a string>", "score": s}, ...], "imageWidth": w, "imageHeight": h}`: boxes (rounded) in the sent
image's pixels, the detector's score, and the recognizer's raw embedding (not normalised). It does not
return the five landmarks: faces from it have none, so the two quality parts measured from landmarks
(frontality, symmetry) are left unmeasured (see quality.py). 422 means the entries were not
understood, 400 a request without an image, 500 a model that would not load. `GET /ping` answers
"pong". There is no authentication.

Requests are spread over the configured URLs, at most `concurrency` at once on each, the least busy
first. A URL that fails (refused, timed out, 5xx, a garbled answer) is skipped for a while
(RETRY_SECONDS, doubling up to RETRY_MAX_SECONDS) and the image goes to the next; when none answers
in PASSES rounds over all of them, EngineUnavailable stops the cycle (nothing is lost: the asset
stays pending and the next cycle tries again). The embedding size is whatever the service returns:
known from the first face on, and every later face must match it.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import httpx
import numpy as np

from .boxes import clip
from .breakable import SocketTracker, refused_certificate
from .config import FaceSettings, ModelSettings
from .errors import EngineUnavailable, Interrupted, ModelError
from .imaging import DecodedImage
from .models import DetectedFace

log = logging.getLogger(__name__)

RETRY_SECONDS = 5.0  # a failed URL is skipped this long, doubling per failure in a row
RETRY_MAX_SECONDS = 120.0
PASSES = 3  # rounds over every URL before an image gives up (a short wait between them)
PASS_WAIT_SECONDS = 1.0
JPEG_QUALITY = 95
PING_SECONDS = 5.0
BACKEND = "immich-ml"
# An answer is ~10 kB a face: more than this is no answer of a face model.
MAX_ANSWER_BYTES = 32 * 1024 * 1024
MAX_FACES = 1000  # faces in one photo
# What a face model's embedding can be: its size is learned from the first face, within these.
EMBEDDING_SIZES = range(64, 4097)
# A box may stand out of the image by rounding, not more.
BOX_SLACK = 2.0


@dataclass
class _Service:
    """One configured URL and what is known of it."""

    url: str
    slots: threading.Semaphore  # `concurrency` requests at once
    busy: int = 0
    failures: int = 0  # in a row
    skip_until: float = 0.0
    last_error: str = ""


class _Refused(Exception):
    """This service failed this request; another one may answer it."""


class ImmichMlEmbedder:
    """Finds and embeds faces through one or more Immich ML services."""

    def __init__(
        self, model: ModelSettings, faces: FaceSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = model
        self._clock = clock  # when a resting service is asked again (tests move it on)
        self._faces = faces
        self._lock = threading.Lock()
        self._services = [_Service(url, threading.Semaphore(model.concurrency)) for url in model.urls]
        self._turn = 0  # breaks ties between equally busy services, so they take turns
        self._client: httpx.Client | None = None
        self._aborted = False
        self._tracker = SocketTracker()  # so that abort() breaks off requests in flight at once
        self.dimension = 0  # known from the first face the service returns
        self.providers = [f"{BACKEND} {service.url}" for service in self._services]
        self.workers = len(self._services) * model.concurrency
        # What every request asks for: the same for each image, so written once.
        name = model.model_name
        detection = {"modelName": name, "options": {"minScore": model.min_score or faces.min_det_score}}
        self._entries = json.dumps({"facial-recognition": {"detection": detection, "recognition": {"modelName": name}}})

    @property
    def name(self) -> str:
        return f"{BACKEND}:{self._settings.model_name}"

    def check(self) -> None:
        """Nothing to check without asking the services (load() asks them)."""

    def load(self) -> None:
        """Nothing to load here; the services are asked whether they are up (a warning for each that
        is not: it may come up later, and a cycle fails only when none answers)."""
        with self._lock:
            if self._client is not None:
                return
            timeout = httpx.Timeout(self._settings.timeout_seconds, connect=min(10.0, self._settings.timeout_seconds))
            limits = httpx.Limits(max_connections=max(1, self.workers), max_keepalive_connections=max(1, self.workers))
            transport = self._tracker.transport(limits=limits)
            self._client = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)
        for service in self._services:
            try:
                answer = self._client.get(f"{service.url}/ping", timeout=PING_SECONDS)
                if answer.status_code != 200 or answer.text.strip() != "pong":
                    raise _Refused(f"answered {answer.status_code} to /ping, not pong: is it Immich's ML service?")
                log.info("Immich ML service %s answers", service.url)
            except (httpx.HTTPError, _Refused) as error:
                log.warning("Immich ML service %s does not answer now: %s", service.url, _describe(error))

    def abort(self) -> None:
        """Break off the requests in flight (a stop that takes too long); no request is sent after."""
        with self._lock:
            self._aborted = True
            client = self._client
        self._tracker.shutdown_all()
        if client is not None:
            client.close()

    def faces(self, image: DecodedImage, *, min_face_px: int | None = None) -> list[DetectedFace]:
        """Every face the service finds that passes the size and score gates, best first."""
        self.load()
        ok, encoded = cv2.imencode(".jpg", image.pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise ModelError("cannot encode the image as JPEG for the Immich ML service")
        found = self._predict(bytes(encoded.tobytes()), image)
        min_px = self._faces.min_face_px if min_face_px is None else min_face_px
        kept = [
            face
            for face in found
            if face.det_score >= self._faces.min_det_score
            and min(face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1]) >= min_px
        ]
        return sorted(kept, key=lambda face: -face.det_score)

    # -- talking to the services -------------------------------------------------------------------

    def _predict(self, jpeg: bytes, image: DecodedImage) -> list[DetectedFace]:
        tried: set[str] = set()
        for attempt in range(PASSES):
            while (service := self._choose(tried, resting_too=attempt > 0)) is not None:
                tried.add(service.url)
                try:
                    return self._parse(self._ask(service, jpeg), image)
                except _Refused as error:
                    if self._aborted:
                        raise Interrupted("stopped while an Immich ML service was working") from error
                    self._failed(service, str(error))
            if attempt + 1 < PASSES:
                tried.clear()
                time.sleep(PASS_WAIT_SECONDS * (attempt + 1))
        reasons = "; ".join(f"{s.url}: {s.last_error}" for s in self._services)
        hint = ""
        if all((s.last_error or "").startswith("answered 500") for s in self._services):
            # What the service answers for a model it does not know, or cannot download: a bare 500.
            hint = (
                f"; a 500 from every service usually means [model] model_name = "
                f"{self._settings.model_name!r} is not a model it knows or can download (its log says which)"
            )
        raise EngineUnavailable(f"no Immich ML service answered ({reasons}){hint}; the next cycle tries again")

    def _choose(self, tried: set[str], *, resting_too: bool) -> _Service | None:
        """The least busy service not tried yet for this image and not resting after a failure (after
        a first round found none that answers, resting ones too: an image fails only when every
        service failed it)."""
        now = self._clock()
        with self._lock:
            ready = [s for s in self._services if s.url not in tried and (resting_too or s.skip_until <= now)]
            if not ready:
                return None
            self._turn += 1
            count = len(self._services)
            order = {s.url: (i - self._turn) % count for i, s in enumerate(self._services)}
            chosen = min(ready, key=lambda s: (s.busy, order[s.url]))
            chosen.busy += 1
            return chosen

    def _ask(self, service: _Service, jpeg: bytes) -> dict[str, Any]:
        if self._aborted or self._client is None:
            raise Interrupted("stopped: no more requests to the Immich ML services")
        try:
            with service.slots:
                try:
                    status, body = self._exchange(service, jpeg)
                except httpx.TimeoutException as error:
                    raise _Refused(f"no answer within {self._settings.timeout_seconds:g} s") from error
                except httpx.HTTPError as error:
                    raise _Refused(_describe(error)) from error
        finally:
            with self._lock:
                service.busy -= 1
        if status in (400, 422):
            # Our request is what it refuses: every service would say the same.
            raise ModelError(f"the Immich ML service at {service.url} refused the request: {_detail(body)}")
        if status != 200:
            raise _Refused(f"answered {status}: {_detail(body)}")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as error:  # not JSON, or nested deeper than Python recurses
            raise _Refused("answered something that is not JSON (or JSON nested too deep)") from error
        if not isinstance(data, dict):
            raise _Refused("answered JSON that is not an object")
        with self._lock:
            if service.failures:
                log.info("Immich ML service %s answers again", service.url)
            service.failures, service.last_error = 0, ""
        return data

    def _exchange(self, service: _Service, jpeg: bytes) -> tuple[int, bytes]:
        """One /predict: its status and body. The whole exchange has a deadline (twice the timeout;
        the timeout alone bounds each read, and a body trickled a byte at a time never trips it)
        and the body a size limit."""
        assert self._client is not None
        deadline = self._clock() + 2 * self._settings.timeout_seconds
        with self._client.stream(
            "POST",
            f"{service.url}/predict",
            data={"entries": self._entries},
            files={"image": ("image.jpg", jpeg, "image/jpeg")},
        ) as answer:
            body = bytearray()
            for chunk in answer.iter_bytes():
                body += chunk
                if len(body) > MAX_ANSWER_BYTES:
                    raise _Refused(f"answered more than {MAX_ANSWER_BYTES // (1024 * 1024)} MB")
                if self._clock() > deadline:
                    raise _Refused(f"took more than {2 * self._settings.timeout_seconds:g} s to answer")
            return answer.status_code, bytes(body)

    def _failed(self, service: _Service, reason: str) -> None:
        with self._lock:
            service.failures += 1
            rest = min(RETRY_MAX_SECONDS, RETRY_SECONDS * 2 ** (service.failures - 1))
            service.skip_until = self._clock() + rest
            service.last_error = reason
        log.warning("Immich ML service %s failed (%s); skipped for %g s", service.url, reason, rest)

    # -- reading the answer -------------------------------------------------------------------------

    def _parse(self, data: dict[str, Any], image: DecodedImage) -> list[DetectedFace]:
        """The faces of an answer, boxes in the image's pixels. An answer no face model could give (a
        box that is not finite or lies out of the image, a score out of 0..1, an embedding that is
        not finite or of no model's size, an image size that is not the one sent) is that service's
        fault (_Refused: another one is asked) and nothing of it is stored; embeddings of another
        size than before are the configuration's (ModelError)."""
        try:
            entries = data["facial-recognition"]
            width = _finite(data.get("imageWidth") or image.width)
            height = _finite(data.get("imageHeight") or image.height)
            if not isinstance(entries, list):
                raise TypeError("facial-recognition is not a list")
            faces = []
            for entry in entries:
                box = entry["boundingBox"]
                raw = entry["embedding"]
                vector = np.asarray(json.loads(raw) if isinstance(raw, str) else raw, dtype=np.float64).reshape(-1)
                corners = tuple(_finite(box[key]) for key in ("x1", "y1", "x2", "y2"))
                faces.append((corners, _finite(entry["score"]), vector))
        except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as error:
            raise _Refused(f"gave an answer facesyncd cannot read ({type(error).__name__}: {error})") from error
        if (
            not (0 < width <= 100_000 and 0 < height <= 100_000)
            or abs(width / height - image.width / image.height) > 0.02
        ):
            raise _Refused(f"answered for an image of {width:g}x{height:g}, not the {image.width}x{image.height} sent")
        if len(faces) > MAX_FACES:
            raise _Refused(f"answered {len(faces)} faces for one photo")
        scale_x, scale_y = image.width / width, image.height / height
        detected = []
        for (x1, y1, x2, y2), score, vector in faces:
            if not (0.0 <= score <= 1.0):
                raise _Refused(f"answered a detector score of {score:g}")
            if not (-BOX_SLACK <= x1 < x2 <= width + BOX_SLACK and -BOX_SLACK <= y1 < y2 <= height + BOX_SLACK):
                raise _Refused(f"answered a box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) out of its {width:g}x{height:g} image")
            if vector.size not in EMBEDDING_SIZES or not np.isfinite(vector).all():
                raise _Refused(f"answered an embedding of {vector.size} numbers no face model gives, or not finite")
            norm = float(np.linalg.norm(vector))
            if not np.isfinite(norm) or norm == 0:
                raise _Refused("answered an empty embedding")
            self._check_dimension(vector.size)
            bbox = clip((x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y), image.width, image.height)
            embedding = (vector / norm).astype(np.float32)
            detected.append(DetectedFace(bbox=bbox, det_score=score, landmarks=(), embedding=embedding))
        return detected

    def _check_dimension(self, size: int) -> None:
        with self._lock:
            if self.dimension == 0:
                self.dimension = size
                log.info("Immich ML model %s gives %d-d embeddings", self._settings.model_name, size)
            elif size != self.dimension:
                raise ModelError(
                    f"the Immich ML service returned a {size}-d embedding after {self.dimension}-d ones: "
                    f"do all of [model] urls run model {self._settings.model_name}?"
                )


def _describe(error: BaseException) -> str:
    refused = refused_certificate(error)
    if refused is not None:
        return (
            f"its TLS certificate is not trusted ({refused}): if it comes from an authority of your own, "
            f"set SSL_CERT_FILE to a file of that authority's certificate (PEM)"
        )
    if isinstance(error, httpx.ConnectError):
        return "connection refused or host unreachable"
    if isinstance(error, httpx.TimeoutException):
        return "timed out"
    return str(error) or type(error).__name__


def _detail(body: bytes) -> str:
    """The service's own words (FastAPI puts them in `detail`), short."""
    try:
        data = json.loads(body)
        text = data.get("detail") if isinstance(data, dict) else None
    except (ValueError, RecursionError):
        text = None
    return str(text or body.decode("utf-8", "replace").strip() or "no body")[:200]


def _finite(value: Any) -> float:
    """A number from an answer; ValueError for NaN, an infinity, or what is no number."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{value!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return number
