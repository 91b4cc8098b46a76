"""The rule by which a faceset takes a name from Immich's people (naming.py)."""

from __future__ import annotations

from facesyncd.naming import immich_name, normalised

RULE = {"min_faces": 3, "min_share": 0.6}


def test_a_clear_majority_names_the_faceset() -> None:
    assert immich_name(8, {"Angelina Jolie": 5}, **RULE) == "Angelina Jolie"
    assert immich_name(8, {"Angelina Jolie": 5, "Brad Pitt": 2}, **RULE) == "Angelina Jolie"


def test_too_few_faces_or_too_small_a_share_names_nothing() -> None:
    assert immich_name(3, {"Bob": 2}, **RULE) is None  # under 3 faces
    assert immich_name(10, {"Bob": 5}, **RULE) is None  # 50%, under 60%
    assert immich_name(5, {"Bob": 3}, **RULE) == "Bob"  # exactly 3 and 60%
    assert immich_name(0, {}, **RULE) is None


def test_a_tie_names_nothing() -> None:
    """A couple in every photo: neither name is the faceset's."""
    assert immich_name(6, {"Anna": 6, "Ben": 6}, **RULE) is None
    # each one's own faceset holds all of their photos and only some of the other's
    assert immich_name(6, {"Anna": 6, "Ben": 4}, **RULE) == "Anna"


def test_names_count_together_whatever_their_case_and_spacing() -> None:
    """A partner's person (another Immich person, the same name) counts with the user's own."""
    votes = {"Angelina Jolie": 2, "angelina  jolie": 2, "ANGELINA JOLIE": 1}
    assert normalised("  Angelina\tJOLIE ") == "angelina jolie"
    assert immich_name(6, votes, **RULE) in votes
    assert immich_name(6, votes, **RULE) in ("Angelina Jolie", "angelina  jolie")  # the most used spelling
    assert immich_name(6, {"Ann": 2, "ann": 2}, **RULE) is not None  # 4 of 6 together
    assert immich_name(6, {"": 6, " ": 6}, **RULE) is None
