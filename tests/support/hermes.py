"""A real Hermes Agent from PyPI, driven turn by turn in its own venv (see hermes_driver.py).

One venv per tested release (`VERSIONS`), built once, outside the checkout, by
scripts/hermes-venv.sh (`make hermes-venv`); `hermes_python()` finds it and refreshes this
checkout's hroute in it, or says why not.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("hermes_driver.py")
SCRIPT = REPO / "scripts" / "hermes-venv.sh"
API_MAX_RETRIES = 2  # Hermes' attempts per backend before it falls back


@dataclass(frozen=True)
class Hermes:
    """One Hermes release the plugin is tested with: the PyPI distribution and its version."""

    package: str
    version: str

    @property
    def id(self) -> str:
        return self.version if self.package == "hermes-agent" else f"{self.package}-{self.version}"


def _versions(path: Path = REPO / "scripts" / "hermes-versions") -> tuple[Hermes, ...]:
    """The releases in scripts/hermes-versions (shared with `make hermes-venv`)."""
    rows = (line.split() for line in path.read_text().splitlines())
    return tuple(Hermes(*row) for row in rows if row and not row[0].startswith("#"))


VERSIONS = _versions()


def hermes_venv(hermes: Hermes) -> Path:
    cache = Path(os.environ.get("HROUTE_CACHE") or Path.home() / ".cache" / "hroute")
    return cache / f"hermes-venv-{hermes.id}"


def hermes_python(hermes: Hermes = VERSIONS[1]) -> tuple[str | None, str]:
    """(the Hermes venv's python, "") or (None, why there is none).

    The cached venv is used when it exists; building it (a minute or two) is
    `make hermes-venv`'s job, not a test's. The script is run anyway: it refreshes this
    checkout's hroute in the venv when needed and checks that the venv holds what it should.
    """
    venv = hermes_venv(hermes)
    if not (venv / ".hermes-installed").exists():
        return None, (
            f"no {hermes.package} {hermes.version} venv at {venv}: run `make hermes-venv` "
            "(HROUTE_REQUIRE_HERMES=1 turns this skip into a failure)"
        )
    env = {
        **os.environ,
        "HROUTE_HERMES_PACKAGE": hermes.package,
        "HROUTE_HERMES_VERSION": hermes.version,
    }
    proc = subprocess.run(
        [str(SCRIPT)], capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
        env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        return None, f"{SCRIPT.name} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}"
    return proc.stdout.strip(), ""


def require_hermes_python(hermes: Hermes = VERSIONS[1]) -> str:
    """The Hermes venv's python; skip without it, or fail when HROUTE_REQUIRE_HERMES=1 (CI)."""
    import pytest

    path, why = hermes_python(hermes)
    if path is None:
        if os.environ.get("HROUTE_REQUIRE_HERMES") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return path


def write_hermes_home(
    home: Path,
    primary_url: str,
    model: str,
    api_key: str,
    *,
    plugin: bool,
    isolation: str | None = None,
    extra: str = "",
) -> Path:
    """A HERMES_HOME whose config.yaml names the primary and enables the plugin (or not).

    `isolation` sets `plugins.isolation` (Hermes 0.22: `in_process` or `host`).
    """
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(
        "model:\n"
        "  provider: custom\n"
        f"  base_url: {json.dumps(primary_url)}\n"
        f"  api_key: {json.dumps(api_key)}\n"
        f"  default: {json.dumps(model)}\n"
        "  context_length: 131072\n"
        "agent:\n"
        f"  api_max_retries: {API_MAX_RETRIES}\n"
        "plugins:\n"
        f"  enabled: [{'hroute' if plugin else ''}]\n"
        + (f"  isolation: {isolation}\n" if isolation else "")
        + extra
    )
    return home


class HermesAgent:
    """One driver process holding one `run_agent.AIAgent`; each `turn()` is one user turn."""

    def __init__(
        self,
        python: str,
        home: Path,
        *,
        primary_url: str,
        model: str = "primary-model",
        api_key: str = "primary-key",
        fallbacks: list[dict[str, str]],
        plugin: bool = True,
        socket: Path | str,
        flush_reports: bool = True,
        isolation: str | None = None,
        remove: tuple[str, ...] = (),
        extra_config: str = "",
        approve: str | None = None,
        chats: tuple[str, ...] = (),
        session_id: str | None = None,
        toolsets: tuple[str, ...] = (),
    ) -> None:
        self.home = write_hermes_home(
            home, primary_url, model, api_key, plugin=plugin, isolation=isolation,
            extra=extra_config,
        )  # fmt: skip
        spec = {
            "base_url": primary_url,
            "api_key": api_key,
            "model": model,
            "fallback": fallbacks,
            "flush_reports": flush_reports,
            "remove": list(remove),
            "approve": approve,
            "chats": list(chats),
            "session_id": session_id,
            "toolsets": list(toolsets),
        }
        self.spec_path = home / "driver-spec.json"
        self.spec_path.write_text(json.dumps(spec))
        self.stderr_path = home / "driver.stderr"
        self.env = {**os.environ, "HERMES_HOME": str(home), "HROUTE_SOCKET": str(socket)}
        if chats:
            self.env["GATEWAY_ALLOW_ALL_USERS"] = "true"  # the gateway's chats are the test's
        for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OPENROUTER_API_KEY", "ANTHROPIC_API_KEY"):
            self.env.pop(var, None)  # Hermes must talk to the fakes and nothing else
        self.python = python
        self.proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.ready: dict[str, Any] = {}
        self._reader: threading.Thread | None = None

    def start(self, timeout_s: float = 60.0) -> dict[str, Any]:
        with self.stderr_path.open("w") as stderr:
            self.proc = subprocess.Popen(
                [self.python, str(DRIVER), str(self.spec_path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                env=self.env,
                cwd=self.home,
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ready = self._answer(timeout_s)
        if not self.ready.get("ready"):
            raise AssertionError(f"Hermes driver did not start: {self.ready}\n{self.stderr}")
        return self.ready

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _answer(self, timeout_s: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no answer from Hermes in {timeout_s}s\n{self.stderr}") from None
        if line is None:
            raise AssertionError(f"Hermes driver exited\n{self.stderr}")
        return json.loads(line)

    def _ask(self, command: str, timeout_s: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._answer(timeout_s)

    def turn(self, text: str = "hi", timeout_s: float = 60.0) -> dict[str, Any]:
        return self._ask(f"turn {text}", timeout_s)

    def slash(self, command: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """Run a plugin's slash command (`/escalate`) the way Hermes' CLI does, between turns."""
        return self._ask(f"slash {command.lstrip('/')}", timeout_s)

    def chat(self, name: str, text: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """A turn in gateway chat `name` (its own AIAgent and session)."""
        return self._ask(f"chat {name} {text}", timeout_s)

    def gateway_message(self, name: str, text: str, timeout_s: float = 30.0) -> dict[str, Any]:
        """`text` typed in gateway chat `name`, dispatched by Hermes' real gateway runner."""
        return self._ask(f"gwslash {name} {text}", timeout_s)

    def new_session(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Start a new session in the same agent, as Hermes' `/new` does."""
        return self._ask("new", timeout_s)

    def title(self, timeout_s: float = 30.0) -> dict[str, Any]:
        return self._ask("title", timeout_s)

    @property
    def agent_log(self) -> str:
        """Hermes' own log, `$HERMES_HOME/logs/agent.log`."""
        try:
            return (self.home / "logs" / "agent.log").read_text()
        except OSError:
            return ""

    @property
    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text()[-4000:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            self.proc.wait(timeout_s)
        except (subprocess.TimeoutExpired, BrokenPipeError, OSError):
            self.proc.kill()
            self.proc.wait(5)
        finally:
            if self._reader is not None:
                self._reader.join(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def __enter__(self) -> HermesAgent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
