"""How the review page and the CLI order and find facesets and faces: one place for both.

The first of each tuple of sorts is the default."""

from __future__ import annotations

from collections.abc import Mapping

from .models import FaceDetail, FacesetSummary

GRID_SORTS = ("number", "size", "changed", "name")
FACE_SORTS = ("quality", "distance", "date", "id")


def sorted_sets(sets: list[FacesetSummary], sort: str) -> list[FacesetSummary]:
    if sort == "size":
        return sorted(sets, key=lambda s: (-s.faces, s.number))
    if sort == "changed":
        return sorted(sets, key=lambda s: (s.last_change or "", s.number), reverse=True)
    if sort == "name":
        return sorted(sets, key=lambda s: (s.name is None, (s.name or "").casefold(), s.number))
    return sorted(sets, key=lambda s: s.number)


def matches(summary: FacesetSummary, query: str) -> bool:
    """A search: a number finds that faceset (001 or 1), anything else a name that holds it."""
    if not query:
        return True
    if query.isdigit():
        return summary.number == int(query)
    return query.casefold() in (summary.name or "").casefold()


def sorted_faces(
    faces: list[FaceDetail], sort: str, from_centre: Mapping[int, float] | None = None
) -> list[FaceDetail]:
    """from_centre: each face's distance from its faceset's centre (what the export decides by);
    without it, the distance it was assigned at."""
    if sort == "distance":  # farthest first: where the faces that are not this person are

        def distance(face: FaceDetail) -> float:
            if from_centre is not None and face.face_id in from_centre:
                return from_centre[face.face_id]
            return face.distance if face.distance is not None else -1.0

        return sorted(faces, key=lambda f: (-distance(f), f.face_id))
    if sort == "date":  # newest first
        return sorted(faces, key=lambda f: (f.taken or "", f.face_id), reverse=True)
    if sort == "id":
        return sorted(faces, key=lambda f: f.face_id)
    return sorted(faces, key=lambda f: (-(f.quality or 0.0), f.face_id))
