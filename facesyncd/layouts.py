"""The export layout seam: what a faceset folder holds, chosen once (app.py) from [export] format.

    crops  every live face's crop and faceset.json (export.py)
    swap   the faces a face-swap tool should get, one checked PNG each, best first, the .fsz bundles
           and manifest.json (swap.py chooses them and checks each PNG with the detector)

The stage, publish, the importer and the contact sheet speak to the Layout protocol; only
make_layout names a layout, so no other module asks which format is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from .config import ExportSettings
from .crops import Crops
from .embedder import Embedder
from .export import NAME_FILE, export_all, export_plans, folders, no_link, own_facesets, update_marked
from .imaging import DecodedImage
from .models import Box, ExportFace
from .swap import NO_PNG, SwapCache, plan, select

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Library:
    """What a layout reads from the rest of facesyncd while it writes the folders: the store's names,
    embeddings and retired numbers (-> where their faces went), a face's photo fetched again (None
    when it cannot be had) and its page in Immich's web app."""

    names: Callable[[], dict[int, str]]
    set_names: Callable[[dict[int, str | None]], None]
    embeddings_of: Callable[[list[int]], dict[int, NDArray[np.float32]]]
    photo_of: Callable[[ExportFace], DecodedImage | None]
    link_of: Callable[[ExportFace], str | None] = no_link
    retired: Callable[[], dict[int, int]] = dict


# Reads the export rows of these faces, by faceset (those still in one, good enough to export).
FacesOf = Callable[[Collection[int]], dict[int, list[ExportFace]]]


class Layout(Protocol):
    def prepare(self) -> None:
        """Before any worker writes for this layout (the stage's workers cut swap PNGs): its caches
        are made to match the settings, once, on the calling thread."""
        ...

    def photo_at_hand(self, pixels: NDArray[np.uint8], crops: Sequence[str], boxes: Sequence[Box]) -> None:
        """A photo is decoded (embedding, importing): keep what this layout cuts from it, so that it
        is not fetched again at the export. Runs on worker threads."""
        ...

    def face_file(self, crop: str) -> Path:
        """The picture of this face its folder shows (for the contact sheet)."""
        ...

    def write(
        self, faces: dict[int, list[ExportFace]], highest: int, library: Library, only: frozenset[int] | None = None
    ) -> tuple[int, bool]:
        """Bring every faceset folder in line with `faces` (with `only`: the folders of those numbers,
        whose faces `faces` holds; a correction touches a few); returns how many folders were written,
        and whether every face got its file (False: a photo could not be had; the next export tries
        again even if nothing else changed)."""
        ...

    def write_marked(
        self, marked: Mapping[int, frozenset[int]], faces_of: FacesOf, library: Library
    ) -> tuple[frozenset[int], int]:
        """Bring the folders of the `marked` facesets (number -> ids of its faces that changed) in line
        from those faces alone (`faces_of` reads their rows as `write` gets them), where the layout
        and the folder allow it; only called while every folder is as the last export left it.
        Returns the facesets done and how many folders were written; the caller writes the others
        whole (`write`)."""
        ...


class CropsLayout:
    def __init__(self, facesets_dir: Path, crops: Crops) -> None:
        self._facesets_dir = facesets_dir
        self._crops = crops

    def prepare(self) -> None:
        pass

    def photo_at_hand(self, pixels: NDArray[np.uint8], crops: Sequence[str], boxes: Sequence[Box]) -> None:
        pass  # the crops themselves are cut for every layout (crops.py)

    def face_file(self, crop: str) -> Path:
        return self._crops.path(crop)

    def write(
        self, faces: dict[int, list[ExportFace]], highest: int, library: Library, only: frozenset[int] | None = None
    ) -> tuple[int, bool]:
        """The crops, linked into the folders. Crops that went missing (state_dir/crops deleted, a
        disk fault) are restored first, from a copy in an exported folder if there is one, else cut
        again from the photo in Immich; a face whose crop cannot come back stays out of its folder
        and is tried again next cycle."""
        missing: list[ExportFace] = []
        complete = True
        names = library.names()
        crops_dir = self._crops.directory
        written = export_all(
            self._facesets_dir,
            crops_dir,
            faces,
            missing,
            highest_number=highest,
            names=names,
            only=only,
            link_of=library.link_of,
        )
        if missing:

            def photo_of(face: ExportFace) -> DecodedImage | None:
                photo = library.photo_of(face)
                if photo is None:
                    log.warning("the crop of face %d is gone and its photo cannot be had again", face.face_id)
                return photo

            restored = self._crops.restore(missing, self._facesets_dir, photo_of)
            log.warning("%d face crops were missing; %d restored", len(missing), restored)
            complete = restored == len(missing)
            written += export_all(
                self._facesets_dir,
                crops_dir,
                faces,
                highest_number=highest,
                names=names,
                only=only,
                link_of=library.link_of,
            )
        return written, complete

    def write_marked(
        self, marked: Mapping[int, frozenset[int]], faces_of: FacesOf, library: Library
    ) -> tuple[frozenset[int], int]:
        if not marked:
            return frozenset(), 0
        faces = faces_of({face_id for ids in marked.values() for face_id in ids})
        return update_marked(self._facesets_dir, self._crops.directory, marked, faces, library.link_of)


