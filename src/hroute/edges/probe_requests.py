"""Active probes: one free request (or two) per backend kind; never a token spent.

Each probe returns a `ProbeOutcome`; the caller records it. The HTTP client is passed in,
and a probe never raises for anything the backend does.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio.to_thread

from hroute.config.model import BackendConfig
from hroute.core.classify import classify_exception, classify_response
from hroute.core.health import ProbeOutcome
from hroute.core.identity import normalize_base_url
from hroute.core.reasons import Reason
from hroute.core.sanitize import clean
from hroute.edges.probe_http import ConnectError, ProbeClient

HANG_CHECK_MAX_S = 1.0  # llama.cpp #27388: /health stays 200 while inference hangs; /slots does not
# A probe reads at most this much of an answer: a 15 MB model listing once took RSS to
# 232 MB and the loop for 450 ms. Past it, a 2xx answer still says "up" (the listing is not
# checked); bodies past OFF_LOOP_BYTES are parsed in a worker thread.
MAX_BODY_BYTES = 2 * 1024 * 1024
OFF_LOOP_BYTES = 128 * 1024


class _Failed(Exception):
    def __init__(self, outcome: ProbeOutcome) -> None:
        self.outcome = outcome


async def probe_backend(
    client: ProbeClient,
    backend: BackendConfig,
    *,
    api_key: str | None,
    timeout_s: float,
    wall: Callable[[], float] = time.time,
    models: tuple[str, ...] | None = None,
) -> ProbeOutcome:
    """Probe one server with its kind's free endpoints; classify whatever goes wrong.

    `models` are every model configured on that server (default: the backend's own); one
    model listing checks them all, and a missing one is told per model, not as a failure
    of the server. Connections are kept for the next probe, except to llama-server: an
    idle kept connection would hold one of its few server threads.
    """
    probe = _PROBES[backend.kind]
    if models is None:
        models = (backend.model,) if backend.model else ()
    started = time.perf_counter()
    try:
        outcome = await probe(_Http(client, backend, api_key, timeout_s, wall, models))
    except _Failed as failed:
        outcome = failed.outcome
    except Exception as exc:  # a probe turns every failure into a reason
        c = classify_exception(exc)
        outcome = ProbeOutcome(reason=c.reason, detail=_exc_detail(exc, c.detail))
    latency_ms = (time.perf_counter() - started) * 1000
    return dataclasses.replace(outcome, detail=clean(outcome.detail), latency_ms=latency_ms)


class _Http:
    """GET helper bound to one backend: builds URLs, adds auth, classifies answers."""

    def __init__(
        self, client: ProbeClient, backend: BackendConfig, api_key, timeout_s: float, wall, models
    ) -> None:
        self.client, self.backend, self.api_key = client, backend, api_key
        self.timeout_s, self.wall, self.models = timeout_s, wall, models
        self.root = normalize_base_url(backend.base_url)
        self.keep = backend.kind != "llama-server"

    async def get(
        self,
        path: str,
        *,
        timeout_s: float | None = None,
        headers: dict | None = None,
        accept: tuple[int, ...] = (),
    ) -> tuple[int, Any]:
        timeout_s = timeout_s or self.timeout_s
        headers = dict(headers or {})
        if self.backend.basic_auth and "Authorization" not in headers:
            pair = ":".join(self.backend.basic_auth).encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        try:
            answer = await self.client.get(
                self.root + path,
                headers,
                timeout_s=timeout_s,
                max_body=MAX_BODY_BYTES,
                keep=self.keep,
            )
        except TimeoutError as exc:
            raise _Failed(
                ProbeOutcome(Reason.TIMEOUT, detail=f"GET {path}: no answer within {timeout_s:g}s")
            ) from exc
        status, resp_headers, body = answer.status, answer.headers, answer.body
        if status in accept:
            return status, body
        problem = classify_response(status, resp_headers, body, now_wall=self.wall())
        if problem is not None:
            raise _Failed(
                ProbeOutcome(
                    problem.reason,
                    retry_after_s=problem.retry_after_s,
                    detail=f"GET {path}: {problem.detail}",
                )
            )
        if not 200 <= status < 300:
            raise _Failed(
                ProbeOutcome(Reason.INVALID_RESPONSE, detail=f"GET {path}: HTTP {status}")
            )
        if len(body) > MAX_BODY_BYTES:
            return status, None  # answered, too big to look into: up, listing unchecked
        try:
            if len(body) > OFF_LOOP_BYTES:
                return status, await anyio.to_thread.run_sync(json.loads, body)
            return status, json.loads(body) if body else None
        except ValueError as exc:
            raise _Failed(
                ProbeOutcome(Reason.INVALID_RESPONSE, detail=f"GET {path}: answer is not JSON")
            ) from exc

    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


async def _probe_llama_server(http: _Http) -> ProbeOutcome:
    status, body = await http.get("/health", accept=(503,))
    if status == 503:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
        if "loading model" in text.lower():
            return ProbeOutcome(starting=True, detail="loading model")
        return ProbeOutcome(Reason.OVERLOADED, detail="GET /health: HTTP 503")
    # /health answers from the HTTP thread even when every slot is wedged; /slots needs the
    # inference loop, so a short timeout on it tells a hang from a healthy idle server.
    status, _ = await http.get(
        "/slots", timeout_s=min(http.timeout_s, HANG_CHECK_MAX_S), accept=(501,)
    )
    return ProbeOutcome(
        detail="ok" if status != 501 else "ok (slots endpoint disabled: no hang check)"
    )


async def _probe_ollama(http: _Http) -> ProbeOutcome:
    await http.get("/api/version")
    _, tags = await http.get("/api/tags")
    listed = (tags or {}).get("models") if isinstance(tags, dict) else None
    installed = {m.get("name") for m in listed or [] if isinstance(m, dict)}
    installed.discard(None)
    names = ", ".join(sorted(installed)) or "none"
    missing = {
        model: f"model {model!r} is not installed (installed: {names})"
        for model in http.models
        if not installed & ({model} if ":" in model else {model, f"{model}:latest"})
    }
    return ProbeOutcome(detail="ok", checked=http.models, missing=missing)


async def _probe_openai(http: _Http) -> ProbeOutcome:
    _, models = await http.get("/v1/models", headers=http.bearer())
    return _check_model(http, models)


async def _probe_anthropic(http: _Http) -> ProbeOutcome:
    headers = {"anthropic-version": "2023-06-01"}
    if http.api_key:
        headers["x-api-key"] = http.api_key
    await http.get("/v1/models", headers=headers)
    return ProbeOutcome(detail="ok")


async def _probe_openrouter(http: _Http) -> ProbeOutcome:
    await http.get("/v1/models")
    if http.api_key:
        _, key = await http.get("/v1/key", headers=http.bearer())
        data = (key or {}).get("data") or {}
        remaining = data.get("limit_remaining")
        if isinstance(remaining, int | float) and remaining <= 0:
            return ProbeOutcome(Reason.BILLING, detail="key has no credit left (limit_remaining 0)")
    return ProbeOutcome(detail="ok")


def _check_model(http: _Http, models: Any) -> ProbeOutcome:
    if not isinstance(models, dict) or not isinstance(models.get("data"), list):
        return ProbeOutcome(detail="ok")
    ids = {m.get("id") for m in models["data"] if isinstance(m, dict)}
    ids.discard(None)
    if not ids:
        return ProbeOutcome(detail="ok")  # an empty list says nothing about what is served
    served = ", ".join(sorted(map(str, ids))[:20])
    missing = {
        model: f"model {model!r} is not served (served: {served})"
        for model in http.models
        if model not in ids
    }
    return ProbeOutcome(detail="ok", checked=http.models, missing=missing)


def _exc_detail(exc: BaseException, fallback: str) -> str:
    if isinstance(exc, ConnectError):
        return str(exc)  # "cannot connect to host:port: connection refused"
    return fallback or type(exc).__name__


_PROBES: dict[str, Callable[[_Http], Awaitable[ProbeOutcome]]] = {
    "llama-server": _probe_llama_server,
    "ollama": _probe_ollama,
    "openai": _probe_openai,
    "anthropic": _probe_anthropic,
    "openrouter": _probe_openrouter,
}
