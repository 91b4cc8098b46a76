"""Progress is reported, not printed: core code takes a Reporter; the CLI passes a progress bar,
the daemon a logger."""

from __future__ import annotations

import logging
import sys
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def stage(self, name: str, total: int | None) -> None:
        """A stage begins (the one before it is complete)."""
        ...

    def advance(self, count: int = 1) -> None: ...

    def done(self) -> None:
        """The work completed: the last stage is complete."""
        ...

    def finish(self) -> None:
        """Nothing more comes (after done, or on a failure or a stop)."""
        ...


class SilentReporter:
    def stage(self, name: str, total: int | None) -> None:
        log.debug("stage %s (%s items)", name, total)

    def advance(self, count: int = 1) -> None:
        pass

    def done(self) -> None:
        pass

    def finish(self) -> None:
        pass


class TerminalProgress:
    """A bar per stage on a terminal (tqdm; nothing where stderr is not one). A stage that completes
    shows 100% and stays as a line of its own; log lines are printed above the bar, never into it."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []

    def stage(self, name: str, total: int | None) -> None:
        self.done()
        if sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=name, unit="item", leave=True, file=sys.stderr)
            self._quiet_logs()

    def advance(self, count: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(count)

    def done(self) -> None:
        if self._bar is not None and self._bar.total is not None and self._bar.n < self._bar.total:
            self._bar.update(self._bar.total - self._bar.n)  # what a stage did not count is done too
        self.finish()

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers = []

    def _quiet_logs(self) -> None:
        """While a bar is drawn, handlers writing to the terminal write through tqdm, which moves the
        bar below the line."""
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "isatty", lambda: False)():
                self._handlers.append((handler, handler.setStream(_AboveTheBar(handler.stream))))


class _AboveTheBar:
    """A stream for a log handler: each line printed above the progress bar."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        from tqdm import tqdm

        if text.strip():
            tqdm.write(text.rstrip("\n"), file=self._stream)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return True
