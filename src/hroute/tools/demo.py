"""`hroute demo`: about a minute of failover on a fresh machine, narrated as it happens.

It runs the real daemon (`hroute run`, as a child, with its real probes and supervisor) on
a private socket in a temporary directory, against three simulated backends: two local
llama-servers it supervises — one crashes, one hangs — and a "cloud" API that answers
429 with Retry-After. A small agent loop asks hroute for a route, as an agent would, and
reports the 429s it gets. No root, no backends, nothing left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hroute.client import Client
from hroute.supervise.process import die_with_parent
from hroute.systemd.logs import describe
from hroute.tools.simulate import CloudServer
from hroute.tools.watch import paint

PROFILE = "chat"
CHAIN = ["local-a", "local-b", "cloud"]
TICK_S = 0.25
_TAG_COLOUR = {
    "CRASH": "red",
    "HANG": "red",
    "DOWN": "red",
    "RESTART": "yellow",
    "FALLBACK": "yellow",
    "COOLDOWN": "yellow",
    "RECOVERY": "green",
    "HEALTHY": "green",
    "AGENT": "dim",
}


@dataclass
class Timeline:
    """When things go wrong, as offsets from the start, scaled to the demo's duration."""

    duration_s: float
    crash_at_s: float = field(init=False)
    second_crash_at_s: float = field(init=False)
    hang_at_s: float = field(init=False)
    reload_a_s: float = field(init=False)
    reload_b_s: float = field(init=False)
    retry_after_s: float = field(init=False)

    def __post_init__(self) -> None:
        d = self.duration_s
        self.crash_at_s = 0.12 * d
        self.second_crash_at_s = 0.45 * d  # after its restart, counted from that start
        self.hang_at_s = 0.25 * d
        self.reload_a_s = 0.25 * d  # the crashed server's restart loads this long
        self.reload_b_s = 0.15 * d
        self.retry_after_s = max(2.0, round(0.10 * d))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _llama(port: int, runs: Path, *switches: str) -> list[str]:
    argv = [sys.executable, "-m", "hroute.tools.simulate", "llama", "--port", str(port)]
    return argv + ["--runs-file", str(runs), *switches]


def demo_config(work: Path, cloud_url: str, t: Timeline) -> str:
    """The daemon's configuration: two supervised local servers and a cloud API."""
    port_a, port_b = _free_port(), _free_port()
    local_probe = {"interval_s": 0.25, "timeout_s": 0.3, "fall": 1, "rise": 1, "jitter": 0}
    supervise = {
        "stop_timeout_s": 1,
        "startup_timeout_s": 60,
        "hang_restart_after": 2,
        "restart": {"backoff_initial_s": 0.5, "backoff_max_s": 2},
    }
    a = _llama(port_a, work / "a.runs", "--crash-after-s", f"{t.crash_at_s:g}")
    a += ["--crash-after-s", f"{t.second_crash_at_s:g}"]
    a += ["--load-s", f"{t.reload_a_s:g}"]
    b = _llama(port_b, work / "b.runs", "--hang-after-s", f"{t.hang_at_s:g}")
    b += ["--load-s", f"{t.reload_b_s:g}"]
    doc = {
        "daemon": {"log_level": "info"},
        "defaults": {"cooldown": {"base_s": t.retry_after_s, "max_s": 60}},
        "backends": {
            "local-a": {
                "kind": "llama-server",
                "base_url": f"http://127.0.0.1:{port_a}",
                "model": "demo-model",
                "probe": local_probe,
                "supervise": {**supervise, "command": a},
            },
            "local-b": {
                "kind": "llama-server",
                "base_url": f"http://127.0.0.1:{port_b}",
                "model": "demo-model",
                "probe": local_probe,
                "supervise": {**supervise, "command": b},
            },
            "cloud": {
                "kind": "openai",
                "base_url": cloud_url,
                "model": "cloud-model",
                "tier": "cloud",
                "probe": {"interval_s": 1, "timeout_s": 1, "jitter": 0},
            },
        },
        "profiles": {PROFILE: {"chain": CHAIN}},
    }
    return json.dumps(doc, indent=2)  # JSON is YAML


