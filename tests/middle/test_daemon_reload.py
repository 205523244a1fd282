"""Hot reload through the whole daemon in process: the real file watcher, `POST /v1/reload`,
health kept across reloads and restarts. A reload settles on the daemon's clock, so the
tests move the manual clock on while they wait. (SIGHUP, the CLI and kill -9 stay in
tests/system/test_reload.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hroute.edges.reloader import SETTLE_S
from tests.support.clock import ManualClock
from tests.support.inprocess import InProcessDaemon

pytestmark = pytest.mark.anyio

HEAD = """defaults:
  probe: {interval_s: 30, timeout_s: 0.5, fall: 1, rise: 1, jitter: 0}
  cooldown: {base_s: 30, max_s: 300}
"""


def cfg(backends: dict[str, int], profile: list[str] | None = None) -> str:
    lines = [HEAD, "backends:"]
    lines += [
        f"  {n}: {{kind: openai, base_url: 'http://127.0.0.1:{port}', probe: {{enabled: false}}}}"
        for n, port in backends.items()
    ]
    if profile:
        lines.append(f"profiles:\n  p: {{chain: [{', '.join(profile)}]}}")
    return "\n".join(lines) + "\n"


async def _names_are(d: InProcessDaemon, want: set[str]) -> bool:
    return await d.names() == want


async def applied(d: InProcessDaemon, want: set[str]) -> None:
    await d.until(lambda: _names_are(d, want), advance_s=SETTLE_S, what=f"backends {want}")


async def test_a_write_in_place_adds_a_backend_and_keeps_the_unchanged_cooldown(tmp_path) -> None:
    async with InProcessDaemon(tmp_path, cfg({"a": 9})) as d:
        await d.report("a", reason="rate_limit", retry_after_s=300)
        before = (await d.backend("a"))["cooldown_remaining_s"]
        start = d.clock.now()
        d.config_path.write_text(cfg({"a": 9, "b": 10}).replace("base_s: 30", "base_s: 31"))
        await applied(d, {"a", "b"})
        line = await d.wait_for_log("reloaded: +1 backend, -0, 0 changed, 0 restarts")
        assert "file changed" in line
        a = await d.backend("a")
        assert a["usable"] is False and a["reason"] == "rate_limit"
        # The same cooldown, still running: exactly the time the clock moved on.
        assert a["cooldown_remaining_s"] == pytest.approx(
            before - (d.clock.now() - start), abs=0.01
        )


async def test_a_changed_identity_starts_fresh(tmp_path: Path) -> None:
    # An hour's cooldown: the clock moves on while the watcher (real time) sees the change.
    def long(backends: dict[str, int]) -> str:
        return cfg(backends).replace("base_s: 30, max_s: 300", "base_s: 3600, max_s: 3600")

    async with InProcessDaemon(tmp_path, long({"a": 9})) as d:
        await d.report("a", reason="server_error")
        assert (await d.backend("a"))["usable"] is False
        start = d.clock.now()
        d.config_path.write_text(long({"a": 11}))

        async def fresh() -> bool:
            return (await d.backend("a"))["usable"]

        await d.until(fresh, advance_s=SETTLE_S, what="a fresh record for the new URL")
        assert d.clock.now() - start < 1800  # not the cooldown's end: the reload


async def test_a_write_and_rename_is_seen(tmp_path: Path) -> None:
    async with InProcessDaemon(tmp_path, cfg({"a": 9})) as d:
        tmp = d.config_path.with_name(".hroute.yaml.swp")
        tmp.write_text(cfg({"a": 9, "c": 12}))
        os.replace(tmp, d.config_path)
        await applied(d, {"a", "c"})


async def test_a_symlink_swap_is_seen(tmp_path: Path) -> None:
    releases = tmp_path / "releases"
    releases.mkdir()
    (releases / "v1.yaml").write_text(cfg({"a": 9}))
    (releases / "v2.yaml").write_text(cfg({"a": 9, "v2": 13}))
    d = InProcessDaemon(tmp_path, "")
    d.config_path.unlink()
    d.config_path.symlink_to(releases / "v1.yaml")
    async with d:
        assert await d.names() == {"a"}
        new_link = tmp_path / ".next"
        new_link.symlink_to(releases / "v2.yaml")
        os.replace(new_link, d.config_path)  # what config-management tools do
        await applied(d, {"a", "v2"})


@pytest.mark.parametrize(
    ("tail", "says"),
    [
        ("  b: {kind: nonsense, base_url: 'http://x'}\n", "backends.b.kind (line 7)"),
        ("  b: {kind: openai, base_url: 'http://x', bogus: 1}\n", "backends.b.bogus (line 7)"),
        ("  b: [not, a, mapping\n", "YAML syntax error"),
        ("profiles:\n  p: {chain: [a, ghost]}\n", "ghost"),
    ],
    ids=["bad-kind", "unknown-field", "broken-yaml", "unknown-backend-in-chain"],
)
async def test_a_bad_file_keeps_the_last_good_config_and_says_why(tmp_path, tail, says) -> None:
    async with InProcessDaemon(tmp_path, cfg({"a": 9})) as d:
        await d.report("a", reason="rate_limit", retry_after_s=300)
        d.config_path.write_text(cfg({"a": 9}) + tail)
        line = await d.wait_for_log("config rejected", advance_s=SETTLE_S)
        assert line.startswith("ERROR")
        assert says in d.log
        assert await d.names() == {"a"}
        assert (await d.usable("a"))["reason"] == "rate_limit"  # health untouched
        assert [e["event"] for e in await d.events("config_rejected")] == ["config_rejected"]
        metrics = await d.get_text("/metrics")
        assert 'hroute_config_reloads_total{result="rejected"} 1.0' in metrics


async def test_a_deleted_file_is_rejected_and_a_good_one_applies_again(tmp_path: Path) -> None:
    async with InProcessDaemon(tmp_path, cfg({"a": 9})) as d:
        d.config_path.unlink()
        await d.wait_for_log("config rejected", advance_s=SETTLE_S)
        assert "file not found" in d.log
        assert await d.names() == {"a"} and (await d.usable("a"))["usable"]
        d.config_path.write_text(cfg({"a": 9, "back": 14}))
        await applied(d, {"a", "back"})


async def test_a_rejected_file_is_not_tried_again_until_it_changes(tmp_path: Path) -> None:
    async with InProcessDaemon(tmp_path, cfg({"a": 9})) as d:
        d.config_path.write_text(cfg({"a": 9}) + "  b: {kind: nonsense}\n")
        await d.wait_for_log("config rejected", advance_s=SETTLE_S)
        for _ in range(10):  # the watcher's content check runs on; the file stays the same
            await d.clock.advance(1.0)
        assert len(await d.events("config_rejected")) == 1


async def test_reload_over_the_api_answers_what_it_did(tmp_path: Path) -> None:
    async with InProcessDaemon(tmp_path, cfg({"a": 9})) as d:
        # The watcher may apply it first; the API's reload then finds no change.
        d.config_path.write_text(cfg({"a": 9, "r": 16}))
        status, body = await _api_reload(d)
        assert status == 200 and body["ok"] is True, body
        assert await d.names() == {"a", "r"}


async def test_reload_over_the_api_says_422_and_why_for_a_bad_file(tmp_path: Path) -> None:
    async with InProcessDaemon(tmp_path, cfg({"a": 9})) as d:
        d.config_path.write_text("backends:\n  a: {kind: openai, base_url: 'http://x', bogus: 1}\n")
        status, body = await _api_reload(d)
        assert status == 422 and body["error"]["code"] == "config_rejected"
        assert "backends.a.bogus (line 2)" in body["error"]["message"]


async def _api_reload(d: InProcessDaemon) -> tuple[int, dict]:
    """POST /v1/reload while moving the clock on, which the reload's settling waits for."""
    import anyio

    answer: list[tuple[int, dict]] = []
    async with anyio.create_task_group() as tg:

        async def ask() -> None:
            answer.append(await d.post("/v1/reload", {}))

        tg.start_soon(ask)
        await d.until(lambda: answer, advance_s=SETTLE_S, what="the reload's answer")
    return answer[0]


