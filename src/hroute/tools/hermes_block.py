"""doctor's reading of the Hermes plugin's `hroute:` block, as the plugin reads it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

OK, FAIL, WARN, INFO = "ok", "fail", "warn", "info"


def profiles(path: Path) -> list[str] | None:
    """hroute's profile names, or None when its config cannot be read."""
    from hroute.core.errors import ConfigError
    from hroute.edges.config_file import read_config

    try:
        return sorted(read_config(path).profiles)
    except (ConfigError, OSError):
        return None


def check_hroute_block(
    config: dict[str, Any], profiles: list[str] | None, env: Any = os.environ
) -> list[tuple[str, str, str, str | None]]:
    """The plugin's `hroute:` block in Hermes' config.yaml, read as the plugin reads it: the
    profile must be one of hroute's (`profiles` None: hroute's config could not be read)."""
    from hroute_hermes.escalation import PAID_POLICIES, closest_name, load_settings

    block = config.get("hroute")
    if block is not None and not isinstance(block, dict):
        return [("hermes hroute block", FAIL, "hroute: in config.yaml is not a mapping", None)]
    settings = load_settings(config, env)
    if not settings.enabled:
        return [
            (
                "hermes escalation",
                INFO,
                "off: no hroute.profile in config.yaml (nor HROUTE_PROFILE)",
                "set hroute: {profile: NAME} to escalate failing tasks to the cloud",
            )
        ]
    checks = []
    raw_paid = env.get("HROUTE_PAID") or (block or {}).get("paid") or "deny"
    if str(raw_paid).strip().lower() not in PAID_POLICIES:
        checks.append(
            (
                "hermes hroute.paid",
                FAIL,
                f"{raw_paid!r} is not one of {', '.join(PAID_POLICIES)}; the plugin uses deny",
                "set hroute.paid: deny, allow or confirm",
            )
        )
    profile = str(settings.profile)
    via = "HROUTE_PROFILE" if env.get("HROUTE_PROFILE") else "hroute.profile"
    if profiles is None:
        checks.append(
            ("hermes escalation", INFO, f"{via} {profile}: hroute's profiles unknown", None)
        )
    elif profile not in profiles:
        closest = closest_name(profile, profiles)
        checks.append(
            (
                "hermes escalation",
                FAIL,
                f"{via} {profile!r} is not a profile of hroute (it has: "
                f"{', '.join(profiles) or 'none'}): escalation stays off",
                f"set {via}: {closest}" if closest else "name one of hroute's profiles",
            )
        )
    else:
        checks.append(
            (
                "hermes escalation",
                OK,
                f"on for profile {profile} (paid past budget: {settings.paid})",
                None,
            )
        )
    return checks
