"""Names from Immich: which name a faceset takes from the people Immich shows in its photos.

Immich knows names (its people, named by the user in Immich); facesyncd only reads them. A faceset
with no name given in facesyncd takes the name of the Immich person that clearly most of its faces'
photos show: at least `min_faces` of them, at least `min_share` of its faces, and more than any other
name (a tie names nothing). Photos are counted, not face boxes: a photo of a couple shows both, but
each one's faceset holds all of their own photos and only some of the other's. Names are compared
with case and spacing ignored, so a partner's person named like one of the user's counts the same.
"""

from __future__ import annotations

from collections.abc import Mapping


def normalised(name: str) -> str:
    """How two names are compared: case and spacing ignored."""
    return " ".join(name.split()).casefold()


def clear_names(
    votes: Mapping[int, tuple[int, Mapping[str, int]]], *, min_faces: int, min_share: float
) -> dict[int, str]:
    """For each faceset (number -> its faces, and its votes as immich_name takes them), the name
    Immich's people clearly give it; facesets with none left out."""
    found = {}
    for number, (faces, counted) in sorted(votes.items()):
        name = immich_name(faces, counted, min_faces=min_faces, min_share=min_share)
        if name is not None:
            found[number] = name
    return found


def immich_name(faces: int, votes: Mapping[str, int], *, min_faces: int, min_share: float) -> str | None:
    """The name a faceset of `faces` faces takes, given per Immich person's name how many of its faces'
    photos show that person (`votes`); None when no name is clear."""
    grouped: dict[str, tuple[int, str, int]] = {}  # normalised -> (faces, most used spelling, its count)
    for name, count in votes.items():
        key = normalised(name)
        if not key:
            continue
        total, spelling, best = grouped.get(key, (0, name, 0))
        grouped[key] = (total + count, name if count > best else spelling, max(best, count))
    ranked = sorted(grouped.values(), key=lambda entry: -entry[0])
    if not ranked:
        return None
    count, spelling, _ = ranked[0]
    if count < min_faces or count < min_share * faces:
        return None
    if len(ranked) > 1 and ranked[1][0] == count:
        return None
    return spelling
