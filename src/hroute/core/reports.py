"""Turn the socket API's JSON into the core's values. Pure."""

from __future__ import annotations

from typing import Any

from hroute.core.health import Report
from hroute.core.reasons import Reason, parse_reason
from hroute.core.sanitize import DETAIL_CHARS, clean


def parse_report(data: dict[str, Any]) -> Report:
    """Build a Report from the API's JSON fields (already validated)."""
    success = data["outcome"] == "success"
    reason: Reason | None = None if success else parse_reason(data.get("reason") or "unknown")
    return Report(
        success=success,
        reason=reason,
        retry_after_s=data.get("retry_after_s"),
        credential=data.get("credential"),
        detail=clean(data.get("detail") or "", DETAIL_CHARS),
        model=data.get("model") or None,
    )
