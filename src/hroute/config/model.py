"""Configuration: frozen pydantic models, parsed from YAML with line-accurate errors.

`load_config(text)` is pure; `edges/config_file.py`'s `read_config(path)` reads the file
for it. Nothing here reads a file, binds a socket, starts a process or exits.
"""

from __future__ import annotations

import os
from datetime import tzinfo
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from hroute.config.cluster import ClusterSettings
from hroute.config.supervise import SuperviseSettings
from hroute.config.yaml_lines import LOADER as _LOADER
from hroute.config.yaml_lines import capped as _capped
from hroute.config.yaml_lines import check_tree as _check_tree
from hroute.config.yaml_lines import describe as _describe
from hroute.config.yaml_lines import line_of as _line_of
from hroute.config.yaml_lines import short as _short
from hroute.config.yaml_lines import tree as _tree
from hroute.core.errors import ConfigError
from hroute.core.escalation import TASK_REASONS
from hroute.core.identity import BackendIdentity, backend_identity, is_loopback, split_credentials
from hroute.core.sanitize import clean
from hroute.paths import default_socket_path, default_state_dir

FallbackReason = Literal[
    "rate_limit",
    "upstream_rate_limit",
    "overloaded",
    "server_error",
    "timeout",
    "connection",
    "billing",
    "model_not_found",
    "invalid_response",
]
Kind = Literal["llama-server", "ollama", "openai", "anthropic", "openrouter"]

PositiveS = Annotated[float, Field(gt=0)]

NAME_CHARS = 128  # a backend or profile name


def _check_name(name: str) -> str:
    # Names reach logs, the journal and terminals: a newline or an ESC in one forged log
    # lines and coloured the operator's screen.
    bad = not name or any(c in name for c in " /?&=,#") or not name.isprintable()
    if bad or len(name) > NAME_CHARS:
        raise ValueError(
            f"invalid name {clean(repr(name), 60)}: 1-{NAME_CHARS} printable characters,"
            " no spaces or any of / ? & = , #"
        )
    return name


Name = Annotated[str, AfterValidator(_check_name)]


class _Frozen(BaseModel):
    # allow_inf_nan: `.inf` seconds would be written to state.json as Infinity, which the
    # next start refuses, setting every saved cooldown aside.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ProbeSettings(_Frozen):
    """Active health checking, Envoy/HAProxy style."""

    interval_s: PositiveS = 10.0
    timeout_s: PositiveS = 3.0
    fall: int = Field(3, ge=1, description="consecutive failures that make a backend unhealthy")
    rise: int = Field(1, ge=1, description="consecutive successes that make it healthy again")
    jitter: float = Field(0.1, ge=0, le=0.5, description="fraction of the interval, +/-")


class ProbeOverride(_Frozen):
    """Per-backend probe settings; unset fields come from `defaults.probe`."""

    interval_s: PositiveS | None = None
    timeout_s: PositiveS | None = None
    fall: int | None = Field(None, ge=1)
    rise: int | None = Field(None, ge=1)
    jitter: float | None = Field(None, ge=0, le=0.5)
    enabled: bool = True


class CooldownSettings(_Frozen):
    """A growing cooldown: base_s x n for the n-th incident, capped at max_s; each end
    spread by +/- jitter (a fraction) so that many agents do not return in the same second."""

    base_s: PositiveS = 30.0
    max_s: PositiveS = 900.0
    jitter: float = Field(0.1, ge=0, le=0.5, description="fraction of the cooldown, +/-")

    @model_validator(mode="after")
    def _max_not_below_base(self) -> CooldownSettings:
        if self.max_s < self.base_s:
            raise ValueError(f"max_s ({self.max_s}) must be >= base_s ({self.base_s})")
        return self


class Defaults(_Frozen):
    probe: ProbeSettings = ProbeSettings()
    cooldown: CooldownSettings = CooldownSettings()
    cloud_probe_interval_s: PositiveS = Field(
        300.0, description="probe interval for remote backends that do not set one"
    )


class Price(_Frozen):
    """USD per million tokens; a backend with a price is a paid backend."""

    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)


