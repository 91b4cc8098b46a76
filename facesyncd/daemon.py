"""`facesyncd run`: the long-running service.

Four apscheduler (3.x) jobs share one worker thread, so they never overlap and the store's single
connection is used by one thread at a time: poll (sync every [schedule] poll_seconds, starting at
once), sweep (a poll that also counts Immich's assets, every sweep_minutes: changes the listing
hides), cluster (open new facesets every cluster_seconds) and reconcile (a full listing every
reconcile_seconds). Missed runs are coalesced. The main thread only waits for signals, feeds the
systemd watchdog and keeps `daemon.json` (what `status` shows about the daemon) up to date.

SIGTERM/SIGINT: the job in hand stops at its next safe point (between pages, between assets, inside a
download); after stop_grace_seconds requests still in flight are broken off. Each asset's result is one
transaction, so the asset in hand is either written whole or not at all. SIGHUP: the config file is
read again and applied before the next job; a bad file is logged and the old settings are kept.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from . import actions
from .app import App, open_app
from .config import Settings, load_settings
from .embedder import make_embedder
from .errors import AddressInUse, FacesyncError, Interrupted
from .lock import state_lock
from .models import CycleReport, JobKind
from .notify import Notifier
from .runstate import remove_daemon_file, write_daemon_file
from .store import Store, utc_now

log = logging.getLogger(__name__)

CORRECTIONS_SECONDS = 2.0  # how often the daemon looks for corrections made by other processes


@dataclass
class _Runtime:
    """What the daemon tells `status`; written by the job's thread, read by the main thread."""

    started_at: str
    last_cycle: dict[str, Any] | None = None
    state: str = "starting"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, **changes: Any) -> None:
        with self.lock:
            for key, value in changes.items():
                setattr(self, key, value)

    def snapshot(self) -> tuple[str, str, dict[str, Any] | None]:
        with self.lock:
            return self.started_at, self.state, self.last_cycle


