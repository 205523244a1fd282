"""The whole daemon in this process: `run_daemon(..., clock=ManualClock())` on a real Unix
socket in a temp directory, asked with the real client, its log lines kept.

    async with InProcessDaemon(tmp_path, CONFIG) as d:
        await d.report("a", reason="rate_limit", retry_after_s=60)
        await d.clock.advance(61)
        assert (await d.usable("a"))["usable"]

Time is the manual clock's: cooldowns, probe intervals, the snapshot's pace and a reload's
settling wait for `d.clock.advance()`, never for the wall. Questions go over the socket
(`usable()` asks `GET /v1/usable`): the client's snapshot path judges deadlines on the real
monotonic clock, which this one leaves behind as soon as a test advances it.
Signals, descriptor limits, users and systemd stay with the subprocess `Daemon`.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import anyio

from hroute.client import Client
from hroute.daemon import run_daemon
from hroute.systemd.notify import Notifier
from tests.support.clock import ManualClock

T = TypeVar("T")
DEADLINE_S = 10.0  # real seconds: a bound on a wait that should end at once, not a measure


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class InProcessDaemon:
    """One `run_daemon` in this process's event loop, with its own socket and state dir."""

    def __init__(self, tmp: Path, config_text: str, *, clock: ManualClock | None = None) -> None:
        self.tmp = tmp
        self.config_path = tmp / "hroute.yaml"
        self.config_path.write_text(config_text)
        # A short directory: a socket's path may not pass 107 bytes, and tmp_path can.
        self._run = Path(tempfile.mkdtemp(prefix="hr-", dir="/tmp"))
        self.socket = self._run / "hroute.sock"
        self.state_dir = tmp / "state"
        self.clock = clock or ManualClock()
        self.notifier = Notifier(env={})
        self._handler = _Lines()
        self._tg: anyio.abc.TaskGroup | None = None
        self._mp: Any = None

    # -- life -------------------------------------------------------------------------------

    async def __aenter__(self) -> InProcessDaemon:
        import pytest

        self._mp = pytest.MonkeyPatch()
        self._mp.setenv("HROUTE_SOCKET", str(self.socket))
        self._mp.setenv("HROUTE_STATE_DIR", str(self.state_dir))
        self._mp.setenv("HROUTE_KMSG", "/dev/null")
        self._mp.delenv("NOTIFY_SOCKET", raising=False)
        self._mp.delenv("HROUTE_TEST_HOOKS", raising=False)
        logger = logging.getLogger("hroute")
        self._level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self._handler)
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self.stopped = anyio.Event()

        async def run() -> None:
            try:
                await run_daemon(self.config_path, clock=self.clock, notifier=self.notifier)
            finally:
                self.stopped.set()

        self._tg.start_soon(run)
        try:
            await self.until(self._serving, what="the daemon to serve its socket")
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _serving(self) -> bool:
        if self.stopped.is_set():
            raise AssertionError(f"the daemon stopped while starting:\n{self.log}")
        if not self.socket.exists():
            return False
        try:
            status, _ = await self.request("GET", "/v1/version")
        except (OSError, TimeoutError, ValueError):
            return False
        return status == 200

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._tg is not None:
                self._tg.cancel_scope.cancel()
                await self._tg.__aexit__(None, None, None)
        finally:
            self._tg = None
            logger = logging.getLogger("hroute")
            logger.removeHandler(self._handler)
            logger.setLevel(self._level)
            if self._mp is not None:
                self._mp.undo()
            shutil.rmtree(self._run, ignore_errors=True)

    # -- waiting ----------------------------------------------------------------------------

    async def until(
        self,
        predicate: Callable[[], Any],
        *,
        advance_s: float = 0.0,
        what: str = "condition",
    ) -> Any:
        """Poll `predicate` (sync or async) until it is truthy, moving the manual clock on
        by `advance_s` between polls; fail after DEADLINE_S real seconds."""
        last: Any = None
        with anyio.move_on_after(DEADLINE_S):
            while True:
                last = predicate()
                if hasattr(last, "__await__"):
                    last = await last
                if last:
                    return last
                if advance_s:
                    await self.clock.advance(advance_s)
                await anyio.sleep(0.002)  # real I/O (a probe, a file read) may be under way
        raise AssertionError(f"timed out waiting for {what} (last: {last!r})\n{self.log[-3000:]}")

    # -- asking -----------------------------------------------------------------------------

    def client(self, budget_s: float = 5.0) -> Client:
        """The real client (blocking: call it through `anyio.to_thread`)."""
        return Client(self.socket, budget_s=budget_s)

    async def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        return await anyio.to_thread.run_sync(self.client().request, method, path, body)

    async def get(self, path: str) -> tuple[int, Any]:
        return await self.request("GET", path)

    async def post(self, path: str, body: object) -> tuple[int, Any]:
        return await self.request("POST", path, body)

    async def report(self, backend: str | None = None, **fields: Any) -> tuple[int, Any]:
        body = {"outcome": "failure", **fields}
        if backend is not None:
            body["backend"] = backend
        return await self.post("/v1/reports", body)

    async def usable(self, backend: str | None = None, **query: Any) -> dict[str, Any]:
        if backend is not None:
            query = {"backend": backend, **query}
        status, body = await self.get(f"/v1/usable?{urlencode(query)}")
        assert status == 200, body
        return body

    async def route(self, profile: str, **query: Any) -> tuple[int, dict[str, Any]]:
        return await self.get(f"/v1/route?{urlencode({'profile': profile, **query})}")

    async def backend(self, name: str) -> dict[str, Any]:
        status, body = await self.get(f"/v1/backends/{name}")
        assert status == 200, body
        return body

    async def names(self) -> set[str]:
        return {b["name"] for b in (await self.get("/v1/backends"))[1]["backends"]}

    async def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        events = (await self.get("/v1/events"))[1]["events"]
        return [e for e in events if kind is None or e["event"] == kind]

    async def raw(self, data: bytes, timeout_s: float = 5.0, *, eof: bool = False) -> bytes:
        """Send bytes as they are (then end the stream, with `eof`); whatever comes back
        until the daemon closes."""

        def exchange() -> bytes:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(timeout_s)
                s.connect(str(self.socket))
                s.sendall(data)
                if eof:
                    s.shutdown(socket.SHUT_WR)
                chunks = []
                try:
                    while chunk := s.recv(65536):
                        chunks.append(chunk)
                except (ConnectionResetError, TimeoutError):
                    pass
                return b"".join(chunks)

        return await anyio.to_thread.run_sync(exchange)

    async def post_raw_json(self, path: str, text: str) -> tuple[int, Any]:
        """POST a JSON text exactly as given (NaN, `true` where a number goes ...)."""
        body = text.encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        head_part, _, payload = (await self.raw(head + body)).partition(b"\r\n\r\n")
        return int(head_part.split()[1]), json.loads(payload) if payload else None

    async def get_text(self, path: str) -> str:
        raw = await self.raw(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        return raw.split(b"\r\n\r\n", 1)[1].decode()

    async def still_answers(self) -> None:
        """The fault case's second half: the daemon runs and answers a plain request."""
        assert not self.stopped.is_set(), f"daemon stopped:\n{self.log[-4000:]}"
        status, body = await self.get("/v1/version")
        assert status == 200 and "version" in body

    # -- what it said -----------------------------------------------------------------------

    @property
    def lines(self) -> list[str]:
        return list(self._handler.lines)

    @property
    def log(self) -> str:
        return "\n".join(self._handler.lines)

    async def wait_for_log(self, text: str, *, advance_s: float = 0.0) -> str:
        return await self.until(
            lambda: next((ln for ln in self._handler.lines if text in ln), None),
            advance_s=advance_s,
            what=f"a log line with {text!r}",
        )

    def files_text(self) -> str:
        """Everything the daemon wrote that a secret must never reach: state, snapshot, log."""
        parts = [self.log]
        for path in (self.state_dir / "state.json", self.socket.with_suffix(".snapshot")):
            if path.exists():
                parts.append(path.read_text())
        return "\n".join(parts)
