"""What agent plugins say about themselves, kept per client and counted in fixed labels."""

from __future__ import annotations

from hroute.config.model import load_config
from hroute.core.clients import RECENT_S, Clients
from hroute.core.registry import Registry
from hroute.edges.metrics import Metrics


def state(pid: int, **over: object) -> dict:
    base = {
        "kind": "hermes",
        "pid": pid,
        "isolation": "in_process",
        "guards": {"restore": "on", "fallback": "on", "auxiliary": "on"},
        "version": "0.22.2.post1",
    }
    return {**base, **over}


def test_latest_state_per_client_most_recent_first_and_bounded() -> None:
    clients = Clients(max_clients=2)
    clients.record(state(1), now=10.0)
    clients.record(state(2, isolation="host", guards={}), now=11.0)
    clients.record(state(1, guards={"restore": "failing"}), now=12.0)
    views = clients.views(now=13.0)
    assert [(v["pid"], v["seen_s_ago"]) for v in views] == [(1, 1.0), (2, 2.0)]
    assert views[0]["guards"] == {"restore": "failing", "fallback": "off", "auxiliary": "off"}
    assert views[0]["off"] == ["restore", "fallback", "auxiliary"]
    clients.record(state(3), now=14.0)  # the oldest-heard (pid 2) goes
    assert sorted(v["pid"] for v in clients.views(now=14.0)) == [1, 3]


def test_gauges_count_recent_clients_in_fixed_labels(clock) -> None:
    clients, now = Clients(), [100.0]
    config = load_config("backends: {b: {kind: openai, base_url: 'http://127.0.0.1:9/v1'}}")
    reg = Registry(config, clock)
    metrics = Metrics(lambda: reg, clients, lambda: now[0])

    def generate_latest(_: object) -> bytes:
        return metrics.render()[0]

    registry = None
    clients.record(state(1), now=100.0)
    clients.record(state(2, isolation="host", guards={"restore": "off"}), now=100.0)
    text = generate_latest(registry).decode()
    assert 'hroute_client_guards{guard="restore",state="on"} 1.0' in text
    assert 'hroute_client_guards{guard="restore",state="off"} 1.0' in text
    assert 'hroute_client_guards{guard="auxiliary",state="failing"} 0.0' in text
    assert 'hroute_clients{isolation="host"} 1.0' in text
    assert "0.22.2" not in text  # client text never becomes a label
    now[0] += RECENT_S + 1
    text = generate_latest(registry).decode()
    assert 'hroute_clients{isolation="host"} 0.0' in text
