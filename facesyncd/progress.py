"""Progress is reported, not printed: core code takes a Reporter; the CLI passes a progress bar,
the daemon a logger."""

from __future__ import annotations

import logging
from typing import Protocol

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def stage(self, name: str, total: int | None) -> None: ...

    def advance(self, count: int = 1) -> None: ...

    def finish(self) -> None: ...


class SilentReporter:
    def stage(self, name: str, total: int | None) -> None:
        log.debug("stage %s (%s items)", name, total)

    def advance(self, count: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass
