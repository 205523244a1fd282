"""`hroute doctor`: check the whole chain as the user who runs it, one line per check.

Most failures of a setup like this are silent: a socket this user may not open, a plugin
installed in another Python, a `base_url` spelt differently from hroute's config so every
answer is `not_monitored`. Each check says what it found and, when it fails, what to do.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from hroute.client import Client
from hroute.core.gpu import GpuSample, VramHolder, describe_holders, describe_sample
from hroute.core.identity import without_credentials
from hroute.core.sanitize import clean
from hroute.core.snapshot_format import SnapshotFile
from hroute.paths import default_socket_path, snapshot_path
from hroute.tools import hermes_block, hermes_setup

OK, FAIL, WARN, INFO = "ok", "fail", "warn", "info"
_MARK = {OK: "ok  ", FAIL: "FAIL", WARN: "warn", INFO: "info"}

# Backend reasons in words; {url} and {model} are filled in.
REASONS = {
    "connection": "nothing answers at {url} (is the server running?)",
    "timeout": "{url} does not answer in time (hung, or overloaded)",
    "model_not_found": "the model {model!r} is not served at {url}",
    "auth": "{url} refused the key hroute probes with (check key_env)",
    "auth_permanent": "{url} refused the key hroute probes with (check key_env)",
    "billing": "the account behind {url} has no credit left",
    "rate_limit": "{url} says: too many requests; cooling down",
    "upstream_rate_limit": "the provider behind {url} is rate limited; cooling down",
    "overloaded": "{url} says it is overloaded",
    "server_error": "{url} answers with server errors",
    "invalid_response": "{url} answers, but not like a {kind} server",
    "starting": "{url} is loading its model",
    "budget_exhausted": "today's budget for it is spent",
}


@dataclass
class Check:
    """One line of the report."""

    check: str
    status: str  # ok | fail | warn | info
    message: str
    fix: str | None = None


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _group_of(path: Path) -> str:
    gid = path.stat().st_gid
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _blocking_dir(path: Path) -> Path | None:
    """The first directory above `path` this user may not enter, if any."""
    for parent in reversed(path.parents):
        if parent.exists() and not os.access(parent, os.X_OK):
            return parent
    return None


def _access_fix(path: Path) -> str:
    blocked = _blocking_dir(path) or path
    try:
        group = _group_of(blocked)
    except OSError:
        group = "hroute"
    return f"add yourself to group {group}: sudo usermod -aG {group} $USER (then log in again)"


def check_config(path: Path) -> tuple[Check, dict[str, str]]:
    """Is the configuration valid? Its backends' URLs, by name, when it is."""
    from hroute.core.errors import ConfigError
    from hroute.edges.config_file import read_config

    try:
        config = read_config(path)
    except ConfigError as exc:
        text = str(exc)
        if isinstance(exc.__cause__, PermissionError) or "Permission denied" in text:
            return Check("config", FAIL, f"cannot read {path}", _access_fix(path)), {}
        if "file not found" in text:
            return Check("config", FAIL, text, "give --config FILE (or set HROUTE_CONFIG)"), {}
        return Check("config", FAIL, text, f"fix it, then: hroute check-config {path}"), {}
    urls = {name: b.base_url for name, b in config.backends.items()}
    return Check("config", OK, f"{path} is valid ({len(urls)} backends)"), urls


