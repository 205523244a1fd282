"""Turn the socket API's JSON into the core's values. Pure."""

from __future__ import annotations

from typing import Any

from hroute.core.classify import classify_response
from hroute.core.health import Report
from hroute.core.reasons import Reason, parse_reason
from hroute.core.sanitize import DETAIL_CHARS, clean

NAME_CHARS = 256  # a backend, model, provider name or base_url in a request


def parse_report(data: dict[str, Any]) -> Report:
    """Build a Report from the API's JSON fields (already validated).

    A failure with a `status_code` and no `reason` is classified as a probe's answer
    would be (its `detail` read as the error body): a lone 429 is a rate limit.
    """
    success = data["outcome"] == "success"
    reason: Reason | None = None
    if not success:
        reason = parse_reason(data.get("reason") or "unknown")
        if not data.get("reason") and data.get("status_code"):
            found = classify_response(data["status_code"], None, data.get("detail"), now_wall=0)
            reason = found.reason if found is not None else Reason.UNKNOWN
    return Report(
        success=success,
        reason=reason,
        retry_after_s=data.get("retry_after_s"),
        credential=data.get("credential"),
        detail=clean(data.get("detail") or "", DETAIL_CHARS),
        model=data.get("model") or None,
    )
