"""One sync cycle, as a short composition of stages, each in its own module:

    for each source:  poll (list, record, census, reconcile, watermark)  ->  stage (download, embed, commit)
    then:             identify (assign, open new facesets)  ->  names (from Immich's people)
                      ->  publish (restore crops, export, save index)

I/O happens outside transactions; each asset's result is written in one short transaction. A source
that fails (wrong key, server down) never stops the other sources: its error is recorded and returned.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import FacesyncError, ImmichAuthError, ImmichError, ImmichUnreachable
from ..models import CycleReport
from .identify import assign_new_faces, merge_identities, open_new_facesets
from .names import adopt_immich_names
from .poll import poll
from .publish import name_folders, publish
from .stage import stage

if TYPE_CHECKING:
    from ..app import App

log = logging.getLogger(__name__)

__all__ = ["run_cycle", "assign_new_faces", "merge_identities", "name_folders", "open_new_facesets", "publish"]


def run_cycle(
    app: App, report: CycleReport, *, reconcile: bool | None, census: bool | None = None, cluster: bool = True
) -> FacesyncError | None:
    """Returns the first source's error (the others were still synced), or None. reconcile and
    census: see poll."""
    first_error: FacesyncError | None = None
    for source in app.settings.immich:
        try:
            with app.clients.open(source) as client:
                try:
                    poll(app.poll_parts(), source, client, report, reconcile=reconcile, census=census)
                    stage(app.stage_parts(), source.name, client, report)
                finally:
                    report.requests += client.requests
        except (ImmichAuthError, ImmichUnreachable, ImmichError) as error:
            report.source_errors[source.name] = str(error)
            app.store.set_source_error(source.name, str(error))
            if first_error is None:
                first_error = error  # said once, by whoever runs the cycle (the command's last line)
            else:
                log.error("%s", error)
    identify = app.identify_parts()
    assign_new_faces(identify, report)
    if cluster:
        open_new_facesets(identify, report)
    merge_identities(identify, report)
    names = adopt_immich_names(app.store, app.settings.identities, report)
    if names:
        name_folders(app.publish_parts(), names)
    publish(app.publish_parts(), report)
    return first_error
