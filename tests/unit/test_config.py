from pathlib import Path

import pytest

from hroute.config.model import load_config, missing_keys
from hroute.core.errors import ConfigError
from hroute.edges.config_file import read_config

ROOT = Path(__file__).resolve().parents[2]


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(text, source="t.yaml")
    return info.value.problems


def test_shipped_example_is_valid_and_complete() -> None:
    config = read_config(ROOT / "etc/hroute/hroute.yaml")
    kinds = {b.kind for b in config.backends.values()}
    assert {"llama-server", "ollama", "openrouter", "anthropic"} <= kinds
    assert len(config.profiles) >= 2
    assert config.backends["openrouter"].key_env == "OPENROUTER_API_KEY"


def test_unknown_kind_names_path_line_and_valid_values() -> None:
    [problem] = errors_of("backends:\n  a:\n    kind: olama\n    base_url: http://127.0.0.1:1\n")
    assert problem.startswith("backends.a.kind (line 3)")
    assert "'olama'" in problem and "'ollama'" in problem and "'llama-server'" in problem


def test_unknown_field_is_rejected_with_its_line() -> None:
    [problem] = errors_of("defaults:\n  probe:\n    intervl_s: 3\n")
    assert problem.startswith("defaults.probe.intervl_s (line 3)") and "unknown field" in problem


def test_profile_member_must_exist() -> None:
    text = "backends:\n  a: {kind: openai, base_url: 'http://127.0.0.1:1'}\nprofiles:\n  p:\n    chain: [a, b]\n"
    [problem] = errors_of(text)
    assert "profiles.p.chain.1" in problem and "'b'" in problem and "valid: a" in problem
    assert "(line 5)" in problem


def test_yaml_syntax_error_has_line_and_column() -> None:
    [problem] = errors_of("backends:\n  a: [1,\n")
    assert "YAML syntax error" in problem and "line 3" in problem


def test_negative_interval_and_max_below_base() -> None:
    problems = errors_of(
        "defaults:\n  probe: {interval_s: 0}\n  cooldown: {base_s: 60, max_s: 30}\n"
    )
    assert any(p.startswith("defaults.probe.interval_s (line 2)") for p in problems)
    assert any("max_s (30.0) must be >= base_s (60.0)" in p for p in problems)


def test_base_url_must_be_http() -> None:
    [problem] = errors_of("backends:\n  a: {kind: openai, base_url: 'ftp://x'}\n")
    assert "backends.a.base_url" in problem and "http://" in problem


def test_top_level_must_be_mapping() -> None:
    [problem] = errors_of("- 1\n- 2\n")
    assert "mapping" in problem


ONE = "backends:\n  a: {kind: openai, base_url: 'http://127.0.0.1:9'}\n"


def test_unset_settings_get_defaults() -> None:
    config = load_config(ONE)
    assert list(config.backends) == ["a"] and config.defaults.probe.interval_s == 10


@pytest.mark.parametrize("text", ["", "\n", "backends:\n", "backends: {}\n", "daemon: {}\n"])
def test_a_file_without_backends_is_rejected(text: str) -> None:
    [problem] = errors_of(text)
    assert problem.startswith("backends:") and "at least one backend" in problem


def test_probe_settings_merge_and_cloud_default() -> None:
    config = load_config(
        "defaults:\n  probe: {interval_s: 5, fall: 4}\n"
        "backends:\n"
        "  l: {kind: llama-server, base_url: 'http://127.0.0.1:8080', probe: {timeout_s: 1}}\n"
        "  c: {kind: anthropic, base_url: 'https://api.anthropic.com'}\n"
        "  c2: {kind: anthropic, base_url: 'https://api.anthropic.com', probe: {interval_s: 42}}\n"
    )
    local = config.probe_for("l")
    assert (local.interval_s, local.timeout_s, local.fall) == (5, 1, 4)
    assert config.probe_for("c").interval_s == 300
    assert config.probe_for("c2").interval_s == 42


def test_env_overrides_daemon_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HROUTE_SOCKET", str(tmp_path / "env.sock"))
    config = load_config(f"daemon: {{socket: {tmp_path / 'file.sock'}}}\n" + ONE)
    assert config.daemon.socket_path == tmp_path / "env.sock"


