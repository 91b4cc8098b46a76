"""A threaded HTTP server on loopback, in a daemon thread, that a test can stop and start again (the
test doubles of Immich and of its ML service both serve through one)."""

from __future__ import annotations

import ssl
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _QuietServer(ThreadingHTTPServer):
    """A handler's exception (a client that hung up mid-answer, as the fault tests make them do) is
    kept, not printed: socketserver prints it to sys.stderr, which a facesyncd command run in the
    test's process is capturing as its own output."""

    daemon_threads = True
    errors: list[str]

    def handle_error(self, request: object, client_address: object) -> None:
        self.errors.append(traceback.format_exc())


class LoopbackServer:
    def __init__(self) -> None:
        self._server: ThreadingHTTPServer | None = None
        self.errors: list[str] = []  # what the handlers raised, for a test that wants to know

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "not listening"
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def serve(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None
    ) -> tuple[str, int]:
        """Listen on `address` (port 0: any free one) and answer with `handler`; returns the address.
        With `tls`, over TLS (a client that refuses the certificate fails its handshake: a kept
        error, see _QuietServer)."""
        self._server = _QuietServer(address, handler)
        self._server.errors = self.errors
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.address

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
