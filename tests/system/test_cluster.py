"""Many hosts, one view of the cloud: three `hroute run` daemons on loopback (three configs,
three sockets) share cooldowns of a remote backend through a private `redis-server`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, wait_until
from tests.support.fakebackend import FakeBackend
from tests.support.redis import RedisServer

pytestmark = pytest.mark.system

PREFIX = "hroute-test:"


class Fleet:
    """A redis-server, a fake cloud API and a fake local server, and daemons that share."""

    def __init__(self, tmp: Path, stack: ExitStack) -> None:
        self.tmp, self.stack = tmp, stack
        self.redis = RedisServer()
        stack.callback(self.redis.stop)
        self.redis.start()
        self.cloud = stack.enter_context(FakeBackend(kind="openai", models=["gpt-a", "gpt-b"]))
        self.local = stack.enter_context(FakeBackend(kind="openai", models=["m"]))
        self.daemons: list[Daemon] = []
        self.url, self.prefix = self.redis.url, PREFIX

    def config(self, host: str) -> str:
        return (
            "defaults:\n"
            "  probe: {interval_s: 1, timeout_s: 0.5, fall: 1, rise: 1, jitter: 0}\n"
            "  cooldown: {base_s: 30, max_s: 300, jitter: 0.1}\n"
            f"cluster: {{redis_url: '{self.url}', key_prefix: '{self.prefix}', host: {host}}}\n"
            "backends:\n"
            # Loopback, so a test can run it; marked remote, as a cloud API would be.
            f"  cloud-a: {{kind: openai, base_url: '{self.cloud.url('/v1')}', model: gpt-a,"
            " tier: cloud, price: {input_per_mtok: 1000}}\n"
            f"  cloud-b: {{kind: openai, base_url: '{self.cloud.url('/v1')}', model: gpt-b,"
            " tier: cloud}\n"
            f"  local: {{kind: openai, base_url: '{self.local.url('/v1')}', model: m}}\n"
            "profiles:\n"
            "  paid: {chain: [cloud-a]}\n"
            "budgets: {per_backend_daily_usd: {cloud-a: 1}, timezone: UTC}\n"
        )

    def start(self, i: int) -> Daemon:
        tmp = self.tmp / f"host-{i}"
        tmp.mkdir()
        d = self.stack.enter_context(Daemon(tmp, self.config(f"host-{i}")))
        self.daemons.append(d)
        return d

    def connected(self, d: Daemon, value: bool = True) -> None:
        wait_until(
            lambda: d.get("/v1/backends")[1]["cluster"]["connected"] is value,
            10,
            what=f"{d.tmp.name} connected={value}",
        )


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with ExitStack() as stack:
        yield Fleet(tmp_path, stack)


def held(d: Daemon, backend: str, credential: str | None = None) -> float | None:
    """Seconds the backend is held for (the daemon's answer on its socket), None if usable."""
    query = f"backend={backend}" + (f"&credential={credential}" if credential else "")
    status, answer = d.get(f"/v1/usable?{query}")
    assert status == 200, answer
    return None if answer["usable"] else (answer["retry_after_s"] or 0.0)


def seen(d: Daemon, backend: str, credential: str | None = None) -> bool:
    """Whether agents reading the daemon's snapshot (as `usable()` does) see it held."""
    return not d.client().usable(backend, credential=credential).usable


def test_a_429_on_one_host_holds_that_key_everywhere(fleet: Fleet) -> None:
    a, b, c = (fleet.start(i) for i in range(3))
    for d in (a, b, c):
        fleet.connected(d)
    assert a.client().report(
        "cloud-a",
        reason="rate_limit",
        status_code=429,
        retry_after_s=600,
        credential="sha256:0000000000000001",
    )
    deadline_a = held(a, "cloud-a", "sha256:0000000000000001")
    assert deadline_a is not None and deadline_a > 590
    for d in (b, c):
        # How fast it travels is bench/bench_cluster.py's figure; here, that it arrives.
        wait_until(
            lambda d=d: seen(d, "cloud-a", "sha256:0000000000000001"),
            15,
            0.005,
            "agents elsewhere to see it",
        )
        assert held(d, "cloud-a", "sha256:0000000000000001") == pytest.approx(
            held(a, "cloud-a", "sha256:0000000000000001"), abs=1.0
        )
        # One key of one model: other keys, and the other model, stay usable everywhere.
        assert held(d, "cloud-a", "sha256:0000000000000002") is None
        assert held(d, "cloud-b", "sha256:0000000000000001") is None
        assert held(d, "cloud-a") is None
        line = d.wait_for_log("cooling down for")
        assert "rate_limit, seen by host-0" in line and "sha256:0000000000000001" in line
        view = d.backend("cloud-a")
        assert view["credential_cooldowns"] == 1
    assert held(a, "cloud-a", "sha256:0000000000000002") is None
    # The other hosts do not tell it back: host-0 heard nothing new.
    assert "seen by" not in a.log


def test_a_local_backends_failure_stays_on_its_host(fleet: Fleet) -> None:
    a, b, c = (fleet.start(i) for i in range(3))
    for d in (a, b, c):
        fleet.connected(d)
    assert a.client().report("local", reason="connection", detail="refused")
    assert held(a, "local") is not None
    # A cloud report after it travels the same way; once it arrived, the local one would have.
    assert a.client().report("cloud-b", reason="overloaded", status_code=529, model="gpt-b")
    for d in (b, c):
        wait_until(lambda d=d: held(d, "cloud-b"), 2, what="the cloud cooldown elsewhere")
        assert held(d, "local") is None
        assert held(d, "cloud-a") is None  # the model's overload, not the server's


def test_redis_away_each_host_works_alone_and_converges_when_it_is_back(fleet: Fleet) -> None:
    a, b, c = (fleet.start(i) for i in range(3))
    for d in (a, b, c):
        fleet.connected(d)
    fleet.redis.kill()
    for d in (a, b, c):
        fleet.connected(d, False)
        assert "hroute_cluster_connected 0.0" in d.get_text("/metrics")
    # Every host keeps answering, and a report still cools down where it was made.
    assert b.client().report(
        "cloud-a",
        reason="rate_limit",
        status_code=429,
        retry_after_s=300,
        credential="sha256:0000000000000003",
    )
    assert held(b, "cloud-a", "sha256:0000000000000003") is not None
    assert (
        held(a, "cloud-a", "sha256:0000000000000003") is None
        and held(c, "cloud-a", "sha256:0000000000000003") is None
    )
    status = b.get("/v1/backends")[1]["cluster"]
    assert status["connected"] is False and status["error"]

    fleet.redis.start()  # empty: it kept nothing
    for d in (a, b, c):
        fleet.connected(d)
    for d in (a, c):
        wait_until(
            lambda d=d: held(d, "cloud-a", "sha256:0000000000000003"),
            5,
            what="what happened meanwhile",
        )
        assert held(d, "cloud-a", "sha256:0000000000000003") == pytest.approx(
            held(b, "cloud-a", "sha256:0000000000000003"), abs=1.0
        )
    for d in (a, b, c):
        assert "hroute_cluster_connected 1.0" in d.get_text("/metrics")
        # Said once per outage, however many reconnects failed meanwhile (the line may be
        # read from the daemon's stderr a moment after its metrics say so).
        wait_until(
            lambda d=d: sum("cluster: connected" in line for line in d.lines) == 2,
            5,
            what="the reconnect's log line",
        )
        assert sum("cluster: lost" in line for line in d.lines) == 1, d.log
        assert sum("cluster: connected" in line for line in d.lines) == 2, d.log


def test_a_host_started_late_gets_the_current_cooldowns_and_skips_garbage(fleet: Fleet) -> None:
    import redis

    a = fleet.start(0)
    fleet.connected(a)
    assert a.client().report("cloud-b", reason="upstream_rate_limit", retry_after_s=120)
    r = redis.Redis(unix_socket_path=str(fleet.redis.socket))
    r.set(PREFIX + "cd:not-ours", b"\x00garbage", px=60_000)
    r.set("someone-else:key", "x")
    late = fleet.start(1)
    fleet.connected(late)
    assert held(late, "cloud-b") == pytest.approx(held(a, "cloud-b"), abs=1.0)
    assert held(late, "cloud-a") is None
    late.wait_for_log(f"cluster: skipping {PREFIX}cd:not-ours")
    view = late.get("/v1/backends")[1]["cluster"]
    assert view["skipped"] == 1 and view["applied"] == 1
    # What was in Redis is a fingerprint-free, key-free record with a TTL.
    [key] = [k for k in r.scan_iter(PREFIX + "cd:*") if not k.endswith(b"not-ours")]
    assert 0 < r.pttl(key) <= 120_000
    assert b'"host":"host-0"' in r.get(key)


def test_status_and_metrics_show_the_cluster(fleet: Fleet) -> None:
    import subprocess
    import sys

    a = fleet.start(0)
    fleet.connected(a)
    out = subprocess.run(
        [sys.executable, "-m", "hroute.cli", "--socket", str(a.socket), "status"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert f"cluster: connected to {fleet.redis.url} as host-0" in out.stdout, out
    doctor = subprocess.run(
        [sys.executable, "-m", "hroute.cli", "--socket", str(a.socket), "doctor"]
        + ["--config", str(a.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert f"sharing cooldowns through {fleet.redis.url} as host-0" in doctor.stdout, doctor
    metrics = a.get_text("/metrics")
    assert "hroute_cluster_connected 1.0" in metrics
    assert 'hroute_cluster_records_total{result="published"} 0.0' in metrics


def test_a_days_spend_is_the_fleets(fleet: Fleet) -> None:
    a, b, c = (fleet.start(i) for i in range(3))
    for d in (a, b, c):
        fleet.connected(d)
    assert a.client().usage("cloud-a", input_tokens=600)["spent_today_usd"] == 0.6  # $1000/Mtok
    wait_until(lambda: b.backend("cloud-a")["spent_today_usd"] == 0.6, 2, what="b to hear it")
    # Each host alone is under the $1 budget; together they are past it, everywhere.
    answer = b.client().usage("cloud-a", input_tokens=500)
    assert answer["spent_today_usd"] == pytest.approx(1.1) and answer["budget"]
    for d in (a, b, c):
        wait_until(
            lambda d=d: d.backend("cloud-a")["spent_today_usd"] == pytest.approx(1.1),
            2,
            what="the fleet's spend everywhere",
        )
        status, route = d.get("/v1/route?profile=paid")
        assert route["backend"] is None and "budget_exhausted" in route["chain"][0]["reason"]
    # Redis forgets (no persistence): every host sends its own total again; nothing doubles.
    fleet.redis.kill()
    fleet.redis.start()
    for d in (a, b, c):
        fleet.connected(d)
    late = fleet.start(3)
    fleet.connected(late)
    wait_until(
        lambda: late.backend("cloud-a")["spent_today_usd"] == pytest.approx(1.1),
        5,
        what="the late host to hear the fleet's day",
    )


def test_the_readmes_acl_user_is_enough(fleet: Fleet) -> None:
    """The README's Redis user, limited to the prefix, can do everything hroute does."""
    import re

    import redis

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    [acl] = re.findall(r"^user hroute on .*$", readme, re.MULTILINE)
    rules = acl.split()[2:]
    admin = redis.Redis(unix_socket_path=str(fleet.redis.socket))
    admin.acl_setuser("hroute", enabled=True, reset=True)
    admin.execute_command(
        "ACL", "SETUSER", "hroute", *[r.replace("CHANGE-ME", "pw") for r in rules]
    )
    admin.set("other-app:secret", "x")
    fleet.url, fleet.prefix = f"unix://hroute:pw@{fleet.redis.socket}", "hroute:"
    a, b = fleet.start(0), fleet.start(1)
    for d in (a, b):
        fleet.connected(d)
    assert a.client().report(
        "cloud-a", reason="rate_limit", retry_after_s=60, credential="sha256:0000000000000001"
    )
    assert a.client().usage("cloud-a", input_tokens=100)
    wait_until(
        lambda: held(b, "cloud-a", "sha256:0000000000000001"),
        2,
        what="the cooldown through the ACL user",
    )
    wait_until(lambda: b.backend("cloud-a")["spent_today_usd"] == 0.1, 2, what="the spend")
    assert "NOPERM" not in a.log + b.log and "cluster: lost" not in a.log + b.log
    # A reconnect re-pushes what the hosts hold (pipelined) with the same user's rights.
    admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    for d in (a, b):
        d.wait_for_log("cluster: lost")
        wait_until(
            lambda d=d: sum("cluster: connected" in x for x in d.lines) == 2, 10, what="back"
        )
    assert "NOPERM" not in a.log + b.log and "unexpected failure" not in a.log + b.log
    assert admin.get(next(admin.scan_iter("hroute:cd:*")))  # the hold, pushed again
    user = redis.Redis(unix_socket_path=str(fleet.redis.socket), username="hroute", password="pw")
    with pytest.raises(redis.exceptions.NoPermissionError):
        user.get("other-app:secret")


def test_a_redis_that_stops_answering_delays_no_answer(fleet: Fleet) -> None:
    a, b = fleet.start(0), fleet.start(1)
    for d in (a, b):
        fleet.connected(d)
    fleet.redis.pause()
    try:
        for i in range(10):
            # The client gives up after its 2 s budget (report() is then False), before the
            # 3 s the cluster's Redis client waits: an answer proves nobody waited on Redis.
            assert a.client(budget_s=2.0).report(
                "cloud-a", reason="rate_limit", retry_after_s=300, credential=f"sha256:{i:016x}"
            )
            assert held(a, "cloud-a", f"sha256:{i:016x}") is not None
            assert b.get("/v1/backends")[0] == 200
    finally:
        fleet.redis.resume()
    for i in range(10):  # what was said while Redis was stuck arrives once it answers again
        wait_until(lambda i=i: held(b, "cloud-a", f"sha256:{i:016x}"), 15, what=f"fp-{i} on host-1")


def test_redis_down_at_start_each_host_serves_alone_then_joins(fleet: Fleet) -> None:
    fleet.redis.kill()
    a, b = fleet.start(0), fleet.start(1)  # serving without Redis: nothing waits for it
    for d in (a, b):
        fleet.connected(d, False)
        d.wait_for_log("cluster: cannot reach")
    assert a.client().report("cloud-a", reason="server_error", status_code=500)
    assert held(a, "cloud-a") is not None and held(b, "cloud-a") is None
    fleet.redis.start()
    for d in (a, b):
        fleet.connected(d)
    wait_until(lambda: held(b, "cloud-a"), 5, what="the cooldown made before Redis came")
    assert held(b, "cloud-a") == pytest.approx(held(a, "cloud-a"), abs=1.0)
    for d in (a, b):
        assert sum("cluster: cannot reach" in line for line in d.lines) == 1, d.log


KEY = "sha256:00000000000000c1"


def _rate_limit(d: Daemon, seconds: int = 600) -> None:
    assert d.client().report(
        "cloud-a", reason="rate_limit", status_code=429, retry_after_s=seconds, credential=KEY
    )


def test_a_success_report_on_one_host_clears_the_key_on_every_host(fleet: Fleet) -> None:
    a, b, c = (fleet.start(i) for i in range(3))
    for d in (a, b, c):
        fleet.connected(d)
    _rate_limit(a)
    for d in (b, c):
        wait_until(lambda d=d: held(d, "cloud-a", KEY), 5, what="the 429 everywhere")
    assert b.client().report("cloud-a", outcome="success", credential=KEY)
    assert held(b, "cloud-a", KEY) is None
    for d in (a, c):
        wait_until(lambda d=d: held(d, "cloud-a", KEY) is None, 5, what="the clear everywhere")
        wait_until(lambda d=d: not seen(d, "cloud-a", KEY), 5, what="agents to see it")
        line = d.wait_for_log("cooldown lifted for credential")
        assert "seen by host-1" in line


@pytest.mark.parametrize("origin_running", [True, False], ids=["origin-up", "origin-down"])
def test_nothing_cleared_comes_back_after_redis_restarts_empty(
    fleet: Fleet, origin_running: bool
) -> None:
    a, b, c = (fleet.start(i) for i in range(3))
    for d in (a, b, c):
        fleet.connected(d)
    _rate_limit(a)
    for d in (b, c):
        wait_until(lambda d=d: held(d, "cloud-a", KEY), 5, what="the 429 everywhere")
    # A model's hold made by host-0, never cleared: it must survive without its origin.
    assert a.client().report("cloud-b", reason="overloaded", status_code=529, model="gpt-b")
    for d in (b, c):
        wait_until(lambda d=d: held(d, "cloud-b"), 5, what="the 529 everywhere")
    assert b.client().report("cloud-a", outcome="success", credential=KEY)
    for d in (a, c):
        wait_until(lambda d=d: held(d, "cloud-a", KEY) is None, 5, what="the clear everywhere")
    if not origin_running:
        a.stop()
    running = [b, c] + ([a] if origin_running else [])
    killed = time.time()
    fleet.redis.kill()
    fleet.redis.start()  # empty

    def rejoined(d: Daemon) -> bool:  # connected since the restart: it pulled and re-pushed
        view = d.get("/v1/backends")[1]["cluster"]
        return view["connected"] and view["since"] >= killed

    wait_until(lambda: all(rejoined(d) for d in running), 10, what="every host's re-push")
    late = fleet.start(3)  # a host that never heard of either
    fleet.connected(late)
    wait_until(lambda: held(late, "cloud-b"), 10, what="the live hold, re-pushed by any host")
    for d in [*running, late]:
        assert held(d, "cloud-a", KEY) is None, d.tmp.name
        assert held(d, "cloud-b") is not None, d.tmp.name


def test_hostile_records_are_skipped_and_sharing_keeps_working(fleet: Fleet) -> None:
    """Records anyone with the Redis credential could write: none holds anything for long,
    breaks the state file, or stops sharing (at once, or at the next reconnect)."""
    import json

    import redis

    from hroute.core.shared_record import Shared, decode

    a, b = fleet.start(0), fleet.start(1)
    for d in (a, b):
        fleet.connected(d)
    r = redis.Redis(unix_socket_path=str(fleet.redis.socket))
    _rate_limit(a, 60)
    wait_until(lambda: held(b, "cloud-a", KEY), 5, what="the first record")
    [key] = r.scan_iter(PREFIX + "cd:*")
    good = json.loads(r.get(key))
    template = decode(r.get(key), r.pttl(key))

    def plant(which: int, ttl_ms: int = 60_000, raw: str | None = None, **fields: object) -> str:
        credential = f"sha256:{which:016x}"
        shared = Shared(**{**template.__dict__, "credential": credential})
        value = raw if raw is not None else json.dumps({**good, "credential": credential, **fields})
        r.set(PREFIX + shared.key, value, px=ttl_ms)
        r.publish(PREFIX + "events", f"{PREFIX}{shared.key}\n{ttl_ms}\n{value}")
        return credential

    ten_years = plant(0xA1, ttl_ms=10 * 365 * 86_400_000)
    plant(0xA2, host="h" * 110)
    plant(0xA3, n=10**9)
    plant(
        0xA4,
        raw=json.dumps({**good, "credential": "sha256:00000000000000a4"}).replace(
            '"n": 1', '"n": Infinity'
        ),
    )
    future = plant(0xA6, v=2, ver=2**53 - 1, state="held")  # would outrank any real one
    plant(0xA5, raw='{"v": 1, "server": ' + "[" * 50_000 + "]" * 50_000 + "}")
    label = time.strftime("%Y-%m-%d", time.gmtime())
    r.hset(f"{PREFIX}spend:{label}", mapping={"x\tcloud-a": "1e308", "y\tcloud-a": "1e308"})
    r.hset(f"{PREFIX}spend:{label}", mapping={"z\tcloud-a": "1e9"})
    r.publish(PREFIX + "events", f"spend\n{label}\nx")

    # Sharing still works, live and at a reconnect (a late host pulls all of it).
    late = fleet.start(2)
    fleet.connected(late)
    assert a.client().report("cloud-b", reason="overloaded", status_code=529, model="gpt-b")
    for d in (b, late):
        wait_until(lambda d=d: held(d, "cloud-b"), 5, what="a good record after the bad ones")
        status, body = d.get("/v1/backends")
        assert status == 200, body
        wait_until(
            lambda d=d: d.get("/v1/backends")[1]["cluster"]["skipped"] >= 6,
            5,
            what="the bad records counted",
        )
        assert 'hroute_cluster_records_total{result="skipped"}' in d.get_text("/metrics")
        # 1e308 + 1e308 (inf: GET /v1/backends answered 500) and $1e9 are no spend.
        assert d.backend("cloud-a")["spent_today_usd"] == 0.0
        assert d.get("/v1/route?profile=paid")[1]["backend"] == "cloud-a"
        assert held(d, "cloud-a", future) is None
        left = held(d, "cloud-a", ten_years)
        assert left is not None and left <= 86_400  # a day at most, not ten years
        assert "\x1b" not in d.log
    # A restart reads back what it saved: nothing set aside.
    late.stop()
    late.start()
    fleet.connected(late)
    assert "set aside" not in late.log and "unreadable" not in late.log, late.log
    assert held(late, "cloud-a", ten_years) is not None


def test_a_starting_host_answers_the_fleets_hold_from_its_first_answer(fleet: Fleet) -> None:
    a = fleet.start(0)
    fleet.connected(a)
    assert a.client().report("cloud-b", reason="overloaded", status_code=529, model="gpt-b")
    wait_until(lambda: fleet.redis.ping() and held(a, "cloud-b"), 5, what="the hold in Redis")
    late = fleet.start(1)  # its socket answers once the pull landed
    assert held(late, "cloud-b") is not None  # the very first question
    assert "serving before the fleet's cooldowns arrived" not in late.log


def test_after_a_long_outage_hosts_converge_soon_after_redis_returns(fleet: Fleet) -> None:
    """13 s without Redis grew the reconnect backoff to 10 s: records made meanwhile arrived
    up to 10 s after Redis came back. The figure itself is in bench/bench_cluster.py."""
    a, b, c = (fleet.start(i) for i in range(3))
    for d in (a, b, c):
        fleet.connected(d)
    fleet.redis.kill()
    for d in (a, b, c):
        fleet.connected(d, False)
    assert b.client().report("cloud-b", reason="overloaded", status_code=529, model="gpt-b")
    time.sleep(13)  # the outage itself, not a wait for something
    fleet.redis.start()
    for d in (a, c):
        wait_until(lambda d=d: held(d, "cloud-b"), 5, what="the record made during the outage")
