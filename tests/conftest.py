"""Shared fixtures: settings on SQLite/embedded broker or PostgreSQL/Redis, a real Orthanc, test studies."""

from __future__ import annotations

import os
import random
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sonopacs.config import Settings, load_settings
from tests.support.orthanc import Orthanc, orthanc_available

PG_ADMIN_URL = os.environ.get("SONOPACS_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
REDIS_HOST = os.environ.get("SONOPACS_TEST_REDIS", "redis://127.0.0.1:6379")

requires_orthanc = pytest.mark.skipif(not orthanc_available(), reason="Debian orthanc is not installed")
# dsrdump: pynetdicom installs Python apps named storescu/echoscu, so those names prove nothing.
requires_dcmtk = pytest.mark.skipif(shutil.which("dsrdump") is None, reason="DCMTK is not installed")
requires_dciodvfy = pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dicom3tools is not installed"
)


def _postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"sonopacs_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _redis_database() -> str:
    """A Redis database (URL) for one test, at random from this pytest-xdist worker's own share of
    databases 1-15: the CI runs test files on two workers side by side, and two tests sharing a
    database would flush or consume each other's queues."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    share = 15 // max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    first = 1 + worker * share
    return f"{REDIS_HOST}/{random.randint(first, first + share - 1)}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _postgres_database()


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database number picked at random and flushed before and after the test."""
    import redis

    url = _redis_database()
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Run a test on SQLite + embedded broker and on PostgreSQL + Redis."""
    return str(request.param)


@pytest.fixture
def make_settings(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Settings]]:
    """Build Settings rooted in tmp_path; backend="postgres" uses a fresh database and Redis."""
    cleanups: list[Iterator[str]] = []

    def factory(backend: str = "sqlite", **sections: dict[str, object]) -> Settings:
        var = tmp_path / "var"
        values: dict[str, dict[str, object]] = {
            "storage": {"root": var / "storage"},
            "database": {"url": f"sqlite:///{var / 'sonopacs.db'}"},
            "broker": {"url": None},
            "study": {"stable_seconds": 1, "poll_seconds": 0.2},
            "dicom": {"port": 0},
        }
        if backend == "postgres":
            pg = _postgres_database()
            values["database"] = {"url": next(pg)}
            cleanups.append(pg)
            import redis

            url = _redis_database()
            redis.Redis.from_url(url).flushdb()
            values["broker"] = {"url": url}
        for section, overrides in sections.items():
            values.setdefault(section, {}).update(overrides)
        return load_settings(**values)

    yield factory
    for gen in cleanups:
        for _ in gen:
            pass


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Start real Orthanc servers (the hospital PACS); all are stopped after the test."""
    if not orthanc_available():
        pytest.skip("Debian orthanc is not installed")
    started: list[Orthanc] = []

    def factory(modalities: dict[str, tuple[str, str, int]] | None = None, name: str = "orthanc") -> Orthanc:
        server = Orthanc(workdir=tmp_path / name, modalities=modalities or {})
        server.start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def us_study(tmp_path: Path) -> list[Path]:
    """Four synthetic single-frame US images of one study (uncompressed)."""
    from tests.support.dicom_factory import write_us_study

    return write_us_study(tmp_path / "study", n_images=4)
