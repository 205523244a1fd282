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
