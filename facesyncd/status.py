"""`facesyncd status`: a read-only view of the store and the index sidecar.

Imports neither the model runtime nor hnswlib, and opens the database read-only, so it answers fast
and works while another process syncs.
"""

from __future__ import annotations

from typing import Any

from .config import Settings
from .localtime import local_time
from .runstate import read_daemon_file
from .sidecar import read_sidecar
from .store import Store


def collect_status(settings: Settings, store: Store | None = None) -> dict[str, Any]:
    """What `status` shows; read through `store` when one is open (the metrics' scrape), else through
    a read-only connection of its own."""
    if store is not None:
        data = store.status()
    else:
        own = Store(settings.database_path, readonly=True)
        try:
            data = own.status()
        finally:
            own.close()
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
            "partner_assets": row["partner_assets"],
            # the census: when Immich's assets were last counted, and whether the key may count them
            "last_count_at": row["census_at"],
            "counting": row["census_at"] is None or row["census_offset"] is not None,
            "configured": row["name"] in configured,
        }
        for row in data["sources"]
    ]
    data["backlog"] = data["assets"].get("pending", 0) + data["assets"].get("failed", 0)
    data["daemon"] = read_daemon_file(settings.state_dir)
    report = (data["last_sync"] or {}).get("report") or {}
    data["providers"] = (data["daemon"] or {}).get("providers") or report.get("providers") or []
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
    if data.get("model"):  # the engine and model the stored embeddings came from
        lines.append(f"model:      {data['model']}, {data.get('embedding_dim') or '?'}-d embeddings")
    lines.append(f"identities: {data['identities']} (highest number {data['highest_identity']})")
    lines.append(f"backlog:    {data['backlog']} assets to process")
    daemon = data["daemon"]
    if daemon is None:
        lines.append("daemon:     not running")
    else:
        lines.append(
            f"daemon:     running, pid {daemon['pid']} since {local_time(daemon['started_at'])}, {daemon['state']}, "
            f"next poll {local_time(daemon['next_poll_at']) or '(after the job in hand)'}, "
            f"next count {local_time(daemon.get('next_sweep_at')) or '(after the job in hand)'}, "
            f"next clustering {local_time(daemon.get('next_cluster_at')) or '(after the job in hand)'}"
        )
    if data["providers"]:
        lines.append(f"providers:  {', '.join(data['providers'])}")
    if data["faces_per_second"] is not None:
        lines.append(f"throughput: {data['faces_per_second']} faces/s in the last cycle that embedded faces")
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
        started, finished = local_time(last["started_at"], seconds=True), local_time(last["finished_at"], seconds=True)
        lines.append(f"last sync:  {started} -> {finished or '...'} {outcome}")
        if last["error"]:
            lines.append(f"  error:    {last['error']}")
    for source in data["sources"]:
        lines.append(f"source {source['name']}: {source['url']} watermark {source['watermark'] or '(none)'}")
        if source["partner_assets"]:
            lines.append(
                f"  passed over {source['partner_assets']} assets of partners shown in the timeline "
                "(include_partners = true takes them)"
            )
        if not source["counting"]:
            lines.append(
                "  no count of Immich's assets (the key lacks asset.statistics): force deletes, locked-folder "
                "moves and partner changes wait for the full listing"
            )
        if source["last_error"]:
            lines.append(f"  last error at {source['last_error_at']}: {source['last_error']}")
    for problem in data["problems"]:
        lines.append(
            f"  {problem['state']}: {problem['source']}/{problem['asset_id']} "
            f"(attempts {problem['attempts']}): {problem['reason']}"
        )
    return "\n".join(lines)
