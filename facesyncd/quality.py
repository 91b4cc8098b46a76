"""How good a face is for a face-swap set: five parts, each in 0..1, and their weighted composite.

Computed once, when a face is embedded, from the pixels of the photo and the five landmarks the
detector gives (eyes, nose tip, mouth corners), and stored. Faces are never dropped for a low score:
`[export] min_quality` only leaves them out of an exported set. The weights are the older pipeline's.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from numpy.typing import NDArray

from .models import Box, Quality

# A face whose box is this many pixels on its short side fills a 512 px PNG padded by half its size on
# each side (512 / (1 + 2 * 0.5)) without being enlarged: full marks for size from here on.
FULL_SIZE_PX = 256
# The face region is measured at this size, so sharpness does not depend on the photo's resolution.
BLUR_SIDE = 112
# Laplacian variance of a sharp 112 px face is in the hundreds; this is where the score reaches 0.63.
BLUR_SCALE = 150.0
# The nose tip's height between the eyes and the mouth, as a fraction of that height, where SCRFD puts
# it on faces looking into the camera (median 0.58 over the portraits of the test photos; ArcFace's
# alignment template says 0.49): looking up or down moves it.
FRONTAL_NOSE_HEIGHT = 0.58
PITCH_RANGE = 0.35  # a ratio this far from frontal scores 0


def assess(
    pixels: NDArray[np.uint8],
    box: Box,
    landmarks: Sequence[tuple[float, float]] | NDArray[np.float64],
    det_score: float,
) -> Quality:
    """The quality of the face at `box` (with its five landmarks and detector score) in these pixels.
    Without landmarks (Immich's ML service gives none) frontality and symmetry are not measured."""
    points = np.asarray(landmarks, np.float64).reshape(5, 2) if len(landmarks) else None
    return Quality(
        det_score=float(np.clip(det_score, 0.0, 1.0)),
        size=size_score(box),
        blur=blur_score(pixels, box),
        frontality=None if points is None else frontality_score(points),
        symmetry=None if points is None else symmetry_score(points),
    )


def size_score(box: Box) -> float:
    """The box's short side over FULL_SIZE_PX, at most 1."""
    short = min(box[2] - box[0], box[3] - box[1])
    return float(np.clip(short / FULL_SIZE_PX, 0.0, 1.0))


def blur_score(pixels: NDArray[np.uint8], box: Box) -> float:
    """Sharpness: the variance of the Laplacian of the face box in grey, resized to BLUR_SIDE pixels
    (so a large face is not favoured for its size alone), mapped to 0..1 as 1 - exp(-v / BLUR_SCALE)."""
    height, width = pixels.shape[:2]
    x1, y1 = max(0, int(box[0])), max(0, int(box[1]))
    x2, y2 = min(width, int(round(box[2]))), min(height, int(round(box[3])))
    if x2 - x1 < 4 or y2 - y1 < 4:
        return 0.0
    region = pixels[y1:y2, x1:x2]
    grey = cv2.cvtColor(np.ascontiguousarray(region), cv2.COLOR_BGR2GRAY) if region.ndim == 3 else region
    grey = cv2.resize(grey, (BLUR_SIDE, BLUR_SIDE), interpolation=cv2.INTER_AREA)
    variance = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    return float(1.0 - np.exp(-variance / BLUR_SCALE))


def _upright(points: NDArray[np.float64]) -> tuple[NDArray[np.float64], float]:
    """The landmarks rotated so the eyes are level, centred on the eyes' midpoint; and the eye
    distance (0 for a degenerate face)."""
    left, right = points[0], points[1]
    distance = float(np.hypot(*(right - left)))
    if distance < 1e-6:
        return points - points.mean(axis=0), 0.0
    angle = np.arctan2(right[1] - left[1], right[0] - left[0])
    rotation = np.array([[np.cos(-angle), -np.sin(-angle)], [np.sin(-angle), np.cos(-angle)]])
    return (points - (left + right) / 2) @ rotation.T, distance


def frontality_score(points: NDArray[np.float64]) -> float:
    """How squarely the face looks at the camera, from the landmarks in the eye-level frame: yaw is the
    nose tip's sideways offset from the eyes' midpoint over half the eye distance (0 frontal, about
    1 in profile); pitch is the nose tip's height between eyes and mouth against the frontal template.
    Score: (1 - yaw) x (1 - pitch deviation / PITCH_RANGE), each clipped to 0..1."""
    upright, distance = _upright(points)
    if distance == 0:
        return 0.0
    nose, mouth = upright[2], (upright[3] + upright[4]) / 2
    yaw = min(1.0, abs(nose[0]) / (distance / 2))
    height = mouth[1]
    pitch = 1.0 if height <= 1e-6 else min(1.0, abs(nose[1] / height - FRONTAL_NOSE_HEIGHT) / PITCH_RANGE)
    return float((1.0 - yaw) * (1.0 - pitch))


def symmetry_score(points: NDArray[np.float64]) -> float:
    """How well the landmarks mirror themselves across the face's midline (through the eyes' and the
    mouth's midpoints): the left eye onto the right, the mouth corners onto each other, the nose onto
    the line. The mean miss over the eye distance, 0 -> 1 and 0.5 or more -> 0. A mirrored photo scores
    the same."""
    upright, distance = _upright(points)
    if distance == 0:
        return 0.0
    eyes_mid = (upright[0] + upright[1]) / 2
    mouth_mid = (upright[3] + upright[4]) / 2
    axis = mouth_mid - eyes_mid
    length = float(np.hypot(*axis))
    if length < 1e-6:
        return 0.0
    axis /= length
    normal = np.array([-axis[1], axis[0]])

    def mirrored(point: NDArray[np.float64]) -> NDArray[np.float64]:
        offset = point - eyes_mid
        return point - 2 * float(offset @ normal) * normal

    misses = [
        np.hypot(*(mirrored(upright[0]) - upright[1])),
        np.hypot(*(mirrored(upright[3]) - upright[4])),
        2 * abs(float((upright[2] - eyes_mid) @ normal)),
    ]
    return float(np.clip(1.0 - float(np.mean(misses)) / distance / 0.5, 0.0, 1.0))
