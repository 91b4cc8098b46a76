"""Target 1: end-to-end sync throughput against insightface's FaceAnalysis.get() in the same run.

The baseline gets every photo already decoded in memory and runs FaceAnalysis.get() (same pack,
detector and recognizer only, same thresholds, same onnxruntime threads). facesyncd's sync also
lists, downloads from the loopback fake Immich, hashes, decodes, writes SQLite, crops and exports.
Both count every detected face (min_face_px = 0). Figures are medians of several repetitions,
alternating the two.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common import API_KEY, API_KEY_ENV, PHOTOS, TEST_PACK, config_text, median, require_shared

FOLDERS = ("wild", "groups", "noface")


def photo_paths() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (PHOTOS / folder).rglob("*") if p.is_file())


def baseline_run(app, images) -> tuple[int, float]:
    started = time.perf_counter()
    faces = sum(len(app.get(image)) for image in images)
    return faces, time.perf_counter() - started


def draft_decode_cost(paths: list[Path], faces: list[int], det_size: int = 640) -> tuple[float, float]:
    """Seconds to decode the JPEGs at full size, against the alternative the issue proposed: large
    JPEGs decoded at reduced scale for detection (libjpeg's DCT scaling, what Pillow's draft mode
    uses; the long side kept >= 2x det_size), then at full size again when the photo has faces,
    since crops and alignment come from full resolution. One thread, best of three."""
    import cv2
    from PIL import Image

    reduced = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}

    def best(data: np.ndarray, flag: int) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            cv2.imdecode(data, flag)
            times.append(time.perf_counter() - started)
        return min(times)

    full_total = draft_total = 0.0
    for path, count in zip(paths, faces, strict=True):
        data = np.fromfile(path, np.uint8)
        if data[:2].tobytes() != b"\xff\xd8":
            continue
        full = best(data, cv2.IMREAD_COLOR)
        full_total += full
        with Image.open(path) as header:
            long_side = max(header.size)
        scale = 1
        while scale < 8 and long_side // (scale * 2) >= 2 * det_size:
            scale *= 2
        if scale == 1:
            draft_total += full
        else:
            draft_total += best(data, reduced[scale]) + (full if count else 0.0)
    return full_total, draft_total


def sync_run(url: str, embedder) -> tuple[int, float]:
    from facesyncd import actions
    from facesyncd.app import open_app
    from facesyncd.config import load_settings

    directory = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    try:
        config = directory / "config.toml"
        config.write_text(config_text(directory, url, extra_faces="min_face_px = 0\nprefilter = false"))
        settings = load_settings(config)
        app = open_app(settings, embedder=embedder)
        try:
            started = time.perf_counter()
            report = actions.sync(app)
            return report.faces_found, time.perf_counter() - started
        finally:
            app.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(repetitions: int = 5) -> list[tuple[str, str, str]]:
    require_shared()
    os.environ[API_KEY_ENV] = API_KEY
    from insightface.app import FaceAnalysis

    from facesyncd.config import FaceSettings, ModelSettings
    from facesyncd.embedder import make_embedder
    from facesyncd.imaging import decode_image
    from fake_server import FakeServerProcess

    paths = photo_paths()
    images = [decode_image(p, max_pixels=10**9).pixels for p in paths]
    decode_seconds = []
    for _ in range(repetitions):
        started = time.perf_counter()
        for path in paths:
            decode_image(path, max_pixels=10**9)
        decode_seconds.append(time.perf_counter() - started)
    app = FaceAnalysis(
        name=str(TEST_PACK), allowed_modules=["detection", "recognition"], providers=["CPUExecutionProvider"]
    )
    app.prepare(ctx_id=0, det_size=(640, 640), det_thresh=0.5)
    embedder = make_embedder(
        ModelSettings(pack=str(TEST_PACK), providers=("CPUExecutionProvider",)), FaceSettings(min_face_px=0)
    )
    embedder.load()

    baseline_rates, sync_rates = [], []
    with FakeServerProcess(paths) as server:
        baseline_run(app, images[:3])  # warm-up
        for _ in range(repetitions):
            faces, seconds = baseline_run(app, images)
            baseline_rates.append(faces / seconds)
            sync_faces, sync_seconds = sync_run(server.url, embedder)
            sync_rates.append(sync_faces / sync_seconds)
    base, mine = median(baseline_rates), median(sync_rates)
    decoding = median(decode_seconds)
    full_decode, draft_decode = draft_decode_cost(paths, [len(app.get(image)) for image in images])
    print(f"sync throughput: {len(paths)} photos, {faces} faces (baseline) / {sync_faces} faces (sync)")
    print(
        f"  decoding the originals alone (one thread): {decoding:.2f} s, {decoding / (faces / base):.2f}x the"
        " baseline's whole run; sync does that work too"
    )
    print(
        f"  JPEGs at reduced scale for detection, then full size for photos with faces: {draft_decode:.2f} s"
        f" against {full_decode:.2f} s decoding each once at full size ({draft_decode / full_decode:.2f}x)"
    )
    print(
        f"  baseline FaceAnalysis.get on decoded images: {base:.1f} faces/s  runs {[round(r, 1) for r in baseline_rates]}"
    )
    print(
        f"  facesyncd sync end to end:                   {mine:.1f} faces/s  runs {[round(r, 1) for r in sync_rates]}"
    )
    print(f"  ratio sync/baseline: {mine / base:.2f} (target >= 1.00)")
    return [("sync faces/s vs FaceAnalysis.get", f"{mine:.1f} vs {base:.1f}", f"{mine / base:.2f}x (>= 1.00)")]


if __name__ == "__main__":
    main()
