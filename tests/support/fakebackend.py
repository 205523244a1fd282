"""A scripted fake LLM backend: a real HTTP server on 127.0.0.1 for hroute's tests.

It imitates what llama-server, Ollama, an OpenAI-compatible API, Anthropic and OpenRouter answer
on their probe and chat endpoints (see /work/shared/ANCHORS.md), and lets a test script, per
request, the status, headers, body, a delay, a hang after accept, an abrupt reset (before or in
the middle of the body) or a slow trickle.

In-process use (the server runs in a background thread with its own event loop)::

    with FakeBackend(kind="openai", models=["m1"]) as fb:
        fb.set_behavior("/v1/chat", Behavior(status=429, headers={"Retry-After": "1"}, times=1))
        ...  # talk to fb.base_url + "/v1/..."
        fb.wait_for_requests(1, "/v1/chat", timeout_s=2)

As a subprocess (prints ``READY <port>`` once listening, serves until SIGTERM)::

    python tests/support/fakebackend.py --kind llama-server --port 0 --model m1 --loading-s 2

This file is run as a script too, so it imports nothing relative to its package.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiohttp import web

KINDS = ("openai", "llama-server", "ollama", "anthropic", "openrouter")
HOST = "127.0.0.1"

Body = bytes | str | dict | list | None


@dataclass
class Behavior:
    """How the fake answers a request; the default is the kind's normal answer.

    ``body=None`` means the normal answer for the endpoint when ``status < 400`` and the kind's
    error envelope (e.g. OpenAI's ``{"error": {...}}``, Anthropic's ``{"type": "error", ...}``)
    otherwise. A str/bytes body keeps the endpoint's normal content type unless ``headers`` sets
    one; a dict/list body is sent as JSON.

    ``hang`` accepts the request and never answers (until the client gives up or ``stop()``).
    ``reset`` closes the connection with a TCP RST: before any response, or, with
    ``reset_after_bytes=N``, after the headers and the first N bytes of the body.
    ``trickle`` sends the headers, then the body ``trickle_chunk_bytes`` at a time every
    ``trickle_interval_s``. ``times=N`` applies the behaviour to the next N requests only.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: Body = None
    delay_s: float = 0.0
    hang: bool = False
    reset: bool = False
    reset_after_bytes: int | None = None
    trickle: bool = False
    trickle_interval_s: float = 0.1
    trickle_chunk_bytes: int = 1
    times: int | None = None


class RecordedRequest(NamedTuple):
    """One request as the fake received it; ``path`` includes the query string, if any."""

    method: str
    path: str
    headers: dict[str, str]


def sse_body(*events: Any, done: bool = True) -> str:
    """Encode events (dicts become JSON) as an SSE body, optionally ending with ``[DONE]``.

    Useful to script, e.g., an OpenRouter error that arrives mid-stream with HTTP 200.
    """
    parts = [f"data: {json.dumps(e) if not isinstance(e, str) else e}\n\n" for e in events]
    if done:
        parts.append("data: [DONE]\n\n")
    return "".join(parts)


def tool_call_sse(name: str, arguments: str = "{}", model: str = "fake") -> str:
    """A streamed OpenAI chat answer that only calls tool `name` (e.g. one that does not exist,
    as a weak local model does), for ``Behavior(body=...)`` on ``/v1/chat/completions``."""
    chunk = {"id": "chatcmpl-tool", "object": "chat.completion.chunk", "created": 0, "model": model}
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
    return sse_body(
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [call]}}]},
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    )


# --------------------------------------------------------------------------- normal answers

_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    404: "not_found_error",
    429: "rate_limit_error",
    503: "unavailable_error",
}


def error_envelope(kind: str, status: int, message: str = "") -> dict:
    """The JSON error body a backend of ``kind`` sends with ``status``."""
    message = message or f"fake {kind} error {status}"
    if kind == "anthropic":
        etype = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": etype, "message": message}}
    if kind == "ollama":
        return {"error": message}
    etype = _OPENAI_ERROR_TYPES.get(status, "server_error")
    return {"error": {"code": status, "message": message, "type": etype}}


