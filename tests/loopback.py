"""A threaded HTTP server on loopback, in a daemon thread, that a test can stop and start again (the
test doubles of Immich and of its ML service both serve through one)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackServer:
    def __init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "not listening"
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def serve(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> tuple[str, int]:
        """Listen on `address` (port 0: any free one) and answer with `handler`; returns the address."""
        self._server = ThreadingHTTPServer(address, handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.address

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