def check_daemon(client: Client) -> tuple[list[Check], list[dict[str, Any]] | None]:
    """Can this user reach the daemon, and read its snapshot? The backends when it can."""
    sock = client.socket_path
    checks: list[Check] = []
    try:
        status, body = client.request("GET", "/v1/version")
    except PermissionError:
        checks.append(
            Check("socket", FAIL, f"user {_user()} may not open {sock}", _access_fix(sock))
        )
        return checks, None
    except FileNotFoundError:
        fix = "start it: sudo systemctl enable --now hroute (or hroute run), or give --socket"
        if _blocking_dir(sock) is not None:
            fix = _access_fix(sock)
        checks.append(Check("daemon", FAIL, f"no socket at {sock}", fix))
        return checks, None
    except ConnectionRefusedError:
        fix = "the daemon is not running: sudo systemctl restart hroute (or hroute run)"
        checks.append(Check("daemon", FAIL, f"nobody listens on {sock} (a stale socket)", fix))
        return checks, None
    except (OSError, TimeoutError, ValueError) as exc:
        checks.append(Check("daemon", FAIL, f"{sock}: {exc}", "see: journalctl -u hroute"))
        return checks, None
    version = body.get("version") if isinstance(body, dict) else None
    checks.append(Check("daemon", OK, f"hroute {version} answers on {sock} (as {_user()})"))
    checks.append(_check_snapshot(sock))
    try:
        status, body = client.request("GET", "/v1/backends")
    except (OSError, TimeoutError, ValueError) as exc:
        checks.append(Check("backends", FAIL, f"the daemon did not list its backends: {exc}"))
        return checks, None
    cluster = body.get("cluster") if status == 200 and isinstance(body, dict) else None
    if cluster:  # cooldowns shared with other hosts through Redis
        where = f"{cluster['redis_url']} as {cluster['host']}"
        if cluster["connected"]:
            checks.append(Check("cluster", OK, f"sharing cooldowns through {where}"))
        else:
            why = f"cannot reach {where}: {cluster.get('error')}; this host works alone"
            checks.append(Check("cluster", FAIL, why, "check Redis and cluster.redis_url"))
    return checks, (body["backends"] if status == 200 else None)


def _check_snapshot(sock: Path) -> Check:
    path = snapshot_path(sock)
    try:
        snap = SnapshotFile(path.read_bytes())
    except PermissionError:
        return Check(
            "snapshot",
            FAIL,
            f"user {_user()} may not read {path}; every agent turn costs a socket round trip",
            _access_fix(path),
        )
    except FileNotFoundError:
        return Check("snapshot", WARN, f"no snapshot at {path}; agents ask the socket instead")
    except (OSError, ValueError, RecursionError) as exc:
        return Check("snapshot", FAIL, f"cannot read {path}: {exc}")
    left = snap.expires - time.monotonic()
    if left < 0:
        return Check(
            "snapshot",
            FAIL,
            f"{path} expired {-left:.0f}s ago (written by pid {snap.pid})",
            "the daemon is stuck or gone: journalctl -u hroute",
        )
    return Check("snapshot", OK, f"{path} is readable and fresh")


def describe_backend(view: dict[str, Any]) -> Check:
    """A backend's state and, when it is not usable, why, in words."""
    name, state = view["name"], view["state"]
    proc = view.get("process")
    where = f"{state}" + (f", server {proc['state']}" if proc else "")
    words = REASONS.get(view.get("reason") or "", view.get("reason") or "")
    words = words.format(url=view["base_url"], model=view.get("model"), kind=view["kind"])
    if view.get("note"):
        words = f"{words}; {view['note']}" if words else view["note"]
    cooldown = view.get("cooldown_remaining_s")
    if cooldown:
        words += f" (cooldown {cooldown:.0f}s left)"
    if proc and proc["state"] == "fatal":
        fix = f"see hroute events; when fixed: hroute restart {name}"
        return Check(f"backend {name}", FAIL, f"{where}: {words}", fix)
    if view["usable"] and state == "healthy":
        latency = view.get("latency_ms")
        extra = f" (probe {latency:.1f} ms)" if latency is not None else ""
        return Check(f"backend {name}", OK, f"healthy{extra}")
    if view.get("reason") in ("auth", "auth_permanent"):
        return Check(f"backend {name}", FAIL, f"{where}: {words}", "check the key in key_env")
    level = INFO if state in ("unknown", "starting") and view["usable"] else WARN
    return Check(f"backend {name}", level, f"{where}: {words or 'not probed yet'}")