def _sse(events: Iterable[dict], *, named: bool = False, done: bool = True) -> str:
    out = []
    for event in events:
        prefix = f"event: {event['type']}\n" if named else ""
        out.append(f"{prefix}data: {json.dumps(event)}\n\n")
    if done:
        out.append("data: [DONE]\n\n")
    return "".join(out)


class _Answer(NamedTuple):
    status: int
    body: Any  # dict/list -> JSON, str -> text
    content_type: str


_JSON = "application/json"
_SSE = "text/event-stream"


def _json(body: Any, status: int = 200) -> _Answer:
    return _Answer(status, body, _JSON)


class _Answers:
    """Builds the normal answer of one backend kind; pure apart from reading ``time``."""

    def __init__(self, kind: str, models: list[str], reply: str) -> None:
        self.kind = kind
        self.models = models
        self.reply = reply

    @property
    def default_model(self) -> str:
        return self.models[0] if self.models else "fake-model"

    def answer(self, method: str, path: str, req: dict) -> _Answer:
        """Normal answer to ``method path`` with JSON request body ``req`` (or 404)."""
        handler = getattr(self, "_" + self.kind.replace("-", "_"))
        found = handler(method, path, req)
        if found is None:
            return _json(error_envelope(self.kind, 404, f"File Not Found: {path}"), 404)
        return found

    # ---- shared shapes
    def _openai_models(self, owned_by: str = "fake") -> dict:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": owned_by} for m in self.models
        ]
        return {"object": "list", "data": data}

    def _openai_model(self, model_id: str) -> _Answer:
        if model_id in self.models:
            return _json({"id": model_id, "object": "model", "created": 0, "owned_by": "fake"})
        return _json(error_envelope(self.kind, 404, f"The model `{model_id}` does not exist"), 404)

    def _chat_completion(self, req: dict) -> _Answer:
        model = req.get("model") or self.default_model
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": model}
        usage = {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
        if not req.get("stream"):
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": self.reply},
                "finish_reason": "stop",
            }
            return _json({**base, "object": "chat.completion", "choices": [choice], "usage": usage})
        chunk = {**base, "object": "chat.completion.chunk"}

        def delta(d: dict, finish: str | None = None) -> dict:
            return {**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": finish}]}

        events = [delta({"role": "assistant", "content": ""})]
        events += [delta({"content": word}) for word in re.findall(r"\S+\s*", self.reply)]
        events.append(delta({}, "stop"))
        if (req.get("stream_options") or {}).get("include_usage"):
            events.append({**chunk, "choices": [], "usage": usage})
        return _Answer(200, _sse(events), _SSE)

    # ---- kinds
    def _openai(self, method: str, path: str, req: dict) -> _Answer | None:
        if method == "GET" and path in ("/v1/models", "/api/v1/models"):
            return _json(self._openai_models())
        if method == "GET" and path.startswith("/v1/models/"):
            return self._openai_model(path.removeprefix("/v1/models/"))
        if method == "POST" and path == "/v1/chat/completions":
            return self._chat_completion(req)
        return None

    def _openrouter(self, method: str, path: str, req: dict) -> _Answer | None:
        if method == "GET" and path == "/api/v1/models":
            data = [
                {
                    "id": m,
                    "name": m,
                    "context_length": 131072,
                    "pricing": {"prompt": "0", "completion": "0"},
                }
                for m in self.models
            ]
            return _json({"data": data})
        if method == "GET" and path == "/api/v1/key":
            key = {"label": "x", "limit": None, "limit_remaining": None, "usage": 0}
            return _json({"data": {**key, "is_free_tier": False}})
        if method == "POST" and path == "/api/v1/chat/completions":
            return self._chat_completion(req)
        return None

    def _llama_server(self, method: str, path: str, req: dict) -> _Answer | None:
        model = self.default_model
        if method == "GET" and path == "/health":
            return _json({"status": "ok"})
        if method == "GET" and path == "/slots":
            return _json([{"id": 0, "is_processing": False}])
        if method == "GET" and path in ("/v1/models", "/models"):
            return _json({**self._openai_models("llamacpp"), "models": [{"name": model}]})
        if method == "GET" and path == "/props":
            props = {"total_slots": 1, "model_path": f"/models/{model}.gguf", "build_info": "fake"}
            return _json(props)
        if method == "POST" and path in ("/v1/chat/completions", "/chat/completions"):
            return self._chat_completion(req)
        return None

    def _ollama(self, method: str, path: str, req: dict) -> _Answer | None:
        if method in ("GET", "HEAD") and path == "/":
            return _Answer(200, "Ollama is running", "text/plain; charset=utf-8")
        if method == "GET" and path == "/api/version":
            return _json({"version": "0.12.0"})
        details = {"format": "gguf", "family": "llama", "parameter_size": "1B"}
        if method == "GET" and path in ("/api/tags", "/api/ps"):
            models = [
                {
                    "name": m,
                    "model": m,
                    "modified_at": "2025-01-01T00:00:00Z",
                    "size": 1,
                    "digest": "0" * 64,
                    "details": details,
                }
                for m in self.models
            ]
            return _json({"models": models})
        if method == "POST" and path == "/api/show":
            name = req.get("model") or req.get("name") or ""
            if name not in self.models:
                return _json({"error": f"model '{name}' not found"}, 404)
            info = {"general.architecture": "llama", "llama.context_length": 131072}
            return _json({"details": details, "model_info": info, "capabilities": ["completion"]})
        if method == "POST" and path == "/api/chat":
            msg = {"role": "assistant", "content": self.reply}
            base = {"model": req.get("model") or self.default_model, "created_at": "now"}
            if req.get("stream") is False:
                return _json({**base, "message": msg, "done": True, "done_reason": "stop"})
            lines = [{**base, "message": msg, "done": False}, {**base, "done": True}]
            ndjson = "".join(json.dumps(x) + "\n" for x in lines)
            return _Answer(200, ndjson, "application/x-ndjson")
        # Ollama also serves the OpenAI-compatible API.
        return self._openai(method, path, req)

    def _anthropic(self, method: str, path: str, req: dict) -> _Answer | None:
        if method == "GET" and path == "/v1/models":
            data = [
                {"id": m, "type": "model", "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in self.models
            ]
            first, last = (self.models[0], self.models[-1]) if self.models else (None, None)
            return _json({"data": data, "has_more": False, "first_id": first, "last_id": last})
        if method == "POST" and path == "/v1/messages":
            return self._anthropic_message(req)
        return None

    def _anthropic_message(self, req: dict) -> _Answer:
        message = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": req.get("model") or self.default_model,
            "content": [{"type": "text", "text": self.reply}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 3},
        }
        if not req.get("stream"):
            return _json(message)
        start = {**message, "content": [], "stop_reason": None}
        events = [
            {"type": "message_start", "message": start},
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": self.reply},
            },
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 3},
            },
            {"type": "message_stop"},
        ]
        return _Answer(200, _sse(events, named=True, done=False), _SSE)


