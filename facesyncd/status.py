"""`facesyncd status`: a read-only view of the store and the index sidecar.

Imports neither the model runtime nor hnswlib, and opens the database read-only, so it answers fast
and works while another process syncs.
"""

from __future__ import annotations

from typing import Any

from .config import Settings
from .index import read_sidecar
from .store import Store


def collect_status(settings: Settings) -> dict[str, Any]:
    store = Store(settings.database_path, readonly=True)
    try:
        data = store.status()
    finally:
        store.close()
    sidecar = read_sidecar(settings.state_dir)
    data["index"] = {
        "faces": None if sidecar is None else sidecar.get("faces"),
        "stale": sidecar is None or sidecar.get("version") != data.pop("index_version"),
    }
    configured = {source.name for source in settings.immich}
    data["sources"] = [
        {
            "name": row["name"],
            "url": row["url"],
            "watermark": row["watermark"],
            "last_sweep_at": row["last_sweep_at"],
            "last_reconcile_at": row["last_reconcile_at"],
            "last_error": row["last_error"],
            "last_error_at": row["last_error_at"],
            "configured": row["name"] in configured,
        }
        for row in data["sources"]
    ]
    data["state_dir"] = str(settings.state_dir)
    data["facesets_dir"] = str(settings.facesets_dir)
    return data


def render_status(data: dict[str, Any]) -> str:
    lines = [f"state:      {data['state_dir']}", f"facesets:   {data['facesets_dir']}"]
    assets = data["assets"]
    lines.append(
        "assets:     " + (", ".join(f"{count} {state}" for state, count in sorted(assets.items())) or "none yet")
    )
    for reason, count in sorted(data["skipped_reasons"].items()):
        lines.append(f"  skipped:  {count} {reason}")
    faces = data["faces"]
    lines.append(f"faces:      {faces['total']} ({faces['assigned']} in facesets, {faces['pending']} waiting)")
    lines.append(f"identities: {data['identities']} (highest number {data['highest_identity']})")
    index = data["index"]
    lines.append(
        f"index:      {index['faces'] if index['faces'] is not None else 'not built'} faces"
        + (" (stale: rebuilt at next sync, or run rebuild-index)" if index["stale"] else "")
    )
    last = data["last_sync"]
    if last is None:
        lines.append("last sync:  never")
    else:
        outcome = "running or interrupted" if last["ok"] is None else ("ok" if last["ok"] else "FAILED")
        lines.append(f"last sync:  {last['started_at']} -> {last['finished_at'] or '...'} {outcome}")
        if last["error"]:
            lines.append(f"  error:    {last['error']}")
    for source in data["sources"]:
        lines.append(f"source {source['name']}: {source['url']} watermark {source['watermark'] or '(none)'}")
        if source["last_error"]:
            lines.append(f"  last error at {source['last_error_at']}: {source['last_error']}")
    for problem in data["problems"]:
        lines.append(
            f"  {problem['state']}: {problem['source']}/{problem['asset_id']} "
            f"(attempts {problem['attempts']}): {problem['reason']}"
        )
    return "\n".join(lines)
