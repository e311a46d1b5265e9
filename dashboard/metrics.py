"""Prometheus `/metrics`, computed from the database and the broker at scrape time.

Collected on demand (a custom collector on a private registry) rather than counted in-process,
so the numbers are right whichever process did the work and survive restarts. Labels carry
states, stages and queue names only: never a UID, accession number or patient detail.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
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
from sonopacs.dashboard.site_monitor import WINDOW

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
            outcomes = queries.image_outcomes(session, since=datetime.now(UTC) - WINDOW)

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

        images = GaugeMetricFamily(
            "sonopacs_image_results_30d",
            "Current per-image results of the last 30 days by model version and outcome (lesion, normal, not_assessed)",
            labels=["model_version", "outcome"])
        categories = GaugeMetricFamily(
            "sonopacs_image_likelihood_category_30d",
            "Current per-image results of the last 30 days by model version and AI likelihood category",
            labels=["model_version", "category"])
        for (_name, version), row in sorted(outcomes.items()):
            for outcome in ("lesion", "normal", "not_assessed"):
                images.add_metric([version, outcome], row[outcome])
            for category, n in row["categories"].items():
                categories.add_metric([version, category], n)
        yield images
        yield categories

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