def test_daemon_error_is_prefixed() -> None:
    [problem] = errors_of("daemon:\n  metrics_listen: nope\n")
    assert problem.startswith("daemon.metrics_listen (line 2)")


def test_missing_keys_are_reported_not_fatal() -> None:
    config = load_config(
        "backends:\n  o: {kind: openrouter, base_url: 'https://openrouter.ai/api/v1', key_env: OR_KEY}\n"
    )
    assert missing_keys(config, env={}) == {"o": "OR_KEY"}
    assert missing_keys(config, env={"OR_KEY": "x"}) == {}


def test_models_are_frozen() -> None:
    config = load_config(ONE)
    with pytest.raises(Exception, match="frozen"):
        config.defaults.probe.interval_s = 1  # type: ignore[misc]


def test_a_backend_named_twice_is_rejected_with_both_lines() -> None:
    text = (
        "backends:\n"
        "  a: {kind: openai, base_url: 'http://127.0.0.1:1'}\n"
        "  b: {kind: openai, base_url: 'http://127.0.0.1:2'}\n"
        "  a: {kind: openai, base_url: 'http://127.0.0.1:3'}\n"
    )
    [problem] = errors_of(text)
    assert problem.startswith("backends.a (line 4)"), problem
    assert "duplicate" in problem and "line 2" in problem


def test_a_key_given_twice_anywhere_is_rejected() -> None:
    text = (
        "defaults:\n  cooldown:\n    base_s: 10\n    base_s: 20\n"
        "backends:\n  a: {kind: openai, base_url: 'http://127.0.0.1:1'}\n"
    )
    [problem] = errors_of(text)
    assert problem.startswith("defaults.cooldown.base_s (line 4)") and "line 3" in problem


def test_a_merge_key_may_be_overridden() -> None:
    text = (
        "x: &common {kind: openai, base_url: 'http://127.0.0.1:1'}\n"
        "backends:\n  a: {<<: *common, base_url: 'http://127.0.0.1:2'}\n"
    ).replace("x: &common", "defaults: {}\n_x: &common")
    problems = errors_of(text)  # `_x` is unknown; the merge itself is no duplicate
    assert not any("duplicate" in p for p in problems), problems


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan", ".NaN", ".Inf"])
@pytest.mark.parametrize("field", ["base_s", "max_s"])
def test_infinite_or_nan_durations_are_rejected(field: str, value: str) -> None:
    text = (
        "defaults:\n  cooldown:\n    " + f"{field}: {value}\n"
        "backends:\n  a: {kind: openai, base_url: 'http://127.0.0.1:1'}\n"
    )
    problems = errors_of(text)
    assert any(p.startswith(f"defaults.cooldown.{field} (line 3)") for p in problems), problems


@pytest.mark.parametrize(
    "where",
    [
        "defaults: {probe: {interval_s: .inf}}\n",
        "defaults: {cloud_probe_interval_s: .inf}\n",
        "budgets: {per_backend_daily_usd: {a: .inf}}\n",
    ],
)
def test_no_float_anywhere_may_be_infinite(where: str) -> None:
    text = where + "backends:\n  a: {kind: openai, base_url: 'http://127.0.0.1:1'}\n"
    assert errors_of(text)


def laughs(top: str) -> str:
    """Nine anchors, each nine of the one before: 9**9 strings from 450 bytes."""
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    return "_: [" + ", ".join(levels) + f"]\nbackends: {{x: {{kind: *{top}, base_url: x}}}}\n"


@pytest.mark.parametrize("top", ["f", "i"])  # 9**6 and 9**9 strings in `kind`'s error
def test_billion_laughs_is_a_short_bounded_error(top: str) -> None:
    assert len(laughs(top)) < 520
    with pytest.raises(ConfigError) as info:
        load_config(laughs(top), source="t.yaml")
    assert len(str(info.value)) < 2000, len(str(info.value))
    assert "alias" in str(info.value)


def test_aliases_that_expand_a_little_are_fine() -> None:
    text = (
        "defaults: {}\n"
        "backends:\n"
        "  a: &one {kind: openai, base_url: 'http://127.0.0.1:1', probe: &p {enabled: false}}\n"
        "  b: {kind: openai, base_url: 'http://127.0.0.1:2', probe: *p}\n"
    )
    assert set(load_config(text).backends) == {"a", "b"}


