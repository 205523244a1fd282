"""A reset time is a hint, never a loop (issue 20): a provider's reset that is zero, already
past, or absurd (beyond the day classify caps hints at) is no hint, so the normal growing
cooldown applies instead of a cooldown that ends at once, pokes the prober and starts over."""

from __future__ import annotations

import pytest

from hroute.core.classify import classify_response
from hroute.core.cooldowns import Held
from hroute.core.health import Health, Policy, ProbeOutcome, Report
from hroute.core.reasons import Reason

NOW_WALL = 1_700_000_000.0  # 2023-11-14T22:13:20Z
NOW_HTTP = "Tue, 14 Nov 2023 22:13:20 GMT"
PAST_HTTP = "Tue, 14 Nov 2023 22:12:20 GMT"
NOW_RFC3339 = "2023-11-14T22:13:20Z"
PAST_RFC3339 = "2023-11-14T22:13:10Z"
P = Policy(fall=1, rise=1, base_s=30.0, max_s=300.0)
BODY = '{"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}'

STYLES = [
    pytest.param({"Retry-After": "0"}, id="retry-after-0"),
    pytest.param({"Retry-After": PAST_HTTP}, id="retry-after-http-date-past"),
    pytest.param({"Retry-After": NOW_HTTP}, id="retry-after-http-date-now"),
    pytest.param({"Retry-After": "-5"}, id="retry-after-negative"),
    pytest.param({"retry-after-ms": "0"}, id="retry-after-ms-0"),
    pytest.param({"x-ratelimit-reset-requests": "0s"}, id="openai-reset-0s"),
    pytest.param(
        {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "0ms"},
        id="openai-reset-tokens-0ms",
    ),
    pytest.param({"anthropic-ratelimit-requests-reset": NOW_RFC3339}, id="anthropic-reset-now"),
    pytest.param({"anthropic-ratelimit-tokens-reset": PAST_RFC3339}, id="anthropic-reset-past"),
    pytest.param({"Retry-After": "999999999"}, id="retry-after-absurd"),
]


@pytest.mark.parametrize("headers", STYLES)
def test_a_zero_past_or_absurd_reset_is_no_hint(headers: dict[str, str]) -> None:
    got = classify_response(429, headers, BODY, now_wall=NOW_WALL)
    assert got is not None and got.reason is Reason.RATE_LIMIT
    assert got.retry_after_s is None


@pytest.mark.parametrize("headers", STYLES)
def test_a_probe_429_with_such_a_reset_arms_the_normal_growing_cooldown(
    headers: dict[str, str],
) -> None:
    got = classify_response(429, headers, BODY, now_wall=NOW_WALL)
    assert got is not None
    h = Health()
    outcome = ProbeOutcome(got.reason, retry_after_s=got.retry_after_s, detail=got.detail)
    [cooled] = h.on_probe(outcome, 0.0, P)
    assert cooled.event == "cooldown" and cooled.cooldown_s == P.base_s
    assert not h.verdict(1.0).usable  # not usable, not a cooldown that already ended
    assert h.on_probe(outcome, 2.0, P) == []  # the next probe in it: same incident
    assert h.expire(P.base_s)  # ends once, after base_s
    [again] = h.on_probe(outcome, P.base_s, P)
    assert again.cooldown_s == 2 * P.base_s  # and grows


@pytest.mark.parametrize("retry_after_s", [0.0, -1.0, 1e9, float("inf")])
def test_the_core_takes_a_zero_past_or_absurd_hint_as_none(retry_after_s: float) -> None:
    """Reports reach the core without classify (the API, another host): the core checks too."""
    held = Held()
    assert held.arm(Reason.RATE_LIMIT, 0.0, P, retry_after_s=retry_after_s) == P.base_s
    h = Health()
    report = Report(False, Reason.SERVER_ERROR, retry_after_s)
    [cooled] = h.on_report(report, 0.0, P)
    assert cooled.cooldown_s == P.base_s


def test_a_real_reset_is_still_kept_exactly() -> None:
    got = classify_response(429, {"Retry-After": "17"}, BODY, now_wall=NOW_WALL)
    assert got is not None and got.retry_after_s == 17.0
    assert Held().arm(Reason.RATE_LIMIT, 0.0, P, retry_after_s=17.0) == 17.0
