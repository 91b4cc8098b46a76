"""Logging: one line per event to stderr, as text or JSON.

Under systemd (JOURNAL_STREAM is set) text lines carry no timestamp: journald adds its own.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime

from .redact import ScrubbingFormatter


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: int, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter()
    elif os.environ.get("JOURNAL_STREAM"):
        formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Every line is scrubbed of API keys, whatever a library put in it.
    handler.setFormatter(ScrubbingFormatter(formatter))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request at INFO: keep that for --log-level debug. It never logs headers.
    logging.getLogger("httpx").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING if level > logging.DEBUG else logging.INFO)
    scheduler = logging.getLogger("apscheduler.scheduler")
    if not any(isinstance(kept, _QueuedRuns) for kept in scheduler.filters):
        scheduler.addFilter(_QueuedRuns())


class _QueuedRuns(logging.Filter):
    """The daemon's jobs share one worker thread by design: a job due while another runs waits, and
    apscheduler warns "skipped: maximum number of running instances reached" for it, every 2 s of a
    long cycle (thousands of lines in a first sync)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances" not in record.getMessage()