class Narrator:
    """Turns hroute's events into the story's lines, with the time since the start."""

    def __init__(self, out: TextIO, started: float, colour: bool) -> None:
        self.out, self.started, self.colour = out, started, colour
        self.down: set[str] = set()
        self.counts: dict[str, int] = {}

    def say(self, tag: str, text: str) -> None:
        self.counts[tag] = self.counts.get(tag, 0) + 1
        stamp = f"[{time.monotonic() - self.started:5.1f}s]"
        line = f"{stamp} {paint(f'{tag:<9}', _TAG_COLOUR.get(tag), self.colour)} {text}"
        self.out.write(line + "\n")
        self.out.flush()

    def event(self, e: dict[str, Any]) -> None:
        kind, name = e["event"], e.get("backend", "-")
        detail = e.get("detail") or ""
        if kind == "restart" and e.get("reason") == "hang":
            self.say("HANG", f"{name} is alive but stopped answering: {detail.split(';')[0]}")
            self.say("RESTART", f"supervisor restarts {name} ({detail.split('; ')[-1]})")
        elif kind == "restart":
            self.say("CRASH", f"{name} crashed: {detail.split(';')[0]}")
            self.say("RESTART", f"supervisor restarts {name} ({detail.split('; ')[-1]})")
        elif kind == "process_started":
            self.say("START", f"supervisor started {name}: {detail.split(':')[0]}")
        elif kind == "process_ready":
            self.say("RECOVERY" if name in self.down else "READY", f"{name}: {detail}")
        elif kind == "backend_down" and e.get("old") == e.get("new"):
            return  # a new reason for a backend already down: the HANG line tells it
        elif kind == "backend_down":
            self.down.add(name)
            self.say("DOWN", f"probe: {describe(e)}")
        elif kind == "backend_up":
            again = name in self.down
            self.down.discard(name)
            self.say("RECOVERY" if again else "HEALTHY", f"probe: {name} is healthy")
        elif kind == "starting":
            self.say("PROBE", f"{name} is loading its model")
        elif kind == "fallback":
            old, new = e.get("old") or "none", e.get("new") or "none"
            back = _rank(new) < _rank(old)  # earlier in the chain: the preferred one is back
            self.say(
                "RECOVERY" if back else "FALLBACK",
                f"agents on profile {e.get('profile')}: {old} -> {new} ({e.get('reason')})",
            )
        elif kind in ("cooldown", "cooldown_end", "cooldown_cleared"):
            self.say("COOLDOWN", describe(e))
        else:
            self.say(kind.upper()[:9], describe(e))


def _rank(backend: str) -> int:
    return CHAIN.index(backend) if backend in CHAIN else len(CHAIN)


class _Agent:
    """What an agent does each turn: ask hroute for a route; talk to the cloud when sent there."""

    def __init__(self, client: Client, narrator: Narrator) -> None:
        self.client, self.narrator = client, narrator
        self.last: str | None = "?"

    def turn(self) -> None:
        answer = self.client.route(PROFILE)
        if answer is None:
            return
        chosen = answer.get("backend")
        if chosen is None and self.last is not None:
            wait = answer.get("retry_after_s")
            hint = f"; earliest in {wait:.0f}s" if wait is not None else ""
            self.narrator.say("AGENT", f"no backend of {PROFILE!r} is usable now{hint}")
        self.last = chosen
        if chosen == "cloud":
            self._chat(answer["base_url"])

    def _chat(self, base_url: str) -> None:
        body = json.dumps({"model": "cloud-model", "messages": [{"role": "user", "content": "hi"}]})
        req = urllib.request.Request(
            base_url.rstrip("/") + "/chat/completions",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=2):
                return
        except urllib.error.HTTPError as exc:
            retry = exc.headers.get("Retry-After")
            self.narrator.say(
                "AGENT", f"cloud answered {exc.code}, Retry-After {retry}: reporting it to hroute"
            )
            self.client.report(
                "cloud",
                reason="rate_limit" if exc.code == 429 else "server_error",
                status_code=exc.code,
                retry_after_s=float(retry) if retry else None,
            )
        except OSError:
            return


def _status_line(client: Client) -> str | None:
    try:
        status, body = client.request("GET", "/v1/backends")
    except (OSError, TimeoutError, ValueError):
        return None
    if status != 200:
        return None
    parts = []
    for b in body["backends"]:
        proc = b.get("process")
        state = b["state"] + (f"/{proc['state']}" if proc else "")
        if b["cooldown_remaining_s"]:
            state += f", cooling {b['cooldown_remaining_s']:.0f}s"
        parts.append(f"{b['name']} {state}")
    return "now: " + " | ".join(parts)


