"""Issue 21, part 1: how long each correction takes, as a user runs it (the whole command), on a
synthetic library of 50,000 faces in 1,000 facesets with its folders exported.

Each action runs `rounds` times on different facesets; p50 and p95 of the wall time, and the CPU
time of the command, against the time to read the same page (`faceset show N --json`) measured in
the same run. No Immich is needed: a correction never talks to it.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common import API_KEY, REPO, TEST_PACK, require_shared

# Every face's quality parts (store.faces.PART_COLUMNS, in that order)
QUALITY = (0.9, 0.8, 0.9, 0.7, 0.8)


def make_library(
    directory: Path, faces: int, facesets: int, dimension: int = 128, *, big: int = 0, pool: int = 0
) -> Path:
    """A store of `faces` faces in `facesets` identities (one face per photo), a crop file for each
    (hard links of one small JPEG), and a config; the folders are exported by the caller. `big`:
    that many more faces, all in faceset 1; `pool`: that many more in no identity, each unlike any
    other (the faces a library keeps waiting: strangers, one-offs)."""
    from PIL import Image

    from facesyncd.store import Store
    from facesyncd.store.faces import PART_COLUMNS

    state = directory / "state"
    crops = state / "crops"
    crops.mkdir(parents=True)
    sample = directory / "sample.jpg"
    Image.new("RGB", (112, 112), (128, 96, 80)).save(sample, quality=85)
    store = Store(state / "facesyncd.db")
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(facesets, dimension)).astype(np.float32)
    now = "2026-12-01T00:00:00.000Z"
    with store.transaction():
        store.conn.execute(
            "INSERT INTO sources (name, url, watermark) VALUES ('alice', 'http://127.0.0.1:9', ?)", (now,)
        )
        store.set_meta("embedding_dim", str(dimension))
        store.set_meta("model", TEST_PACK.name)
        store.conn.executemany(
            "INSERT INTO identities (number, origin, created_at) VALUES (?, 'cluster', ?)",
            ((n, now) for n in range(1, facesets + 1)),
        )
        rows = []
        for face in range(faces + big + pool):
            identity: int | None = face % facesets if face < faces else 0 if face < faces + big else None
            if identity is None:
                vector = rng.normal(size=dimension).astype(np.float32)
            else:
                vector = centres[identity] + rng.normal(scale=0.6, size=dimension).astype(np.float32)
            vector /= np.linalg.norm(vector)
            sha = f"{face:064x}"
            crop = f"{sha[:2]}/{sha}_0.jpg"
            (crops / crop).parent.mkdir(exist_ok=True)
            if face % 20_000 == 0 and face:  # a file takes at most 65,000 links (ext4), the export adds two
                sample = directory / f"sample{face}.jpg"
                Image.new("RGB", (112, 112), (128, 96, 80)).save(sample, quality=85)
            os.link(sample, crops / crop)
            rows.append((sha, vector.tobytes(), crop, None if identity is None else identity + 1, face))
        store.conn.executemany(
            "INSERT INTO blobs (sha256, size, width, height, decoded_from, model, embedded_at) "
            "VALUES (?, 1, 1000, 1000, 'original', 'buffalo_test', ?)",
            ((sha, now) for sha, *_ in rows),
        )
        store.conn.executemany(
            "INSERT INTO assets (source, asset_id, type, state, sha256, checksum, first_seen_at, changed_at, "
            "file_created_at, original_file_name) VALUES ('alice', ?, 'IMAGE', 'done', ?, ?, ?, ?, ?, ?)",
            (
                (f"{n:08x}-0000-4000-8000-000000000000", sha, sha[:27], now, now, now, f"IMG_{n:05d}.jpg")
                for sha, _, _, _, n in rows
            ),
        )
        store.conn.executemany(
            "INSERT INTO faces (sha256, face_index, x1, y1, x2, y2, det_score, landmarks, embedding, crop, identity, "
            f"distance, matched_at, quality, {PART_COLUMNS}) VALUES (?, 0, 100, 100, 300, 300, 0.9, '[]', ?, ?, ?, 0.3, ?, "
            "0.8, ?, ?, ?, ?, ?)",
            ((sha, blob, crop, identity, now, *QUALITY) for sha, blob, crop, identity, _ in rows),
        )
    store.close()
    config = directory / "config.toml"
    config.write_text(
        f'state_dir = "{state}"\nfacesets_dir = "{directory / "facesets"}"\n'
        '[[immich]]\nname = "alice"\nurl = "http://127.0.0.1:9"\napi_key_env = "NOT_NEEDED"\n'
        f'[model]\npack = "{TEST_PACK}"\nproviders = ["CPUExecutionProvider"]\n'
    )
    return config


def pooled_library(
    directory: Path, size: int, *, per_faceset: int, most: int, dimension: int = 128
) -> tuple[Path, int, int, int]:
    """A library of `size` faces as a long-lived one looks: 60% in facesets of about `per_faceset`
    faces (`most` facesets at most), 40% waiting in the pool; exported. Returns the config and the
    faces in facesets, in the pool, and the facesets."""
    in_sets, pool = size * 6 // 10, size * 4 // 10
    facesets = max(10, min(most, in_sets // per_faceset))
    config = make_library(directory, in_sets, facesets, dimension, pool=pool)
    export_everything(config)
    return config, in_sets, pool, facesets


def point_at(config: Path, url: str, key_env: str) -> None:
    """The library's config, made to ask the fake Immich at `url`, with the key in `key_env`."""
    config.write_text(config.read_text().replace("http://127.0.0.1:9", url).replace('"NOT_NEEDED"', f'"{key_env}"'))
    os.environ[key_env] = API_KEY


