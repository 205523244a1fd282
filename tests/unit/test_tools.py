"""The pure parts of doctor and the live view: Hermes' providers, URL matching, one frame."""

from __future__ import annotations

from pathlib import Path

from hroute.tools.doctor import describe_backend
from hroute.tools.hermes_setup import Provider, match_url, providers
from hroute.tools.watch import render

BACKENDS = {
    "llama": "http://127.0.0.1:8080",
    "ollama": "http://127.0.0.1:11434",
    "openrouter": "https://openrouter.ai/api/v1",
}


def test_providers_reads_primary_fallbacks_and_named_auxiliary_tasks() -> None:
    config = {
        "model": {"provider": "custom", "base_url": "http://localhost:8080/v1"},
        "fallback_providers": [{"provider": "openrouter", "model": "q"}],
        "fallback_model": {"provider": "custom", "base_url": "http://127.0.0.1:11434"},
        "auxiliary": {
            "vision": {"provider": "auto", "base_url": ""},
            "compression": {"provider": "anthropic"},
            "transient_retries": 2,
        },
    }
    assert providers(config) == [
        Provider("primary", "custom", "http://localhost:8080/v1"),
        Provider("fallback 1", "openrouter", "https://openrouter.ai/api/v1"),
        Provider("fallback 2", "custom", "http://127.0.0.1:11434"),
        Provider("auxiliary compression", "anthropic", "https://api.anthropic.com"),
    ]


def test_a_url_spelt_differently_is_the_same_backend() -> None:
    assert match_url("http://localhost:8080/v1/", BACKENDS).backend == "llama"
    assert match_url("https://openrouter.ai/api/v1/", BACKENDS).backend == "openrouter"


def test_a_near_miss_names_the_closest_configured_url() -> None:
    assert match_url("http://localhost:11435/v1", BACKENDS).closest == "http://127.0.0.1:11434"
    assert match_url("http://127.0.0.1:8080/api", BACKENDS).closest == "http://127.0.0.1:8080"
    far = match_url("https://api.deepseek.com/v1", BACKENDS)
    assert far.backend is None and far.closest is None


def view(**kw: object) -> dict:
    base = {
        "name": "llama",
        "kind": "llama-server",
        "base_url": "http://127.0.0.1:8080",
        "model": "m",
        "state": "unhealthy",
        "usable": False,
        "reason": "connection",
        "cooldown_remaining_s": None,
        "latency_ms": None,
    }
    return {**base, **kw}


def test_backend_reasons_are_put_in_words() -> None:
    down = describe_backend(view())
    assert down.status == "warn"
    assert "nothing answers at http://127.0.0.1:8080" in down.message
    fatal = describe_backend(view(process={"state": "fatal"}))
    assert (
        fatal.status == "fail"
        and fatal.fix == "see hroute events; when fixed: hroute restart llama"
    )
    ok = describe_backend(view(state="healthy", usable=True, reason=None, latency_ms=2.5))
    assert (ok.status, ok.message) == ("ok", "healthy (probe 2.5 ms)")


def test_a_frame_is_plain_when_not_on_a_terminal() -> None:
    event = {"id": 1, "ts": 0, "event": "cooldown", "backend": "llama", "reason": "rate_limit"}
    frame = render([view(cooldown_remaining_s=12.4)], [event], colour=False, now=0.0, problem=None)
    assert "\x1b" not in frame
    assert "llama    llama-server  unhealthy  no      connection  12s" in frame
    assert "cooldown       llama: cooling down" in frame
    coloured = render([view()], [], colour=True, now=0.0)
    assert "\x1b[31mno" in coloured and "(none yet)" in coloured


GPU = {
    "gpu": "card0",
    "pci": "0000:03:00.0",
    "vram_used_bytes": 16428357632,
    "vram_total_bytes": 17163091968,
    "busy_ratio": 0.87,
    "temperature_c": 64.0,
}
GPU_LINE = "GPU card0 (0000:03:00.0): VRAM 15.3 of 16.0 GiB used, busy 87%, 64 °C"


def test_status_and_top_show_the_gpus_under_the_table() -> None:
    from hroute.tools.status import status_lines

    lines = status_lines({"backends": [view()], "gpus": [GPU]})
    assert lines[-1] == GPU_LINE
    assert GPU_LINE in render([view()], [], colour=False, now=0.0, gpus=[GPU])
    assert "GPU" not in "\n".join(status_lines({"backends": [view()]}))


def test_doctor_names_who_holds_vram_that_is_not_hroutes() -> None:
    from hroute.core.gpu import GpuSample, VramHolder
    from hroute.tools.doctor import WARN, check_gpus

    gib = 1024**3
    card = GpuSample("card0", "0000:03:00.0", int(15.3 * gib), 16 * gib, 0.1, 50.0)
    holders = [
        VramHolder(4857, "llama-server", 12 * gib, "card0", "0000:03:00.0"),
        VramHolder(100, "llama-server", 3 * gib, "card0", "0000:03:00.0"),
    ]
    [check] = check_gpus([card], holders, ours={100})
    assert check.status == WARN and check.check == "gpu card0"
    assert "VRAM 15.3 of 16.0 GiB used" in check.message
    assert "pid 4857 (llama-server, not hroute's) 12.0 GiB" in check.message
    assert check.fix is not None and "4857" in check.fix
    [fine] = check_gpus([card], holders[1:], ours={100})
    assert fine.status == "ok" and "pid 100 (llama-server, hroute's)" in fine.message
    assert check_gpus([], [], ours=set()) == []


def test_doctor_reports_one_result_per_guard_the_way_the_plugin_installs_it(
    tmp_path: Path,
) -> None:
    """Hermes 0.22's auxiliary layout is installed by the plugin: the 0.18/0.19 layout of the
    same guard, absent there, must not turn doctor's answer into "off"."""
    import os
    import sys

    from hroute.tools.hermes_setup import probe_python

    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "__init__.py").write_text("")
    (agent / "auxiliary_client.py").write_text(
        "".join(
            f"def {name}(*a, **k): pass\n"
            for name in (
                "_resolve_auto_route",
                "_is_provider_unhealthy",
                "_normalize_main_runtime",
                "_normalize_chain_label",
            )
        )  # fmt: skip
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    found, problem = probe_python(sys.executable, env=env)
    assert found is not None, problem
    assert found["guards"]["auxiliary"] is None, found["guards"]
    assert "agent.agent_runtime_helpers" in found["guards"]["restore"]


def test_doctor_reads_the_plugins_hroute_block_and_names_the_closest_profile() -> None:
    from hroute.tools.hermes_block import FAIL, INFO, OK, check_hroute_block

    profiles = ["coding", "research"]
    [check] = check_hroute_block({"hroute": {"profile": "Coding"}}, profiles, env={})
    assert check[1] == FAIL and "'Coding' is not a profile of hroute" in check[2]
    assert check[3] == "set hroute.profile: coding"
    [check] = check_hroute_block({"hroute": {"profile": "coding"}}, profiles, env={})
    assert check[1] == OK and "on for profile coding (paid past budget: deny)" in check[2]
    [check] = check_hroute_block({}, profiles, env={})
    assert check[1] == INFO and check[2].startswith("off")
    checks = check_hroute_block({"hroute": {"profile": "coding", "paid": "yes"}}, profiles, env={})
    assert [c[1] for c in checks] == [FAIL, OK] and "'yes' is not one of" in checks[0][2]
    [check] = check_hroute_block({}, profiles, env={"HROUTE_PROFILE": "reserch"})
    assert check[1] == FAIL and check[3] == "set HROUTE_PROFILE: research"
