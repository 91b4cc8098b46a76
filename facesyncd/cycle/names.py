"""Names from Immich: an unnamed faceset takes the name of the Immich person most of its photos show
(naming.py decides which); the name and where it came from are in the history, and `undo` declines it
for good. Nothing is written to Immich."""

from __future__ import annotations

import json
import logging

from ..config import IdentitySettings
from ..curation import NameRecord
from ..models import CycleReport
from ..naming import clear_names, normalised
from ..store import Store
from .unchanged import NAMES, as_left, finished, unchanged

log = logging.getLogger(__name__)


def adopt_immich_names(store: Store, settings: IdentitySettings, report: CycleReport) -> dict[int, str]:
    """Name the facesets Immich's people name clearly; returns number -> the name each took (to be
    written into NAME.txt before the folders are exported). A name another live faceset has is not
    taken twice: the two may be one person, which is the user's to decide. Not counted again while
    nothing in the store changed since the last count."""
    if unchanged(store, NAMES, settings.name_min_faces, settings.name_min_share):
        return {}
    # Only the facesets whose votes may have changed are counted again (their marks: migrations/0022),
    # while the settings are those of the last count and no name was given up since (one that was may
    # be taken now by a faceset it kept from it); a faceset not marked would decide as it did.
    upto, marked = store.name_marks()
    names = store.identity_names()
    before = _taken(names)
    recorded = store.get_meta(_TAKEN)
    whole = (
        not as_left(store, NAMES, settings.name_min_faces, settings.name_min_share)
        or not recorded
        or bool(set(json.loads(recorded)) - before)
    )
    named = _adopt(store, settings, report, None if whole else marked, names)
    after = _taken(store.identity_names())
    store.set_meta(_TAKEN, "" if before - after else json.dumps(sorted(after)))  # a name given up: whole next
    store.clear_name_marks(upto)
    finished(store, NAMES, settings.name_min_faces, settings.name_min_share)
    return named


# The names the facesets had when the last count ended (JSON; "": the next count is whole).
_TAKEN = "names_taken"


def _taken(names: dict[int, str]) -> set[str]:
    return {normalised(name) for name in names.values()}


def _adopt(
    store: Store,
    settings: IdentitySettings,
    report: CycleReport,
    among: frozenset[int] | None,
    names: dict[int, str],
) -> dict[int, str]:
    """`names`: the facesets' names as the count begins."""
    taken = _taken(names)
    votes = store.name_votes(among)
    named: dict[int, str] = {}
    for number, name in clear_names(
        votes, min_faces=settings.name_min_faces, min_share=settings.name_min_share
    ).items():
        current = names.get(number)
        if name == current:
            continue
        if normalised(name) in taken and (current is None or normalised(name) != normalised(current)):
            log.info("faceset %03d: Immich's %r is another faceset's name already; not taken", number, name)
            continue
        faces, counted = votes[number]
        shown = sum(count for spelled, count in counted.items() if normalised(spelled) == normalised(name))
        said = f"named faceset {number:03d} {name!r} after Immich's people ({shown} of its {faces} faces' photos)"
        with store.transaction():
            store.set_name(number, name, origin="immich")
            store.record_correction("name", said, NameRecord(number, current).written())
        taken.add(normalised(name))
        named[number] = name
        log.info("%s", said)
    report.names_adopted += len(named)
    return named
