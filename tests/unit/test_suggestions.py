"""Which facesets are suggested as one person (suggestions.py)."""

from __future__ import annotations

import numpy as np

from facesyncd.suggestions import suggest


def unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, np.float32)
    return vector / np.linalg.norm(vector)


CENTRES = {1: unit(1, 0, 0), 2: unit(1, 0.3, 0), 3: unit(0, 1, 0), 4: unit(0, 0, 1), 5: unit(1, 0.1, 0)}


def test_close_centres_are_suggested_closest_first_and_far_ones_not() -> None:
    found = suggest(CENTRES, {}, set(), 0.1)
    assert [(s.low, s.high) for s in found] == [(1, 5), (2, 5), (1, 2)]
    assert all(s.why == "close faces" and s.distance is not None and s.distance <= 0.1 for s in found)
    assert found[0].distance < found[-1].distance


def test_a_pair_kept_apart_is_never_suggested() -> None:
    """A suggestion declined, a split, a face rejected from the other, a photo with both."""
    found = suggest(CENTRES, {}, {frozenset((1, 5))}, 0.1)
    assert (1, 5) not in [(s.low, s.high) for s in found]


def test_the_same_name_is_a_suggestion_however_it_is_spelled() -> None:
    names = {3: "Angelina Jolie", 4: "angelina  jolie", 1: "Someone"}
    found = suggest(CENTRES, names, set(), 0.001)
    assert [(s.low, s.high, s.why) for s in found] == [(3, 4, "same name")]
    assert found[0].distance is not None and found[0].distance > 0.9  # shown, though far
    both = suggest(CENTRES, {1: "Ann", 5: "ann"}, set(), 0.1)
    assert both[0].why == "close faces and same name"
    assert suggest({}, {7: "Bob", 8: "bob"}, set(), 0.5)[0].distance is None  # no centre yet


def test_a_name_immich_gives_two_facesets_is_a_suggestion() -> None:
    """Immich's people name a faceset that did not take the name (another one has it): the two."""
    found = suggest(CENTRES, {3: "Bob"}, set(), 0.001, immich_names={4: "bob"})
    assert [(s.low, s.high, s.why) for s in found] == [(3, 4, "Immich names both")]
    both_unnamed = suggest(CENTRES, {}, set(), 0.001, immich_names={3: "Ann", 4: "ANN"})
    assert [(s.low, s.high) for s in both_unnamed] == [(3, 4)]
    assert suggest(CENTRES, {3: "Bob"}, {frozenset((3, 4))}, 0.001, immich_names={4: "Bob"}) == []
