"""`sonopacs serve` restarts a child that dies (kill -9 of the listener: it answers C-ECHO again, and
the restart is an audit row), within a bounded rate; SIGTERM still stops the tree with 0."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from sonopacs.config import Settings
from sonopacs.db import AuditEvent, Database
from sonopacs.dicom_node.scu import Peer, echo
from sonopacs.serve import MAX_RESTARTS, RESTART_WINDOW_SECONDS, Child
from tests.support.net import free_port, wait_for_port, wait_until
from tests.support.worker_proc import children_of, start_sonopacs, stop_with_sigterm, write_config


def test_restart_budget_is_per_child_and_slides() -> None:
    child = Child("listener", ["true"])
    assert all(child.may_restart(float(t)) for t in range(MAX_RESTARTS))
    assert not child.may_restart(float(MAX_RESTARTS))  # the 6th within the window: give up
    later = RESTART_WINDOW_SECONDS + 1.5  # the first restarts have left the window
    assert child.may_restart(later)
    assert Child("worker", ["true"]).may_restart(0.0)  # another child has its own budget


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def restarts(db: Database) -> list[str]:
    with db.session() as session:
        return [
            str(d)
            for d in session.scalars(select(AuditEvent.detail).where(AuditEvent.event == "service_restarted"))
        ]


@pytest.mark.slow
def test_serve_restarts_a_killed_listener(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    port = free_port()
    settings = make_settings(
        "sqlite",
        dicom={"port": port, "host": "127.0.0.1"},
        dashboard={"port": free_port()},
        worker={"inference_concurrency": 1, "light_concurrency": 1},
    )
    config = write_config(settings, tmp_path / "sonopacs.yaml")
    log = tmp_path / "serve.log"
    proc = start_sonopacs(["--config", str(config), "serve"], log)
    db = Database(settings.database_url)
    peer = Peer("127.0.0.1", port, settings.dicom.ae_title)
    try:
        wait_for_port(port, timeout=90)
        [listener] = [pid for pid in children_of(proc.pid) if cmdline(pid).rstrip().endswith(" listener")]
        os.kill(listener, signal.SIGKILL)
        wait_until(lambda: restarts(db), timeout=60)
        wait_until(
            lambda: any(cmdline(p).rstrip().endswith(" listener") for p in children_of(proc.pid) if p != listener),
            timeout=30,
        )
        wait_for_port(port, timeout=90)
        assert echo(peer, calling_ae="TESTSCU") == 0
        [detail] = restarts(db)
        assert detail.startswith("listener exited with -9; restarted (1 of 5")
        assert proc.poll() is None
        assert "listener exited unexpectedly with -9; restarting it" in log.read_text()
    finally:
        code = stop_with_sigterm(proc, 120)
        db.dispose()
    assert code == 0, log.read_text()[-4000:]
