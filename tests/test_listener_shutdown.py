"""`sonopacs listener` as a process: SIGTERM stops accepting, in-flight C-STOREs finish, exit 0."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from sonopacs.config import Settings
from sonopacs.db.models import Instance
from sonopacs.db.session import Database
from tests.conftest import requires_dcmtk
from tests.support.dicom_factory import write_us_study
from tests.support.listener import dcmtk
from tests.support.net import free_port, wait_for_port

REPO = Path(__file__).resolve().parents[1]


@requires_dcmtk
def test_sigterm_drains_and_loses_nothing_acknowledged(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    port = free_port()
    env = {
        **os.environ,
        "SONOPACS_DICOM__PORT": str(port),
        "SONOPACS_STORAGE__ROOT": str(settings.storage.root),
        "SONOPACS_DATABASE__URL": settings.database_url,
    }
    files = write_us_study(tmp_path / "study", n_images=30, rows=120, cols=160)
    listener = subprocess.Popen(
        [sys.executable, "-c", "import sys; from sonopacs import cli; sys.exit(cli.main(['listener']))"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, timeout=60)
        sender = subprocess.Popen(
            [dcmtk("storescu"), "-v", "-nh", "-aec", "SONOPACS", "127.0.0.1", str(port), *map(str, files)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(0.5)  # some instances are through, others still to come
        listener.send_signal(signal.SIGTERM)
        sender_out, _ = sender.communicate(timeout=60)
        assert listener.wait(timeout=60) == 0
    finally:
        if listener.poll() is None:
            listener.kill()
    log = listener.stdout.read().decode() if listener.stdout else ""
    assert "received SIGTERM" in log and "listener stopped" in log

    successes = len(re.findall(r"Received Store Response \(Success\)", sender_out))
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            rows = list(session.scalars(select(Instance)))
    finally:
        db.dispose()
    # Every Success the sender got is a committed row whose file holds exactly the bytes recorded.
    assert len(rows) == successes
    for row in rows:
        assert hashlib.sha256(Path(row.path).read_bytes()).hexdigest() == row.sha256
