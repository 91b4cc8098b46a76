"""Target 4: `facesyncd status` on a database of 100,000 assets and 500,000 faces.

Times the whole command (interpreter start-up included) as a user runs it, text and --json, and
checks that it imports neither onnxruntime, insightface nor hnswlib.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import REPO, median

HEAVY = ("onnxruntime", "insightface", "hnswlib", "cv2", "scipy", "numpy")


def make_database(directory: Path, assets: int, faces: int, dimension: int = 512) -> Path:
    from facesyncd.store import Store

    store = Store(directory / "facesyncd.db")
    rng = np.random.default_rng(3)
    embedding = rng.normal(size=dimension).astype(np.float32).tobytes()
    per_asset = faces // assets
    with store.transaction():
        store.conn.execute(
            "INSERT INTO sources (name, url, watermark) VALUES ('alice', 'http://x', '2026-01-01T00:00:00.000Z')"
        )
        store.set_meta("embedding_dim", str(dimension))
        store.conn.executemany(
            "INSERT INTO identities (number, origin, created_at) VALUES (?, 'cluster', '2026-01-01')",
            ((n,) for n in range(1, 2_001)),
        )
        store.conn.executemany(
            "INSERT INTO blobs (sha256, size, decoded_from, model, embedded_at) VALUES (?, 1, 'original', 'm', 'now')",
            ((f"{i:064x}",) for i in range(assets)),
        )
        store.conn.executemany(
            "INSERT INTO assets (source, asset_id, type, state, sha256, first_seen_at, changed_at, file_created_at) "
            "VALUES ('alice', ?, 'IMAGE', ?, ?, 'now', 'now', 'now')",
            (
                (f"{i:08d}-0000-4000-8000-000000000000", "done" if i % 50 else "failed", f"{i:064x}")
                for i in range(assets)
            ),
        )
        store.conn.executemany(
            "INSERT INTO faces (sha256, face_index, x1, y1, x2, y2, det_score, landmarks, embedding, crop, identity) "
            "VALUES (?, ?, 0, 0, 100, 100, 0.9, '[]', ?, 'c', ?)",
            (
                (f"{i // per_asset:064x}", i % per_asset, embedding, (i % 2000) + 1 if i % 3 else None)
                for i in range(faces)
            ),
        )
        for cycle in range(2_000):
            store.conn.execute(
                "INSERT INTO cycles (started_at, finished_at, ok, report) VALUES ('a', 'b', 1, ?)",
                (json.dumps({"faces_found": cycle % 3, "faces_per_second": 5.0}),),
            )
    store.close()
    config = directory / "config.toml"
    config.write_text(
        f'state_dir = "{directory}"\n[[immich]]\nname = "alice"\nurl = "http://x"\napi_key_env = "NOT_NEEDED"\n'
    )
    return config


def timed_command(config: Path, *extra: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "facesyncd", "--config", str(config), "status", *extra],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    return time.perf_counter() - started


def python_startup() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - started


def heavy_imports(config: Path) -> list[str]:
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['facesyncd', '--config', {str(config)!r}, 'status', '--json']\n"
        "try:\n    runpy.run_module('facesyncd', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    return json.loads(result.stderr.strip().splitlines()[-1].replace("'", '"'))


def main(assets: int = 100_000, faces: int = 500_000) -> list[tuple[str, str, str]]:
    directory = Path(tempfile.mkdtemp(prefix="bench-status-"))
    try:
        started = time.perf_counter()
        config = make_database(directory, assets, faces)
        size = (directory / "facesyncd.db").stat().st_size / 1e6
        print(
            f"database of {assets} assets, {faces} faces ({size:.0f} MB) made in {time.perf_counter() - started:.0f} s"
        )
        timed_command(config)  # warm the page cache, as on a machine that runs the daemon
        text = median([timed_command(config) for _ in range(5)])
        as_json = median([timed_command(config, "--json") for _ in range(5)])
        baseline = median([python_startup() for _ in range(5)])
        imported = heavy_imports(config)
        print(
            f"status: {text * 1000:.0f} ms, status --json: {as_json * 1000:.0f} ms "
            f"(a bare `python -c pass` here: {baseline * 1000:.0f} ms); heavy modules imported: {imported or 'none'}"
        )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    ok = text < 0.3 and as_json < 0.3
    return [
        (
            "status / status --json (100k assets, 500k faces)",
            f"{text * 1000:.0f} / {as_json * 1000:.0f} ms",
            f"< 300 ms: {'yes' if ok else 'NO'}; heavy imports: {imported or 'none'}",
        ),
    ]


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