class SwapLayout:
    def __init__(
        self, facesets_dir: Path, crops: Crops, cache: SwapCache, embedder: Embedder, settings: ExportSettings
    ) -> None:
        self._facesets_dir = facesets_dir
        self._crops = crops
        self._cache = cache
        self._embedder = embedder
        self._settings = settings

    def prepare(self) -> None:
        self._cache.prepare()

    def photo_at_hand(self, pixels: NDArray[np.uint8], crops: Sequence[str], boxes: Sequence[Box]) -> None:
        for crop, box in zip(crops, boxes, strict=True):
            self._cache.make(crop, pixels, box)

    def face_file(self, crop: str) -> Path:
        png = self._cache.png(crop)
        return png if png.is_file() else self._crops.path(crop)

    def write(
        self, faces: dict[int, list[ExportFace]], highest: int, library: Library, only: frozenset[int] | None = None
    ) -> tuple[int, bool]:
        """Each faceset's chosen faces (swap.select), their checked PNGs (made now for faces that have
        none: from the photo in Immich, or the crop of an imported face), the bundles."""
        self._read_names(library, only)
        names = library.names()
        embeddings = library.embeddings_of([face.face_id for members in faces.values() for face in members])
        wanted = folders(faces)
        choices = {folder: select(members, embeddings, 0.0) for folder, (_, _, members) in wanted.items()}
        needed = [face for chosen, _ in choices.values() for face in chosen if not self._cache.has(face.crop)]
        if needed:
            made = self._make_pngs(needed, library)
            log.info("made the swap PNGs of %d faces (%d asked for)", made, len(needed))
        for chosen, _ in choices.values():
            for face in chosen:
                self._cache.check(face.crop, face.bbox, self._embedder)
        plans = {
            folder: plan(
                number,
                names.get(number),
                members,
                *choices[folder],
                self._cache,
                self._settings,
                library.link_of,
                subset,
            )
            for folder, (number, subset, members) in wanted.items()
        }
        written = export_plans(self._facesets_dir, plans, highest_number=highest, only=only, retired=library.retired())
        waiting = any(entry["why"] == NO_PNG for each in plans.values() for entry in each.manifest["left_out"])
        return written, not waiting

    def write_marked(
        self, marked: Mapping[int, frozenset[int]], faces_of: FacesOf, library: Library
    ) -> tuple[frozenset[int], int]:
        return frozenset(), 0  # one face changed can change which faces a folder gets, and their ranks

    def _read_names(self, library: Library, only: frozenset[int] | None) -> None:
        """A name the user wrote into a faceset's NAME.txt is the faceset's name from then on."""
        known = library.names()
        found: dict[int, str | None] = {}
        for number, folder in own_facesets(self._facesets_dir, only).items():
            try:
                name = (folder / NAME_FILE).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                continue
            if name and name != known.get(number):
                found[number] = name
        if found:
            library.set_names(found)

    def _make_pngs(self, faces: list[ExportFace], library: Library) -> int:
        """Cut the swap PNG of each face: from its photo in Immich, fetched once per photo; a face
        with no photo in Immich (imported) from its crop."""
        made = 0
        by_blob: dict[str, list[ExportFace]] = {}
        for face in faces:
            by_blob.setdefault(face.sha256, []).append(face)
        for members in by_blob.values():
            image = library.photo_of(members[0])
            for face in members:
                if image is not None:
                    self._cache.make(face.crop, image.pixels, face.bbox)
                    made += 1
                    continue
                crop = self._crops.crop_image(face)
                if crop is not None:
                    self._cache.make(face.crop, crop[0].pixels, crop[1])
                    made += 1
        return made


def make_layout(
    settings: ExportSettings, facesets_dir: Path, crops: Crops, cache: SwapCache, embedder: Embedder
) -> Layout:
    if settings.format == "swap":
        return SwapLayout(facesets_dir, crops, cache, embedder, settings)
    return CropsLayout(facesets_dir, crops)