async def test_queries_during_reloads_never_mix_two_configs(tmp_path: Path) -> None:
    a = cfg({"a1": 9, "a2": 10}, ["a1", "a2"])
    b = cfg({"b1": 11, "b2": 12}, ["b1", "b2"])
    async with InProcessDaemon(tmp_path, a) as d:
        for i in range(6):
            d.config_path.write_text(b if i % 2 == 0 else a)
            want = {"b1", "b2"} if i % 2 == 0 else {"a1", "a2"}

            async def consistent(want: set[str] = want) -> bool:
                status, body = await d.route("p")
                chain = {c["backend"] for c in body["chain"]}
                assert status == 200 and chain in ({"a1", "a2"}, {"b1", "b2"}), body
                return chain == want

            await d.until(consistent, advance_s=SETTLE_S, what=f"reload {i}")


async def test_a_cooldown_survives_a_restart_on_the_same_clock(tmp_path: Path) -> None:
    clock = ManualClock()
    text = cfg({"cloud": 9, "other": 10})
    async with InProcessDaemon(tmp_path, text, clock=clock) as d:
        await d.report("cloud", reason="rate_limit", retry_after_s=600)
        state = d.state_dir / "state.json"
        await d.until(
            lambda: state.exists() and '"rate_limit"' in state.read_text(),
            advance_s=1.0,
            what="the cooldown to be saved",
        )
    await clock.advance(100)  # down for 100 s
    async with InProcessDaemon(tmp_path, text, clock=clock) as again:
        cloud = await again.backend("cloud")
        assert cloud["usable"] is False and cloud["reason"] == "rate_limit"
        assert 490 < cloud["cooldown_remaining_s"] <= 500
        await again.wait_for_log("restored health of 2 backends")
        await clock.advance(501)
        assert (await again.usable("cloud"))["usable"] is True
