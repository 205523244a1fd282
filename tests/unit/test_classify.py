"""Table-driven tests for hroute.core.classify: provider error bodies, retry hints, exceptions."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import ssl
import time

import pytest

from hroute.core.classify import (
    Classification,
    classify_exception,
    classify_response,
    parse_retry_after,
)
from hroute.core.reasons import HEALTH_NEUTRAL, SEVERE, Reason, parse_reason

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z, a Tuesday
IN_30S_HTTP = "Tue, 14 Nov 2023 22:13:50 GMT"
IN_30S_RFC3339 = "2023-11-14T22:13:50Z"
IN_60S_RFC3339 = "2023-11-14T22:14:20.000000+00:00"
PAST_HTTP = "Wed, 21 Oct 2015 07:28:00 GMT"


def j(obj: object) -> str:
    return json.dumps(obj)


def oai(message: str, type_: str | None, code: str | None, param: str | None = None) -> str:
    """OpenAI (and DeepSeek, vLLM-compatible) error shape."""
    return j({"error": {"message": message, "type": type_, "param": param, "code": code}})


def anthropic(type_: str, message: str) -> str:
    return j({"type": "error", "error": {"type": type_, "message": message}})


def openrouter(code: int, message: str, **metadata: object) -> str:
    error: dict[str, object] = {"code": code, "message": message}
    if metadata:
        error["metadata"] = metadata
    return j({"error": error})


ANTHROPIC_RESETS_EXHAUSTED = {
    "anthropic-ratelimit-tokens-remaining": "0",
    "anthropic-ratelimit-tokens-reset": IN_30S_RFC3339,
    "anthropic-ratelimit-requests-remaining": "0",
    "anthropic-ratelimit-requests-reset": IN_60S_RFC3339,
}
OPENAI_CHAT_OK = j(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": 'The "error" key was null.'},
            }
        ],
    }
)
SSE_MIDSTREAM_ERROR = (
    'data: {"id":"gen-1","object":"chat.completion.chunk","choices":[{"index":0,'
    '"delta":{"content":"Hel"}}]}\n\n'
    'data: {"id":"gen-1","object":"chat.completion.chunk","provider":"openai",'
    '"error":{"code":"server_error","message":"Provider disconnected unexpectedly"},'
    '"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}\n\n'
    "data: [DONE]\n\n"
)
ANTHROPIC_SSE_OVERLOADED = (
    'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1"}}\n\n'
    "event: error\n"
    'data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
)
OLLAMA_NDJSON_ERROR = (
    '{"model":"llama3.2","created_at":"2024-01-01T00:00:00Z","message":{"role":"assistant",'
    '"content":"Hi"},"done":false}\n'
    '{"error":"an error was encountered while running the model: unexpected EOF"}\n'
)

R = Reason
RESPONSES = [
    # --- 401 / 403: credentials -------------------------------------------------------------
    pytest.param(
        401,
        {},
        oai(
            "Incorrect API key provided: sk-proj-****abcd. You can find your "
            "API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        ),
        R.AUTH_PERMANENT,
        None,
        id="openai-401-invalid-key",
    ),
    pytest.param(
        401,
        {},
        oai(
            "You didn't provide an API key. You need to provide your API key "
            "in an Authorization header using Bearer auth.",
            "invalid_request_error",
            None,
        ),
        R.AUTH,
        None,
        id="openai-401-missing-key-is-not-permanent",
    ),
    pytest.param(
        401,
        {},
        oai(
            "This key is associated with a deactivated account.",
            "invalid_request_error",
            "account_deactivated",
        ),
        R.AUTH_PERMANENT,
        None,
        id="openai-401-deactivated",
    ),
    pytest.param(
        401,
        {},
        anthropic("authentication_error", "invalid x-api-key"),
        R.AUTH_PERMANENT,
        None,
        id="anthropic-401-invalid-x-api-key",
    ),
    pytest.param(
        401,
        {},
        openrouter(401, "No auth credentials found"),
        R.AUTH,
        None,
        id="openrouter-401-no-credentials",
    ),
    pytest.param(
        401,
        {},
        oai(
            "Authentication Fails, Your api key: ****abcd is invalid",
            "authentication_error",
            "invalid_request_error",
        ),
        R.AUTH_PERMANENT,
        None,
        id="deepseek-401-key-invalid",
    ),
    pytest.param(401, {}, "", R.AUTH, None, id="plain-401-empty-body"),
    pytest.param(
        403,
        {},
        anthropic(
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
        ),
        R.AUTH,
        None,
        id="anthropic-403-permission",
    ),
    pytest.param(
        403,
        {},
        oai("This API key has been revoked.", "invalid_request_error", None),
        R.AUTH_PERMANENT,
        None,
        id="403-key-revoked",
    ),
    pytest.param(
        403,
        {},
        oai(
            "Your account has run out of credits. Add a payment method.", "insufficient_quota", None
        ),
        R.BILLING,
        None,
        id="403-out-of-credits",
    ),
    pytest.param(
        403,
        {},
        openrouter(
            403,
            "Your input was flagged for moderation",
            reasons=["violence"],
            provider_name="OpenAI",
        ),
        R.CONTENT_POLICY_BLOCKED,
        None,
        id="openrouter-403-moderation",
    ),
    # --- 402 and billing-flavoured 400/429 --------------------------------------------------
    pytest.param(
        402,
        {},
        openrouter(
            402, "Insufficient credits. Add more using https://openrouter.ai/settings/credits"
        ),
        R.BILLING,
        None,
        id="openrouter-402-credits",
    ),
    pytest.param(
        402,
        {},
        oai("Insufficient Balance", "unknown_error", "invalid_request_error"),
        R.BILLING,
        None,
        id="deepseek-402-balance",
    ),
    pytest.param(
        402,
        {"Retry-After": "3600"},
        openrouter(402, "Insufficient credits"),
        R.BILLING,
        3600.0,
        id="402-with-retry-after",
    ),
    pytest.param(
        400,
        {},
        anthropic(
            "invalid_request_error",
            "Your credit balance is too low to "
            "access the Anthropic API. Please go to Plans & Billing.",
        ),
        R.BILLING,
        None,
        id="anthropic-400-credit-balance",
    ),
    pytest.param(
        429,
        ANTHROPIC_RESETS_EXHAUSTED,
        anthropic(
            "rate_limit_error",
            "Your organization has reached its monthly spend limit (enforced_spend_limit_reached).",
        ),
        R.BILLING,
        None,
        id="anthropic-429-spend-limit-ignores-resets",
    ),
    pytest.param(
        429,
        {"x-ratelimit-reset-requests": "1s"},
        oai(
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            "insufficient_quota",
        ),
        R.BILLING,
        None,
        id="openai-429-insufficient-quota",
    ),
    # --- 429: rate limits -------------------------------------------------------------------
    pytest.param(
        429,
        {"retry-after": "17"},
        anthropic(
            "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"
        ),
        R.RATE_LIMIT,
        17.0,
        id="anthropic-429-retry-after",
    ),
    pytest.param(
        429,
        {"retry-after": "17", **ANTHROPIC_RESETS_EXHAUSTED},
        anthropic("rate_limit_error", "Number of requests has exceeded your rate limit"),
        R.RATE_LIMIT,
        60.0,
        id="anthropic-429-latest-reset-wins",
    ),
    pytest.param(
        429,
        {
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-remaining-tokens": "28300",
            "x-ratelimit-reset-tokens": "1.4s",
        },
        oai(
            "Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000, Used "
            "29500, Requested 1200. Please try again in 1.4s.",
            "tokens",
            "rate_limit_exceeded",
        ),
        R.RATE_LIMIT,
        1.4,
        id="openai-429-tpm-resets",
    ),
    pytest.param(
        429,
        {},
        openrouter(
            429,
            "Provider returned error",
            raw=(
                "meta-llama/llama-3.3-70b-instruct:free is temporarily rate-limited "
                "upstream. Please retry shortly."
            ),
            provider_name="Chutes",
        ),
        R.UPSTREAM_RATE_LIMIT,
        None,
        id="openrouter-429-upstream",
    ),
    pytest.param(
        429,
        {},
        openrouter(
            429,
            "Provider returned error",
            raw={"error": {"message": "Too many requests"}},
            provider_name="Together",
        ),
        R.UPSTREAM_RATE_LIMIT,
        None,
        id="openrouter-429-provider-name-raw-object",
    ),
    pytest.param(
        429,
        {},
        openrouter(
            429,
            "Rate limit exceeded: free-models-per-day. Add 10 "
            "credits to unlock 1000 free model requests per day",
        ),
        R.RATE_LIMIT,
        None,
        id="openrouter-429-free-per-day-mentions-credits",
    ),
    pytest.param(
        429,
        {},
        j(
            {
                "error": {
                    "code": "1305",
                    "message": "The service may be temporarily overloaded, please try again later",
                }
            }
        ),
        R.OVERLOADED,
        None,
        id="429-overloaded",
    ),
    pytest.param(
        429,
        {"Retry-After": PAST_HTTP},
        "Too Many Requests",
        R.RATE_LIMIT,
        None,  # a past reset is no hint: the normal cooldown, never one that ends at once
        id="plain-429-http-date-in-past",
    ),
    # --- 404: model or wrong URL ------------------------------------------------------------
    pytest.param(
        404,
        {},
        oai(
            "The model `gpt-5-turbo` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        ),
        R.MODEL_NOT_FOUND,
        None,
        id="openai-404-model",
    ),
    pytest.param(
        404,
        {},
        j({"error": 'model "llama3.3:70b" not found, try pulling it first'}),
        R.MODEL_NOT_FOUND,
        None,
        id="ollama-404-model",
    ),
    pytest.param(
        404,
        {},
        anthropic("not_found_error", "model: claude-3-opus-20990101"),
        R.MODEL_NOT_FOUND,
        None,
        id="anthropic-404-model",
    ),
    pytest.param(
        404,
        {},
        openrouter(404, "No endpoints found for mistralai/foo-7b."),
        R.MODEL_NOT_FOUND,
        None,
        id="openrouter-404-no-endpoints",
    ),
    pytest.param(
        404,
        {},
        openrouter(
            404,
            "No endpoints found matching your data policy (Free "
            "model publication). Configure: "
            "https://openrouter.ai/settings/privacy",
        ),
        R.CONTENT_POLICY_BLOCKED,
        None,
        id="openrouter-404-data-policy",
    ),
    pytest.param(
        404,
        {},
        oai("Invalid URL (POST /v1/chat/completion)", "invalid_request_error", None),
        R.INVALID_RESPONSE,
        None,
        id="openai-404-wrong-url",
    ),
    pytest.param(404, {}, "404 page not found", R.INVALID_RESPONSE, None, id="ollama-404-path"),
    pytest.param(
        404,
        {},
        j({"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}}),
        R.INVALID_RESPONSE,
        None,
        id="llama-server-404-path",
    ),
    # --- 408 / 413 --------------------------------------------------------------------------
    pytest.param(
        408, {}, openrouter(408, "Request timed out"), R.TIMEOUT, None, id="openrouter-408"
    ),
    pytest.param(
        413,
        {},
        anthropic("request_too_large", "Request exceeds the maximum allowed number of bytes."),
        R.PAYLOAD_TOO_LARGE,
        None,
        id="anthropic-413",
    ),
    pytest.param(
        413,
        {},
        "<html><head><title>413 Request Entity Too Large</title></head></html>",
        R.PAYLOAD_TOO_LARGE,
        None,
        id="nginx-413-html",
    ),
    # --- 400 / 422: the request is at fault -------------------------------------------------
    pytest.param(
        400,
        {},
        oai(
            "This model's maximum context length is 128000 tokens. However, "
            "your messages resulted in 130532 tokens. Please reduce the "
            "length of the messages.",
            "invalid_request_error",
            "context_length_exceeded",
            "messages",
        ),
        R.CONTEXT_OVERFLOW,
        None,
        id="openai-400-context",
    ),
    pytest.param(
        400,
        {},
        anthropic("invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum"),
        R.CONTEXT_OVERFLOW,
        None,
        id="anthropic-400-prompt-too-long",
    ),
    pytest.param(
        400,
        {},
        j(
            {
                "error": {
                    "code": 400,
                    "message": "the request exceeds the available context size, try increasing it",
                    "type": "exceed_context_size_error",
                    "n_prompt_tokens": 4200,
                    "n_ctx": 4096,
                }
            }
        ),
        R.CONTEXT_OVERFLOW,
        None,
        id="llama-server-400-context",
    ),
    pytest.param(
        400,
        {},
        oai(
            "This model's maximum context length is 65536 tokens. However, "
            "you requested 70000 tokens. Please reduce the length of the "
            "messages or completion.",
            "invalid_request_error",
            "invalid_request_error",
        ),
        R.CONTEXT_OVERFLOW,
        None,
        id="deepseek-400-context",
    ),
    pytest.param(
        400,
        {},
        openrouter(
            400,
            "Provider returned error",
            raw=('{"error":{"message":"The input exceeds the context window of this model"}}'),
            provider_name="DeepInfra",
        ),
        R.CONTEXT_OVERFLOW,
        None,
        id="openrouter-400-context-in-raw",
    ),
    pytest.param(
        400,
        {},
        oai(
            "Your request was rejected as a result of our safety system.",
            "invalid_request_error",
            "content_policy_violation",
        ),
        R.CONTENT_POLICY_BLOCKED,
        None,
        id="openai-400-content-policy",
    ),
    pytest.param(
        400,
        {},
        oai(
            "The response was filtered due to the prompt triggering Azure "
            "OpenAI's content management policy.",
            None,
            "content_filter",
        ),
        R.CONTENT_POLICY_BLOCKED,
        None,
        id="azure-400-content-filter",
    ),
    pytest.param(
        400,
        {},
        oai("Unrecognized request argument supplied: foo", "invalid_request_error", None),
        R.FORMAT_ERROR,
        None,
        id="openai-400-bad-argument",
    ),
    pytest.param(
        400,
        {},
        anthropic("invalid_request_error", "messages.1.content: Input should be a valid list"),
        R.FORMAT_ERROR,
        None,
        id="anthropic-400-bad-shape",
    ),
    pytest.param(
        400,
        {},
        j(
            {
                "error": "json: cannot unmarshal string into Go struct field "
                "ChatRequest.messages of type []api.Message"
            }
        ),
        R.FORMAT_ERROR,
        None,
        id="ollama-400-bad-json",
    ),
    pytest.param(
        400,
        {},
        oai("Model Not Exist", "invalid_request_error", "invalid_request_error"),
        R.MODEL_NOT_FOUND,
        None,
        id="deepseek-400-model-not-exist",
    ),
    pytest.param(
        422,
        {},
        j(
            {
                "detail": [
                    {
                        "type": "missing",
                        "loc": ["body", "messages"],
                        "msg": "Field required",
                        "input": {"model": "x"},
                    }
                ]
            }
        ),
        R.FORMAT_ERROR,
        None,
        id="vllm-422-validation",
    ),
    # --- 5xx --------------------------------------------------------------------------------
    pytest.param(
        500,
        {},
        oai("The server had an error while processing your request.", "server_error", None),
        R.SERVER_ERROR,
        None,
        id="openai-500",
    ),
    pytest.param(
        500,
        {},
        anthropic("api_error", "Overloaded"),
        R.OVERLOADED,
        None,
        id="anthropic-500-overloaded",
    ),
    pytest.param(
        500,
        {},
        j({"error": "llama runner process has terminated: signal: killed"}),
        R.SERVER_ERROR,
        None,
        id="ollama-500-runner-died",
    ),
    pytest.param(
        502,
        {},
        openrouter(502, "anthropic/claude-3.5-sonnet is currently unavailable"),
        R.SERVER_ERROR,
        None,
        id="openrouter-502-model-down",
    ),
    pytest.param(
        502,
        {},
        "<html><body><h1>502 Bad Gateway</h1></body></html>",
        R.SERVER_ERROR,
        None,
        id="nginx-502-html",
    ),
    pytest.param(504, {}, "error code: 504", R.SERVER_ERROR, None, id="cloudflare-504"),
    pytest.param(501, {}, "", R.SERVER_ERROR, None, id="501-empty"),
    pytest.param(
        503,
        {},
        j({"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}),
        R.OVERLOADED,
        None,
        id="llama-server-503-loading",
    ),
    pytest.param(
        503,
        {"Retry-After": "10"},
        openrouter(503, "No available model provider that meets your routing requirements"),
        R.OVERLOADED,
        10.0,
        id="openrouter-503-no-provider",
    ),
    pytest.param(
        529, {}, anthropic("overloaded_error", "Overloaded"), R.OVERLOADED, None, id="anthropic-529"
    ),
    # --- 2xx: success, or an error reported inside a 200 ------------------------------------
    pytest.param(200, {}, OPENAI_CHAT_OK, None, None, id="openai-200-ok"),
    pytest.param(
        200,
        {},
        j(
            {
                "id": "resp_1",
                "object": "response",
                "status": "completed",
                "error": None,
                "output": [],
            }
        ),
        None,
        None,
        id="openai-responses-200-error-null",
    ),
    pytest.param(200, {}, j({"status": "ok"}), None, None, id="llama-server-health-ok"),
    pytest.param(200, {}, "Ollama is running", None, None, id="ollama-root-text"),
    pytest.param(200, {}, "<html>not json at all</html>", None, None, id="200-not-json"),
    pytest.param(200, {}, None, None, None, id="200-no-body"),
    pytest.param(204, {}, "", None, None, id="204-empty"),
    pytest.param(
        200,
        {},
        j({"id": "gen-1", "error": {"code": 502, "message": "Upstream provider failed"}}),
        R.SERVER_ERROR,
        None,
        id="openrouter-200-error-502",
    ),
    pytest.param(
        200,
        {"Retry-After": "7"},
        j({"error": {"code": 429, "message": "Rate limit exceeded"}}),
        R.RATE_LIMIT,
        7.0,
        id="openrouter-200-error-429",
    ),
    pytest.param(
        200,
        {},
        j(
            {
                "error": {
                    "code": 400,
                    "message": "This model's maximum context length is 8192 tokens",
                }
            }
        ),
        R.CONTEXT_OVERFLOW,
        None,
        id="200-error-400-context",
    ),
    pytest.param(
        200,
        {},
        j({"error": {"message": "Something broke"}}),
        R.SERVER_ERROR,
        None,
        id="200-error-without-code",
    ),
    pytest.param(
        200, {}, SSE_MIDSTREAM_ERROR, R.SERVER_ERROR, None, id="openrouter-sse-midstream-error"
    ),
    pytest.param(
        200, {}, ANTHROPIC_SSE_OVERLOADED, R.OVERLOADED, None, id="anthropic-sse-overloaded"
    ),
    pytest.param(
        200,
        {},
        'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error",'
        '"message":"Number of requests has exceeded your rate limit"}}\n\n',
        R.RATE_LIMIT,
        None,
        id="anthropic-sse-rate-limit-by-error-type",
    ),
    pytest.param(200, {}, OLLAMA_NDJSON_ERROR, R.SERVER_ERROR, None, id="ollama-ndjson-error"),
    # --- statuses no rule names -------------------------------------------------------------
    pytest.param(409, {}, "conflict", R.UNKNOWN, None, id="409-unknown"),
    pytest.param(
        302, {"Location": "https://login.example/"}, "", R.INVALID_RESPONSE, None, id="302-redirect"
    ),
]


@pytest.mark.parametrize("as_bytes", [False, True], ids=["str", "bytes"])
@pytest.mark.parametrize(("status", "headers", "body", "reason", "retry_after_s"), RESPONSES)
def test_classify_response(status, headers, body, reason, retry_after_s, as_bytes):
    payload = body.encode() if as_bytes and body is not None else body
    got = classify_response(status, headers, payload, now_wall=NOW)
    if reason is None:
        assert got is None
        return
    assert got is not None
    assert got.reason is reason
    if retry_after_s is None:
        assert got.retry_after_s is None
    else:
        assert got.retry_after_s == pytest.approx(retry_after_s)
    assert 0 < len(got.detail) <= 200
    assert got.detail.startswith(f"HTTP {status}")


def test_table_is_big_enough_and_covers_every_response_reason():
    assert len(RESPONSES) >= 40
    covered = {p.values[3] for p in RESPONSES}
    assert covered >= set(Reason) - {Reason.CONNECTION}  # only exceptions yield `connection`


# --- Retry hints --------------------------------------------------------------------------

RETRY_HINTS = [
    pytest.param({"Retry-After": "120"}, False, 120.0, id="delta-seconds"),
    pytest.param({"Retry-After": " 2.5 "}, False, 2.5, id="fractional-with-spaces"),
    pytest.param({"Retry-After": IN_30S_HTTP}, False, 30.0, id="http-date-future"),
    pytest.param({"Retry-After": PAST_HTTP}, False, None, id="http-date-past-is-no-hint"),
    pytest.param({"Retry-After": "-5"}, False, None, id="negative-is-no-hint"),
    pytest.param({"Retry-After": "999999999"}, False, None, id="absurd-is-no-hint"),
    pytest.param({"retry-after-ms": "1500"}, False, 1.5, id="retry-after-ms"),
    pytest.param({"Retry-After": "2", "retry-after-ms": "2500"}, False, 2.5, id="largest-wins"),
    pytest.param({"RETRY-AFTER": "3", "Retry-After-Ms": "100"}, False, 3.0, id="mixed-case"),
    pytest.param(
        {
            "anthropic-ratelimit-tokens-reset": IN_30S_RFC3339,
            "anthropic-ratelimit-tokens-remaining": "0",
        },
        False,
        30.0,
        id="anthropic-reset-exhausted",
    ),
    pytest.param(
        {"anthropic-ratelimit-input-tokens-reset": IN_60S_RFC3339},
        False,
        60.0,
        id="anthropic-reset-remaining-absent",
    ),
    pytest.param(
        {
            "anthropic-ratelimit-output-tokens-reset": IN_30S_RFC3339,
            "anthropic-ratelimit-output-tokens-remaining": "7000",
        },
        False,
        None,
        id="anthropic-reset-not-exhausted-ignored",
    ),
    pytest.param(
        {
            "anthropic-ratelimit-output-tokens-reset": IN_30S_RFC3339,
            "anthropic-ratelimit-output-tokens-remaining": "7000",
        },
        True,
        30.0,
        id="anthropic-reset-counts-when-rate-limited",
    ),
    pytest.param(
        {"anthropic-ratelimit-requests-reset": "2023-11-14T22:13:50"},
        False,
        30.0,
        id="rfc3339-naive-is-utc",
    ),
    pytest.param({"x-ratelimit-reset-requests": "1h2m3.5s"}, False, 3723.5, id="go-hms"),
    pytest.param({"x-ratelimit-reset-tokens": "6m0s"}, False, 360.0, id="go-minutes"),
    pytest.param({"x-ratelimit-reset-tokens": "20ms"}, False, 0.02, id="go-millis"),
    pytest.param(
        {"X-RateLimit-Reset-Requests": "1s", "X-RateLimit-Remaining-Requests": "0"},
        False,
        1.0,
        id="go-mixed-case-headers",
    ),
    pytest.param(
        {"x-ratelimit-reset-requests": "120ms", "x-ratelimit-remaining-requests": "499"},
        False,
        None,
        id="go-not-exhausted-ignored",
    ),
    pytest.param({"x-ratelimit-reset-tokens": "9999h"}, False, None, id="go-absurd-is-no-hint"),
    pytest.param({"retry-after-ms": IN_30S_RFC3339}, False, None, id="ms-must-be-a-number"),
    pytest.param({"Content-Type": "application/json"}, False, None, id="no-hint"),
    pytest.param({}, False, None, id="no-headers"),
]


@pytest.mark.parametrize(("headers", "rate_limited", "expected"), RETRY_HINTS)
def test_parse_retry_after(headers, rate_limited, expected):
    got = parse_retry_after(headers, now_wall=NOW, rate_limited=rate_limited)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    "header",
    [
        "Retry-After",
        "retry-after-ms",
        "anthropic-ratelimit-requests-reset",
        "x-ratelimit-reset-tokens",
    ],
)
@pytest.mark.parametrize(
    "value",
    [
        "soon",
        "",
        "   ",
        "nan",
        "inf",
        "-inf",
        "1e9",
        "0x10",
        "1_000",
        "12abc",
        "6 minutes",
        "Tue, 99 Foo 2023",
        "2023-13-45T99:99:99Z",
        "ms",
        "1.2.3s",
        "\x00\xff",
        "9" * 400,
    ],
)
def test_garbage_hint_is_ignored_not_raised(header, value):
    assert parse_retry_after({header: value}, now_wall=NOW) is None


def test_garbage_hint_does_not_hide_a_good_one():
    headers = {"Retry-After": "whenever", "retry-after-ms": "4000"}
    assert parse_retry_after(headers, now_wall=NOW) == pytest.approx(4.0)


def test_http_date_is_relative_to_the_wall_time_passed_in():
    headers = {"Retry-After": IN_30S_HTTP}
    assert parse_retry_after(headers, now_wall=NOW - 70) == pytest.approx(100.0)


def test_naive_timestamps_are_utc_whatever_the_local_zone(monkeypatch):
    monkeypatch.setenv("TZ", "XXX-5:30")
    time.tzset()
    try:
        got = parse_retry_after(
            {
                "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:50",
                "Retry-After": "Tue, 14 Nov 2023 22:13:40 -0000",
            },
            now_wall=NOW,
        )
    finally:
        monkeypatch.undo()
        time.tzset()
    assert got == pytest.approx(30.0)


def test_server_error_ignores_resets_of_limits_that_are_not_exhausted():
    headers = {
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-remaining-tokens": "29000",
        "x-ratelimit-reset-tokens": "2s",
    }
    got = classify_response(500, headers, oai("boom", "server_error", None), now_wall=NOW)
    assert got is not None and got.retry_after_s is None


def test_billing_honours_an_explicit_retry_after_but_no_reset():
    body = anthropic("rate_limit_error", "enforced_spend_limit_reached")
    got = classify_response(
        429, {"retry-after": "45", **ANTHROPIC_RESETS_EXHAUSTED}, body, now_wall=NOW
    )
    assert got == Classification(Reason.BILLING, 45.0, got.detail)


# --- Bodies: size, encoding, headers ------------------------------------------------------


def test_huge_plain_body_is_bounded_in_detail():
    got = classify_response(429, {}, b"Too Many Requests " * 300_000, now_wall=NOW)
    assert got is not None and got.reason is Reason.RATE_LIMIT
    assert len(got.detail) <= 200 and got.detail.endswith("…")


def test_huge_json_body_beyond_the_parse_limit_is_still_searched_as_text():
    body = oai(
        "This model's maximum context length is 8192 tokens. " + "x" * 2_000_000,
        "invalid_request_error",
        "context_length_exceeded",
    )
    got = classify_response(400, {}, body, now_wall=NOW)
    assert got is not None and got.reason is Reason.CONTEXT_OVERFLOW


def test_error_event_at_the_end_of_a_long_stream_is_found():
    chunk = 'data: {"choices":[{"index":0,"delta":{"content":"tok"}}]}\n\n'
    body = chunk * 20_000 + 'data: {"error":{"code":503,"message":"no capacity"}}\n\n'
    got = classify_response(200, {}, body.encode(), now_wall=NOW)
    assert got is not None and got.reason is Reason.OVERLOADED


def test_long_success_stream_is_a_success():
    chunk = 'data: {"choices":[{"index":0,"delta":{"content":"error"}}]}\n\n'
    assert classify_response(200, {}, chunk * 20_000 + "data: [DONE]\n\n", now_wall=NOW) is None


def test_non_utf8_body_is_classified_not_raised():
    body = b'\xff\xfe{"error": {"message": "maximum context length \xe9xceeded"}}'
    got = classify_response(400, {}, body, now_wall=NOW)
    assert got is not None and got.reason is Reason.CONTEXT_OVERFLOW
    assert "\ufffd" in got.detail  # replaced, not dropped or raised


def test_latin1_error_json_still_parses_its_fields():
    body = '{"error": {"message": "Model \xab x \xbb not found", "code": "model_not_found"}}'
    got = classify_response(404, {}, body.encode("latin-1"), now_wall=NOW)
    assert got is not None and got.reason is Reason.MODEL_NOT_FOUND


def test_deeply_nested_json_does_not_raise():
    got = classify_response(500, {}, "[" * 200_000, now_wall=NOW)
    assert got is not None and got.reason is Reason.SERVER_ERROR


def test_mixed_case_header_names():
    headers = {"rEtRy-AfTeR": "12", "Content-Type": "application/json"}
    got = classify_response(429, headers, anthropic("rate_limit_error", "slow down"), now_wall=NOW)
    assert got is not None and got.retry_after_s == pytest.approx(12.0)


def test_headers_may_be_none():
    got = classify_response(503, None, "", now_wall=NOW)
    assert got == Classification(Reason.OVERLOADED, None, "HTTP 503")


# --- Detail -------------------------------------------------------------------------------


def test_detail_names_status_type_and_provider_message():
    body = anthropic(
        "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"
    )
    got = classify_response(429, {}, body, now_wall=NOW)
    assert got is not None
    assert got.detail == (
        "HTTP 429 rate_limit_error: Number of request tokens has exceeded "
        "your per-minute rate limit"
    )


def test_detail_is_prefixed_by_the_provider_when_given():
    got = classify_response(
        402, {}, openrouter(402, "Insufficient credits"), now_wall=NOW, provider="openrouter"
    )
    assert got is not None and got.detail == "openrouter: HTTP 402: Insufficient credits"


def test_detail_marks_errors_inside_a_200():
    got = classify_response(200, {}, SSE_MIDSTREAM_ERROR, now_wall=NOW)
    assert got is not None
    assert got.detail == "HTTP 200 in-body server_error: Provider disconnected unexpectedly"


def test_detail_never_contains_header_values():
    secret = "sk-ant-api03-SECRETSECRETSECRET"
    headers = {
        "x-api-key": secret,
        "Authorization": f"Bearer {secret}",
        "Set-Cookie": "session=COOKIEVALUE",
        "retry-after": "5",
    }
    got = classify_response(
        401, headers, anthropic("authentication_error", "invalid x-api-key"), now_wall=NOW
    )
    assert got is not None
    assert "SECRET" not in got.detail and "COOKIE" not in got.detail and "Bearer" not in got.detail


def test_detail_redacts_keys_echoed_in_the_body():
    body = oai(
        "Incorrect API key provided: sk-proj-AbCdEf123456. See https://x.example/?key=AIzaSECRET",
        "invalid_request_error",
        "invalid_api_key",
    )
    got = classify_response(401, {}, body, now_wall=NOW)
    assert got is not None
    assert "AbCdEf123456" not in got.detail and "AIzaSECRET" not in got.detail
    assert "[redacted]" in got.detail


def test_detail_strips_html_and_collapses_whitespace():
    body = "<html>\n<body>\n<h1>502   Bad Gateway</h1>\n<hr><center>nginx</center></body></html>"
    got = classify_response(502, {}, body, now_wall=NOW)
    assert got is not None and got.detail == "HTTP 502: 502 Bad Gateway nginx"


def test_classification_is_frozen():
    got = Classification(Reason.TIMEOUT, None, "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.reason = Reason.AUTH  # type: ignore[misc]


# --- Reason parsing and groups -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *[(r.value, r) for r in Reason],
        ("RATE_LIMIT", Reason.RATE_LIMIT),
        ("  Overloaded \n", Reason.OVERLOADED),
        ("FailoverReason.billing", Reason.BILLING),
        ("provider_policy_blocked", Reason.CONTENT_POLICY_BLOCKED),
        ("image_too_large", Reason.PAYLOAD_TOO_LARGE),
        ("ssl_cert_verification", Reason.CONNECTION),
        ("thinking_signature", Reason.FORMAT_ERROR),
        ("long_context_tier", Reason.CONTEXT_OVERFLOW),
        ("llama_cpp_grammar_pattern", Reason.FORMAT_ERROR),
        ("something_new", Reason.UNKNOWN),
        ("", Reason.UNKNOWN),
    ],
)
def test_parse_reason(text, expected):
    assert parse_reason(text) is expected


def test_reason_values_are_the_wire_strings():
    assert Reason.UPSTREAM_RATE_LIMIT == "upstream_rate_limit"
    assert json.dumps({"reason": Reason.AUTH_PERMANENT}) == '{"reason": "auth_permanent"}'


@pytest.mark.parametrize(
    ("group", "members"),
    [
        pytest.param(
            HEALTH_NEUTRAL,
            {R.CONTEXT_OVERFLOW, R.FORMAT_ERROR, R.PAYLOAD_TOO_LARGE, R.CONTENT_POLICY_BLOCKED},
            id="health-neutral",
        ),
        pytest.param(
            SEVERE,
            {R.SERVER_ERROR, R.OVERLOADED, R.TIMEOUT, R.CONNECTION, R.INVALID_RESPONSE},
            id="severe",
        ),
    ],
)
def test_reason_groups(group, members):
    assert group == members
    assert isinstance(group, frozenset)


def test_reason_groups_are_disjoint():
    assert not HEALTH_NEUTRAL & SEVERE


# --- Exceptions ---------------------------------------------------------------------------
# Stand-ins with aiohttp's class names and hierarchy; the module matches on names.


class ClientError(Exception):
    pass


class ClientConnectionError(ClientError):
    pass


class ClientOSError(ClientConnectionError, OSError):
    pass


class ClientConnectorError(ClientOSError):
    pass


class ServerConnectionError(ClientConnectionError):
    pass


class ServerDisconnectedError(ServerConnectionError):
    pass


class ServerTimeoutError(ServerConnectionError, TimeoutError):
    pass


class ClientResponseError(ClientError):
    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(message)
        self.status = status


class ContentTypeError(ClientResponseError):
    pass


class ClientPayloadError(ClientError):
    pass


class APIStatusError(Exception):  # openai-style: status_code attribute
    def __init__(self, status_code: int) -> None:
        super().__init__(f"Error code: {status_code}")
        self.status_code = status_code


def _wrapped(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


EXCEPTIONS = [
    pytest.param(TimeoutError(), Reason.TIMEOUT, id="TimeoutError"),
    pytest.param(
        ServerTimeoutError("Timeout on reading data from socket"),
        Reason.TIMEOUT,
        id="aiohttp-ServerTimeoutError-is-timeout-not-connection",
    ),
    pytest.param(
        ConnectionRefusedError(111, "Connect call failed"),
        Reason.CONNECTION,
        id="ConnectionRefusedError",
    ),
    pytest.param(
        ConnectionResetError(104, "Connection reset by peer"),
        Reason.CONNECTION,
        id="ConnectionResetError",
    ),
    pytest.param(OSError(113, "No route to host"), Reason.CONNECTION, id="OSError"),
    pytest.param(
        socket.gaierror(-2, "Name or service not known"), Reason.CONNECTION, id="gaierror"
    ),
    pytest.param(
        ssl.SSLCertVerificationError("certificate verify failed"), Reason.CONNECTION, id="ssl-cert"
    ),
    pytest.param(asyncio.IncompleteReadError(b"", 10), Reason.CONNECTION, id="IncompleteRead"),
    pytest.param(
        ClientConnectorError("Cannot connect to host 127.0.0.1:8080"),
        Reason.CONNECTION,
        id="aiohttp-ClientConnectorError",
    ),
    pytest.param(
        ServerDisconnectedError("Server disconnected"),
        Reason.CONNECTION,
        id="aiohttp-ServerDisconnectedError",
    ),
    pytest.param(ClientOSError(32, "Broken pipe"), Reason.CONNECTION, id="aiohttp-ClientOSError"),
    pytest.param(
        json.JSONDecodeError("Expecting value", "<html>", 0),
        Reason.INVALID_RESPONSE,
        id="JSONDecodeError",
    ),
    pytest.param(
        ContentTypeError(200, "Attempt to decode JSON with unexpected mimetype"),
        Reason.INVALID_RESPONSE,
        id="aiohttp-ContentTypeError-beats-status",
    ),
    pytest.param(
        ClientPayloadError("Response payload is not completed"),
        Reason.INVALID_RESPONSE,
        id="aiohttp-ClientPayloadError",
    ),
    pytest.param(
        ClientResponseError(429, "Too Many Requests"), Reason.RATE_LIMIT, id="raise_for_status-429"
    ),
    pytest.param(APIStatusError(503), Reason.OVERLOADED, id="status_code-503"),
    pytest.param(
        _wrapped(RuntimeError("request failed"), TimeoutError()), Reason.TIMEOUT, id="cause-chain"
    ),
    pytest.param(ValueError("bad value"), Reason.UNKNOWN, id="ValueError"),
    pytest.param(KeyError("choices"), Reason.UNKNOWN, id="KeyError"),
    pytest.param(asyncio.CancelledError(), Reason.UNKNOWN, id="CancelledError"),
]


@pytest.mark.parametrize(("exc", "reason"), EXCEPTIONS)
def test_classify_exception(exc, reason):
    got = classify_exception(exc)
    assert got.reason is reason
    assert got.retry_after_s is None
    assert got.detail.startswith(type(exc).__name__) and len(got.detail) <= 200


def test_implicit_context_is_not_a_cause():
    bug = KeyError("bug in an except block")
    bug.__context__ = TimeoutError()  # what `raise` inside `except TimeoutError:` records
    assert classify_exception(bug).reason is Reason.UNKNOWN


def test_exception_detail_redacts_credentials():
    exc = ConnectionResetError(f"reset while sending Authorization: Bearer {'t' * 20}")
    assert "t" * 20 not in classify_exception(exc).detail


def test_real_aiohttp_exceptions_match_by_name():
    aiohttp = pytest.importorskip("aiohttp")
    assert classify_exception(aiohttp.ServerTimeoutError("t")).reason is Reason.TIMEOUT
    assert classify_exception(aiohttp.ConnectionTimeoutError("t")).reason is Reason.TIMEOUT
    assert classify_exception(aiohttp.SocketTimeoutError("t")).reason is Reason.TIMEOUT
    assert classify_exception(aiohttp.ServerDisconnectedError()).reason is Reason.CONNECTION
    assert classify_exception(aiohttp.ClientOSError(104, "reset")).reason is Reason.CONNECTION
    assert classify_exception(aiohttp.ClientPayloadError("cut")).reason is Reason.INVALID_RESPONSE


def test_an_answer_aiohttp_cannot_parse_is_invalid_not_our_400():
    # aiohttp wraps a parser error (a port speaking SSH) as ClientResponseError(status=400).
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp.http_exceptions import BadStatusLine

    info = aiohttp.RequestInfo(url=__import__("yarl").URL("http://x/"), method="GET", headers={})
    try:
        try:
            raise BadStatusLine("SSH-2.0-OpenSSH_9.6")
        except BadStatusLine as cause:
            raise aiohttp.ClientResponseError(info, (), status=400, message="bad") from cause
    except aiohttp.ClientResponseError as exc:
        assert classify_exception(exc).reason is Reason.INVALID_RESPONSE


@pytest.mark.parametrize(
    ("status", "detail", "reason"),
    [
        (429, None, Reason.RATE_LIMIT),
        (503, None, Reason.OVERLOADED),
        (500, None, Reason.SERVER_ERROR),
        (401, None, Reason.AUTH),
        (400, "This model's maximum context length is 8192 tokens", Reason.CONTEXT_OVERFLOW),
        (200, None, Reason.UNKNOWN),
    ],
)
def test_a_report_with_only_a_status_code_is_classified_like_a_probe(status, detail, reason):
    from hroute.core.reports import parse_report

    data = {"backend": "a", "outcome": "failure", "status_code": status}
    if detail:
        data["detail"] = detail
    assert parse_report(data).reason is reason
    assert parse_report({**data, "reason": "timeout"}).reason is Reason.TIMEOUT


def test_detail_redacts_basic_credentials_echoed_in_the_body():
    # A proxy behind basic auth that echoes the Authorization header it refused.
    body = oai("bad credentials in Authorization: Basic YWxpY2U6cHctWnE4MQ==", "auth", "401")
    got = classify_response(401, {}, body, now_wall=NOW)
    assert got is not None and "YWxpY2U6cHctWnE4MQ" not in got.detail, got.detail
