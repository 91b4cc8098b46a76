"""Disk used by the swap export per 1,000 faces, for each [export] bundles value.

A user saw 574 MB of export for a 17 MB library: the full `.fsz` repeats every PNG. This writes 1,000
faces (50 facesets of 20, 512 px PNGs cut from the test photos, mirrored and shifted so that no two
are alike) in the swap layout with each `bundles` value, and counts the blocks on disk: the PNG cache
in state_dir/swap, and what the facesets folder adds to it (a PNG linked from the cache and its copy
in top/ share one inode: counted once).

    .venv/bin/python benchmarks/bench_export_disk.py [--faces 1000]

Prints MB per 1,000 faces, and each value against "both" (the default) measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from common import PHOTOS, TEST_PACK, require_shared
from facesyncd.config import ExportSettings, FaceSettings, ModelSettings
from facesyncd.export import export_plans, faceset_name
from facesyncd.imaging import DecodedImage, decode_image
from facesyncd.models import ExportFace
from facesyncd.onnx_embedder import OnnxEmbedder
from facesyncd.swap import SwapCache, plan

PER_SET = 20


def blocks(folder: Path, seen: set[tuple[int, int]]) -> int:
    """Bytes on disk under `folder` of files whose inode is not in `seen` (which it then joins)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            status = os.lstat(os.path.join(root, name))
            key = (status.st_dev, status.st_ino)
            if key not in seen:
                seen.add(key)
                total += status.st_blocks * 512
    return total


def main(count: int = 1000) -> list[tuple[str, str, str]]:
    require_shared()
    embedder = OnnxEmbedder(
        ModelSettings(pack=str(TEST_PACK), providers=("CPUExecutionProvider",)), FaceSettings(min_face_px=0)
    )
    sources = []
    for path in sorted((PHOTOS / "wild").rglob("*")):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        pixels = decode_image(path, max_pixels=10**9).pixels
        found = embedder.faces(DecodedImage(pixels, "JPEG"), min_face_px=0)
        if found:
            box = max(found, key=lambda f: (f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])).bbox
            sources.append((pixels, box))
    with tempfile.TemporaryDirectory() as temporary:
        base = Path(temporary)
        cache = SwapCache(base / "state" / "swap", 512, 0.5)
        cache.prepare()
        faces: dict[int, list[ExportFace]] = {}
        for face_id in range(1, count + 1):
            pixels, box = sources[face_id % len(sources)]
            variant = face_id // len(sources)
            if variant % 2:
                pixels = np.ascontiguousarray(pixels[:, ::-1])
                box = (pixels.shape[1] - box[2], box[1], pixels.shape[1] - box[0], box[3])
            shift = (variant // 2) * 0.03 * (box[2] - box[0])
            box = (box[0] + shift, box[1] + shift, box[2] + shift, box[3] + shift)
            crop = f"{face_id % 256:02x}/{face_id}.jpg"
            cache.make(crop, pixels, box)
            face = ExportFace(face_id, f"{face_id:064x}", "bench", None, crop, box, 0.9, 0.1)
            faces.setdefault(face_id // PER_SET + 1, []).append(face)
        cache_bytes = blocks(cache.directory, set())
        print(
            f"{count} faces in {len(faces)} facesets, 512 px PNGs: the cache (state_dir/swap) holds "
            f"{cache_bytes / count * 1000 / 1e6:.0f} MB per 1,000 faces"
        )
        print(f"{'bundles':>8} {'export adds (MB per 1,000 faces)':>34} {'with copies, not links':>24} {'vs both':>8}")
        results: dict[str, tuple[float, float]] = {}
        for bundles in ("both", "top", "full", "none"):
            settings = ExportSettings(format="swap", bundles=bundles)
            facesets = base / f"facesets-{bundles}"
            plans = {
                faceset_name(number): plan(number, None, members, members, {}, cache, settings, lambda face: None)
                for number, members in faces.items()
            }
            export_plans(facesets, plans)
            seen: set[tuple[int, int]] = set()
            blocks(cache.directory, seen)
            linked = blocks(facesets, seen) / count * 1000 / 1e6
            copied = blocks(facesets, set()) / count * 1000 / 1e6
            results[bundles] = (linked, copied)
        rows = []
        for bundles, (linked, copied) in results.items():
            ratio = copied / results["both"][1]
            print(f"{bundles:>8} {linked:>34.0f} {copied:>24.0f} {ratio:>8.2f}")
            rows.append(
                (f'swap export disk, bundles = "{bundles}"', f"+{linked:.0f} MB / 1,000 faces", f"{ratio:.2f} of both")
            )
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--faces", type=int, default=1000)
    main(parser.parse_args().faces)
