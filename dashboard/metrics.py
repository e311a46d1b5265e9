"""Prometheus `/metrics`, computed from the database and the broker at scrape time.

Collected on demand (a custom collector on a private registry) rather than counted in-process,
so the numbers are right whichever process did the work and survive restarts. Labels carry
states, stages and queue names only: never a UID, accession number or patient detail.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from sonopacs.dashboard import queries

if TYPE_CHECKING:
    from sonopacs.dashboard.broker import BrokerProbe
    from sonopacs.db import Database

STAGE_BUCKETS = [0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800]


class SonopacsCollector(Collector):
    def __init__(self, db: Database, probe: BrokerProbe) -> None:
        self.db = db
        self.probe = probe

    def collect(self) -> Iterator[Metric]:
        with self.db.session() as session:
            instances = queries.instances_received(session)
            by_state = queries.studies_by_state(session)
            failures = queries.export_failures(session)
            histograms = queries.stage_histograms(session, STAGE_BUCKETS)

        yield CounterMetricFamily(
            "sonopacs_instances_received", "DICOM instances received and stored", value=instances
        )
        studies = GaugeMetricFamily("sonopacs_studies", "Studies by current state", labels=["state"])
        for state, n in by_state.items():
            studies.add_metric([state], n)
        yield studies
        yield CounterMetricFamily(
            "sonopacs_export_failures", "Failed C-STORE export attempts to the destination", value=failures
        )
        hist = HistogramMetricFamily(
            "sonopacs_stage_duration_seconds", "Pipeline stage run time from Job rows", labels=["stage"]
        )
        for stage, h in sorted(histograms.items()):
            buckets = [(str(float(b)), c) for b, c in h["buckets"]] + [("+Inf", h["count"])]
            hist.add_metric([stage], buckets, h["sum"])
        yield hist

        status = self.probe.status()
        depth = GaugeMetricFamily("sonopacs_queue_depth", "Messages waiting per Celery queue", labels=["queue"])
        for queue, waiting in status.queues.items():
            if waiting is not None:
                depth.add_metric([queue], waiting)
        yield depth
        yield GaugeMetricFamily(
            "sonopacs_broker_up", "1 when the broker answered the last probe", value=0 if status.error else 1
        )
        if status.workers_online is not None:
            yield GaugeMetricFamily(
                "sonopacs_workers_online", "Celery workers that answered ping", value=status.workers_online
            )


def make_registry(db: Database, probe: BrokerProbe) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SonopacsCollector(db, probe))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
