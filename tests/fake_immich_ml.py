"""A loopback stand-in of Immich's machine-learning service (`POST /predict`, `GET /ping`), written
from its source (Immich 3.1: machine-learning/immich_ml/main.py and models/facial_recognition/):
the multipart form with `entries` (JSON in a string) and `image`, the answer with `boundingBox`
(rounded), `score`, the raw (not normalised) embedding as a JSON array in a string, and the image's
size; 422 for entries it cannot read, 400 without an image, 500 for a model it cannot load. Its faces
and embeddings are the test pack's, computed by facesyncd's own local engine.

Faults, for the tests: `delay` (seconds per request, to play a GPU box that takes its time), `fail`
(the next n requests answer 500), `hang` (requests wait this long before answering), `garble` (the
next n answers are not JSON), `tamper` (a hostile service: turns each good answer into another body,
JSON or raw bytes), `trickle_seconds` (the body sent a byte at a time), stop() and start() again on the
same port (a service down, then up).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from loopback import LoopbackServer

from facesyncd.config import FaceSettings, ModelSettings
from facesyncd.imaging import DecodedImage
from facesyncd.onnx_embedder import OnnxEmbedder

RAW_SCALE = 23.5  # the recognizer's raw embeddings are not unit vectors: nor are the stand-in's


class FakeImmichMl:
    def __init__(
        self, pack: Path, *, model_name: str = "buffalo_l", port: int = 0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.model_name = model_name
        self.tls = tls  # served over TLS with this server context (https://)
        self.engine = OnnxEmbedder(
            ModelSettings(pack=str(pack), providers=("CPUExecutionProvider",), threads=1),
            FaceSettings(min_face_px=0, min_det_score=0.3),
        )
        self.engine.load()
        self.port = port
        self.delay = 0.0
        self.hang = 0.0
        self.fail = 0
        self.garble = 0
        self.tamper: Callable[[dict[str, Any]], dict[str, Any] | bytes] | None = None
        self.trickle_seconds = 0.0
        self.posts = 0  # /predict requests received
        self.requests = 0  # /predict requests answered 200
        self.received: list[dict[str, Any]] = []  # the entries of every /predict request
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        self._http = LoopbackServer()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> FakeImmichMl:
        self.port = self._http.serve(("127.0.0.1", self.port), _handler(self), self.tls)[1]
        return self

    def stop(self) -> None:
        self._http.stop()

    def predict(self, entries: dict[str, Any], image: bytes) -> tuple[int, dict[str, Any] | None]:
        """The answer to one /predict (status, JSON body; None: the service's bare 500, as a model it
        cannot load or an image it cannot read gets: text/plain "Internal Server Error")."""
        try:
            task = entries["facial-recognition"]
            names = {task["detection"]["modelName"], task["recognition"]["modelName"]}
            min_score = float(task["detection"].get("options", {}).get("minScore", 0.7))
        except (KeyError, TypeError, AttributeError, ValueError):
            return 422, {"detail": "Invalid request format."}
        if names - {self.model_name}:  # a name it does not know, or a model it cannot download
            return 500, None
        pixels = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        if pixels is None:
            return 500, None
        faces = self.engine.faces(DecodedImage(np.asarray(pixels, np.uint8), "JPEG"), min_face_px=0)
        return 200, {
            "facial-recognition": [
                {
                    "boundingBox": dict(
                        zip(("x1", "y1", "x2", "y2"), (float(round(v)) for v in face.bbox), strict=True)
                    ),
                    "embedding": json.dumps([float(v) * RAW_SCALE for v in face.embedding]),
                    "score": face.det_score,
                }
                for face in faces
                if face.det_score >= min_score
            ],
            "imageHeight": int(pixels.shape[0]),
            "imageWidth": int(pixels.shape[1]),
        }


def _handler(ml: FakeImmichMl) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _trickle(self, body: bytes) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for byte in body:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(ml.trickle_seconds)
            except OSError:  # the client gave up
                pass

        def _json(self, status: int, body: dict[str, Any] | None) -> None:
            if body is None:  # what the real service answers on a failure it did not foresee
                self._send(status, b"Internal Server Error", "text/plain; charset=utf-8")
                return
            self._send(status, json.dumps(body).encode(), "application/json")

        def do_GET(self) -> None:
            if self.path == "/ping":
                self._send(200, b"pong", "text/plain; charset=utf-8")
            elif self.path == "/":
                self._json(200, {"message": "Immich ML"})
            else:
                self._json(404, {"detail": "Not Found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if self.path != "/predict":
                self._json(404, {"detail": "Not Found"})
                return
            with ml._lock:
                ml.posts += 1
                ml.in_flight += 1
                ml.most_in_flight = max(ml.most_in_flight, ml.in_flight)
                failing = ml.fail > 0
                ml.fail -= failing
                garbled = ml.garble > 0
                ml.garble -= garbled
            try:
                time.sleep(ml.delay + ml.hang)
                if failing:
                    self._json(500, None)
                    return
                fields = _form(self.headers.get("Content-Type", ""), body)
                if "entries" not in fields:
                    self._json(422, {"detail": [{"type": "missing", "loc": ["body", "entries"]}]})
                    return
                try:
                    entries = json.loads(fields["entries"])
                except ValueError:
                    self._json(422, {"detail": "Invalid request format."})
                    return
                if "image" not in fields:
                    self._json(400, {"detail": "Either image or text must be provided"})
                    return
                with ml._lock:
                    ml.received.append(entries)
                status, answer = ml.predict(entries, fields["image"])
                if garbled:
                    self._send(200, b"<html>proxy error</html>", "text/html")
                    return
                if status == 200:
                    with ml._lock:
                        ml.requests += 1
                if status == 200 and answer is not None and (ml.tamper is not None or ml.trickle_seconds):
                    changed = ml.tamper(answer) if ml.tamper is not None else answer
                    raw = changed if isinstance(changed, bytes) else json.dumps(changed).encode()
                    self._trickle(raw) if ml.trickle_seconds else self._send(200, raw, "application/json")
                    return
                self._json(status, answer)
            finally:
                with ml._lock:
                    ml.in_flight -= 1

    return Handler


def _form(content_type: str, body: bytes) -> dict[str, Any]:
    """The fields of a multipart/form-data body: text for plain fields, bytes for files."""
    if not content_type.startswith("multipart/form-data"):
        return {}
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if name is None or payload is None:
            continue
        fields[str(name)] = payload if part.get_filename() else payload.decode()
    return fields
