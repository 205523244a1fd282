"""The socket API: HTTP/1.1 + JSON over aiohttp. Handlers translate; the registry decides."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hroute import __version__
from hroute.core.credentials import FINGERPRINT_FORM, FINGERPRINT_PATTERN, is_fingerprint
from hroute.core.escalation import TASK_REASONS
from hroute.core.needs import parse_needs
from hroute.core.reasons import is_reason, parse_reason
from hroute.core.registry import Registry
from hroute.core.reports import parse_report
from hroute.edges.metrics import Metrics
from hroute.errors import HrouteError, NotSupervisedError, UnknownBackendError, UnknownProfileError

MAX_BODY_BYTES = 64 * 1024
TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@/+=-]{0,127}$"


@dataclass
class Deps:
    """What the handlers need, handed in by the daemon."""

    registry: Registry
    metrics: Metrics
    prometheus: CollectorRegistry
    on_report: Callable[[str, dict[str, Any]], None] = lambda name, data: None
    reload: Callable[[], Awaitable[dict[str, Any]]] | None = None
    restart: Callable[[str], Awaitable[dict[str, Any]]] | None = None


class ReportBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str | None = None
    base_url: str | None = None
    provider: str | None = None
    model: str | None = None
    outcome: Literal["failure", "success"]
    reason: str | None = Field(None, max_length=64)
    # Strict: `true` is not 1 second, "30" is not a number.
    status_code: int | None = Field(None, ge=100, le=599, strict=True)
    retry_after_s: float | None = Field(None, ge=0, le=86400, strict=True, allow_inf_nan=False)
    # Only a fingerprint: a raw key sent here would be logged, shown and written to disk.
    credential: str | None = Field(None, pattern=FINGERPRINT_PATTERN)
    detail: str | None = Field(None, max_length=2000)

    @field_validator("reason")
    @classmethod
    def _known_reason(cls, value: str | None) -> str | None:
        # A free string here would become a Prometheus label and a log word: only names.
        if value is not None and not is_reason(value):
            raise ValueError("not a reason hroute knows (Hermes' FailoverReason names)")
        return value


class TaskFailureBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: Literal[TASK_REASONS]  # type: ignore[valid-type]
    profile: str | None = None
    detail: str | None = Field(None, max_length=2000)


class UsageBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str | None = None
    base_url: str | None = None
    input_tokens: int = Field(0, ge=0, le=10**9)
    output_tokens: int = Field(0, ge=0, le=10**9)


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    body = {"error": {"code": code, "message": message, **extra}}
    return web.json_response(body, status=status)


@web.middleware
async def _json_errors(request: web.Request, handler):
    """Every failure becomes `{"error": {...}}` with a 4xx/5xx; the daemon keeps serving."""
    try:
        return await handler(request)
    except UnknownBackendError as exc:
        return _error(404, "unknown_backend", str(exc))
    except UnknownProfileError as exc:
        return _error(404, "unknown_profile", str(exc))
    except NotSupervisedError as exc:
        return _error(409, "not_supervised", str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {413: "payload_too_large", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status, "bad_request"
        )
        message = exc.text if exc.status == 413 else exc.reason
        return _error(exc.status, code, message or exc.reason)
    except HrouteError as exc:
        return _error(400, "bad_request", str(exc))


def make_app(deps: Deps) -> web.Application:
    """The aiohttp application serving hroute's API; serve it on any socket."""
    app = web.Application(middlewares=[_json_errors], client_max_size=MAX_BODY_BYTES)
    reg = deps.registry

    def name_from(query: Any) -> str:
        backend, base_url = query.get("backend"), query.get("base_url")
        if not backend and not base_url:
            raise web.HTTPBadRequest(reason="give backend=NAME or base_url=URL")
        name = reg.resolve(backend=backend, base_url=base_url)
        if name is None:
            raise UnknownBackendError(backend or base_url, reg.names)
        return name

    async def usable(request: web.Request) -> web.Response:
        query = request.rel_url.query
        backend, base_url = query.get("backend"), query.get("base_url")
        if not backend and not base_url:
            raise web.HTTPBadRequest(reason="give backend=NAME or base_url=URL")
        name = reg.resolve(backend=backend, base_url=base_url)
        if name is None and base_url:
            # A URL hroute does not watch: let the agent go ahead, as if hroute were absent.
            return web.json_response(
                {
                    "backend": None,
                    "usable": True,
                    "state": "unknown",
                    "reason": "not_monitored",
                    "retry_after_s": None,
                }
            )
        if name is None:
            raise UnknownBackendError(backend, reg.names)
        credential = query.get("credential")
        if credential is not None and not is_fingerprint(credential):
            raise web.HTTPBadRequest(reason=f"credential must be {FINGERPRINT_FORM}")
        return web.json_response(reg.usable(name, credential))

    async def backends(request: web.Request) -> web.Response:
        return web.json_response({"backends": reg.views()})

    async def backend(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if reg.resolve(backend=name) is None:
            raise UnknownBackendError(name, reg.names)
        return web.json_response(reg.view(name))

    async def route(request: web.Request) -> web.Response:
        query = request.rel_url.query
        profile = query.get("profile")
        if not profile:
            raise web.HTTPBadRequest(reason="give profile=NAME")
        exclude = [x for x in query.get("exclude", "").split(",") if x]
        try:
            needs = parse_needs(query.get("needs"))
        except ValueError as exc:
            raise web.HTTPBadRequest(reason=str(exc)) from None
        allow_paid = any(
            query.get(k, "").lower() in ("1", "true", "yes") for k in ("allow_paid", "confirm")
        )
        answer = reg.route(
            profile, exclude, task=query.get("task") or None, needs=needs, allow_paid=allow_paid
        )
        if answer["backend"] is None:
            headers = {}
            if answer.get("retry_after_s") is not None:
                headers["Retry-After"] = str(max(1, round(answer["retry_after_s"])))
            answer["error"] = {
                "code": "no_usable_backend",
                "message": f"no backend of profile {profile!r} is usable now",
            }
            return web.json_response(answer, status=503, headers=headers)
        return web.json_response(answer)

    async def report(request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            data = ReportBody.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                for e in exc.errors(include_url=False)
            )
            return _error(400, "bad_request", problems)
        body = data.model_dump(exclude_none=True)
        name = name_from(body)
        label = str(parse_reason(data.reason)) if data.reason else ""
        deps.metrics.reports.labels(name, data.outcome, label).inc()
        reg.record_report(name, parse_report(body))
        deps.on_report(name, body)
        return web.json_response(reg.view(name), status=202)

    async def task_failure(request: web.Request) -> web.Response:
        try:
            data = TaskFailureBody.model_validate_json(await request.read() or b"{}")
        except ValidationError as exc:
            return _error(400, "bad_request", _problems(exc))
        task = request.match_info["task"]
        if not re.match(TASK_ID_PATTERN, task):
            raise web.HTTPBadRequest(reason="task ids are 1-128 of A-Z a-z 0-9 _ . : @ / + = -")
        answer = reg.record_task_failure(task, data.reason)
        return web.json_response(answer, status=202)

    async def usage(request: web.Request) -> web.Response:
        try:
            data = UsageBody.model_validate_json(await request.read() or b"{}")
        except ValidationError as exc:
            return _error(400, "bad_request", _problems(exc))
        name = name_from(data.model_dump(exclude_none=True))
        return web.json_response(
            reg.record_usage(name, data.input_tokens, data.output_tokens), status=202
        )

    async def events(request: web.Request) -> web.Response:
        try:
            since = int(request.rel_url.query.get("since", "0"))
        except ValueError:
            raise web.HTTPBadRequest(reason="since must be an integer event id") from None
        return web.json_response({"events": reg.events_since(since)})

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"version": __version__})

    async def reload(request: web.Request) -> web.Response:
        if deps.reload is None:
            raise web.HTTPNotFound(reason="reload is not available")
        result = await deps.reload()
        return web.json_response(result, status=200 if result.get("ok") else 422)

    async def restart(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if reg.resolve(backend=name) is None:
            raise UnknownBackendError(name, reg.names)
        if deps.restart is None:
            return _error(409, "not_supervised", f"backend {name!r} is not supervised by hroute")
        return web.json_response(await deps.restart(name), status=202)

    app.router.add_get("/v1/usable", usable)
    app.router.add_get("/v1/backends", backends)
    app.router.add_get("/v1/backends/{name}", backend)
    app.router.add_post("/v1/backends/{name}/restart", restart)
    app.router.add_get("/v1/route", route)
    app.router.add_post("/v1/reports", report)
    app.router.add_get("/v1/events", events)
    app.router.add_post("/v1/tasks/{task}/failures", task_failure)
    app.router.add_post("/v1/usage", usage)
    app.router.add_post("/v1/reload", reload)
    app.router.add_get("/v1/version", version)
    app.router.add_get("/metrics", make_aiohttp_handler(deps.prometheus))
    return app


def dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))
