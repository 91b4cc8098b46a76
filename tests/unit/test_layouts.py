"""The export layout seam and the swap PNG cache under it."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import numpy as np

from facesyncd.config import ExportSettings
from facesyncd.crops import Crops, crop_name
from facesyncd.layouts import CropsLayout, SwapLayout, make_layout
from facesyncd.swap import PARAMETERS, SwapCache


def test_workers_cutting_pngs_after_a_size_change_lose_none(tmp_path: Path) -> None:
    """The cache set its "checked" flag before deleting the PNGs of the old size: the first worker
    deleted the folder while the others, seeing the flag, wrote into it (their PNGs vanished, or
    rmtree failed on a folder that filled up under it)."""
    directory = tmp_path / "swap"
    for index in range(3000):  # an old cache big enough that deleting it takes a while
        old = directory / f"{index % 256:02x}" / f"old_{index}.png"
        old.parent.mkdir(parents=True, exist_ok=True)
        old.write_bytes(b"old")
    (directory / PARAMETERS).write_text(json.dumps({"size": 256, "padding": 0.5}))
    cache = SwapCache(directory, size=64, padding=0.25)
    pixels = np.full((120, 120, 3), 128, np.uint8)
    start = threading.Barrier(8)
    errors: list[BaseException] = []
    crops = [crop_name(hashlib.sha256(str(index).encode()).hexdigest(), 0) for index in range(160)]

    def worker(mine: list[str]) -> None:
        try:
            start.wait()
            for crop in mine:
                cache.make(crop, pixels, (30.0, 30.0, 90.0, 90.0))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(crops[number::8],)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [crop for crop in crops if not cache.png(crop).is_file()] == []
    assert json.loads((directory / PARAMETERS).read_text()) == {"size": 64, "padding": 0.25}
    assert not list(directory.rglob("old_*.png")), "the PNGs of the old size are gone"


def test_the_layout_is_chosen_by_the_format_and_shows_what_its_folders_hold(tmp_path: Path) -> None:
    crops = Crops(tmp_path / "crops", 0.3)
    cache = SwapCache(tmp_path / "swap", size=64, padding=0.25)
    crop = crop_name("ab" * 32, 0)
    crops_layout = make_layout(ExportSettings(format="crops"), tmp_path / "facesets", crops, cache, embedder=None)  # type: ignore[arg-type]
    swap_layout = make_layout(ExportSettings(format="swap"), tmp_path / "facesets", crops, cache, embedder=None)  # type: ignore[arg-type]
    assert isinstance(crops_layout, CropsLayout) and isinstance(swap_layout, SwapLayout)
    pixels = np.full((120, 120, 3), 128, np.uint8)
    crops_layout.photo_at_hand(pixels, [crop], [(30.0, 30.0, 90.0, 90.0)])
    assert not cache.png(crop).exists(), "the crops layout cuts no PNG"
    assert swap_layout.face_file(crop) == crops.path(crop), "no PNG yet: the crop"
    swap_layout.photo_at_hand(pixels, [crop], [(30.0, 30.0, 90.0, 90.0)])
    assert swap_layout.face_file(crop) == cache.png(crop) and cache.png(crop).is_file()
    assert crops_layout.face_file(crop) == crops.path(crop)
