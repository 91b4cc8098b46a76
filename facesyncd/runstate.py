"""`daemon.json` in the state directory: what the running daemon tells `status`.

Runtime facts only (pid, next poll, last cycle); nothing here is needed to rebuild state.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from .atomic import write_atomic

DAEMON_FILE = "daemon.json"


_lock = threading.Lock()


def write_daemon_file(state_dir: Path, data: dict[str, Any]) -> None:
    """Replace daemon.json whole; one writer at a time (the main thread and the job both write)."""
    with _lock:
        write_atomic(state_dir / DAEMON_FILE, json.dumps(data).encode())


def read_daemon_file(state_dir: Path) -> dict[str, Any] | None:
    """What the running daemon last wrote, if its process is still alive."""
    try:
        data = json.loads((state_dir / DAEMON_FILE).read_text(encoding="utf-8"))
        pid = int(data["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user
    except OSError:  # Windows: signal 0 is not supported the same way; trust the file
        pass
    return data if isinstance(data, dict) else None


def remove_daemon_file(state_dir: Path) -> None:
    (state_dir / DAEMON_FILE).unlink(missing_ok=True)
