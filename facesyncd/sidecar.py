"""The index's file names and its sidecar (what the index was built from), without numpy or
hnswlib, so `status` can read them in a few milliseconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

INDEX_FILE = "faces.hnsw"
SIDECAR_FILE = "faces.hnsw.json"
LOCK_FILE = "faces.hnsw.lock"


def read_sidecar(state_dir: Path) -> dict[str, Any] | None:
    """The sidecar alone (no hnswlib import): what `status` shows."""
    try:
        data = json.loads((state_dir / SIDECAR_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