class BackendConfig(_Frozen):
    kind: Kind
    base_url: str
    model: str | None = None
    tier: Literal["local", "cloud"] | None = Field(
        None, description="default: local for loopback URLs, else cloud"
    )
    context_length: int | None = Field(None, gt=0)
    vision: bool = False
    tools: bool = True
    price: Price | None = None
    model_family: str | None = None
    key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    probe: ProbeOverride = ProbeOverride()
    cooldown: CooldownSettings | None = None
    supervise: SuperviseSettings | None = None
    # `https://user:pw@host`: taken out of base_url at load (so it is never shown) and
    # sent as HTTP basic auth on probes, as a LiteLLM or vLLM proxy behind auth expects.
    _basic_auth: tuple[str, str] | None = PrivateAttr(None)

    @model_validator(mode="wrap")
    @classmethod
    def _credentials_apart(cls, data: Any, handler: Any) -> BackendConfig:
        auth = None
        if isinstance(data, dict) and isinstance(data.get("base_url"), str):
            bare, auth = split_credentials(data["base_url"])
            data = {**data, "base_url": bare}
        backend = handler(data)
        backend._basic_auth = auth
        return backend

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        """(user, password) from the configured base_url, or None."""
        return self._basic_auth

    @model_validator(mode="after")
    def _supervised_is_probed(self) -> BackendConfig:
        if self.supervise is not None and not self.probe.enabled:
            raise ValueError("supervise needs probe.enabled (readiness and hangs come from it)")
        return self

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            shown = split_credentials(value)[0]  # never the password
            raise ValueError(f"must start with http:// or https:// (got {shown!r})")
        return value

    @cached_property  # frozen: computed once, asked on every route
    def identity(self) -> BackendIdentity:
        return backend_identity(self.kind, self.base_url, self.model_family)

    @cached_property  # frozen: computed once, asked on every route
    def local(self) -> bool:
        return is_loopback(self.base_url)

    @cached_property  # frozen: computed once, asked on every route
    def tier_name(self) -> str:
        return self.tier or ("local" if self.local else "cloud")

    @cached_property  # frozen: computed once, asked on every route
    def paid(self) -> bool:
        return (
            self.price is not None and (self.price.input_per_mtok + self.price.output_per_mtok) > 0
        )

    @property
    def process_spec(self) -> tuple[Any, ...] | None:
        """What of a supervised server, when changed, needs it restarted (not just new
        settings applied); None when the backend is not supervised."""
        s = self.supervise
        return None if s is None else (s.mode, s.command, s.env, s.cwd, s.unit, self.base_url)


TaskReason = Literal[TASK_REASONS]  # type: ignore[valid-type]


class Escalation(_Frozen):
    """Seed 001: after max_local_attempts task failures, skip the local tier for that task."""

    max_local_attempts: int = Field(3, ge=1)
    trigger_on: list[TaskReason] = Field(default_factory=lambda: list(TASK_REASONS))
    task_ttl_s: PositiveS = 3600.0
    # Per task type (the agent says it: Hermes' plugin sends chat, coding, or the user's
    # `/task TYPE`): local_only (never escalates), escalate (as the profile), or the name
    # of another profile whose escalation and chain the task follows. Unlisted: as the profile.
    task_types: dict[str, str] = Field(default_factory=dict)


class ProfileConfig(_Frozen):
    chain: list[str] = Field(min_length=1)
    escalation: Escalation = Escalation()


class FallbackRule(_Frozen):
    """Seed 000: how many reports of one reason in a row before a backend is left."""

    switch_after: int = Field(1, ge=1)
    switch_immediately: bool = False

    @property
    def threshold(self) -> int:
        return 1 if self.switch_immediately else self.switch_after


class Budgets(_Frozen):
    """Daily spend limits; past them, paid backends are not routed to without allow_paid."""

    daily_usd: float | None = Field(None, ge=0)
    per_backend_daily_usd: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    # The zone whose midnight starts a budget day: an IANA name; None is the system's.
    timezone: str | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"unknown time zone {value!r} (an IANA name such as UTC or Europe/Berlin)"
                ) from None
        return value

    @property
    def zone(self) -> tzinfo | None:
        return None if self.timezone is None else ZoneInfo(self.timezone)


class DaemonSettings(BaseSettings):
    """Daemon settings: the `daemon:` block, overridden by HROUTE_* environment variables."""

    model_config = SettingsConfigDict(env_prefix="HROUTE_", frozen=True, extra="forbid")

    socket: Path | None = None
    state_dir: Path | None = None
    metrics_listen: str | None = Field(None, pattern=r"^[^:]+:\d+$")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    events_kept: int = Field(1000, ge=10, le=100_000)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file: that is how systemd drop-ins and tests override.
        return (env_settings, init_settings)

    @property
    def socket_path(self) -> Path:
        return self.socket or default_socket_path()

    @property
    def state_path(self) -> Path:
        """Where health and cooldowns survive a restart."""
        return (self.state_dir or default_state_dir()) / "state.json"