def check_hermes(
    home: Path,
    explicit_home: bool,
    python: str | None,
    urls: dict[str, str],
    socket_path: Path | None = None,
    profiles: list[str] | None = None,
) -> list[Check]:
    """Hermes' providers against hroute's backends; the plugin in the Python that runs hermes;
    the plugin's `hroute:` block against hroute's profiles."""
    config_file = home / "config.yaml"
    try:
        config = yaml.safe_load(config_file.read_text()) or {}
    except FileNotFoundError:
        level = FAIL if explicit_home else INFO
        return [Check("hermes", level, f"no Hermes config at {config_file}; Hermes not checked")]
    except (OSError, yaml.YAMLError) as exc:
        return [Check("hermes", FAIL, f"cannot read {config_file}: {exc}")]
    checks = [Check("hermes", OK, f"read {config_file}")]
    if os.environ.get("HERMES_SAFE_MODE") == "1":
        checks.append(
            Check("hermes safe mode", WARN, "HERMES_SAFE_MODE=1: Hermes loads no plugin at all")
        )
    plugin_socket = default_socket_path()
    if socket_path is not None and Path(socket_path) != plugin_socket:
        checks.append(
            Check(
                "hermes socket",
                WARN,
                f"the plugin asks {plugin_socket} (HROUTE_SOCKET or the default), "
                f"not {socket_path}",
                f"run hermes with HROUTE_SOCKET={socket_path}",
            )
        )
    for p in hermes_setup.providers(config):
        checks.append(_check_provider(p, urls))
    checks += _check_plugin(config, python)
    checks += [Check(*c) for c in hermes_block.check_hroute_block(config, profiles)]
    return checks


def _check_provider(p: hermes_setup.Provider, urls: dict[str, str]) -> Check:
    name = f"hermes {p.role}"
    if p.base_url is None:
        return Check(name, INFO, f"{p.provider}: Hermes chooses the URL; hroute cannot match it")
    m = hermes_setup.match_url(p.base_url, urls)
    shown = without_credentials(p.base_url)  # a proxy's `user:password@` is never printed
    if m.backend is not None:
        return Check(name, OK, f"{shown} is hroute backend {m.backend}")
    msg = f"{shown} is not monitored: hroute answers not_monitored for it"
    if m.closest is not None:
        return Check(
            name,
            FAIL,
            f"{msg}; closest configured URL: {m.closest}",
            f"spell it the same in Hermes' config and hroute's ({m.closest})",
        )
    level = FAIL if p.role == "primary" else WARN
    return Check(name, level, msg, "add a backend for it to hroute's config")


def _check_plugin(config: dict[str, Any], explicit_python: str | None) -> list[Check]:
    plugins = config.get("plugins") if isinstance(config.get("plugins"), dict) else {}
    enabled = [str(x) for x in plugins.get("enabled") or []]
    checks = []
    if "hroute" in enabled and "hroute" not in (plugins.get("disabled") or []):
        checks.append(Check("hermes plugin enabled", OK, "hroute is in plugins.enabled"))
    else:
        checks.append(
            Check(
                "hermes plugin enabled",
                FAIL,
                "hroute is not in plugins.enabled: Hermes does not load it",
                "hermes plugins enable hroute",
            )
        )
    python, via = hermes_setup.hermes_python(explicit_python)
    if python is None:
        checks.append(
            Check("hermes plugin installed", WARN, f"{via}; not checked", "give --hermes-python")
        )
        return checks
    found, problem = hermes_setup.probe_python(python)
    if found is None:
        checks.append(Check("hermes plugin installed", FAIL, problem))
        return checks
    version = found.get("hermes_version") or "this Hermes (version unknown)"
    if found.get("plugin") is None or found.get("entry_point") is None:
        why = found.get("plugin_error") or "no hermes_agent.plugins entry point named hroute"
        checks.append(
            Check(
                "hermes plugin installed",
                FAIL,
                f"the Python that runs hermes ({python}, from {via}) has no hroute plugin: {why}",
                f"{python} -m pip install hroute",
            )
        )
        return checks
    checks.append(
        Check("hermes plugin installed", OK, f"in {python} ({version}), {found['plugin']}")
    )
    isolated = plugins.get("isolation") == "host"
    for guard, missing in found.get("guards", {}).items():
        name = f"hermes guard {guard}"
        if isolated:
            checks.append(
                Check(
                    name,
                    WARN,
                    "off: plugins.isolation is host, where wrapping Hermes changes nothing",
                    "set plugins.isolation: in_process",
                )
            )
        elif missing:
            checks.append(Check(name, WARN, f"off for {version}: {missing}"))
        else:
            checks.append(Check(name, OK, f"active for {version}"))
    return checks


