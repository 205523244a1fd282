from hroute.config.model import load_config
from hroute.edges.reloader import diff_configs

BASE = """
backends:
  a: {kind: llama-server, base_url: "http://127.0.0.1:8080", probe: {interval_s: 2}}
  b: {kind: ollama, base_url: "http://127.0.0.1:11434"}
  c: {kind: openai, base_url: "http://127.0.0.1:9000"}
profiles:
  p: {chain: [a, b]}
"""


def test_no_change() -> None:
    diff = diff_configs(load_config(BASE), load_config(BASE))
    assert diff.empty and diff.summary().startswith("reloaded: +0 backends, -0, 0 changed")


def test_added_removed_changed_renewed_profiles() -> None:
    new = load_config(
        BASE.replace("interval_s: 2", "interval_s: 5")  # a: same identity, other field
        .replace("11434", "11435")  # b: new identity
        .replace(
            '  c: {kind: openai, base_url: "http://127.0.0.1:9000"}\n',
            '  d: {kind: openai, base_url: "http://127.0.0.1:9001"}\n',
        )
        .replace("chain: [a, b]", "chain: [b, a]")
    )
    diff = diff_configs(load_config(BASE), new)
    assert diff.added == ("d",) and diff.removed == ("c",)
    assert diff.changed == ("a",) and diff.renewed == ("b",)
    assert diff.profiles == ("p",)
    assert diff.summary() == "reloaded: +1 backend, -1, 2 changed, 0 restarts, profiles changed: p"


def test_daemon_change_is_flagged() -> None:
    diff = diff_configs(load_config(BASE), load_config("daemon: {log_level: debug}\n" + BASE))
    assert diff.daemon_changed and not diff.added


def _reloader(tmp_path, text: str = BASE):
    from hroute.edges.reloader import Reloader

    path = tmp_path / "hroute.yaml"
    path.write_text(text)

    async def no_wait(_s: float) -> None:
        pass

    return Reloader(path, load_config(text), sleep=no_wait)


def test_a_reload_reads_and_validates_off_the_event_loop(tmp_path, monkeypatch) -> None:
    import threading

    import anyio

    from hroute.edges import config_file
    from hroute.edges import reloader as reloader_module

    threads = []

    def recording(path):
        threads.append(threading.current_thread())
        return config_file.read_config(path)

    monkeypatch.setattr(reloader_module, "read_config", recording)
    r = _reloader(tmp_path)
    r.path.write_text(BASE.replace("interval_s: 2", "interval_s: 3"))
    result = anyio.run(r.reload, "test")
    assert result.ok and threads and threads[0] is not threading.main_thread()


def test_any_error_while_reading_keeps_the_running_config(tmp_path, monkeypatch) -> None:
    import anyio

    from hroute.edges import reloader as reloader_module

    def broken(path):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(reloader_module, "read_config", broken)
    r = _reloader(tmp_path)
    before = r.current
    r.path.write_text(BASE.replace("interval_s: 2", "interval_s: 3"))
    result = anyio.run(r.reload, "test")
    assert not result.ok and "recursion" in result.error and r.current is before
