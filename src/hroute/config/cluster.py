"""The `cluster:` block: share cloud cooldowns and spend with other hosts through Redis.

Off unless configured: one machine needs nothing new. Only the URL's form is checked here;
nothing connects (the cluster edge does, in the background).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMES = ("redis://", "rediss://", "unix://")


class ClusterSettings(BaseModel):
    """Where the fleet's shared state lives and under which key prefix."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    redis_url: str
    key_prefix: str = Field("hroute:", min_length=1, max_length=64, pattern=r"^[^\s*?\[\]]+$")
    # How other hosts name this one in their events; default: the machine's hostname.
    host: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[^\s]+$")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(SCHEMES):
            raise ValueError(
                f"must start with one of {', '.join(SCHEMES)} (got {redacted_url(value)!r})"
            )
        return value


def redacted_url(url: str) -> str:
    """The URL without its password (`redis://hroute:***@host:6379/0`), for logs and status."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    userinfo, _, hostpart = rest.partition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user + ':' if user else ''}***@{hostpart}"