# --------------------------------------------------------------------------- the server


class FakeBackend:
    """A scripted HTTP backend on 127.0.0.1, served from a background thread.

    ``stop()`` closes the listening socket and every connection (clients then get connection
    refused); ``start()`` again binds the same port. Scripting and recorded requests survive a
    restart; ``loading_s`` (llama-server) counts from each ``start()``.
    """

    def __init__(
        self,
        kind: str = "openai",
        models: Iterable[str] = ("fake-model",),
        *,
        loading_s: float = 0.0,
        reply: str = "Hello from the fake backend.",
        port: int = 0,
        host: str = HOST,
        basic_auth: tuple[str, str] | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind: unknown backend kind {kind!r} (valid: {', '.join(KINDS)})")
        self.kind = kind
        self.models = list(models)
        self.loading_s = loading_s
        self._answers = _Answers(kind, self.models, reply)
        self._port = port
        self.host = host  # "::1" for an IPv6 backend
        # (user, password): every request without them gets 401, as behind a proxy's auth
        self.basic_auth = basic_auth
        self._cond = threading.Condition()
        self._requests: list[RecordedRequest] = []
        self._bodies: list[bytes] = []
        self._behaviors: dict[str | None, list] = {}  # prefix -> [Behavior, remaining or None]
        self._queues: dict[str | None, collections.deque[Behavior]] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.ServerRunner | None = None
        self._stopping: asyncio.Event | None = None
        self._started_at = 0.0

    # ---- lifecycle
    def start(self) -> FakeBackend:
        """Bind (the same port as before, if any) and serve; returns self."""
        if self._thread is not None:
            raise RuntimeError("FakeBackend already running")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(
            target=self._run_loop, args=(loop,), name=f"fakebackend-{self.kind}", daemon=True
        )
        thread.start()
        self._started_at = time.monotonic()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=10)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            raise
        self._loop, self._thread = loop, thread
        return self

    def stop(self) -> None:
        """Close the listening socket and all connections (hanging requests get a reset)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            self._loop = self._thread = None

    def __enter__(self) -> FakeBackend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (fixed after the first ``start()``)."""
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` without a path (OpenAI clients add ``/v1`` themselves)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    def url(self, path: str = "") -> str:
        """``base_url`` joined with ``path``."""
        return self.base_url + path

    @property
    def reply(self) -> str:
        """The assistant text of normal chat answers (settable)."""
        return self._answers.reply

    @reply.setter
    def reply(self, text: str) -> None:
        self._answers.reply = text

    # ---- scripting
    def set_behavior(self, path_prefix: str | None, behavior: Behavior) -> None:
        """Answer requests whose path starts with ``path_prefix`` (None: every path) this way.

        The longest matching prefix wins; ``behavior.times`` limits it to the next N requests.
        """
        with self._cond:
            self._behaviors[path_prefix] = [behavior, behavior.times]

    def queue(self, path_prefix: str | None, *behaviors: Behavior) -> None:
        """Answer the next requests under ``path_prefix`` with ``behaviors``, one per request.

        Queued behaviours take precedence over ``set_behavior``; afterwards it applies again.
        """
        with self._cond:
            self._queues.setdefault(path_prefix, collections.deque()).extend(behaviors)

    def clear_behaviors(self) -> None:
        """Forget all scripting: every endpoint gives its normal answer again."""
        with self._cond:
            self._behaviors.clear()
            self._queues.clear()

    def _pick(self, path: str) -> Behavior:
        def matching(keys: Iterable[str | None]) -> list[str | None]:
            hits = [k for k in keys if k is None or path.startswith(k)]
            return sorted(hits, key=lambda k: -1 if k is None else len(k), reverse=True)

        with self._cond:
            for key in matching(k for k, q in self._queues.items() if q):
                return self._queues[key].popleft()
            for key in matching(self._behaviors):
                slot = self._behaviors[key]
                if slot[1] is not None:
                    slot[1] -= 1
                    if slot[1] <= 0:
                        del self._behaviors[key]
                return slot[0]
        return Behavior()

    # ---- observation
    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        with self._cond:
            return list(self._requests)

    @property
    def bodies(self) -> list[bytes]:
        """The request bodies, parallel to ``requests``."""
        with self._cond:
            return list(self._bodies)

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._cond:
            self._requests.clear()
            self._bodies.clear()

    def _matching(self, method: str | None, path_prefix: str | None) -> list[RecordedRequest]:
        return [
            r
            for r in self._requests
            if (method is None or r.method == method.upper())
            and (path_prefix is None or r.path.startswith(path_prefix))
        ]

    def count(self, method: str | None = None, path_prefix: str | None = None) -> int:
        """How many requests matched ``method`` (None: any) and ``path_prefix`` (None: any)."""
        with self._cond:
            return len(self._matching(method, path_prefix))

    def wait_for_requests(
        self,
        n: int,
        path_prefix: str | None = None,
        timeout_s: float = 5.0,
        method: str | None = None,
    ) -> list[RecordedRequest]:
        """Block until at least ``n`` matching requests arrived; return them.

        Raises TimeoutError (listing what did arrive) after ``timeout_s``.
        """
        with self._cond:
            ok = self._cond.wait_for(
                lambda: len(self._matching(method, path_prefix)) >= n, timeout=timeout_s
            )
            if not ok:
                seen = [f"{r.method} {r.path}" for r in self._requests]
                raise TimeoutError(
                    f"waited {timeout_s}s for {n} {method or '*'} {path_prefix or '*'} "
                    f"requests; received: {seen}"
                )
            return self._matching(method, path_prefix)

    # ---- inside the server thread
    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        # handler_cancellation: a client that gives up on a hanging request frees its handler.
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = runner.addresses[0][1]

    async def _shutdown(self) -> None:
        assert self._stopping is not None and self._runner is not None
        self._stopping.set()
        await self._runner.cleanup()
        self._runner = None

    async def _stop_requested_within(self, seconds: float | None) -> bool:
        """Wait up to ``seconds`` (None: for ever) for ``stop()``; True if it came."""
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            return False
        return True

    def _record(self, request: web.BaseRequest, body: bytes) -> None:
        with self._cond:
            self._requests.append(
                RecordedRequest(request.method, request.path_qs, dict(request.headers))
            )
            self._bodies.append(body)
            self._cond.notify_all()

    def _loading(self, path: str) -> bool:
        if self.kind != "llama-server" or time.monotonic() - self._started_at >= self.loading_s:
            return False
        # Like llama-server: the model list stays available while the model loads.
        return path not in ("/v1/models", "/models", "/api/tags")

    def _render(self, request: web.BaseRequest, raw: bytes, b: Behavior) -> tuple[int, dict, bytes]:
        """Status, headers and body bytes for ``b`` (the normal answer fills in the gaps)."""
        try:
            req = json.loads(raw) if raw else {}
        except ValueError:
            req = {}
        if not isinstance(req, dict):
            req = {}
        if self._loading(request.path):
            err = {"code": 503, "message": "Loading model", "type": "unavailable_error"}
            normal = _Answer(503, {"error": err}, _JSON)
        else:
            normal = self._answers.answer(request.method, request.path, req)
        status, body, ctype = b.status, b.body, normal.content_type
        if body is None and status >= 400:
            body, ctype = error_envelope(self.kind, status), _JSON
        elif body is None:
            body = normal.body
            status = normal.status if status == 200 else status
        if isinstance(body, dict | list):
            data, ctype = json.dumps(body).encode(), _JSON
        else:
            data = body.encode() if isinstance(body, str) else body
        headers = dict(b.headers)
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = ctype
        return status, headers, data

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        raw = await request.read()
        self._record(request, raw)
        if self.basic_auth is not None:
            expected = "Basic " + base64.b64encode(":".join(self.basic_auth).encode()).decode()
            if request.headers.get("Authorization") != expected:
                envelope = error_envelope(self.kind, 401, "authentication required")
                return web.json_response(envelope, status=401)
        b = self._pick(request.path)
        if b.delay_s and await self._stop_requested_within(b.delay_s):
            return _reset(request)
        if b.hang:
            await self._stop_requested_within(None)
            return _reset(request)
        if b.reset and b.reset_after_bytes is None:
            return _reset(request)
        status, headers, data = self._render(request, raw, b)
        if not b.trickle and b.reset_after_bytes is None:
            return web.Response(status=status, headers=headers, body=data)
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = len(data)
        await resp.prepare(request)
        limit = len(data) if b.reset_after_bytes is None else min(b.reset_after_bytes, len(data))
        step = max(1, b.trickle_chunk_bytes) if b.trickle else max(1, limit)
        for offset in range(0, limit, step):
            await resp.write(data[offset : offset + step])
            if b.trickle and await self._stop_requested_within(b.trickle_interval_s):
                return _reset(request)
        if b.reset_after_bytes is not None:
            # Let the partial body reach the client first: an RST can discard unread data.
            await self._stop_requested_within(0.05)
            return _reset(request)
        await resp.write_eof()
        return resp


def _reset(request: web.BaseRequest) -> web.StreamResponse:
    """Abort the connection with a TCP RST; the response returned is never sent."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)


# --------------------------------------------------------------------------- script mode


def main(argv: list[str] | None = None) -> int:
    """Serve a fake backend until SIGTERM/SIGINT; print ``READY <port>`` once listening."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, default="openai")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", action="append", dest="models", help="repeatable")
    parser.add_argument("--loading-s", type=float, default=0.0)
    parser.add_argument("--reply", default="Hello from the fake backend.")
    args = parser.parse_args(argv)
    # Block the signals before the server thread starts so that only sigwait() sees them.
    signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    fb = FakeBackend(
        args.kind,
        args.models or ["fake-model"],
        loading_s=args.loading_s,
        reply=args.reply,
        port=args.port,
    )
    try:
        fb.start()
    except OSError as exc:
        print(f"fakebackend: cannot listen on {HOST}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"READY {fb.port}", flush=True)
    signal.sigwait(signals)
    fb.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
