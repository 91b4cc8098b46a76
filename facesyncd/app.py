"""The composition root: the one place that builds facesyncd's parts from the settings, for the CLI and
the daemon alike. Every command is an action (actions.py) over an App."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from .config import ImmichSettings, Settings
from .crops import Crops
from .cycle.identify import IdentifyParts, MergeLook
from .cycle.poll import PollParts
from .cycle.publish import PublishParts
from .cycle.stage import StageParts
from .cycle.tidy import Caches
from .embedder import Embedder, make_embedder
from .immich import ClientFactory, ClientSet, ImmichClient
from .index import IndexKeeper
from .layouts import Layout, make_layout
from .merge_file import MERGE_FILE, MergeFile
from .pool import POOL_FILE, PoolKeeper
from .progress import Reporter, SilentReporter
from .store import Store
from .swap import SwapCache


@dataclass
class App:
    """Everything a command works with, built once per process (again after a config reload)."""

    settings: Settings
    store: Store
    embedder: Embedder
    stop: threading.Event = field(default_factory=threading.Event)
    reporter: Reporter = field(default_factory=SilentReporter)
    client_factory: ClientFactory | None = None  # tests hand in clients of their own
    clients: ClientSet = field(init=False)
    crops: Crops = field(init=False)
    swap: SwapCache = field(init=False)
    index: IndexKeeper = field(init=False)
    pool: PoolKeeper = field(init=False)  # the pool's arrays, held between cycles
    merges: MergeLook = field(init=False)  # what the last look for merges saw (and any process's, in its file)
    layout: Layout = field(init=False)  # what the faceset folders hold ([export] format), decided here only
    caches: Caches = field(init=False)  # what follows the faces in the store (crops, swap PNGs, index)
    corrections_seen: int = field(init=False, default=-1)  # the store's corrections_version last acted on

    def __post_init__(self) -> None:
        self.clients = ClientSet(self.client_factory or self._client)
        self.crops = Crops(self.settings.state_dir / "crops", self.settings.faces.crop_margin)
        export = self.settings.export
        self.swap = SwapCache(self.settings.state_dir / "swap", export.swap_size, export.swap_padding)
        self.index = IndexKeeper(self.store, self.settings.state_dir, self._dimension)
        self.pool = PoolKeeper(self.store, self.settings.state_dir / POOL_FILE)
        self.merges = MergeLook(file=MergeFile(self.settings.state_dir / MERGE_FILE))
        self.layout = make_layout(export, self.settings.facesets_dir, self.crops, self.swap, self.embedder)
        self.caches = Caches(self.crops, self.swap, self.index)
        self.leftovers_removed = False  # a killed process's temporary files: looked for once per process

    def _client(self, source: ImmichSettings) -> ImmichClient:
        return ImmichClient(source, self.settings.sync, stop=self.stop)

    def _dimension(self) -> int:
        """The embeddings' size: the stored faces', or (none yet) the engine's."""
        stored = int(self.store.get_meta("embedding_dim") or 0)
        if stored:  # the model need not load for the index of the faces stored
            return stored
        self.embedder.load()
        return self.embedder.dimension

    @property
    def download_dir(self) -> Path:
        return self.settings.state_dir / "tmp"

    # What each stage of the cycle uses, and nothing more (built at each use: a reload or a test may
    # change the settings).

    def poll_parts(self) -> PollParts:
        settings = self.settings
        return PollParts(self.store, self.caches, settings.schedule, settings.sync, self.reporter, self.stop)

    def stage_parts(self) -> StageParts:
        settings = self.settings
        return StageParts(
            self.store,
            self.caches,
            self.embedder,
            self.layout,
            settings.faces,
            settings.sync,
            self.download_dir,
            self.reporter,
            self.stop,
        )

    def identify_parts(self) -> IdentifyParts:
        return IdentifyParts(self.store, self.index, self.pool, self.settings.identities, self.reporter, self.merges)

    def publish_parts(self) -> PublishParts:
        settings = self.settings
        return PublishParts(
            self.store,
            self.caches,
            self.layout,
            self.clients,
            tuple(settings.immich),
            settings.faces,
            settings.export,
            settings.facesets_dir,
            self.download_dir,
            self.reporter,
            self.corrections_seen,
        )

    def abort(self) -> None:
        """Break off requests in flight (called from another thread when a stop takes too long)."""
        self.clients.abort()
        self.embedder.abort()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_app(
    settings: Settings,
    *,
    stop: threading.Event | None = None,
    reporter: Reporter | None = None,
    create: bool = True,
    threaded: bool = False,
    store: Store | None = None,
    embedder: Embedder | None = None,
    client_factory: ClientFactory | None = None,
) -> App:
    """Build the App: the store (made if `create` and missing), the embedder (loaded lazily), the
    clients. `store` and `embedder` are reused when given (a config reload keeps them)."""
    return App(
        settings=settings,
        store=store or Store(settings.database_path, create=create, threaded=threaded),
        embedder=embedder or make_embedder(settings.model, settings.faces),
        stop=stop or threading.Event(),
        reporter=reporter or SilentReporter(),
        client_factory=client_factory,
    )
