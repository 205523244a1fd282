"""The socket API: HTTP/1.1 + JSON. Handlers translate; the registry decides."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hroute import __version__
from hroute.core.clients import GUARD_STATES, GUARDS, ISOLATIONS, Clients
from hroute.core.credentials import FINGERPRINT_FORM, FINGERPRINT_PATTERN, is_fingerprint
from hroute.core.errors import (
    HrouteError,
    NotSupervisedError,
    UnknownBackendError,
    UnknownProfileError,
)
from hroute.core.escalation import TASK_REASONS
from hroute.core.needs import parse_needs
from hroute.core.reasons import is_reason, parse_reason
from hroute.core.registry import Registry
from hroute.core.reports import DETAIL_CHARS, NAME_CHARS, parse_report
from hroute.core.sanitize import clean
from hroute.edges.http import (
    Handler,
    HttpServer,
    Request,
    Response,
    error_response,
    json_response,
)
from hroute.edges.metrics import Metrics

log = logging.getLogger("hroute.api")

TASK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@/+=-]{0,127}$"


@dataclass
class Deps:
    """What the handlers need, handed in by the daemon."""

    registry: Registry
    metrics: Metrics
    on_report: Callable[[str, dict[str, Any]], None] = lambda name, data: None
    reload: Callable[[], Awaitable[dict[str, Any]]] | None = None
    restart: Callable[[str], Awaitable[dict[str, Any]]] | None = None
    cluster: Callable[[], dict[str, Any]] | None = None  # the cluster's state, when configured
    gpus: Callable[[], list[dict[str, Any]]] | None = None  # the GPUs' telemetry, if any
    clients: Clients | None = None
    now: Callable[[], float] | None = None


class ClientBody(BaseModel):
    """What an agent plugin says about itself (see core/clients.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["hermes"]
    pid: int = Field(ge=1, le=2**31)
    isolation: Literal[ISOLATIONS]  # type: ignore[valid-type]
    guards: dict[Literal[GUARDS], Literal[GUARD_STATES]] = Field(  # type: ignore[valid-type]
        default_factory=dict
    )
    version: str | None = Field(None, max_length=40)


class ReportBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Names become keys kept in the snapshot and the state file: 256 reports with 60 KB
    # model names made both 30 MB.
    backend: str | None = Field(None, max_length=NAME_CHARS)
    base_url: str | None = Field(None, max_length=NAME_CHARS)
    provider: str | None = Field(None, max_length=NAME_CHARS)
    model: str | None = Field(None, max_length=NAME_CHARS)
    outcome: Literal["failure", "success"]
    reason: str | None = Field(None, max_length=64)
    # Strict: `true` is not 1 second, "30" is not a number.
    status_code: int | None = Field(None, ge=100, le=599, strict=True)
    retry_after_s: float | None = Field(None, ge=0, le=86400, strict=True, allow_inf_nan=False)
    # Only a fingerprint: a raw key sent here would be logged, shown and written to disk.
    credential: str | None = Field(None, pattern=FINGERPRINT_PATTERN)
    detail: str | None = Field(None, max_length=2000)
    client: ClientBody | None = None

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
    profile: str | None = Field(None, max_length=NAME_CHARS)
    detail: str | None = Field(None, max_length=2000)
    type: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")


class UsageBody(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str | None = Field(None, max_length=NAME_CHARS)
    base_url: str | None = Field(None, max_length=NAME_CHARS)
    # Strict, as in reports: `true` is not one token, "10" is not a number.
    input_tokens: int = Field(0, ge=0, le=10**9, strict=True)
    output_tokens: int = Field(0, ge=0, le=10**9, strict=True)


def credential_of(query: Any, *, empty_is_none: bool = False) -> str | None:
    """The query's `credential`, which must be a fingerprint (a raw key is never taken)."""
    credential = query.get("credential")
    if empty_is_none and not credential:
        return None
    if credential is not None and not is_fingerprint(credential):
        raise _BadRequest(f"credential must be {FINGERPRINT_FORM}")
    return credential


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )


class _BadRequest(HrouteError):
    """A request hroute cannot act on: 400 with this message."""


def make_api(deps: Deps, **limits: Any) -> HttpServer:
    """The socket API: a router of framework-free handlers on the small HTTP server.

    Handlers translate request → registry call → JSON. They answer synchronously (the
    registry never awaits), except reload and restart, which return an awaitable.
    `limits` are HttpServer's (`max_connections`, `idle_timeout_s`, `request_timeout_s`);
    those not given keep its defaults, edges/limits.py's.
    """
    reg = deps.registry

    def name_from(query: Any) -> str:
        backend, base_url = query.get("backend"), query.get("base_url")
        if not backend and not base_url:
            raise _BadRequest("give backend=NAME or base_url=URL")
        name = reg.directory.resolve(backend=backend, base_url=base_url, model=query.get("model"))
        if name is None:
            raise UnknownBackendError(backend or base_url, reg.directory.names)
        return name

    def usable(request: Request) -> Response:
        query = request.query
        backend, base_url = query.get("backend"), query.get("base_url")
        if not backend and not base_url:
            raise _BadRequest("give backend=NAME or base_url=URL")
        model = query.get("model") or None
        name = reg.directory.resolve(backend=backend, base_url=base_url, model=model)
        if name is None and base_url:
            # A URL hroute does not watch: let the agent go ahead, as if hroute were absent.
            return json_response(
                {
                    "backend": None,
                    "usable": True,
                    "state": "unknown",
                    "reason": "not_monitored",
                    "retry_after_s": None,
                }
            )
        if name is None:
            raise UnknownBackendError(backend, reg.directory.names)
        return json_response(reg.usable(name, credential_of(query), model))

    def backends(request: Request) -> Response:
        body: dict[str, Any] = {"backends": reg.views()}
        if deps.cluster is not None:
            body["cluster"] = deps.cluster()
        if deps.gpus is not None and (gpus := deps.gpus()):
            body["gpus"] = gpus
        return json_response(body)

    def backend(request: Request, name: str) -> Response:
        if reg.directory.resolve(backend=name) is None:
            raise UnknownBackendError(name, reg.directory.names)
        return json_response(reg.view(name))

    def route(request: Request) -> Response:
        query = request.query
        profile = query.get("profile")
        if not profile:
            raise _BadRequest("give profile=NAME")
        exclude = [x for x in query.get("exclude", "").split(",") if x]
        try:
            needs = parse_needs(query.get("needs"))
        except ValueError as exc:
            raise _BadRequest(str(exc)) from None
        credential = credential_of(query, empty_is_none=True)
        allow_paid = any(
            query.get(k, "").lower() in ("1", "true", "yes") for k in ("allow_paid", "confirm")
        )
        answer = reg.route(
            profile,
            exclude,
            task=query.get("task") or None,
            needs=needs,
            allow_paid=allow_paid,
            credential=credential,
            task_type=query.get("task_type") or None,
        )
        if answer["backend"] is None:
            headers = {}
            if answer.get("retry_after_s") is not None:
                headers["Retry-After"] = str(max(1, round(answer["retry_after_s"])))
            answer["error"] = {
                "code": "no_usable_backend",
                "message": f"no backend of profile {profile!r} is usable now",
            }
            return json_response(answer, 503, headers)
        return json_response(answer)

    def report(request: Request) -> Response:
        try:
            data = ReportBody.model_validate_json(request.body or b"{}")
        except ValidationError as exc:
            return error_response(400, "bad_request", _problems(exc))
        body = data.model_dump(exclude_none=True)
        client = body.pop("client", None)
        if client is not None and deps.clients is not None and deps.now is not None:
            deps.clients.record(client, deps.now())
        name = name_from(body)
        report = parse_report(body)
        label = str(parse_reason(data.reason)) if data.reason else ""
        if not label and data.status_code and report.reason is not None:
            label = str(report.reason)  # classified from the status code
        deps.metrics.reports.inc(name, data.outcome, label)
        reg.record_report(name, report)
        deps.on_report(name, body)
        view = reg.view(name)
        # The reporter's client reads the snapshot only once it holds this change.
        view["seen"] = {"pid": os.getpid(), "version": reg.version}
        return json_response(view, 202)

    def task_failure(request: Request, task: str) -> Response:
        try:
            data = TaskFailureBody.model_validate_json(request.body or b"{}")
        except ValidationError as exc:
            return error_response(400, "bad_request", _problems(exc))
        if not re.match(TASK_ID_PATTERN, task):
            raise _BadRequest("task ids are 1-128 of A-Z a-z 0-9 _ . : @ / + = -")
        answer = reg.record_task_failure(
            task, data.reason, clean(data.detail or "", DETAIL_CHARS), data.type
        )
        return json_response(answer, 202)

    def usage(request: Request) -> Response:
        try:
            data = UsageBody.model_validate_json(request.body or b"{}")
        except ValidationError as exc:
            return error_response(400, "bad_request", _problems(exc))
        name = name_from(data.model_dump(exclude_none=True))
        return json_response(reg.record_usage(name, data.input_tokens, data.output_tokens), 202)

    def events(request: Request) -> Response:
        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            raise _BadRequest("since must be an integer event id") from None
        return json_response({"events": reg.events.since(since)})

    def clients(request: Request) -> Response:
        if deps.clients is None or deps.now is None:
            return json_response({"clients": []})
        return json_response({"clients": deps.clients.views(deps.now())})

    def version(request: Request) -> Response:
        return json_response({"version": __version__})

    def metrics(request: Request) -> Response:
        body, content_type = deps.metrics.render()
        return Response(200, body, content_type)

    async def reload(request: Request) -> Response:
        if deps.reload is None:
            return error_response(404, "not_found", "reload is not available")
        result = await deps.reload()
        return json_response(result, 200 if result.get("ok") else 422)

    def restart(request: Request, name: str) -> Response | Awaitable[Response]:
        if reg.directory.resolve(backend=name) is None:
            raise UnknownBackendError(name, reg.directory.names)
        if deps.restart is None:
            return error_response(
                409, "not_supervised", f"backend {name!r} is not supervised by hroute"
            )

        async def ask() -> Response:
            assert deps.restart is not None
            return json_response(await deps.restart(name), 202)

        return ask()

    fixed: dict[tuple[str, str], Callable[[Request], Any]] = {
        ("GET", "/v1/usable"): usable,
        ("GET", "/v1/backends"): backends,
        ("GET", "/v1/route"): route,
        ("POST", "/v1/reports"): report,
        ("GET", "/v1/events"): events,
        ("POST", "/v1/usage"): usage,
        ("POST", "/v1/reload"): reload,
        ("GET", "/v1/clients"): clients,
        ("GET", "/v1/version"): version,
        ("GET", "/metrics"): metrics,
    }

    def with_name(method: str, path: str) -> Callable[[Request], Any] | None:
        match (method, path.split("/")[1:]):
            case ("GET", ["v1", "backends", name]) if name:
                return lambda r: backend(r, name)
            case ("POST", ["v1", "backends", name, "restart"]) if name:
                return lambda r: restart(r, name)
            case ("POST", ["v1", "tasks", task, "failures"]) if task:
                return lambda r: task_failure(r, task)
        return None

    def find(request: Request) -> Handler | None:
        handler = fixed.get((request.method, request.path)) or with_name(
            request.method, request.path
        )
        return None if handler is None else _errors_as_json(handler)

    def allowed(path: str) -> list[str]:
        return [m for m in ("GET", "POST") if (m, path) in fixed or with_name(m, path)]

    return HttpServer(
        routes=find,
        allowed=allowed,
        on_crash=lambda exc: log.error("request failed", exc_info=exc),
        **limits,
    )


def _errors_as_json(handler: Callable[[Request], Any]) -> Handler:
    """Every failure becomes `{"error": {...}}` with a 4xx; the daemon keeps serving."""

    def call(request: Request) -> Response | Awaitable[Response]:
        try:
            result = handler(request)
        except HrouteError as exc:
            return _error_of(exc)
        if isinstance(result, Response):
            return result
        return _await_errors_as_json(result)

    return call


async def _await_errors_as_json(pending: Awaitable[Response]) -> Response:
    try:
        return await pending
    except HrouteError as exc:
        return _error_of(exc)


def _error_of(exc: HrouteError) -> Response:
    if isinstance(exc, UnknownBackendError):
        return error_response(404, "unknown_backend", str(exc))
    if isinstance(exc, UnknownProfileError):
        return error_response(404, "unknown_profile", str(exc), known=exc.known)
    if isinstance(exc, NotSupervisedError):
        return error_response(409, "not_supervised", str(exc))
    return error_response(400, "bad_request", str(exc))
