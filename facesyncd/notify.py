"""systemd's sd_notify protocol in a few lines of Python (no libsystemd needed).

Under `Type=notify` systemd sets $NOTIFY_SOCKET; messages are datagrams like "READY=1". With
`WatchdogSec=` it also sets $WATCHDOG_USEC, and expects "WATCHDOG=1" at least that often. Outside
systemd every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        environment = os.environ if environ is None else environ
        address = environment.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self._address = address or None
        watchdog = environment.get("WATCHDOG_USEC", "")
        watchdog_pid = environment.get("WATCHDOG_PID", "")
        mine = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_seconds = int(watchdog) / 1_000_000 if watchdog.isdigit() and mine else None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, **fields: str | int) -> None:
        if self._address is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall(message)
        except OSError as error:  # never let the service manager's socket stop the work
            log.debug("sd_notify failed: %s", error)

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def watchdog(self) -> None:
        self.send(WATCHDOG=1)

    def reloading(self) -> None:
        self.send(RELOADING=1)

    def stopping(self) -> None:
        self.send(STOPPING=1)
