"""The probes' HTTP client (`edges.probe_http`) against scripted servers on loopback: kept
connections, a server that closes one meanwhile, timeouts, the in-flight bound, TLS, and
answers that are not HTTP. Real sockets; each server is a few lines of asyncio."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from hroute.edges.probe_http import (
    ConnectError,
    ProbeClient,
    RemoteProtocolError,
    RequestError,
    ServerDisconnectedError,
)

pytestmark = pytest.mark.anyio

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A loopback server running `handler` per connection; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler, self.connections, self.open = handler, 0, 0
        self.most_open = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/models"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.close()

    async def request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        return head


def answering(*answers: bytes, then_close: bool = False) -> Callable[[Server], Handler]:
    """Each connection answers its requests with `answers` in turn, then waits for EOF."""

    def make(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            for answer in answers:
                await server.request(reader)
                writer.write(answer)
                await writer.drain()
            if not then_close:
                await reader.read()

        return handler

    return make


async def serve(make: Callable[[Server], Handler]) -> Server:
    server = Server(lambda r, w: asyncio.sleep(0))
    server.handler = make(server)
    return server


async def test_a_connection_is_kept_for_the_next_probe() -> None:
    async with await serve(answering(OK, OK, OK)) as server:
        client = ProbeClient()
        for _ in range(3):
            answer = await client.get(server.url, timeout_s=2, max_body=100)
            assert (answer.status, answer.body) == (200, b"ok")
        assert (server.connections, client.opened, client.kept) == (1, 1, 1)
        assert b"Connection: close" not in server.requests[0]
        await client.aclose()
        assert client.kept == 0


async def test_keep_false_asks_the_server_to_close() -> None:
    # llama-server: an idle kept connection holds one of its few threads.
    async with await serve(answering(OK)) as server:
        client = ProbeClient()
        for _ in range(2):
            await client.get(server.url, timeout_s=2, max_body=100, keep=False)
        assert (server.connections, client.kept) == (2, 0)
        assert all(b"\r\nConnection: close\r\n" in r for r in server.requests)


async def test_a_kept_connection_the_server_dropped_meanwhile_is_replaced_once() -> None:
    # The race every keep-alive client meets: the server's idle timeout closes the
    # connection as the next request is sent. The GET goes again, on a new connection.
    def make(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.request(reader)
            writer.write(OK)
            await writer.drain()
            if server.connections == 1:
                await server.request(reader)  # the second request: dropped unanswered
                return
            await reader.read()

        return handler

    async with await serve(make) as server:
        client = ProbeClient()
        await client.get(server.url, timeout_s=2, max_body=100)
        answer = await client.get(server.url, timeout_s=2, max_body=100)
        assert answer.status == 200
        assert (server.connections, len(server.requests)) == (2, 3)


async def test_a_new_connection_closed_unanswered_is_an_error_not_a_retry() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async with Server(handler) as server:
        with pytest.raises(ServerDisconnectedError):
            await ProbeClient().get(server.url, timeout_s=2, max_body=100)
        assert server.connections == 1


async def test_a_silent_server_times_out_and_the_connection_is_closed() -> None:
    saw_eof = anyio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read()  # returns at EOF: the client let go
        saw_eof.set()

    async with Server(handler) as server:
        client = ProbeClient()
        with pytest.raises(TimeoutError):
            await client.get(server.url, timeout_s=0.2, max_body=100)
        with anyio.fail_after(5):
            await saw_eof.wait()
        assert client.kept == 0


async def test_no_more_than_max_open_requests_are_in_flight() -> None:
    release = anyio.Event()

    def make(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:  # kept connections bring the next requests
                await server.request(reader)
                if server.open >= 2:
                    release.set()
                await release.wait()
                writer.write(OK)
                await writer.drain()

        return handler

    async with await serve(make) as server:
        client = ProbeClient(max_open=2)
        statuses: list[int] = []

        async def one() -> None:
            statuses.append((await client.get(server.url, timeout_s=5, max_body=100)).status)

        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(one)
        assert statuses == [200] * 6
        assert server.most_open == 2


async def test_a_waiter_that_gives_up_does_not_take_a_turn_with_it() -> None:
    gate = anyio.Event()

    def make(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                await server.request(reader)
                if len(server.requests) == 1:
                    await gate.wait()
                writer.write(OK)
                await writer.drain()

        return handler

    async with await serve(make) as server:
        client = ProbeClient(max_open=1)
        results: dict[str, object] = {}
        gave_up = anyio.Event()

        async def holder() -> None:
            results["holder"] = (await client.get(server.url, timeout_s=5, max_body=100)).status

        async def quitter() -> None:
            try:
                await client.get(server.url, timeout_s=0.1, max_body=100)
            except TimeoutError:
                results["quitter"] = "gave up"
                gave_up.set()

        async def last() -> None:
            results["last"] = (await client.get(server.url, timeout_s=5, max_body=100)).status

        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(quitter)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(last)
            with anyio.fail_after(5):
                await gave_up.wait()  # while the holder still holds the only turn
            gate.set()
        assert results == {"holder": 200, "quitter": "gave up", "last": 200}


@pytest.mark.parametrize(
    ("answer", "error", "words"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n", RemoteProtocolError, "not HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nok", ServerDisconnectedError, ""),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            RemoteProtocolError,
            "Content-Length",
        ),
    ],
    ids=["ssh", "cut short", "two lengths"],
)
async def test_answers_that_are_not_http(answer: bytes, error: type, words: str) -> None:
    async with await serve(answering(answer, then_close=True)) as server:
        client = ProbeClient()
        with pytest.raises((error, RemoteProtocolError)) as caught:
            await client.get(server.url, timeout_s=2, max_body=100)
        assert words in str(caught.value)
        assert client.kept == 0


async def test_data_nobody_asked_for_closes_a_kept_connection() -> None:
    def make(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.request(reader)
            writer.write(OK)
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(OK)  # unasked: a smuggled answer to a request not yet sent
            await writer.drain()
            await server.request(reader)
            writer.write(OK)
            await reader.read()

        return handler

    async with await serve(make) as server:
        client = ProbeClient()
        await client.get(server.url, timeout_s=2, max_body=100)
        with anyio.fail_after(5):
            while client.kept:
                await anyio.sleep(0.01)
        answer = await client.get(server.url, timeout_s=2, max_body=100)
        assert answer.status == 200 and client.opened == 2


async def test_refused_names_the_address_and_why() -> None:
    with socket_port() as port:
        pass  # closed again: nothing listens there now
    with pytest.raises(ConnectError) as caught:
        await ProbeClient().get(f"http://127.0.0.1:{port}/", timeout_s=2, max_body=100)
    assert str(caught.value) == f"cannot connect to 127.0.0.1:{port}: connection refused"


@pytest.mark.parametrize(
    "headers",
    [{"X-Key": "sk-secret\r\nX-Evil: 1"}, {"X-Key\r\nX-Evil": "sk-secret"}, {"X-Key": "sk-\0"}],
)
async def test_a_header_that_would_split_the_request_is_refused_unsent(headers) -> None:
    async with await serve(answering(OK)) as server:
        with pytest.raises(RequestError) as caught:
            await ProbeClient().get(server.url, headers, timeout_s=2, max_body=100)
        assert "sk-" not in str(caught.value)
        assert server.connections == 0


async def test_auth_and_host_headers_are_sent_as_given() -> None:
    async with await serve(answering(OK)) as server:
        url = f"http://user:pw@127.0.0.1:{server.port}/v1/models?x=1"
        await ProbeClient().get(url, {"Authorization": "Bearer k"}, timeout_s=2, max_body=100)
        head = server.requests[0].decode()
        assert head.startswith("GET /v1/models?x=1 HTTP/1.1\r\n")
        assert f"\r\nHost: 127.0.0.1:{server.port}\r\n" in head  # no user:pw in it
        assert "\r\nAuthorization: Bearer k\r\n" in head


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def tls_server(certificate: tuple[Path, Path]) -> tuple[asyncio.Server, int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(OK)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context)
    return server, server.sockets[0].getsockname()[1]


async def test_tls_to_a_trusted_server(certificate: tuple[Path, Path]) -> None:
    server, port = await tls_server(certificate)
    try:
        client = ProbeClient(ssl_context=ssl.create_default_context(cafile=str(certificate[0])))
        for _ in range(2):
            answer = await client.get(f"https://127.0.0.1:{port}/", timeout_s=5, max_body=100)
            assert (answer.status, answer.body) == (200, b"ok")
        assert client.opened == 1  # the TLS connection was kept too
        await client.aclose()
    finally:
        server.close()


async def test_tls_to_an_untrusted_server_fails_to_connect(certificate: tuple[Path, Path]) -> None:
    server, port = await tls_server(certificate)
    try:
        with pytest.raises(ConnectError) as caught:
            await ProbeClient().get(f"https://127.0.0.1:{port}/", timeout_s=5, max_body=100)
        assert "TLS certificate not trusted" in str(caught.value)
    finally:
        server.close()


class socket_port:
    """A free loopback port (bound, then closed on exit)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
