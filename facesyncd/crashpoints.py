"""Named points where the crash-safety tests kill the process.

With FACESYNCD_CRASH_AT="name:n" in the environment, the n-th arrival at checkpoint `name` kills the
process with SIGKILL, as a power cut or the OOM killer would. Without the variable (always, in
production) a checkpoint is one dictionary lookup. The points are listed in POINTS so tests can
cover each one.
"""

from __future__ import annotations

import os
import signal
import threading

POINTS = (
    "listed-page",  # a listing page was recorded
    "sweep-finished",  # the watermark moved
    "download-chunk",  # part of an original is on disk
    "embedded",  # faces and crops exist, not yet committed
    "committed",  # an asset's result was committed
    "assigned",  # new faces were matched to identities
    "identity-created",  # a new faceset number was committed
    "export-file",  # a faceset folder is half staged
    "export-swap",  # the old faceset folder moved aside, the new one not yet in place (layout switched)
    "export-update",  # a file of a folder updated in place was added or replaced, its manifest not yet
    "export-retire",  # a file of a folder updated in place was removed, its manifest not yet
    "index-save",  # the index file is replaced, its sidecar not yet
)

_lock = threading.Lock()  # checkpoints are reached from worker threads too
_target: tuple[str | None, int] | None = None
_count = 0


def checkpoint(name: str) -> None:
    global _target, _count
    if _target is None:
        spec = os.environ.get("FACESYNCD_CRASH_AT", "")
        point, _, nth = spec.partition(":")
        _target = (point or None, int(nth) if nth.isdigit() else 1)
    if _target[0] != name:
        return
    with _lock:
        _count += 1
        if _count == _target[1]:
            os.kill(os.getpid(), signal.SIGKILL)
