"""HTTP connections that another thread can break off at once (a stop that cannot wait for a
request's timeout): the Immich client and the Immich ML client both open theirs through this."""

from __future__ import annotations

import functools
import socket
import ssl
import threading
import weakref
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx


class SocketTracker(httpcore.NetworkBackend):
    """httpcore's network backend, keeping the sockets it opens so that a stop can shut them down.

    Closing an httpx client from another thread does not wake a read blocked in that socket (it
    waits out its timeout); shutdown() does, at once."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock = threading.Lock()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        self.track(stream.get_extra_info("socket"))
        return stream

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(path, timeout, socket_options)
        self.track(stream.get_extra_info("socket"))
        return stream

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)

    def track(self, sock: socket.socket | None) -> None:
        if sock is not None:
            with self._lock:
                self._sockets.add(sock)

    def shutdown_all(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def transport(self, *, verify: bool = True, **options: Any) -> httpx.HTTPTransport:
        """An httpx transport whose connections this tracker can shut down; `verify`: whether TLS
        certificates are checked (tls_context)."""
        transport = httpx.HTTPTransport(verify=tls_context(verify), **options)
        # httpx offers no public way to hand its connection pool a network backend; pinned httpx 0.28.
        transport._pool._network_backend = self  # noqa: SLF001
        return transport


@functools.cache
def tls_context(verify: bool) -> ssl.SSLContext:
    """The TLS settings of every connection this process opens, made once, as httpx makes them
    (its certifi bundle, or SSL_CERT_FILE / SSL_CERT_DIR as read at the first call). httpx makes
    them anew for each client it is not given them, loading the bundle of certificate authorities
    each time: 0.036 CPU-s, paid by every cycle (each opens its clients), where a cycle with nothing
    new costs about as much in all at 10,000 faces. One context serves every connection and thread."""
    return httpx.create_ssl_context(verify=verify)


def refused_certificate(problem: BaseException) -> str | None:
    """Why the server's TLS certificate was refused, when that is what made a request fail (httpx
    wraps the ssl module's error in its own): a failure no retry mends, to be said as what it is."""
    cause: BaseException | None = problem
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return str(cause.verify_message or cause.reason or cause)
        cause = cause.__cause__ or cause.__context__
    return None
