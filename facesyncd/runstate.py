"""`daemon.json` in the state directory: what the running daemon tells `status`.

Runtime facts only (pid, next poll, last cycle); nothing here is needed to rebuild state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

DAEMON_FILE = "daemon.json"


def write_daemon_file(state_dir: Path, data: dict[str, Any]) -> None:
    path = state_dir / DAEMON_FILE
    temporary = path.with_name(f".{DAEMON_FILE}.{os.getpid()}")
    temporary.write_text(json.dumps(data), encoding="utf-8")
    os.replace(temporary, path)


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
