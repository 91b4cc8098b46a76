"""A contact sheet: one faceset's faces on one PNG, best first, each with its face id and quality."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import NDArray

TILE = 160  # pixels per face
CAPTION = 22  # pixels under each face for its caption
COLUMNS = 6
BACKGROUND = (32, 32, 32)
INK = (235, 235, 235)


def _fit(pixels: NDArray[np.uint8], side: int) -> NDArray[np.uint8]:
    """The image scaled to fit a side x side square, centred on the background."""
    height, width = pixels.shape[:2]
    scale = side / max(height, width)
    resized = cv2.resize(
        pixels, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
    )
    tile = np.full((side, side, 3), BACKGROUND, np.uint8)
    top, left = (side - resized.shape[0]) // 2, (side - resized.shape[1]) // 2
    tile[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
    return tile


def contact_sheet(faces: Sequence[tuple[NDArray[np.uint8], str]], title: str) -> bytes:
    """A PNG of the faces (BGR pixels, caption), COLUMNS to a row, under a title line."""
    columns = max(1, min(COLUMNS, len(faces)))
    rows = max(1, math.ceil(len(faces) / columns))
    header = 34
    sheet = np.full((header + rows * (TILE + CAPTION), columns * TILE, 3), BACKGROUND, np.uint8)
    cv2.putText(sheet, title, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, INK, 1, cv2.LINE_AA)
    for position, (pixels, caption) in enumerate(faces):
        row, column = divmod(position, columns)
        top, left = header + row * (TILE + CAPTION), column * TILE
        sheet[top : top + TILE, left : left + TILE] = _fit(pixels, TILE)
        cv2.putText(sheet, caption, (left + 6, top + TILE + 16), cv2.FONT_HERSHEY_SIMPLEX, 0.42, INK, 1, cv2.LINE_AA)
    ok, encoded = cv2.imencode(".png", sheet)
    if not ok:
        raise ValueError("cannot encode the contact sheet")
    return bytes(encoded.tobytes())