class Daemon:
    def __init__(self, config_path: Path, settings: Settings, *, notifier: Notifier | None = None) -> None:
        self.config_path = config_path
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.stop = threading.Event()
        self._reload = threading.Event()
        self._runtime = _Runtime(started_at=utc_now())
        self._scheduler: Any = None
        self._executor: Any = None
        self._app: App | None = None
        self._polled = False  # a poll cycle has completed
        self._web: Any = None  # the review page's server, with [web] listen

    # -- signals --------------------------------------------------------------------------------

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        if not self.stop.is_set():
            log.info("%s received: stopping after the asset in hand", signal.Signals(signum).name)
        self.stop.set()

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        log.info("SIGHUP received: the config is read again before the next job")
        self._reload.set()

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_hup)

    # -- jobs (all on the one worker thread) ----------------------------------------------------

    def _apply_reload(self) -> None:
        if not self._reload.is_set():
            return
        self._reload.clear()
        self.notifier.reloading()
        try:
            fresh = load_settings(self.config_path)
        except FacesyncError as error:
            log.error("config not reloaded, keeping the running one: %s", error)
            self.notifier.ready("config reload failed; running with the old config")
            return
        if fresh.state_dir != self.settings.state_dir:
            log.error("config not reloaded: state_dir cannot change while running (restart instead)")
            self.notifier.ready("config reload refused")
            return
        assert self._app is not None
        embedder = self._app.embedder
        if fresh.model != self.settings.model or fresh.faces != self.settings.faces:
            embedder = make_embedder(fresh.model, fresh.faces)
        self.settings = fresh
        self._app = open_app(fresh, stop=self.stop, store=self._app.store, embedder=embedder)
        for job_id, seconds in self._intervals().items():
            self._scheduler.reschedule_job(job_id, trigger="interval", seconds=seconds)
        log.info("config reloaded from %s", self.config_path)
        self.notifier.ready("config reloaded")

    def _intervals(self) -> dict[str, float]:
        schedule = self.settings.schedule
        return {
            JobKind.POLL: schedule.poll_seconds,
            JobKind.SWEEP: schedule.sweep_minutes * 60,
            JobKind.CLUSTER: schedule.cluster_seconds,
            JobKind.RECONCILE: schedule.reconcile_seconds,
        }

    def _run_job(self, kind: JobKind) -> None:
        if self.stop.is_set():
            return
        self._apply_reload()
        assert self._app is not None
        self._runtime.update(state=str(kind))
        try:
            if kind == JobKind.CLUSTER:
                report = actions.cluster(self._app)
            else:
                # Until one has completed, a poll is a whole cycle (clustering included): a new
                # library gets its facesets at once, not cluster_seconds later.
                report = actions.sync(
                    self._app,
                    reconcile=kind == JobKind.RECONCILE,
                    census=kind == JobKind.SWEEP,
                    cluster=not self._polled,
                    kind=kind,
                )
                self._polled = True
            self._summarise(kind, report, None)
        except Interrupted:
            log.info("%s interrupted by stop request", kind)
        except FacesyncError as error:
            # A source failing (server down, key revoked) is logged and retried at the next poll.
            self._summarise(kind, None, str(error))
        except Exception:
            log.exception("%s failed unexpectedly; the daemon keeps running", kind)
        finally:
            self._runtime.update(state="idle")
            self._write_daemon_file()

    def _apply_corrections(self) -> None:
        """Runs between the other jobs (one worker): only when a correction was made since."""
        if self.stop.is_set() or self._app is None or not actions.corrections_pending(self._app):
            return
        try:
            report = actions.apply_corrections(self._app)
            log.info("applied the corrections made meanwhile: %d folders written", report.facesets_written)
        except FacesyncError as error:
            log.error("applying corrections failed: %s", error)
        except Exception:
            log.exception("applying corrections failed unexpectedly; the daemon keeps running")

    def _summarise(self, kind: JobKind, report: CycleReport | None, error: str | None) -> None:
        if report is None:
            log.error("%s failed: %s", kind, error)
            self._runtime.update(last_cycle={"kind": str(kind), "at": utc_now(), "error": error})
            return
        summary = report.digest(str(kind), utc_now())
        self._runtime.update(last_cycle=summary)
        log.info("%s: %s", kind, report.line(), extra={"fields": {"cycle": summary}})

    # -- main loop ------------------------------------------------------------------------------

    def _next_run(self, kind: JobKind) -> str | None:
        job = self._scheduler.get_job(str(kind)) if self._scheduler is not None else None
        moment = job.next_run_time if job is not None else None
        return moment.astimezone(UTC).isoformat(timespec="seconds") if moment else None

    def _write_daemon_file(self) -> None:
        started_at, state, last_cycle = self._runtime.snapshot()
        data = {
            "pid": os.getpid(),
            "started_at": started_at,
            "state": state,
            "next_poll_at": self._next_run(JobKind.POLL),
            "next_sweep_at": self._next_run(JobKind.SWEEP),
            "next_cluster_at": self._next_run(JobKind.CLUSTER),
            "next_reconcile_at": self._next_run(JobKind.RECONCILE),
            "poll_seconds": self.settings.schedule.poll_seconds,
            "providers": list(self._app.embedder.providers) if self._app is not None else [],
            "last_cycle": last_cycle,
        }
        try:
            write_daemon_file(self.settings.state_dir, data)
        except OSError as error:
            log.warning("cannot write the daemon file in %s: %s", self.settings.state_dir, error)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT. Returns the exit code (0 after a clean stop)."""
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        self._install_signals()
        with state_lock(self.settings.state_dir):
            store = Store(self.settings.database_path, threaded=True)
            try:
                self._app = open_app(self.settings, stop=self.stop, store=store)
                self._app.embedder.load()  # fail fast, before reporting ready, if the model is missing
                log.info("execution providers: %s", ", ".join(self._app.embedder.providers))
                actions.check_adopted(self._app)  # a lost database: exit at once with what to do
                self._executor = ThreadPoolExecutor(max_workers=1)
                self._scheduler = BackgroundScheduler(
                    executors={"default": self._executor},
                    job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
                    timezone=UTC,
                )
                for kind, seconds in self._intervals().items():
                    # poll starts at once (its first run a whole cycle); the others first run one
                    # interval from now. (next_run_time=None would add the job paused.)
                    start = {"next_run_time": datetime.now(UTC)} if kind == JobKind.POLL else {}
                    self._scheduler.add_job(
                        self._run_job, "interval", seconds=seconds, args=[kind], id=str(kind), **start
                    )
                # Corrections made by commands or the review page reach the folders within seconds.
                self._scheduler.add_job(
                    self._apply_corrections, "interval", seconds=CORRECTIONS_SECONDS, id="corrections"
                )
                self._scheduler.start()
                if self.settings.web.listen:
                    from .web import WebServer

                    web = WebServer(self.settings)
                    try:
                        web.start()
                        self._web = web
                        log.info("review page on %s", web.address)
                    except AddressInUse as error:  # the photos still sync; the page waits for a restart
                        log.error("%s; the review page is off until facesyncd restarts", error)
                self._write_daemon_file()
                self.notifier.ready(
                    f"polling {len(self.settings.immich)} source(s) every {self.settings.schedule.poll_seconds:g}s"
                )
                log.info("facesyncd running (pid %d); state in %s", os.getpid(), self.settings.state_dir)
                self._wait()
                return self._shutdown()
            finally:
                store.close()
                remove_daemon_file(self.settings.state_dir)

    def _wait(self) -> None:
        beat = (self.notifier.watchdog_seconds or 20.0) / 2
        while not self.stop.wait(timeout=min(beat, 5.0)):
            self.notifier.watchdog()
            self._write_daemon_file()

    def _shutdown(self) -> int:
        self.notifier.stopping()
        if self._web is not None:
            self._web.stop()
        assert self._scheduler is not None and self._app is not None and self._executor is not None
        self._scheduler.shutdown(wait=False)  # no new jobs; the one in hand sees the stop flag
        finished = threading.Event()

        def wait_for_job() -> None:
            assert self._executor is not None
            self._executor.shutdown(wait=True)
            finished.set()

        threading.Thread(target=wait_for_job, daemon=True).start()
        if not finished.wait(self.settings.schedule.stop_grace_seconds):
            log.warning("the job in hand did not stop in time: breaking off requests in flight")
            self._app.abort()
            finished.wait(2.0)
        log.info("facesyncd stopped")
        return 0
