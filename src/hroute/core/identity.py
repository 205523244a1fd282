"""Backend identity: which configured names and client URLs are the same server.

Standard library only: the agent-side client imports this too.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
_LOOPBACK_NAMES = {"localhost"}
_LOOPBACK_V6 = {"::1", "ip6-localhost"}

API_MODES = {
    "llama-server": "chat_completions",
    "ollama": "chat_completions",
    "openai": "chat_completions",
    "openrouter": "chat_completions",
    "anthropic": "anthropic_messages",
}


def normalize_base_url(url: str) -> str:
    """Canonical form of a backend URL: `http://127.0.0.1:8080/v1/` -> `http://127.0.0.1:8080`.

    Lower-cases scheme and host, drops default ports, a trailing `/` and a trailing
    `/v1`, and spells loopback as 127.0.0.1, so every client's way of naming the same
    server finds the same health record.
    """
    raw = url.strip()
    if "://" not in raw:
        raw = "http://" + raw
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if host in _LOOPBACK_NAMES:
        host = "127.0.0.1"
    elif host in _LOOPBACK_V6:
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return f"{scheme}://{host}{path.rstrip('/')}"


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """`https://user:pw@host/v1` -> (`https://host/v1`, ("user", "pw")); the password is
    percent-decoded. A URL without credentials comes back as it is, with None."""
    parts = urlsplit(url.strip())
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    bare = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
    return bare, (unquote(user), unquote(password))


def without_credentials(url: str) -> str:
    """`url` as it may be shown: a `user:password@` part is dropped."""
    return split_credentials(url)[0]


def is_loopback(url: str) -> bool:
    """True when the URL names this machine (a local inference server)."""
    host = normalize_base_url(url).split("://", 1)[1].split("/", 1)[0]
    return host.startswith(("127.", "[::1]"))


class BackendIdentity(NamedTuple):
    """What health belongs to: two entries naming the same server share one record."""

    api_mode: str
    base_url: str
    model_family: str | None = None


def backend_identity(kind: str, base_url: str, model_family: str | None = None) -> BackendIdentity:
    """The identity of a backend of `kind` served at `base_url`."""
    return BackendIdentity(
        API_MODES.get(kind, "chat_completions"), normalize_base_url(base_url), model_family
    )
