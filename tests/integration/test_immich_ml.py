"""Immich's machine-learning service as the face engine (issue 13): the request and answer format, a
sync through it, requests spread over several services, a failing one skipped, every one down
stopping a cycle without losing anything, and a store that refuses to mix two engines."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_immich_ml import FakeImmichMl

import facesyncd.immich_ml as immich_ml
from conftest import PHOTOS, TEST_PACK, Library, free_port, requires_shared, run_cli, wait_until, write_config
from facesyncd.config import FaceSettings, ModelSettings, settings_from_dict
from facesyncd.errors import ConfigError, EngineUnavailable, Interrupted, ModelError
from facesyncd.imaging import DecodedImage, decode_image
from facesyncd.immich_ml import ImmichMlEmbedder
from facesyncd.onnx_embedder import OnnxEmbedder
from facesyncd.quality import assess
from fake_immich import FakeImmich

pytestmark = requires_shared
FOLDERS = ["wild/angelina_jolie", "wild/katy_perry", "wild/scarlett_johansson", "groups/two_people.jpg"]


@pytest.fixture
def ml() -> Iterator[FakeImmichMl]:
    service = FakeImmichMl(TEST_PACK).start()
    yield service
    service.stop()


@pytest.fixture
def fast_failover(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(immich_ml, "PASS_WAIT_SECONDS", 0.01)
    monkeypatch.setattr(immich_ml, "RETRY_SECONDS", 0.3)


def remote(
    *urls: str,
    concurrency: int = 2,
    timeout: float = 30.0,
    min_det_score: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
) -> ImmichMlEmbedder:
    model = ModelSettings(backend="immich-ml", urls=urls, concurrency=concurrency, timeout_seconds=timeout)
    return ImmichMlEmbedder(model, FaceSettings(min_face_px=20, min_det_score=min_det_score), clock=clock)


def photo(relative: str) -> DecodedImage:
    return decode_image(PHOTOS / relative, max_pixels=250_000_000)


def ml_model(*urls: str) -> str:
    return f'backend = "immich-ml"\nurls = {json.dumps(list(urls))}\n'


def test_faces_through_the_service_are_the_local_engines(ml: FakeImmichMl) -> None:
    local = OnnxEmbedder(
        ModelSettings(pack=str(TEST_PACK), providers=("CPUExecutionProvider",)),
        FaceSettings(min_face_px=20, min_det_score=0.5),
    )
    engine = remote(ml.url)
    assert engine.name == "immich-ml:buffalo_l"
    assert engine.dimension == 0, "the size is the service's, known from its first face"
    compared = 0
    for relative in ["groups/two_people.jpg", "wild/katy_perry", "wild/obama"]:
        paths = [PHOTOS / relative] if (PHOTOS / relative).is_file() else sorted((PHOTOS / relative).iterdir())[:2]
        for path in paths:
            image = decode_image(path, max_pixels=250_000_000)
            theirs, ours = engine.faces(image), local.faces(image)
            assert len(theirs) == len(ours), path
            for a, b in zip(theirs, ours, strict=True):
                assert np.allclose(a.bbox, b.bbox, atol=1.5), "boxes come back in the photo's pixels"
                assert abs(np.linalg.norm(a.embedding) - 1) < 1e-5, "raw embeddings are normalised"
                assert float(a.embedding @ b.embedding) > 0.98, "the same face gives the same embedding"
                assert a.landmarks == (), "the service gives no landmarks"
                compared += 1
    assert compared >= 4
    assert engine.dimension == 128
    # What facesyncd asked for: the configured model, the detector's score gate, one image per request.
    assert ml.received[0] == {
        "facial-recognition": {
            "detection": {"modelName": "buffalo_l", "options": {"minScore": 0.5}},
            "recognition": {"modelName": "buffalo_l"},
        }
    }
    # No landmarks: frontality and symmetry are not measured, the composite is over the rest.
    face = theirs[0]
    quality = assess(image.pixels, face.bbox, face.landmarks, face.det_score)
    assert quality.frontality is None and quality.symmetry is None
    assert quality.as_dict()["frontality"] is None
    measured = 0.30 * quality.det_score + 0.20 * quality.size + 0.20 * quality.blur
    assert quality.composite == pytest.approx(measured / 0.70)


def test_a_sync_through_the_service_builds_the_facesets_the_local_engine_builds(
    fake: FakeImmich, ml: FakeImmichMl, tmp_path: Path
) -> None:
    through_ml = Library(fake, tmp_path / "ml", model=ml_model(ml.url))
    local = Library(fake, tmp_path / "local")
    through_ml.add(FOLDERS)
    local.labels = through_ml.labels
    through_ml.cli("sync")
    local.cli("sync")
    assert ml.requests >= len(through_ml.labels), "every photo went to the service"

    def grouping(library: Library) -> set[frozenset[str]]:
        return {frozenset(library.faces(number).values()) for number in library.sets()}

    assert grouping(through_ml) == grouping(local)
    assert through_ml.sql("SELECT value FROM meta WHERE key = 'model'") == [("immich-ml:buffalo_l",)]
    assert through_ml.sql("SELECT value FROM meta WHERE key = 'embedding_dim'") == [("128",)]
    [(frontality, blur)] = through_ml.sql("SELECT q_frontality, q_blur FROM faces LIMIT 1")
    assert frontality is None and blur is not None
    status = json.loads(through_ml.cli("status", "--json"))
    assert status["assets"]["failed"] == 0
    assert "model:      immich-ml:buffalo_l, 128-d embeddings" in through_ml.cli("status")


def test_requests_are_spread_over_the_services(ml: FakeImmichMl, fast_failover: None) -> None:
    second = FakeImmichMl(TEST_PACK).start()
    try:
        ml.delay = second.delay = 0.05  # two GPU boxes taking their time
        engine = remote(ml.url, second.url, concurrency=2)
        assert engine.workers == 4
        image = photo("groups/two_people.jpg")
        with ThreadPoolExecutor(engine.workers) as pool:  # as the stage feeds it
            assert all(len(faces) == 2 for faces in pool.map(engine.faces, [image] * 12))
        assert ml.requests + second.requests == 12
        assert ml.requests >= 4 and second.requests >= 4, (ml.requests, second.requests)
        assert max(ml.most_in_flight, second.most_in_flight) <= 2, "at most `concurrency` at once per URL"
    finally:
        second.stop()


def test_a_failing_service_is_skipped_and_asked_again_later(
    ml: FakeImmichMl, fast_failover: None, caplog: pytest.LogCaptureFixture
) -> None:
    down = FakeImmichMl(TEST_PACK, port=free_port())  # configured, not started: refused connections
    slow = FakeImmichMl(TEST_PACK).start()
    now = [1000.0]  # the engine's clock: a service's rest ends when the test moves it on
    try:
        engine = remote(down.url, slow.url, ml.url, concurrency=1, timeout=5, clock=lambda: now[0])
        image = photo("groups/two_people.jpg")
        expected = len(engine.faces(image))
        assert expected == 2
        slow.hang = 900.0  # never within the timeout
        ml.fail = 1  # one 500
        with caplog.at_level(logging.WARNING, "facesyncd.immich_ml"):
            for _ in range(4):
                assert len(engine.faces(image)) == expected, "a failing service costs no face"
        text = caplog.text
        assert f"{down.url} failed (connection refused" in text
        assert f"{slow.url} failed (no answer within 5 s)" in text
        assert f"{ml.url} failed (answered 500" in text
        # back up: once its rest is over, the first service is asked again
        down.start()
        slow.hang = 0.0
        now[0] += immich_ml.RETRY_MAX_SECONDS + 1  # past the longest rest
        before = down.requests
        for _ in range(6):
            engine.faces(image)
        assert down.requests > before, "a service that is back is used again"
    finally:
        down.stop()
        slow.stop()


def test_a_garbled_answer_goes_to_another_service(ml: FakeImmichMl, fast_failover: None) -> None:
    other = FakeImmichMl(TEST_PACK).start()
    try:
        ml.garble = other.garble = 1
        engine = remote(ml.url, other.url, concurrency=1)
        assert len(engine.faces(photo("groups/two_people.jpg"))) == 2
    finally:
        other.stop()


def test_every_service_down_is_a_clear_error_and_a_refused_request_is_not_retried(
    ml: FakeImmichMl, fast_failover: None
) -> None:
    image = photo("groups/two_people.jpg")
    gone = f"http://127.0.0.1:{free_port()}"
    ml.fail = 100
    with pytest.raises(EngineUnavailable) as error:
        remote(gone, ml.url).faces(image)
    message = str(error.value)
    assert f"{gone}: connection refused" in message and f"{ml.url}: answered 500" in message
    assert "the next cycle tries again" in message
    ml.fail = 0
    # A model the service does not have: it answers a bare 500 (recorded), and the error names the
    # configured model as the likely cause.
    unknown = ImmichMlEmbedder(
        ModelSettings(backend="immich-ml", urls=(ml.url,), model_name="antelopev2"), FaceSettings()
    )
    with pytest.raises(EngineUnavailable, match="model_name = 'antelopev2' is not a model it knows"):
        unknown.faces(image)
    # A request the service cannot read (a 422) would be refused by any: not asked again.
    refusing = remote(ml.url)
    refusing._entries = "{not json"
    before = ml.posts
    with pytest.raises(ModelError, match="refused the request: Invalid request format") as refused:
        refusing.faces(image)
    assert not isinstance(refused.value, EngineUnavailable)
    assert ml.posts - before == 1


def test_a_stop_breaks_off_a_request_in_flight(ml: FakeImmichMl) -> None:
    ml.hang = 900.0  # a GPU box busy for far longer than a stop may wait (and than the guard below)
    engine = remote(ml.url, timeout=600)
    engine.load()
    outcome: list[BaseException] = []

    def work() -> None:
        try:
            engine.faces(photo("groups/two_people.jpg"))
        except BaseException as error:  # noqa: BLE001 - what the worker ends with is the point
            outcome.append(error)

    posts = ml.posts
    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    wait_until(lambda: ml.posts > posts, "the request reaches the service")
    engine.abort()
    wait_until(lambda: not worker.is_alive(), "the request is broken off (the service answers in 15 minutes)")
    assert len(outcome) == 1 and isinstance(outcome[0], Interrupted), outcome


def test_every_service_down_stops_the_cycle_and_loses_nothing(fake: FakeImmich, tmp_path: Path) -> None:
    ml = FakeImmichMl(TEST_PACK, port=free_port())  # down
    library = Library(fake, tmp_path, model=ml_model(ml.url))
    library.add(["wild/katy_perry"])
    result = run_cli("--config", str(library.config), "sync")
    assert result.returncode == 5, result.stdout + result.stderr
    assert "no Immich ML service answered" in result.stderr
    assert "Traceback" not in result.stderr
    states = {state for (state,) in library.sql("SELECT state FROM assets")}
    assert states == {"pending"}, "assets wait for the engine; none is failed or parked"
    ml.start()
    try:
        library.cli("sync")
        assert {state for (state,) in library.sql("SELECT state FROM assets")} == {"done"}
        assert library.sets(), "the facesets come once the service is back"
    finally:
        ml.stop()


def test_a_store_refuses_embeddings_of_another_engine(fake: FakeImmich, ml: FakeImmichMl, tmp_path: Path) -> None:
    library = Library(fake, tmp_path)
    library.add(["wild/katy_perry"])
    library.cli("sync")
    switched = write_config(tmp_path, fake.url, model=ml_model(ml.url))
    result = run_cli("--config", str(switched), "sync")
    assert result.returncode == 6, result.stdout + result.stderr
    assert "holds embeddings of model pack buffalo_test (run here)" in result.stderr
    assert "asks for model buffalo_l through immich-ml" in result.stderr
    assert ml.requests == 0
    # and the other way round
    other = Library(fake, tmp_path / "other", model=ml_model(ml.url))
    other.cli("sync")
    back = write_config(tmp_path / "other", fake.url)
    result = run_cli("--config", str(back), "sync")
    assert result.returncode == 6
    assert "holds embeddings of model buffalo_l through immich-ml" in result.stderr


def test_the_backend_is_configured_with_its_addresses(tmp_path: Path) -> None:
    def settings(model: dict[str, object]) -> object:
        immich = [{"name": "alice", "url": "http://127.0.0.1:2283", "api_key_env": "UNUSED"}]
        return settings_from_dict({"immich": immich, "model": model}, tmp_path / "config.toml", secrets=False)

    with pytest.raises(ConfigError, match='model.urls: backend "immich-ml" needs the address'):
        settings({"backend": "immich-ml"})
    with pytest.raises(ConfigError, match="model.backend: must be onnx or immich-ml"):
        settings({"backend": "tensorflow"})
    with pytest.raises(ConfigError, match="model.urls: must be a list of http"):
        settings({"backend": "immich-ml", "urls": ["gpu-box:3003"]})
    good = settings({"backend": "immich-ml", "urls": ["http://gpu-box:3003/", "http://gpu-2:3003"], "concurrency": 4})
    assert good.model.urls == ("http://gpu-box:3003", "http://gpu-2:3003")  # type: ignore[attr-defined]


RECORDED_ML = PHOTOS.parent.parent / "immich" / "recorded-ml-3.1.0"


@pytest.mark.parametrize(
    "recording", ["04-model-not-in-cache-buffalo_l", "05-unknown-model-name", "06-no-image", "07-bad-entries"]
)
def test_the_stand_in_fails_as_the_real_service_does(ml: FakeImmichMl, recording: str) -> None:
    """The stand-in is checked against real answers of Immich 3.1.0's ML service: status, content type
    and body of each error it recorded (a model it cannot load is a bare text 500, not JSON)."""
    import requests

    path = RECORDED_ML / f"{recording}.json"
    if not path.is_file():
        pytest.skip(f"recorded ML answers not found at {RECORDED_ML}")
    recorded = json.loads(path.read_text())
    fields = recorded["request"]["fields"]
    files = {"entries": (None, fields["entries"])}
    if fields["image"] is not None:
        files["image"] = ("image.jpg", (PHOTOS / "groups" / "two_people.jpg").read_bytes())
    if "not-in-cache" in recording:
        ml.model_name = "buffalo_s"  # buffalo_l is not in this service's cache, and it cannot fetch it
    answer = requests.post(f"{ml.url}/predict", files=files, timeout=120)
    expected = recorded["response"]
    assert answer.status_code == expected["status"]
    assert answer.headers["content-type"] == expected["content_type"]
    body = answer.json() if expected["content_type"] == "application/json" else answer.text
    assert body == expected["body"]


def test_an_unknown_model_name_is_said_to_be_one(ml: FakeImmichMl, fast_failover: None) -> None:
    """The service answers a model it does not know with a bare 500 (recorded): the cycle's error said
    only that no service answered."""
    engine = ImmichMlEmbedder(
        ModelSettings(backend="immich-ml", urls=(ml.url,), model_name="no_such_model", timeout_seconds=30),
        FaceSettings(min_face_px=20),
    )
    with pytest.raises(EngineUnavailable) as failed:
        engine.faces(photo("groups/two_people.jpg"))
    message = str(failed.value)
    assert "answered 500: Internal Server Error" in message
    assert "model_name = 'no_such_model' is not a model it knows or can download" in message


def _first_face(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def tamper(answer: dict[str, Any]) -> dict[str, Any]:
        change(answer["facial-recognition"][0])
        return answer

    return tamper


def _answer(change: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def tamper(answer: dict[str, Any]) -> dict[str, Any]:
        change(answer)
        return answer

    return tamper


HOSTILE_ANSWERS = {
    # NaN or infinite boxes became whole-image boxes (25 faces where honest answers give 19)
    "a NaN box": (_first_face(lambda face: face["boundingBox"].update(x1=float("nan"))), "not a finite number"),
    "an infinite box": (_first_face(lambda face: face["boundingBox"].update(x2=float("inf"))), "not a finite number"),
    "a NaN image width": (_answer(lambda answer: answer.update(imageWidth=float("nan"))), "not a finite number"),
    # a box larger than the image was cut to fit: a second face with the same embedding
    "a box past the image": (
        _first_face(lambda face: face["boundingBox"].update(x2=face["boundingBox"]["x2"] + 5000)),
        "out of its",
    ),
    # a 7-number embedding was taken as the model's size
    "a 7-number embedding": (_first_face(lambda face: face.update(embedding="[1, 2, 3, 4, 5, 6, 7]")), "7 numbers"),
    "a score of 1e308": (_first_face(lambda face: face.update(score=1e308)), "detector score of 1e+308"),
    "another image's size": (_answer(lambda answer: answer.update(imageWidth=answer["imageWidth"] * 3)), "not the"),
    "deeply nested JSON": (lambda answer: b"[" * 100_000 + b"]" * 100_000, "nested too deep"),
    "an answer too large": (lambda answer: b'{"pad": "' + b"x" * (40 * 1024 * 1024) + b'"}', "more than 32 MB"),
}


@pytest.mark.parametrize("hostile", list(HOSTILE_ANSWERS))
def test_an_answer_no_face_model_could_give_is_refused_and_stores_nothing(
    ml: FakeImmichMl, fast_failover: None, hostile: str
) -> None:
    """A hostile (or broken) service's answer is checked against what a face model can produce: it is
    that service's failure (another is asked), never faces in the store."""
    tamper, says = HOSTILE_ANSWERS[hostile]
    honest = FakeImmichMl(TEST_PACK).start()
    try:
        image = photo("groups/two_people.jpg")
        expected = [face.bbox for face in remote(honest.url).faces(image)]
        ml.tamper = tamper
        alone = remote(ml.url, concurrency=1)
        with pytest.raises(EngineUnavailable, match=re.escape(says)):
            alone.faces(image)
        assert alone.dimension == 0, "nothing of the answer was taken as the model's size"
        both = remote(ml.url, honest.url, concurrency=1)
        assert [face.bbox for face in both.faces(image)] == expected
    finally:
        honest.stop()


def test_an_answer_trickled_a_byte_at_a_time_ends_at_a_deadline(ml: FakeImmichMl, fast_failover: None) -> None:
    """A body sent a byte at a time never trips a read timeout of 5 s: `sync` hung past 420 s. The
    whole exchange now has a deadline of twice the timeout."""
    ml.trickle_seconds = 0.05  # a few kB: minutes at this pace
    engine = remote(ml.url, concurrency=1, timeout=1)
    with pytest.raises(EngineUnavailable, match="took more than 2 s to answer"):
        engine.faces(photo("groups/two_people.jpg"))
