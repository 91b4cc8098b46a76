"""Face boxes compared: plain Python, so that the store (and `status`) can use it without numpy."""

from __future__ import annotations

from .models import Box


def overlap(first: Box, second: Box) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 for boxes without area."""
    width = min(first[2], second[2]) - max(first[0], second[0])
    height = min(first[3], second[3]) - max(first[1], second[1])
    if width <= 0 or height <= 0:
        return 0.0
    intersection = width * height
    union = (first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (second[3] - second[1])
    return intersection / (union - intersection) if union > intersection else 0.0


def clip(box: Box, width: float, height: float) -> Box:
    """The box cut to a width x height image."""
    return (max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]), min(float(height), box[3]))
