"""The embedded broker: Kombu's SQLAlchemy transport on a SQLite file, polled more often.

Kombu's transport passes every transport option to `create_engine`, so its polling interval (1 s,
paid on each of the five hops of a study's chain) cannot be set through options; this subclass
sets it and keeps the rest of the transport unchanged. `make_celery` selects it for
`sqla+sqlite:///...` URLs.
"""

from __future__ import annotations

from kombu.transport.sqlalchemy import Transport as _SqlaTransport

POLLING_INTERVAL_SECONDS = 0.25


class Transport(_SqlaTransport):  # type: ignore[misc]
    polling_interval = POLLING_INTERVAL_SECONDS


TRANSPORT_PATH = f"{__name__}:Transport"