def export_everything(config: Path) -> None:
    """The folders of every faceset and the index, as a sync leaves them."""
    from facesyncd import actions
    from facesyncd.app import open_app
    from facesyncd.config import load_settings

    os.environ["NOT_NEEDED"] = "unused-key-0123456789"
    with open_app(load_settings(config)) as app:
        actions.apply_corrections(app)


def command(config: Path, *arguments: str) -> tuple[float, float]:
    """Wall and CPU seconds of one `facesyncd` command, interpreter start-up included."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "facesyncd", "--config", str(config), *arguments],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "NOT_NEEDED": "unused-key-0123456789"},
    )
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{arguments}: {result.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(faces: int = 50_000, facesets: int = 1_000, rounds: int = 5) -> list[tuple[str, str, str]]:
    require_shared()
    directory = Path(tempfile.mkdtemp(prefix="bench-curation-"))
    rows: list[tuple[str, str, str]] = []
    try:
        started = time.perf_counter()
        config = make_library(directory, faces, facesets)
        print(f"library of {faces} faces in {facesets} facesets made in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        export_everything(config)
        print(f"index built and folders exported in {time.perf_counter() - started:.0f} s")
        per_set = faces // facesets
        face_of = lambda number, k=0: (number - 1) + k * facesets + 1  # noqa: E731 (face ids follow insertion)
        actions: list[tuple[str, Callable[[int], list[str]]]] = [
            ("read the page (faceset show --json)", lambda i: ["faceset", "show", str(10 + i), "--json"]),
            ("faceset name", lambda i: ["faceset", "name", str(20 + i), f"Person {i}"]),
            ("faceset lock", lambda i: ["faceset", "lock", str(30 + i)]),
            ("faceset unlock", lambda i: ["faceset", "unlock", str(30 + i)]),
            ("faceset merge", lambda i: ["faceset", "merge", str(40 + 2 * i), str(41 + 2 * i)]),
            ("faceset split", lambda i: ["faceset", "split", str(60 + i), str(face_of(60 + i, 1))]),
            ("face move", lambda i: ["face", "move", str(face_of(70 + i, 2)), str(80 + i)]),
            ("face reject", lambda i: ["face", "reject", str(face_of(90 + i, 3))]),
            ("faceset hide", lambda i: ["faceset", "hide", str(110 + i)]),
            ("faceset unhide", lambda i: ["faceset", "unhide", str(110 + i)]),
            ("faceset forget", lambda i: ["faceset", "forget", str(100 + i), "--yes"]),
            ("undo (of the last forget)", lambda i: ["undo", str(_last_correction(config))]),
            ("faceset list --json", lambda i: ["faceset", "list", "--json"]),
            ("history --json", lambda i: ["history", "--json"]),
        ]
        assert per_set >= 4
        baseline = None
        for what, arguments in actions:
            runs = []
            for i in range(rounds):
                if what.startswith("undo"):
                    command(config, "faceset", "forget", str(200 + i), "--yes")
                runs.append(command(config, *arguments(i)))
            walls = sorted(wall for wall, _ in runs)
            p50, p95 = statistics.median(walls), walls[min(len(walls) - 1, int(0.95 * len(walls)))]
            cpu = statistics.median(cpu for _, cpu in runs)
            baseline = baseline or p50
            print(f"{what}: p50 {p50:.2f} s, p95 {p95:.2f} s, {cpu:.2f} CPU-s; {p50 / baseline:.1f}x reading the page")
            rows.append((f"{what}, {faces // 1000}k faces / {facesets} sets", f"p50 {p50:.2f} s, p95 {p95:.2f} s",
                         f"{p50 / baseline:.1f}x the page read"))  # fmt: skip
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return rows


def _last_correction(config: Path) -> int:
    result = subprocess.run(
        [sys.executable, "-m", "facesyncd", "--config", str(config), "history", "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return int(json.loads(result.stdout)[-1]["id"])


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:]))
