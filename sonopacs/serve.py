"""`sonopacs serve`: one process tree with the listener, two Celery workers (an inference pool with
the model and a light pool for control/clean/publish/export, `sonopacs.worker.pools`), the stability monitor
(a thread here) and the dashboard.

Children are `sonopacs <command>` processes reading the same config file and environment. SIGTERM
(or SIGINT) is passed on to every child: the listener stops accepting, the Celery worker does a
warm shutdown (running tasks finish; unacknowledged messages go back to the broker), and serve
exits 0. A child that dies on its own is started again (logged as an error, and an audit row
`service_restarted` the dashboard shows); one that dies more than `MAX_RESTARTS` times within
`RESTART_WINDOW_SECONDS` is given up on: the others are stopped and serve exits 1, so a service
manager can restart the whole tree. Work the dead child held is recovered by the reconciler.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from sonopacs.config import Settings
from sonopacs.models.analyzer import DEFAULT_WEIGHTS
from sonopacs.models.site_calibration import SiteCalibrationError, check_site_calibration
from sonopacs.worker.celery_app import prepare_embedded_broker
from sonopacs.worker.pools import serve_pools

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 120.0
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 600.0
_PR_SET_PDEATHSIG = 1


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: deque[float] = field(default_factory=deque)  # monotonic times of recent restarts

    def start(self) -> None:
        # Own process group: a terminal's Ctrl-C reaches serve only, which then stops the
        # children in order, instead of every process getting SIGINT at once.
        self.process = subprocess.Popen(self.argv, preexec_fn=_die_with_parent, process_group=0)
        log.info("started %s (pid %s)", self.name, self.process.pid)

    def may_restart(self, now: float, limit: int = MAX_RESTARTS, window: float = RESTART_WINDOW_SECONDS) -> bool:
        """At most `limit` restarts within `window` seconds; records this one when allowed."""
        while self.restarts and now - self.restarts[0] > window:
            self.restarts.popleft()
        if len(self.restarts) >= limit:
            return False
        self.restarts.append(now)
        return True


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: a child gets SIGTERM if serve itself is killed, so nothing is left orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def children(settings: Settings, config_file: str | Path | None, with_dashboard: bool) -> list[Child]:
    base = [sys.executable, "-m", "sonopacs"]
    if config_file:
        base += ["--config", str(config_file)]
    out = [Child("listener", [*base, "listener"])]
    for pool in serve_pools(settings):
        queues = ",".join(pool.queues)
        out.append(Child(pool.name, [*base, "worker", "--queues", queues, "--concurrency", str(pool.concurrency)]))
    if with_dashboard:
        out.append(Child("dashboard", [*base, "dashboard"]))
    return out


def serve(settings: Settings, config_file: str | Path | None = None) -> int:
    """Migrate the database, start everything, and supervise until SIGTERM/SIGINT."""
    from sonopacs.db.migrate import upgrade
    from sonopacs.worker.stability import run_monitor

    if settings.model.site_calibration is not None:
        try:
            check_site_calibration(settings.model.site_calibration, settings.model.weights_dir or DEFAULT_WEIGHTS)
        except SiteCalibrationError as exc:
            log.error("not starting: %s", exc)
            return 2
    settings.storage.root.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    prepare_embedded_broker(settings.broker_url)

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    procs = children(settings, config_file, with_dashboard=True)
    monitor = threading.Thread(target=run_monitor, args=(settings, stop), name="stability", daemon=True)
    code = 0
    try:
        for child in procs:
            child.start()
        monitor.start()
        while not stop.wait(0.5) and code == 0:
            for c in procs:
                if c.process is None or c.process.poll() is None or stop.is_set():
                    continue
                returncode = c.process.returncode
                if not c.may_restart(time.monotonic()):
                    log.error(
                        "%s exited with %s, its %s restarts in %.0fs are used up; stopping serve",
                        c.name, returncode, MAX_RESTARTS, RESTART_WINDOW_SECONDS,
                    )
                    code = 1
                    break
                log.error("%s exited unexpectedly with %s; restarting it (%s of %s in %.0fs)",
                          c.name, returncode, len(c.restarts), MAX_RESTARTS, RESTART_WINDOW_SECONDS)
                _audit_restart(settings, c.name, returncode, len(c.restarts))
                c.start()
    finally:
        stop.set()
        _shutdown(procs)
        monitor.join(timeout=10)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("serve stopped")
    return code


def _shutdown(procs: list[Child], grace: float = SHUTDOWN_GRACE_SECONDS) -> None:
    """SIGTERM all, wait for in-flight work, SIGKILL only what is still there after `grace`."""
    running = [c for c in procs if c.process is not None and c.process.poll() is None]
    for child in running:
        assert child.process is not None
        log.info("stopping %s (pid %s)", child.name, child.process.pid)
        child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in running:
        assert child.process is not None
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("%s did not stop within %.0fs; killing it", child.name, grace)
            child.process.kill()
            child.process.wait()


def _audit_restart(settings: Settings, name: str, returncode: int | None, n: int) -> None:
    """An audit row for the dashboard; a database that is down only costs the row, not the restart."""
    try:
        from sonopacs.db.audit import record
        from sonopacs.worker.context import database_for

        with database_for(settings).session() as session:
            record(
                session,
                "service_restarted",
                "serve",
                detail=f"{name} exited with {returncode}; restarted ({n} of {MAX_RESTARTS} in "
                f"{RESTART_WINDOW_SECONDS:.0f}s)",
            )
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.warning("could not record the restart of %s: %s", name, type(exc).__name__)