def test_a_recursive_alias_is_an_error_not_a_hang() -> None:
    text = "backends: &b {a: *b}\n"
    assert errors_of(text)


def test_many_problems_are_cut_short() -> None:
    chain = ", ".join(f"n{i}" for i in range(5000))
    text = "backends: {x: {kind: openai, base_url: 'http://127.0.0.1:1'}}\n"
    text += f"profiles: {{p: {{chain: [{chain}]}}}}\n"
    with pytest.raises(ConfigError) as info:
        load_config(text, source="t.yaml")
    assert len(str(info.value)) < 20_000
    assert "and 4980 more" in str(info.value)


def test_a_fifo_in_place_of_the_config_is_refused_at_once(tmp_path: Path) -> None:
    import os
    import threading

    path = tmp_path / "hroute.yaml"
    os.mkfifo(path)
    out: list[BaseException] = []

    def read() -> None:
        try:
            read_config(path)
        except BaseException as exc:  # kept for the assert below
            out.append(exc)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
        pytest.fail("read_config blocked on a FIFO")
    [exc] = out
    assert isinstance(exc, ConfigError) and "not a regular file" in str(exc)


@pytest.mark.parametrize(
    "supervise",
    [
        "{command: [/bin/true], restart: {backoff_max_s: .inf}}",
        "{command: [/bin/true], restart: {multiplier: .inf}}",
        "{command: [/bin/true], start_limit: {interval_s: .inf}}",
    ],
)
def test_no_supervise_number_may_be_infinite(supervise: str) -> None:
    text = (
        "backends:\n  local:\n    kind: llama-server\n    base_url: http://127.0.0.1:8080\n"
        f"    supervise: {supervise}\n"
    )
    [problem] = errors_of(text)
    assert problem.startswith("backends.local.supervise.") and "(line 5)" in problem, problem


def test_credentials_in_base_url_are_kept_apart_and_never_in_errors():
    from hroute.config.model import load_config

    text = "backends:\n  p: {kind: openai, base_url: 'https://al%40ce:p%3Aw0rd@proxy.example/v1'}\n"
    backend = load_config(text).backends["p"]
    assert backend.base_url == "https://proxy.example/v1"
    assert backend.basic_auth == ("al@ce", "p:w0rd")
    assert "w0rd" not in repr(backend) and "w0rd" not in str(backend.model_dump())
    other = load_config(text.replace("w0rd", "changed")).backends["p"]
    assert other != backend  # a new password is a change a reload applies
    bad = "backends:\n  p: {kind: openai, base_url: 'ftp://al:s3cret@proxy.example'}\n"
    with pytest.raises(ConfigError) as caught:
        load_config(bad)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    "name", ['"ok\\nCRITICAL forged\\e[31m"', '"a\\u202eb"', '"tab\\there"', "x" * 129]
)
@pytest.mark.parametrize("where", ["backends", "profiles"])
def test_names_are_printable_and_bounded(name: str, where: str) -> None:
    # A backend name with newline+ESC forged log lines and reached terminals.
    backend = name if where == "backends" else "b"
    text = f"backends:\n  {backend}: {{kind: openai, base_url: 'http://127.0.0.1:9'}}\n"
    if where == "profiles":
        text += f"profiles:\n  {name}: {{chain: [b]}}\n"
    with pytest.raises(ConfigError) as caught:
        load_config(text)
    message = str(caught.value)
    line = 2 if where == "backends" else 4  # the name's own line
    assert f"{where}." in message and f"(line {line})" in message, message
    assert "\x1b" not in message and "\n CRITICAL" not in message and "\u202e" not in message


def test_a_config_error_never_prints_a_control_character():
    # The name's own error is escaped, and so is every other error that quotes the name.
    text = 'backends:\n  "ok\\e[31m": {kind: nope, base_url: "http://127.0.0.1:9"}\n'
    with pytest.raises(ConfigError) as caught:
        load_config(text)
    message = str(caught.value)
    assert "kind" in message and "\\x1b" in message and "\x1b" not in message, message
