"""The last line of defence for secrets: every API key the config loaded is scrubbed from any text on
its way to a log line, an error message or the database.

Keys are validated when the config is read (printable ASCII, no whitespace), so a key should never
reach an HTTP library's error text in the first place. This module catches what slips through anyway,
in any form a library may quote it in: as is, escaped as Python's repr() writes bytes, URL-encoded,
base64, or cut into its lines.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager

REPLACEMENT = "***"
# Shorter pieces of a key are not scrubbed on their own: they would mangle ordinary words.
MIN_FRAGMENT = 6

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None


def _forms(secret: str) -> set[str]:
    forms = {
        secret,
        secret.encode("unicode_escape").decode("ascii"),
        repr(secret)[1:-1],
        repr(secret.encode("utf-8", "replace"))[2:-1],
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        base64.b64encode(secret.encode("utf-8", "replace")).decode("ascii"),
    }
    # A key with a line break or a stray byte is quoted by libraries in pieces (h11 shows the header
    # value as bytes, a log line may hold one line of it).
    forms.update(re.split(r"[\s\x00-\x1f\x7f]+|\\[nrt]", secret))
    return {form for form in forms if len(form) >= MIN_FRAGMENT}


def register(secret: str) -> None:
    """Scrub `secret` from every text passed to scrub() from now on."""
    global _pattern
    if len(secret) < MIN_FRAGMENT:
        return
    with _lock:
        if secret in _secrets:
            return
        _secrets.add(secret)
        forms = set().union(*(_forms(value) for value in _secrets))
        # Longest first, so a whole key is replaced before any of its pieces.
        _pattern = re.compile("|".join(re.escape(form) for form in sorted(forms, key=len, reverse=True)))


@contextmanager
def fresh_registry() -> Iterator[None]:
    """Inside, no secret is known yet, as in a new process; afterwards, the ones known before again.
    For a command run inside another process (the test suite runs the CLI in its own)."""
    global _pattern
    with _lock:
        saved = (set(_secrets), _pattern)
        _secrets.clear()
        _pattern = None
    try:
        yield
    finally:
        with _lock:
            _secrets.clear()
            _secrets.update(saved[0])
            _pattern = saved[1]


def scrub(text: str) -> str:
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(REPLACEMENT, text)


class ScrubbingFormatter(logging.Formatter):
    """Wraps the formatter of a log handler: the whole formatted line, traceback included, is scrubbed."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return scrub(self.inner.format(record))
