"""'Same person?': pairs of facesets the user may want to merge, and why (one place decides).

Two facesets are suggested when their centres are within `max_distance` (looser than the automatic
merge's `merge_distance`: what the cycle would not merge on its own), or when they carry the same name
(case and spacing ignored: "angelina jolie" and "Angelina Jolie"). Never two the user keeps apart (a
suggestion declined, a split, a face rejected from the other) nor two with faces in one photo (two
people). Closest first; same-named pairs with no centre close enough after them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .config import IdentitySettings
from .models import FacesetSummary
from .naming import clear_names, normalised
from .store import Store


@dataclass(frozen=True)
class Suggestion:
    low: int
    high: int
    distance: float | None  # between the centres (None: unknown, a faceset without a centre yet)
    why: str  # "close faces", "same name", or both

    def as_dict(self) -> dict[str, object]:
        distance = None if self.distance is None else round(self.distance, 4)
        return {"facesets": [self.low, self.high], "distance": distance, "why": self.why}


def suggest(
    centres: Mapping[int, NDArray[np.float32]],
    names: Mapping[int, str],
    apart: set[frozenset[int]],
    max_distance: float,
    limit: int = 200,
    immich_names: Mapping[int, str] | None = None,
) -> list[Suggestion]:
    """immich_names: the name Immich's people give a faceset that did not take it (another one has
    it): the two are suggested, "Immich names both"."""
    numbers = sorted(centres)
    unit = {number: centre / max(float(np.linalg.norm(centre)), 1e-12) for number, centre in centres.items()}
    distances: dict[frozenset[int], float] = {}
    if len(numbers) >= 2:
        matrix = np.stack([unit[number] for number in numbers])
        between = 1.0 - matrix @ matrix.T
        rows, columns = np.nonzero(np.triu(between <= max_distance, k=1))
        for row, column in zip(rows.tolist(), columns.tolist(), strict=True):
            distances[frozenset((numbers[row], numbers[column]))] = float(between[row, column])
    by_name: dict[str, list[int]] = {}
    for number, name in names.items():
        if normalised(name):
            by_name.setdefault(normalised(name), []).append(number)
    named = {frozenset((a, b)) for group in by_name.values() for a in group for b in group if a < b}
    by_immich = {
        frozenset((number, other))
        for number, name in (immich_names or {}).items()
        for other in by_name.get(normalised(name), [])
        + [n for n, given in (immich_names or {}).items() if n != number and normalised(given) == normalised(name)]
        if other != number
    }
    found = []
    for pair in set(distances) | named | by_immich:
        if pair in apart:
            continue
        low, high = sorted(pair)
        reasons = (
            ("close faces", pair in distances),
            ("same name", pair in named),
            ("Immich names both", pair in by_immich),
        )
        why = " and ".join(reason for reason, holds in reasons if holds)
        distance = distances.get(pair)
        if distance is None and low in unit and high in unit:
            distance = float(1.0 - unit[low] @ unit[high])
        found.append(Suggestion(low, high, distance, why))
    found.sort(key=lambda s: (s.distance is None, s.distance if s.distance is not None else 0.0, s.low, s.high))
    return found[:limit]


def suggestions_of(
    store: Store, settings: IdentitySettings, summaries: list[FacesetSummary] | None = None
) -> list[Suggestion]:
    """The suggestions for the facesets in `store` as its last cycle left their centres (`summaries`:
    its facesets, when the caller has read them already)."""
    summaries = store.facesets() if summaries is None else summaries
    shown = {summary.number for summary in summaries if not summary.retired and not summary.hidden}
    all_names = store.identity_names()
    names = {number: name for number, name in all_names.items() if number in shown}
    centres = {number: centre for number, centre in store.centres().items() if number in shown}
    # The names Immich's people give facesets that have none of their own (cycle/names.py gives a
    # name to one faceset only: another one it would give is a question for the user).
    given = clear_names(store.name_votes(), min_faces=settings.name_min_faces, min_share=settings.name_min_share)
    immich_names = {number: name for number, name in given.items() if number not in all_names}
    return suggest(
        centres, names, store.kept_apart() | store.photos_shared(), settings.suggest_distance, immich_names=immich_names
    )
