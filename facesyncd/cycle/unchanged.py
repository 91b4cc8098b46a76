"""Steps a cycle skips when nothing they read has changed since they last ran to the end.

The store counts every change clustering, merging or the export could see (meta 'generation', kept
by triggers: migrations/0014). A step records the generation it finished at, with a signature of the
settings (and, for the export, of the folders) it depended on; while both are the same, running it
again would change nothing, so a cycle with nothing new costs its two requests, not the library.
The export goes further: it keeps marks of the faces and facesets that changed (migrations/0020), and
while the settings and the folders are as it left them, it writes those alone. It records what it saw
of the folders whole (remember_seen), not a signature, so that when the user changed some by hand it
compares those alone.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..store import Store

CLUSTER = "cluster"
MERGE = "merge"
NAMES = "names"
PUBLISH = "publish"


def _signature(values: tuple[object, ...]) -> str:
    return hashlib.sha256(repr(values).encode()).hexdigest()[:16]


def _key(step: str) -> str:
    return f"unchanged:{step}"


def unchanged(store: Store, step: str, *values: object) -> bool:
    """Whether `step` last finished at the store's present generation, with these values."""
    return store.get_meta(_key(step)) == f"{store.generation()}|{_signature(values)}"


def as_left(store: Store, step: str, *values: object) -> bool:
    """Whether `step` last finished with these values, whatever the store did since: for a step that
    keeps its own marks of what changed in the store (the export: migrations/0020)."""
    recorded = store.get_meta(_key(step))
    return recorded is not None and recorded.partition("|")[2] == _signature(values)


def finished(store: Store, step: str, *values: object) -> None:
    """`step` ran to the end: at this generation (its own writes included), with these values."""
    store.set_meta(_key(step), f"{store.generation()}|{_signature(values)}")


def remember_seen(store: Store, step: str, values: tuple[object, ...], seen: Any) -> None:
    """`step` ran to the end with these `values`, and saw `seen`: kept whole (as JSON) in place of
    finished's record, so that a later run can tell what changed in it (seen_with). For a step that
    keeps its own marks of what changed in the store (the export), as as_left's."""
    store.set_meta(_key(step), f"{_signature(values)}|{_seen_text(seen)}")


def seen_with(store: Store, step: str, values: tuple[object, ...], now: Any) -> Any | None:
    """What `step` saw when it last ran to the end (remember_seen), if that was with these `values`;
    else None. `now` itself when it is what was seen (then not read back: the export's look at 3,000
    folders is 270 KB of JSON)."""
    recorded = store.get_meta(_key(step))
    if recorded is None:
        return None
    signature, _, seen = recorded.partition("|")
    if signature != _signature(values):
        return None
    return now if seen == _seen_text(now) else json.loads(seen)


def _seen_text(seen: Any) -> str:
    return json.dumps(seen, separators=(",", ":"))