class Config(_Frozen):
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    defaults: Defaults = Defaults()
    backends: dict[Name, BackendConfig] = Field(default_factory=dict)
    profiles: dict[Name, ProfileConfig] = Field(default_factory=dict)
    fallback_rules: dict[FallbackReason, FallbackRule] = Field(default_factory=dict)
    budgets: Budgets = Budgets()
    cluster: ClusterSettings | None = None  # off: this host works on its own state

    @field_validator("backends", "profiles", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        return {} if value is None else value  # `backends:` with nothing under it

    @model_validator(mode="after")
    def _chains_name_backends(self) -> Config:
        problems = []
        for pname, profile in self.profiles.items():
            for i, member in enumerate(profile.chain):
                if member not in self.backends:
                    problems.append(
                        f"profiles.{pname}.chain.{i}: unknown backend {_short(member)} "
                        f"(valid: {_known(self.backends)})"
                    )
        for pname, profile in self.profiles.items():
            for kind, rule in profile.escalation.task_types.items():
                if rule not in ("local_only", "escalate") and rule not in self.profiles:
                    known = ", ".join(["local_only", "escalate", *sorted(self.profiles)])
                    problems.append(
                        f"profiles.{pname}.escalation.task_types.{kind}: {rule!r} is not "
                        f"local_only, escalate or a profile (valid: {known})"
                    )
        for name in self.budgets.per_backend_daily_usd:
            if name not in self.backends:
                problems.append(
                    f"budgets.per_backend_daily_usd.{name}: unknown backend {_short(name)} "
                    f"(valid: {_known(self.backends)})"
                )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def probe_for(self, name: str) -> ProbeSettings:
        """Effective probe settings of a backend: its overrides over the defaults."""
        backend = self.backends[name]
        merged = self.defaults.probe.model_dump()
        if not backend.local:
            merged["interval_s"] = self.defaults.cloud_probe_interval_s
        merged.update(backend.probe.model_dump(exclude_none=True, exclude={"enabled"}))
        return ProbeSettings(**merged)

    def cooldown_for(self, name: str) -> CooldownSettings:
        return self.backends[name].cooldown or self.defaults.cooldown


def _known(names: dict[str, Any], shown: int = 20) -> str:
    """The configured names for an error message: all of a few, the first of many."""
    first = sorted(names)[:shown]
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(first) + more if names else "none configured"


# --- YAML -> Config, with the YAML line of every error --------------------------------


def load_config(text: str, source: str = "<config>") -> Config:
    """Parse and validate a YAML configuration; raise ConfigError naming path and line."""
    loader = _LOADER(text)
    try:
        root = loader.get_single_node()
        problems = [] if root is None else _check_tree(root, anchors="&" in text)
        if problems:
            raise ConfigError(source, _capped(problems))
        data = None if root is None else loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"{where}YAML syntax error: {problem}"]) from exc
    except RecursionError as exc:  # without libyaml's depth limit
        raise ConfigError(source, ["YAML syntax error: nested too deeply"]) from exc
    finally:
        loader.dispose()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            source,
            ["line 1: the top level must be a mapping (daemon, defaults, backends, profiles)"],
        )
    daemon_data = data.get("daemon") or {}
    if not isinstance(daemon_data, dict):
        raise ConfigError(
            source, [f"daemon (line {_line_of(_tree(text), ('daemon',))}): must be a mapping"]
        )
    try:
        daemon = DaemonSettings(**daemon_data)
    except ValidationError as exc:
        root = _tree(text)
        problems = [_describe(e, root, ("daemon",)) for e in exc.errors()]
        raise ConfigError(source, _capped(problems)) from exc
    try:
        config = Config.model_validate({**data, "daemon": daemon})
    except ValidationError as exc:
        root = _tree(text)
        raise ConfigError(source, _capped([_describe(e, root, ()) for e in exc.errors()])) from exc
    if not config.backends:
        # An empty or cut-short file (an editor's truncate-then-write caught half way) is a
        # mistake, never "remove every backend and forget every cooldown".
        raise ConfigError(source, ["backends: a configuration names at least one backend"])
    return config


def missing_keys(config: Config, env: dict[str, str] | None = None) -> dict[str, str]:
    """Backends whose `key_env` names a variable that is not set: {backend: variable}."""
    env = os.environ if env is None else env
    return {
        name: b.key_env
        for name, b in config.backends.items()
        if b.key_env and not env.get(b.key_env)
    }
