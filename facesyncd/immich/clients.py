"""The Immich clients in use, so that a stop can break off their requests from another thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..config import ImmichSettings
from .client import ImmichClient

ClientFactory = Callable[[ImmichSettings], ImmichClient]


class ClientSet:
    """The Immich clients in use, so that a stop can break off their requests from another thread."""

    def __init__(self, factory: ClientFactory) -> None:
        self._factory = factory
        self._open: set[ImmichClient] = set()
        self._lock = threading.Lock()

    @contextmanager
    def open(self, source: ImmichSettings) -> Iterator[ImmichClient]:
        client = self._factory(source)
        with self._lock:
            self._open.add(client)
        try:
            yield client
        finally:
            with self._lock:
                self._open.discard(client)
            client.close()

    def abort(self) -> None:
        """Break off every request in flight (their sockets are shut down)."""
        with self._lock:
            clients = list(self._open)
        for client in clients:
            client.close()