STRANGER_VRAM_BYTES = 1024**3  # a desktop session holds a few hundred MiB: that is no problem


def check_gpus(samples: list[GpuSample], holders: list[VramHolder], ours: set[int]) -> list[Check]:
    """One line a GPU: its telemetry and who holds its VRAM; a warning when a process that is
    not hroute's holds a lot of it (a stale server, another user's job)."""
    checks = []
    for s in samples:
        mine = [h for h in holders if h.gpu == s.name]
        held = describe_holders(mine, ours)
        message = describe_sample(s).split(": ", 1)[1] + (f"; held by {held}" if held else "")
        big = [h.pid for h in mine if h.pid not in ours and h.vram_bytes >= STRANGER_VRAM_BYTES]
        fix = (
            f"a server hroute starts may not fit; if stale, stop it: kill {' '.join(map(str, big))}"
        )
        checks.append(Check(f"gpu {s.name}", WARN if big else OK, message, fix if big else None))
    return checks


def _gpu_checks(backends: list[dict[str, Any]] | None) -> list[Check]:
    from hroute.edges.gpu import GpuTelemetry

    telemetry = GpuTelemetry.from_env()
    ours = {pid for b in backends or [] if (pid := (b.get("process") or {}).get("pid"))}
    samples = telemetry.samples()
    return check_gpus(samples, telemetry.holders(), ours) if samples else []


def run_checks(
    config_path: Path,
    socket_path: Path | None,
    hermes_home: str | None,
    hermes_python: str | None,
) -> list[Check]:
    """Every check, in the order a reader follows the chain."""
    checks = []
    config_check, urls = check_config(config_path)
    checks.append(config_check)
    client = Client(socket_path or default_socket_path(), budget_s=5.0)
    daemon_checks, backends = check_daemon(client)
    checks += daemon_checks
    if backends is not None and not urls:
        urls = {b["name"]: b["base_url"] for b in backends}  # what the daemon really watches
    home = hermes_setup.hermes_home(hermes_home)
    profiles = hermes_block.profiles(config_path)
    checks += check_hermes(
        home, hermes_home is not None, hermes_python, urls, socket_path, profiles
    )
    checks += [describe_backend(b) for b in backends or []]
    checks += _gpu_checks(backends)
    return checks


def report(checks: list[Check], out: TextIO, as_json: bool) -> int:
    """Print the checks; exit status 1 when any failed."""
    failed = [c for c in checks if c.status == FAIL]
    if as_json:
        doc = {"ok": not failed, "checks": [asdict(c) for c in checks]}
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        colour = out.isatty()
        for c in checks:
            mark = _MARK[c.status]
            if colour:
                code = {OK: "32", FAIL: "31", WARN: "33", INFO: "2"}[c.status]
                mark = f"\x1b[{code}m{mark}\x1b[0m"
            # Messages quote the daemon's answers and Hermes' config: escaped, never raw.
            out.write(f"{mark} {c.check}: {clean(c.message, 2000, keep_lines=True)}\n")
            if c.fix and c.status in (FAIL, WARN):
                out.write(f"     -> {clean(c.fix, 2000, keep_lines=True)}\n")
        out.write(
            f"{len(failed)} of {len(checks)} checks failed\n" if failed else "all checks passed\n"
        )
    return 1 if failed else 0


def doctor(
    config_path: Path,
    socket_path: Path | None,
    *,
    hermes_home: str | None = None,
    hermes_python: str | None = None,
    as_json: bool = False,
    out: TextIO = sys.stdout,
) -> int:
    """`hroute doctor`."""
    return report(run_checks(config_path, socket_path, hermes_home, hermes_python), out, as_json)