def run_demo(duration_s: float = 60.0, out: TextIO = sys.stdout) -> int:
    """The whole demo; returns the exit status (1 if the daemon could not run)."""
    colour = out.isatty()
    t = Timeline(duration_s)
    work = Path(tempfile.mkdtemp(prefix="hroute-demo-"))
    cloud = CloudServer("cloud-model", limited=2, retry_after_s=t.retry_after_s).start()
    daemon: subprocess.Popen[bytes] | None = None
    log_path = work / "daemon.log"
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    previous_hup = signal.signal(signal.SIGHUP, _raise_interrupt)  # the terminal closed
    try:
        config = work / "hroute.yaml"
        config.write_text(demo_config(work, cloud.base_url, t))
        sock = work / "hroute.sock"
        env = {**os.environ, "HROUTE_SOCKET": str(sock), "HROUTE_STATE_DIR": str(work / "state")}
        env.pop("NOTIFY_SOCKET", None)
        out.write(_INTRO.format(work=work, d=duration_s))
        out.flush()
        with log_path.open("wb") as log:
            # Its own session: Ctrl-C reaches the demo alone, which then stops the daemon
            # itself (a daemon that got the SIGINT too could exit first, and look like a
            # crash). SIGTERM should the demo die without cleaning up.
            daemon = subprocess.Popen(
                [sys.executable, "-m", "hroute.cli", "run", "--config", str(config)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGTERM),
            )
        client = Client(sock, budget_s=2.0)
        if not _wait_serving(client, daemon, 20.0) or not _wait_healthy(client, daemon, 20.0):
            out.write(f"hroute demo: the daemon did not start; its log:\n{log_path.read_text()}")
            return 1
        if not _story(client, daemon, t, out, colour):
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            out.write(f"hroute demo: the daemon ended before the demo; its log ends:\n{tail}\n")
            return 1
        return 0
    except KeyboardInterrupt:
        out.write("\nhroute demo: interrupted; cleaning up\n")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGHUP, previous_hup)
        if daemon is not None:
            _stop(daemon)
        cloud.close()
        shutil.rmtree(work, ignore_errors=True)
        out.write(f"removed {work}\n")
        out.flush()


def _story(
    client: Client, daemon: subprocess.Popen[bytes], t: Timeline, out: TextIO, colour: bool
) -> bool:
    """Tell the story for the timeline's duration; False if the daemon ended first."""
    started = time.monotonic()
    narrator = Narrator(out, started, colour)
    agent = _Agent(client, narrator)
    # What happened while the servers came up is not the story: start from here.
    _, body = client.request("GET", "/v1/events")
    since = max((e["id"] for e in body["events"]), default=0)
    pids = ", ".join(
        f"{e['backend']} pid {e['detail'].split()[2].rstrip(':')}"
        for e in body["events"]
        if e["event"] == "process_started"
    )
    narrator.say("HEALTHY", f"probes say all three backends are up (supervised: {pids})")
    next_status = started + t.duration_s / 6
    end = started + t.duration_s
    while time.monotonic() < end:
        if daemon.poll() is not None:
            narrator.say("ERROR", f"the daemon exited with {daemon.returncode}")
            return False
        try:
            _, body = client.request("GET", f"/v1/events?since={since}")
            for e in body["events"]:
                since = max(since, e["id"])
                narrator.event(e)
        except (OSError, TimeoutError, ValueError, KeyError, TypeError):
            pass
        agent.turn()
        if time.monotonic() >= next_status:
            line = _status_line(client)
            if line:
                out.write(paint(f"          {line}", "dim", colour) + "\n")
            next_status += t.duration_s / 6
        time.sleep(TICK_S)
    c = narrator.counts
    out.write(
        f"demo over after {time.monotonic() - started:.0f}s: {c.get('CRASH', 0)} crash, "
        f"{c.get('HANG', 0)} hang, {c.get('RESTART', 0)} restarts, {c.get('FALLBACK', 0)} "
        f"fallbacks, {c.get('COOLDOWN', 0)} cooldown events, {c.get('RECOVERY', 0)} recoveries\n"
        "Next: hroute doctor on your own setup; README.md for the configuration.\n"
    )
    return True


def _wait_serving(client: Client, daemon: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and daemon.poll() is None:
        try:
            if client.request("GET", "/v1/version", budget_s=1)[0] == 200:
                return True
        except (OSError, TimeoutError, ValueError):
            pass
        time.sleep(0.05)
    return False


def _wait_healthy(client: Client, daemon: subprocess.Popen[bytes], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and daemon.poll() is None:
        try:
            status, body = client.request("GET", "/v1/backends")
            if status == 200 and all(b["state"] == "healthy" for b in body["backends"]):
                return True
        except (OSError, TimeoutError, ValueError):
            pass
        time.sleep(0.05)
    return False


def _stop(daemon: subprocess.Popen[bytes]) -> None:
    """SIGTERM (hroute stops its supervised servers), then SIGKILL if it does not end."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(15)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait(5)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


_INTRO = """\
hroute demo: the real daemon, its probes and its supervisor, for about {d:.0f} seconds.
  work directory {work} (removed at the end)
  local-a  a llama-server hroute supervises; it will crash, and load slowly after
  local-b  another one; it will hang: alive, but answering nothing
  cloud    an OpenAI-compatible API that answers 429 with Retry-After at first
  an agent asks hroute every {tick}s which backend profile 'chat' should use
    (chain: local-a, local-b, cloud) and reports what the cloud answers.

""".replace("{tick}", f"{TICK_S:g}")
