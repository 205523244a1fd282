"""Benchmark of the Hermes plugin: primary calls wasted over an outage, and the time it adds.

1. **Scenario**, on every Hermes release in scripts/hermes-versions (the venvs
   `make hermes-venv` builds): a real Hermes Agent with a fake primary and a fake fallback on
   loopback. The primary answers 503 (chat and model list) for turns 1-5, then 200. Counted:
   the chat requests the primary receives in each turn, Hermes alone and Hermes with the
   plugin and a running `hroute run`.
2. **Added time per turn**, on one release (the newest unless --micro-version), inside its
   venv on a real `run_agent.AIAgent`: the
   per-turn restore (`AIAgent._restore_primary_runtime()`, the agent on its primary) with
   and without the plugin's wrapper, and the plugin's `post_api_request` and
   `api_request_error` hooks (one of them runs per API call). With a live daemon (answers
   come from its snapshot) and with no daemon at all (fail-open).

Usage: .venv/bin/python bench/bench_hermes_plugin.py [--quick] [--micro-version ID]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTAGE_TURNS, HEALTHY_TURNS = 5, 2


def note(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- 1. the scenario


def run_scenario(python: str, tmp: Path, plugin: bool) -> dict:
    """Hermes through the outage; per-turn primary POSTs and turn times."""
    sys.path.insert(0, str(REPO))
    from tests.support.daemon import Daemon, wait_until
    from tests.support.fakebackend import Behavior, FakeBackend
    from tests.support.hermes import HermesAgent

    label = "plugin" if plugin else "alone"
    with (
        FakeBackend(kind="openai", models=["primary-model"], reply="from primary") as primary,
        FakeBackend(kind="openai", models=["fb-model"], reply="from fallback") as fallback,
    ):
        (tmp / label).mkdir()
        config = (
            "defaults:\n"
            "  probe: {interval_s: 0.5, timeout_s: 1, fall: 1, rise: 1, jitter: 0}\n"
            "  cooldown: {base_s: 2, max_s: 10}\n"
            "backends:\n"
            f"  primary: {{kind: openai, base_url: '{primary.url('/v1')}', model: primary-model}}\n"
            f"  fallback: {{kind: openai, base_url: '{fallback.url('/v1')}', model: fb-model}}\n"
        )
        daemon = Daemon(tmp / label, config)
        if plugin:
            daemon.start()
        chain = [{"provider": "custom", "model": "fb-model", "base_url": fallback.url("/v1"),
                  "api_key": "fb-key"}]  # fmt: skip
        hermes = HermesAgent(
            python, tmp / label / "hermes", primary_url=primary.url("/v1"), fallbacks=chain,
            plugin=plugin, socket=daemon.socket, flush_reports=False,
        )  # fmt: skip
        try:
            hermes.start()
            primary.set_behavior("/v1/chat", Behavior(status=503))
            primary.set_behavior("/v1/models", Behavior(status=503))
            posts, seconds, answers = [], [], []
            for n in range(1, OUTAGE_TURNS + HEALTHY_TURNS + 1):
                if n == OUTAGE_TURNS + 1:
                    primary.clear_behaviors()
                    if plugin:
                        url, client = primary.url("/v1"), daemon.client()
                        wait_until(lambda: client.usable(base_url=url), 20)  # noqa: B023
                before = primary.count("POST", "/v1/chat")
                answer = hermes.turn(f"turn {n}", timeout_s=120)
                posts.append(primary.count("POST", "/v1/chat") - before)
                seconds.append(answer["seconds"])
                answers.append(answer["response"])
        finally:
            hermes.stop()
            daemon.stop()
    return {"posts": posts, "seconds": seconds, "answers": answers}


# --------------------------------------------------------------------------- 2. added time


MICRO = r"""
import json, os, statistics, sys, time
spec = json.loads(sys.argv[1])
import run_agent
from hroute.client import Client
from hroute_hermes import HermesPlugin

agent = run_agent.AIAgent(base_url=spec["primary"], api_key="primary-key", provider="custom",
    model="primary-model", fallback_model=[{"provider": "custom", "model": "fb-model",
    "base_url": spec["fallback"], "api_key": "fb-key"}], quiet_mode=True, enabled_toolsets=[],
    skip_context_files=True, skip_memory=True)
