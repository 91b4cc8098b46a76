"""Steps a cycle skips when nothing they read has changed since they last ran to the end.

The store counts every change clustering, merging or the export could see (meta 'generation', kept
by triggers: migrations/0014). A step records the generation it finished at, with a signature of the
settings (and, for the export, of the folders) it depended on; while both are the same, running it
again would change nothing, so a cycle with nothing new costs its two requests, not the library.
The export goes further: it keeps marks of the faces and facesets that changed (migrations/0020), and
while the settings and the folders are as it left them, it writes those alone. It also keeps what it
saw of the folders (remember_seen), so that when the user changed some by hand it compares those alone.
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
    """What `step` saw when it last finished, kept whole (as JSON) beside a signature of `values`, so
    that a later run can tell what changed in it while the `values` stayed the same (seen_with)."""
    store.set_meta(_key(step) + ":seen", f"{_signature(values)}|{json.dumps(seen, separators=(',', ':'))}")


def seen_with(store: Store, step: str, values: tuple[object, ...]) -> Any | None:
    """What remember_seen kept for `step`, if it was kept with these `values`; else None."""
    recorded = store.get_meta(_key(step) + ":seen")
    if recorded is None:
        return None
    signature, _, seen = recorded.partition("|")
    return json.loads(seen) if signature == _signature(values) else None
