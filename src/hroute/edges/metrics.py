"""Prometheus metrics: counters fed by events, gauges read from the registry at scrape time.

Counting is a dict increment on the hot path (a report, a probe); prometheus_client is
imported and asked to render only when somebody scrapes, so a daemon nobody scrapes never
loads it, and one that is scraped pays for it off the request path of agents.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from hroute.core.clients import GUARD_STATES, GUARDS, ISOLATIONS, Clients
from hroute.core.gpu import GpuSample
from hroute.core.health import ProbeOutcome, State

PROCESS_STATES = ("stopped", "starting", "running", "backoff", "stopping", "fatal")
PROBE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

if TYPE_CHECKING:
    from hroute.core.registry import Registry


class Counts:
    """A counter family: label values -> count."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[tuple[str, ...], float] = defaultdict(float)

    def inc(self, *labels: str, by: float = 1.0) -> None:
        self.values[labels] += by

    def family(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        fam = CounterMetricFamily(self.name.removesuffix("_total"), self.doc, labels=self.labels)
        for labels, value in self.values.items():
            fam.add_metric(list(labels), value)
        return fam


class Durations:
    """A histogram family of one label: counts per bucket, sum."""

    def __init__(self, name: str, doc: str, label: str) -> None:
        self.name, self.doc, self.label = name, doc, label
        self.buckets: dict[str, list[float]] = {}  # label -> counts per bucket (+Inf last), sum

    def observe(self, label: str, seconds: float) -> None:
        row = self.buckets.get(label)
        if row is None:
            row = self.buckets[label] = [0.0] * (len(PROBE_BUCKETS) + 2)
        row[bisect.bisect_left(PROBE_BUCKETS, seconds)] += 1
        row[-1] += seconds

    def family(self) -> Any:
        from prometheus_client.core import HistogramMetricFamily

        fam = HistogramMetricFamily(self.name, self.doc, labels=[self.label])
        for label, row in self.buckets.items():
            cumulative, buckets = 0.0, []
            for bound, count in zip((*PROBE_BUCKETS, float("inf")), row[:-1], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
            fam.add_metric([label], buckets, sum_value=row[-1])
        return fam


class Metrics:
    """Every hroute metric; `render()` is the /metrics answer."""

    def __init__(
        self,
        health: Callable[[], Registry],
        clients: Clients | None = None,
        now: Callable[[], float] | None = None,
    ) -> None:
        self._clients, self._now = clients, now
        self.probes = Counts(
            "hroute_probes_total", "Active probes by result", ("backend", "result")
        )
        self.probe_duration = Durations(
            "hroute_probe_duration_seconds", "Time one active probe took", "backend"
        )
        self.reports = Counts(
            "hroute_reports_total",
            "Client reports by outcome and reason",
            ("backend", "outcome", "reason"),
        )
        self.events = Counts(
            "hroute_events_total", "Events by type (backend_down, cooldown, ...)", ("event",)
        )
        self.config_reloads = Counts(
            "hroute_config_reloads_total", "Configuration reloads", ("result",)
        )
        self._health = health
        self.cluster: Callable[[], dict[str, Any]] | None = None  # set when cluster: is on
        self.gpus: Callable[[], list[GpuSample]] | None = None  # the GPUs' telemetry

    def on_event(self, event: dict[str, Any]) -> None:
        self.events.inc(event["event"])

    def on_probe(self, name: str, outcome: ProbeOutcome) -> None:
        self.probes.inc(name, "ok" if outcome.reason is None else "fail")
        self.probe_duration.observe(name, (outcome.latency_ms or 0) / 1000)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(_registry_for(self)), CONTENT_TYPE_LATEST


def _registry_for(metrics: Metrics) -> Any:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(metrics))  # type: ignore[arg-type]
    registry.register(_HealthCollector(metrics._health))  # type: ignore[arg-type]
    if metrics._clients is not None and metrics._now is not None:
        registry.register(_ClientsCollector(metrics._clients, metrics._now))  # type: ignore[arg-type]
    if metrics.cluster is not None:
        registry.register(_ClusterCollector(metrics.cluster))  # type: ignore[arg-type]
    if metrics.gpus is not None:
        registry.register(_GpuCollector(metrics.gpus))  # type: ignore[arg-type]
    return registry


class _GpuCollector:
    """`hroute_gpu_*{gpu}` read at scrape time; a value the platform does not give is left out."""

    def __init__(self, gpus: Callable[[], list[GpuSample]]) -> None:
        self._gpus = gpus

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        families = [
            ("hroute_gpu_vram_used_bytes", "GPU memory in use", "vram_used_bytes"),
            ("hroute_gpu_vram_total_bytes", "GPU memory in all", "vram_total_bytes"),
            ("hroute_gpu_busy_ratio", "Share of time the GPU was busy (0..1)", "busy_ratio"),
            ("hroute_gpu_temperature_celsius", "GPU temperature", "temperature_c"),
        ]
        samples = self._gpus()
        for name, doc, field in families:
            fam = GaugeMetricFamily(name, doc, labels=["gpu"])
            for s in samples:
                value = getattr(s, field)
                if value is not None:
                    fam.add_metric([s.name], float(value))
            if fam.samples:  # no GPU, no family: a CPU-only host's /metrics stays as it was
                yield fam


class _ClientsCollector:
    """`hroute_client_guards{guard,state}` and `hroute_clients{isolation}` at scrape time."""

    def __init__(self, clients: Clients, now: Callable[[], float]) -> None:
        self._clients, self._now = clients, now

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        recent = self._clients.recent(self._now())
        guards = GaugeMetricFamily(
            "hroute_client_guards",
            "Agent plugins heard from in the last hour, by guard and its state",
            labels=["guard", "state"],
        )
        for guard in GUARDS:
            for state in GUARD_STATES:
                n = sum(1 for c in recent if c.guards[guard] == state)
                guards.add_metric([guard, state], float(n))
        isolation = GaugeMetricFamily(
            "hroute_clients",
            "Agent plugins heard from in the last hour, by where they run (host: gate off)",
            labels=["isolation"],
        )
        for mode in ISOLATIONS:
            isolation.add_metric([mode], float(sum(1 for c in recent if c.isolation == mode)))
        yield guards
        yield isolation


class _Families:
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Any]:
        m = self._m
        for counts in (m.probes, m.reports, m.events, m.config_reloads):
            yield counts.family()
        yield m.probe_duration.family()


class _ClusterCollector:
    """The link to the fleet's Redis: up or not, and what went through it."""

    def __init__(self, view: Callable[[], dict[str, Any]]) -> None:
        self._view = view

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        view = self._view()
        connected = GaugeMetricFamily(
            "hroute_cluster_connected", "1 while this host shares cooldowns through Redis"
        )
        connected.add_metric([], 1.0 if view["connected"] else 0.0)
        records = CounterMetricFamily(
            "hroute_cluster_records",
            "Shared cooldowns: published, applied from other hosts, skipped (unreadable), "
            "dropped (queue full)",
            labels=["result"],
        )
        for result in ("published", "applied", "skipped", "dropped"):
            records.add_metric([result], view[result])
        yield from (connected, records)


class _HealthCollector:
    """Gauges read from the registry at scrape time."""

    def __init__(self, health: Callable[[], Registry]) -> None:
        self._health = health

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

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