# The hooks report on a URL hroute does not watch: failure reports about the primary would
# cool it down and change what the timed restore does.
hook = dict(task_id="t", turn_id="u", api_request_id="r", session_id="s", platform="cli",
    model="other-model", provider="custom", base_url="http://127.0.0.1:9/v1", api_mode="chat_completions",
    api_call_count=1, api_duration=0.2, started_at=1.0, ended_at=1.2, finish_reason="stop",
    usage={"input_tokens": 900, "output_tokens": 40, "prompt_tokens": 900}, response=None)
error = dict(hook, status_code=503, reason="overloaded", retry_count=0, max_retries=2,
    retryable=True, error={"type": "InternalServerError", "message": "Error code: 503"})
N, ROUNDS, BATCH = spec["n"], spec["rounds"], 100

def per_call_us(fn, plugin=None):
    # mean per call, and the single calls timed after each batch; the report queue is drained
    # between batches (outside the timing) so that hooks are measured queueing, not dropping
    total, singles = 0, []
    for _ in range(N // BATCH):
        t0 = time.perf_counter_ns()
        for _ in range(BATCH):
            fn()
        total += time.perf_counter_ns() - t0
        t1 = time.perf_counter_ns(); fn(); singles.append(time.perf_counter_ns() - t1)
        if plugin is not None:
            plugin.reporter.flush(5)
    return total / (N // BATCH * BATCH) / 1000, singles

restore = agent._restore_primary_runtime
plugins = {"live daemon": HermesPlugin(Client(spec["socket"], budget_s=0.05)),
           "no daemon": HermesPlugin(Client(spec["nosocket"], budget_s=0.05))}
paths = {"restore, Hermes alone": (None, restore, False)}
for where, plugin in plugins.items():
    paths[f"restore + plugin, {where}"] = (plugin, restore, False)
    paths[f"post_api_request hook, {where}"] = (plugin, lambda p=plugin: p.on_post_api_request(**hook), True)
    paths[f"api_request_error hook, {where}"] = (plugin, lambda p=plugin: p.on_api_request_error(**error), True)
means = {k: [] for k in paths}
singles = {k: [] for k in paths}
for _ in range(ROUNDS):  # interleaved, so that every path sees the same noise
    for key, (plugin, fn, drain) in paths.items():
        if plugin is not None:
            plugin.install()
        mean, single = per_call_us(fn, plugin if drain else None)
        if plugin is not None:
            plugin.uninstall()
        means[key].append(mean)
        singles[key] += single
out = {}
for key in paths:
    ordered = sorted(singles[key])
    out[key] = [statistics.median(means[key]), ordered[int(len(ordered) * 0.99)] / 1000]
for where, plugin in plugins.items():
    out[f"dropped, {where}"] = plugin.reporter.dropped
print(json.dumps(out))
"""


def run_micro(python: str, tmp: Path, quick: bool) -> dict:
    sys.path.insert(0, str(REPO))
    from tests.support.daemon import Daemon
    from tests.support.fakebackend import FakeBackend
    from tests.support.hermes import write_hermes_home

    with (
        FakeBackend(kind="openai", models=["primary-model"]) as primary,
        FakeBackend(kind="openai", models=["fb-model"]) as fallback,
    ):
        (tmp / "micro").mkdir()
        config = (
            "defaults:\n  probe: {interval_s: 1, timeout_s: 1, jitter: 0}\nbackends:\n"
            f"  primary: {{kind: openai, base_url: '{primary.url('/v1')}', model: primary-model}}\n"
            f"  fallback: {{kind: openai, base_url: '{fallback.url('/v1')}', model: fb-model}}\n"
        )
        with Daemon(tmp / "micro", config) as daemon:
            daemon.wait_state("primary", "healthy")
            home = write_hermes_home(tmp / "micro" / "hermes", primary.url("/v1"),
                                     "primary-model", "primary-key", plugin=False)  # fmt: skip
            spec = {"primary": primary.url("/v1"), "fallback": fallback.url("/v1"),
                    "socket": str(daemon.socket), "nosocket": str(tmp / "none" / "hroute.sock"),
                    "n": 2000 if quick else 20000, "rounds": 1 if quick else 5}  # fmt: skip
            env = {**os.environ, "HERMES_HOME": str(home)}
            proc = subprocess.run(
                [python, "-c", MICRO, json.dumps(spec)], capture_output=True, text=True,
                env=env, timeout=900, cwd=home,
            )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"micro-benchmark failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- report


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0]
    return (
        f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, Python "
        f"{platform.python_version()}, 1-min load {load:.1f} at the start, {date.today()}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls (a smoke test)")
    parser.add_argument("--micro-version", help="release id for part 2 (default: the newest)")
    args = parser.parse_args()
    info = machine()
    sys.path.insert(0, str(REPO))
    from tests.support.hermes import VERSIONS, hermes_python

    pythons = {}
    for hermes in VERSIONS:
        note(f"preparing the venv for {hermes.id} (scripts/hermes-venv.sh)")
        python, why = hermes_python(hermes)
        if python is None:
            raise SystemExit(f"{why}")
        pythons[hermes.id] = python
    scenarios = {}
    with tempfile.TemporaryDirectory(prefix="hroute-bench-hermes-") as name:
        tmp = Path(name)
        for hermes in VERSIONS:
            for plugin in (False, True):
                label = "plugin" if plugin else "alone"
                note(f"scenario: {hermes.id}, {label}")
                t0 = time.monotonic()
                (tmp / hermes.id).mkdir(exist_ok=True)
                result = run_scenario(pythons[hermes.id], tmp / hermes.id, plugin=plugin)
                result["wall"] = time.monotonic() - t0
                scenarios[(hermes.id, label)] = result
        micro_id = args.micro_version or VERSIONS[-1].id
        note(f"added time per turn ({micro_id})")
        micro = run_micro(pythons[micro_id], tmp, args.quick)

    print(f"Machine: {info}.\n")
    print(f"Scenario: primary down (503) for turns 1-{OUTAGE_TURNS}, healthy after; "
          "api_max_retries 2; one fallback.\n")  # fmt: skip
    print(f"| Hermes | run | primary chat POSTs per turn, 1-{OUTAGE_TURNS} | total | "
          f"turns {OUTAGE_TURNS + 1}-{OUTAGE_TURNS + HEALTHY_TURNS} on | turns answered | "
          "median turn s, outage |")  # fmt: skip
    print("|---|---|---|---:|---|---:|---:|")
    for (hermes_id, label), r in scenarios.items():
        outage = r["posts"][:OUTAGE_TURNS]
        answered = sum(1 for a in r["answers"] if a and a.startswith("from "))
        after = ", ".join(a.removeprefix("from ") for a in r["answers"][OUTAGE_TURNS:])
        print(
            f"| {hermes_id} | {'Hermes + hroute plugin' if label == 'plugin' else 'Hermes alone'}"
            f" | {' '.join(map(str, outage))} | {sum(outage)} | {after} | "
            f"{answered}/{len(r['answers'])} | "
            f"{statistics.median(r['seconds'][:OUTAGE_TURNS]):.2f} |"
        )
    print(f"\n| path (per call, µs; {micro_id}) | median of round means | p99 of single calls |")
    print("|---|---:|---:|")
    for key, value in micro.items():
        if isinstance(value, list):
            print(f"| {key} | {value[0]:.1f} | {value[1]:.1f} |")
    base = micro["restore, Hermes alone"][0]
    for where in ("live daemon", "no daemon"):
        added = micro[f"restore + plugin, {where}"][0] - base
        added += micro[f"post_api_request hook, {where}"][0]
        print(
            f"\nAdded per turn ({where}): restore wrapper + one post_api_request hook = "
            f"{added:.1f} µs = {added / 1000:.3f} ms (goal ≤ 2 ms); dropped reports: "
            f"{micro[f'dropped, {where}']}"
        )
    print("\n" + json.dumps({"scenarios": {f"{k[0]} {k[1]}": v for k, v in scenarios.items()},
                            "micro": micro}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
