"""Times as a person reads them: in this machine's time zone, to the minute (or second). What is
stored and what --json prints stay ISO 8601 in UTC."""

from __future__ import annotations

from datetime import datetime


def local_time(stamp: str | None, *, seconds: bool = False) -> str:
    """An ISO 8601 time (UTC, as facesyncd stores them) in the local time zone, with its offset; the
    text as it is when it is not one."""
    if not stamp:
        return ""
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    if moment.tzinfo is None:
        return stamp
    return moment.astimezone().strftime("%Y-%m-%d %H:%M" + (":%S" if seconds else "") + " %z")
