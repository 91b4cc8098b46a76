"""/metrics: Prometheus gauges read from the store at each scrape (one read-only connection)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from ..config import Settings
from ..status import collect_status
from ..store import Store


class Collector:
    """Reads the store when Prometheus scrapes: the database is opened once per scrape."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        database = Store(self._settings.database_path, readonly=True)
        try:
            data = collect_status(self._settings, database)
            health = database.health()
        finally:
            database.close()
        assets = GaugeMetricFamily("facesyncd_assets", "Assets per state", labels=["state"])
        for state, count in data["assets"].items():
            assets.add_metric([state], count)
        yield assets
        faces = GaugeMetricFamily("facesyncd_faces", "Faces, by whether they are in a faceset", labels=["kind"])
        faces.add_metric(["assigned"], data["faces"]["assigned"])
        faces.add_metric(["pending"], data["faces"]["pending"])
        yield faces
        yield GaugeMetricFamily("facesyncd_identities", "Facesets (live identities)", value=data["identities"])
        if health["last_cycle_seconds"] is not None:
            yield GaugeMetricFamily(
                "facesyncd_cycle_duration_seconds", "Length of the last cycle", value=health["last_cycle_seconds"]
            )
        if data["faces_per_second"] is not None:
            yield GaugeMetricFamily(
                "facesyncd_faces_per_second", "Faces embedded per second, last cycle", value=data["faces_per_second"]
            )
        errors = GaugeMetricFamily(
            "facesyncd_source_errors",
            "Assets failing per source, and 1 while a source fails",
            labels=["source", "kind"],
        )
        for source in data["sources"]:
            errors.add_metric([source["name"], "assets"], health["failing_by_source"].get(source["name"], 0))
            errors.add_metric([source["name"], "source"], 1 if source["last_error"] else 0)
        yield errors
        if health["last_success_at"]:
            at = datetime.fromisoformat(health["last_success_at"].replace("Z", "+00:00")).timestamp()
            yield GaugeMetricFamily(
                "facesyncd_last_success_timestamp_seconds", "When the last sync succeeded", value=at
            )


def registry(settings: Settings) -> Any:
    """A registry whose one collector reads the store at each scrape."""
    from prometheus_client.core import CollectorRegistry

    found = CollectorRegistry(auto_describe=False)
    found.register(Collector(settings))
    return found
