"""Prometheus metrics: counters fed by events, gauges read from the registry at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from hroute.core.health import ProbeOutcome, State

PROCESS_STATES = ("stopped", "starting", "running", "backoff", "stopping", "fatal")

if TYPE_CHECKING:
    from hroute.core.registry import Registry


class Metrics:
    """Every hroute metric, registered in the CollectorRegistry it is handed."""

    def __init__(self, registry: CollectorRegistry, health: Callable[[], Registry]) -> None:
        self.probes = Counter(
            "hroute_probes_total",
            "Active probes by result",
            ["backend", "result"],
            registry=registry,
        )
        self.probe_duration = Histogram(
            "hroute_probe_duration_seconds",
            "Time one active probe took",
            ["backend"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.reports = Counter(
            "hroute_reports_total",
            "Client reports by outcome and reason",
            ["backend", "outcome", "reason"],
            registry=registry,
        )
        self.events = Counter(
            "hroute_events_total",
            "Events by type (backend_down, cooldown, ...)",
            ["event"],
            registry=registry,
        )
        self.config_reloads = Counter(
            "hroute_config_reloads_total", "Configuration reloads", ["result"], registry=registry
        )
        registry.register(_HealthCollector(health))

    def on_event(self, event: dict[str, Any]) -> None:
        self.events.labels(event["event"]).inc()

    def on_probe(self, name: str, outcome: ProbeOutcome) -> None:
        self.probes.labels(name, "ok" if outcome.reason is None else "fail").inc()
        self.probe_duration.labels(name).observe((outcome.latency_ms or 0) / 1000)


class _HealthCollector(Collector):
    def __init__(self, health: Callable[[], Registry]) -> None:
        self._health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        reg = self._health()
        state = GaugeMetricFamily(
            "hroute_backend_state", "1 for the backend's current state", labels=["backend", "state"]
        )
        usable = GaugeMetricFamily(
            "hroute_backend_usable", "1 when agents may use the backend", labels=["backend"]
        )
        cooldown = GaugeMetricFamily(
            "hroute_backend_cooldown_remaining_seconds",
            "Seconds until the backend's cooldown ends",
            labels=["backend"],
        )
        failures = GaugeMetricFamily(
            "hroute_backend_consecutive_failures",
            "Failures since the last success",
            labels=["backend"],
        )
        latency = GaugeMetricFamily(
            "hroute_backend_probe_latency_seconds",
            "Duration of the latest probe",
            labels=["backend"],
        )
        process = GaugeMetricFamily(
            "hroute_process_state",
            "1 for the supervised server's process state",
            labels=["backend", "state"],
        )
        restarts = CounterMetricFamily(
            "hroute_process_restarts",
            "Restarts of the supervised server since hroute started",
            labels=["backend"],
        )
        spent = GaugeMetricFamily(
            "hroute_backend_spent_today_usd",
            "What a paid backend cost today (local time), from reported usage",
            labels=["backend"],
        )
        limit = GaugeMetricFamily(
            "hroute_budget_daily_limit_usd",
            'Configured daily spend limit: per backend, or backend="*" for the total',
            labels=["backend"],
        )
        budgets = reg.config.budgets
        if budgets.daily_usd is not None:
            limit.add_metric(["*"], budgets.daily_usd)
        for name, usd in budgets.per_backend_daily_usd.items():
            limit.add_metric([name], usd)
        for view in reg.views():
            name = view["name"]
            if "spent_today_usd" in view:
                spent.add_metric([name], view["spent_today_usd"])
            proc = view.get("process")
            if proc:
                for s in PROCESS_STATES:
                    process.add_metric([name, s], 1.0 if proc["state"] == s else 0.0)
                restarts.add_metric([name], proc["restarts"])
            for s in State:
                state.add_metric([name, str(s)], 1.0 if view["state"] == s else 0.0)
            usable.add_metric([name], 1.0 if view["usable"] else 0.0)
            cooldown.add_metric([name], view["cooldown_remaining_s"] or 0.0)
            failures.add_metric([name], view["consecutive_failures"])
            if view["latency_ms"] is not None:
                latency.add_metric([name], view["latency_ms"] / 1000)
        yield from (state, usable, cooldown, failures, latency, process, restarts, spent, limit)
