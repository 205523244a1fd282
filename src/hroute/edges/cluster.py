"""The cluster: this host's cloud cooldowns to Redis, other hosts' back into the registry.

Nothing an agent waits for goes through here. A report's cooldown is queued by a registry
tap (a deque append) and published by this task; other hosts' cooldowns arrive on a pub/sub
channel and are applied through `Registry.apply_shared` on the event loop, like reports. On
every (re)connect this host pushes what it holds and pulls everything: Redis may have lost
its memory, and messages sent while we were away are gone. When Redis is unreachable the
host works on its own state, says so once, and retries with backoff.

Data model (`core/shared_record.py`): one key per scope, `<prefix>cd:<digest>`, whose TTL is
the remaining time. A Lua script sets a key only when the new record outranks the stored one
(version, then cleared over held, then a later deadline) and publishes in the same step, so a
report costs one round trip. Every record read is untrusted: each is decoded and applied in
its own try; a bad one is skipped, counted and warned about once per key. A resync pushes in
pipelined batches and applies what it pulls in slices that yield to the loop.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from hroute.config.cluster import ClusterSettings, redacted_url
from hroute.core.clock import Clock
from hroute.core.events import Topic
from hroute.core.health_values import Transition
from hroute.core.registry import Registry
from hroute.core.shared_record import Shared, decode
from hroute.core.sharing import (
    Ledger,
    from_changes,
    from_clear,
    from_the_future,
    held_records,
    shared_name,
)
from hroute.edges.clock import wait_until
from hroute.edges.fleet_spend import pull_spend, send_spend
from hroute.edges.redis_text import text as _text

if TYPE_CHECKING:
    from hroute.core.budgets import Day

log = logging.getLogger("hroute.cluster")

QUEUE_MAX = 4096  # cooldowns waiting for Redis; the oldest go first (a resync sends them all)
# First retry, cap: short, so a Redis that comes back is used within a second (a refused
# connection costs nothing; the outage is told once, not per attempt).
BACKOFF_S = (0.1, 0.5)
IDLE_PING_S = 5.0  # a Redis that stopped answering is noticed within this (plus the timeout)
TIMEOUT_S = 3.0
CONNECT_TIMEOUT_S = 1.0
START_WAIT_S = 1.0  # the most a starting daemon waits for the fleet's cooldowns
SCAN_COUNT = 50  # keys a pull asks for at once: their replies are parsed in one go
PUSH_BATCH = 100  # records per pipelined round trip of a resync (built and parsed in one go)
# Re-sync work runs at most this long before it yields to the loop (the socket waits for it
# no longer than that, whatever a record costs to apply).
SLICE_S = 0.001
WARNINGS_KEPT = 1024  # bad keys already warned about (each is told once, not on every resync)
KEY_SHOWN = 80  # characters of a foreign key name a warning quotes

# The newer record wins, in Redis too: set only when the new one outranks what is stored
# (version, then cleared over held, then a later deadline; a stored value that is not a
# record of ours loses), and tell the other hosts in the same step.
# KEYS[1] the record's key; ARGV: value, TTL (ms), channel, version, cleared (1/0).
PUBLISH_LUA = """
local ttl, ver, cleared = tonumber(ARGV[2]), tonumber(ARGV[4]), tonumber(ARGV[5])
local old = redis.call('GET', KEYS[1])
local ok, rec = pcall(cjson.decode, old or '')
if ok and type(rec) == 'table' and (rec['v'] == 1 or rec['v'] == 2) then
  local v, c = tonumber(rec['ver']) or 0, (rec['state'] == 'cleared') and 1 or 0
  if v > ver or (v == ver and c > cleared) then return 0 end
  if v == ver and c == cleared and redis.call('PTTL', KEYS[1]) >= ttl then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('PUBLISH', ARGV[3], KEYS[1] .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[1])
return 1
"""


class Cluster:
    """One host's link to the fleet's Redis; `run` is its task, `view` its status."""

    def __init__(
        self, registry: Registry, clock: Clock, settings: ClusterSettings, host: str
    ) -> None:
        self.registry, self.clock, self.settings, self.host = registry, clock, settings, host
        self.prefix = settings.key_prefix
        self.channel = self.prefix + "events"
        self.url = redacted_url(settings.redis_url)
        self._queue: deque[tuple[Shared, float]] = deque(maxlen=QUEUE_MAX)  # and when queued
        self._wake = anyio.Event()
        self.connected = False
        self.since = clock.wall()
        self.error = ""
        self.counts = {"published": 0, "applied": 0, "skipped": 0, "dropped": 0}
        self._warned: set[str] = set()
        self._was_up = self._ever_up = self._seeded = False
        self._slice_at = clock.now()  # when re-sync work last yielded to the loop
        self.ledger = Ledger()  # the newest record known of each shared scope
        self.synced = anyio.Event()  # set once the first pull landed (or could not)
        self._spend_due = False  # this host's day total changed since it was last sent
        registry.subscribe(Topic.REPORTED, self._on_report)
        registry.subscribe(Topic.CLEARED, self._on_clear)
        registry.subscribe(Topic.SPENT, self._on_usage)

    # --- the registry's side (on the loop, never waits) ---------------------------------

    def _on_report(self, name: str, changes: list[Transition]) -> None:
        reg = self.registry
        now = self.clock.now()
        self._tell(from_changes(reg.directory, reg.health(name), name, changes, self.host, now))

    def _on_clear(self, name: str, change: Transition) -> None:
        self._tell([from_clear(self.registry.directory, name, change, self.host)])

    def _tell(self, records: list[Shared] | list[Shared | None]) -> None:
        """Queue what a local report or clear has the fleet hear, versioned by the ledger."""
        now, wall = self.clock.now(), self.clock.wall()
        for shared in records:
            if shared is None or (record := self.ledger.local(shared, now, wall)) is None:
                continue
            if len(self._queue) == QUEUE_MAX:
                self.counts["dropped"] += 1
            self._queue.append((record, now))
            self._wake.set()

    def _on_usage(self, name: str, usd: float, day: Day) -> None:
        self._spend_due = True
        self._wake.set()

    def view(self) -> dict[str, Any]:
        """The cluster's state for `/v1/backends` and `hroute status`."""
        return {
            "redis_url": self.url,
            "host": self.host,
            "connected": self.connected,
            "since": round(self.since, 3),
            "error": self.error or None,
            **self.counts,
        }

    # --- the task -----------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED) -> None:
        """Connect, resync, publish and listen; on any failure, work alone and retry. Started
        once the first pull landed, or after START_WAIT_S: the daemon serves after that, so a
        starting host does not call usable what the fleet holds, nor waits long for Redis."""
        try:  # the optional extra: loaded only with `cluster:`
            import redis.asyncio as aredis
        except ImportError as exc:
            self._lost(RuntimeError(f"redis-py is missing ({exc}): pip install 'hroute[cluster]'"))
            task_status.started()
            return  # this host works alone, and says so in its status
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._connect, aredis)
            if not await wait_until(self.clock, self.synced, self.clock.now() + START_WAIT_S):
                log.warning("cluster: serving before the fleet's cooldowns arrived")
            task_status.started()

    async def _connect(self, aredis: Any) -> None:
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        backoff = BACKOFF_S[0]
        while True:
            started = self.clock.now()
            client = aredis.from_url(
                self.settings.redis_url,
                socket_timeout=TIMEOUT_S,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),  # a failure must reach us: we resync after it
            )
            try:
                await self._session(client)
            except Exception as exc:  # the cluster must never stop the daemon
                if not isinstance(exc, RedisError | OSError | ValueError):
                    log.exception("cluster: unexpected failure; starting over")
                if self.connected or not self.error:
                    self._lost(exc)
                else:
                    self.error = _words(exc)
                # A session that lasted starts the backoff over; one that failed at once (a
                # Redis that accepts and then refuses) keeps growing it, so no log storm.
                lasted = self._was_up and self.clock.now() - started >= BACKOFF_S[1]
                backoff = BACKOFF_S[0] if lasted else min(backoff * 2, BACKOFF_S[1])
            finally:
                self.synced.set()  # a first pull that cannot happen is not waited for
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await client.aclose()
            await self.clock.sleep(backoff)

    async def _session(self, client: Any) -> None:
        self._was_up = False
        await client.ping()
        script = client.register_script(PUBLISH_LUA)
        await client.script_load(PUBLISH_LUA)  # a pipeline's EVALSHA finds it (no SCRIPT EXISTS)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            # Pull first: the ledger learns the fleet's versions before this host pushes, and
            # a starting daemon hears what the fleet holds as soon as possible.
            pulled = await self._pull(client)
            self.synced.set()
            self._queue.clear()  # the push below sends everything running
            if not self._seeded:  # holds restored from disk: the ledger learns them once
                self._seeded = True
                reg, now = self.registry, self.clock.now()
                for shared in held_records(reg.directory, reg.health, self.host, now):
                    self.ledger.seed(shared, now)
            pushed = await self._push(script, client)
            await self._send_spend(client)
            await self._pull_spend(client, self.registry.router.day())
            self._up(pushed, pulled)
            failure: list[BaseException] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._guard, lambda: self._drain(script, client), failure, tg)
                tg.start_soon(self._guard, lambda: self._listen(pubsub, client), failure, tg)
            if failure:
                raise failure[0]
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await pubsub.aclose()

    async def _guard(
        self, part: Callable[[], Awaitable[None]], failure: list[BaseException], tg: Any
    ) -> None:
        """Run one half of a session; its failure ends both (and is raised by `_session`)."""
        try:
            await part()
        except Exception as exc:  # raised again by `_session`
            failure.append(exc)
            tg.cancel_scope.cancel()

    async def _drain(self, script: Any, client: Any) -> None:
        while True:
            while self._queue:
                shared, queued_at = self._queue[0]
                await self._publish(script, shared, self.clock.now() - queued_at)
                self._queue.popleft()  # only once Redis took it: a failure keeps it
            if self._spend_due:
                await self._send_spend(client)
            self._wake = anyio.Event()
            if self._queue or self._spend_due:
                continue
            woken = await wait_until(self.clock, self._wake, self.clock.now() + IDLE_PING_S)
            if not woken:
                await client.ping()

    async def _publish(self, script: Any, shared: Shared, waited_s: float = 0.0) -> int:
        ttl_ms = int((shared.remaining_s - waited_s) * 1000)  # what is left of it now
        if ttl_ms <= 0:
            return 0
        done = await script(keys=[self.prefix + shared.key], args=self._args(shared, ttl_ms))
        self.counts["published"] += int(done)
        return int(done)

    async def _push(self, script: Any, client: Any) -> int:
        """Every live record this host knows, PUSH_BATCH to a round trip (a Redis that lost
        its memory gets back what any host holds, not only what its origin does)."""
        records, pushed = self.ledger.live(self.clock.now()), 0
        for start in range(0, len(records), PUSH_BATCH):
            pipe = client.pipeline(transaction=False)
            for shared, until in records[start : start + PUSH_BATCH]:
                ttl_ms = int((until - self.clock.now()) * 1000)
                if ttl_ms > 0:
                    pipe.evalsha(
                        script.sha, 1, self.prefix + shared.key, *self._args(shared, ttl_ms)
                    )
                await self._breathe()
            done = sum(int(x) for x in await pipe.execute())
            self.counts["published"] += done
            pushed += done
        return pushed

    async def _breathe(self) -> None:
        """Yield to the loop once re-sync work ran SLICE_S without a pause."""
        if self.clock.now() - self._slice_at >= SLICE_S:
            await anyio.sleep(0)
            self._slice_at = self.clock.now()

    def _args(self, shared: Shared, ttl_ms: int) -> list[Any]:
        return [shared.encode(), ttl_ms, self.channel, shared.version, int(shared.cleared)]

    async def _listen(self, pubsub: Any, client: Any) -> None:
        while True:
            # A burst (a re-push: every record comes back on the channel) is already in the
            # connection's buffer, and reading it does not suspend: yield between slices.
            await self._breathe()
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None or message.get("type") != "message":
                continue
            key, ttl, value = _split(message["data"])
            if key == "spend":  # "spend\n<day>\n<host>"
                if ttl == self.registry.router.day():  # another day's is no news here
                    await self._pull_spend(client, ttl)
            else:
                self._take(key, value, ttl)

    async def _send_spend(self, client: Any) -> None:
        self._spend_due = False
        try:
            await send_spend(client, self.registry, self.prefix, self.channel, self.host)
        except BaseException:
            self._spend_due = True  # sent again on the next try or reconnect
            raise

    async def _pull_spend(self, client: Any, label: str) -> None:
        await pull_spend(client, self.registry, self.prefix, self.host, label, self._warn)

    async def _pull(self, client: Any) -> int:
        """Every shared cooldown in Redis now (values and remaining times), applied here in
        slices of SLICE_S between which the loop serves the socket."""
        taken = 0
        async for batch in _batches(client.scan_iter(match=self.prefix + "cd:*", count=SCAN_COUNT)):
            pipe = client.pipeline(transaction=False)
            for key in batch:
                pipe.get(key)
                pipe.pttl(key)
            answers = await pipe.execute()
            for i, key in enumerate(batch):
                value, ttl = answers[2 * i], answers[2 * i + 1]
                if value is not None:  # expired between SCAN and GET
                    taken += self._take(_text(key), value, ttl)
                await self._breathe()
        return taken

    def _take(self, key: str, value: Any, ttl_ms: Any) -> int:
        """One record from Redis, applied when it is news for a backend configured here;
        garbage is skipped, counted and warned about (once per key). Never raises: one bad
        record must not end the session (a reconnect would read it again, and again)."""
        try:
            shared = decode(value, ttl_ms)
            if self.prefix + shared.key != key:
                raise ValueError("its key does not match its content")
            if from_the_future(shared, self.clock.wall()):
                raise ValueError("its version is far ahead of this host's clock")
            if shared_name(self.registry.directory, shared.identity) is None:
                return 0  # a backend not configured here (or not remote here)
            news = self.ledger.take(shared, self.clock.now())
            if news and self.registry.take_shared(shared, newer=news == "newer"):
                self.counts["applied"] += 1
                return 1
            return 0
        except ValueError as exc:
            self._warn(key, str(exc))
        except Exception as exc:  # a bug here must not stop sharing
            log.exception("cluster: cannot apply %s", _shown(key))
            self._warn(key, _words(exc))
        return 0

    def _warn(self, key: str, why: str) -> None:
        self.counts["skipped"] += 1
        key = _shown(key)
        if key not in self._warned and len(self._warned) < WARNINGS_KEPT:
            self._warned.add(key)
            log.warning("cluster: skipping %s in Redis: %s", key, why)

    def _up(self, pushed: int, pulled: int) -> None:
        # A reconnect says how long Redis was away: the same words as the first connect
        # would be one identical event line, which the log holds back for a minute.
        away = f" after {self.clock.wall() - self.since:.1f}s away" if self._ever_up else ""
        self._was_up = self._ever_up = True
        self.connected, self.since, self.error = True, self.clock.wall(), ""
        self.registry.emit(
            "cluster_connected",
            detail=f"connected to {self.url} as {self.host}{away}; "
            f"sent {pushed} records, took {pulled}",
        )

    def _lost(self, exc: BaseException) -> None:
        was = "lost" if self.connected else "cannot reach"
        self.connected, self.since, self.error = False, self.clock.wall(), _words(exc)
        self.registry.emit(
            "cluster_disconnected",
            detail=f"{was} {self.url} ({self.error}); working on this host's state, "
            "reconnecting with backoff",
        )


async def _batches(keys: Any, size: int = SCAN_COUNT) -> Any:
    batch: list[Any] = []
    async for key in keys:
        batch.append(key)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _split(data: Any) -> tuple[str, str, str]:
    parts = _text(data).split("\n", 2)
    return (parts[0], parts[1], parts[2]) if len(parts) == 3 else ("", "0", "")


def _shown(key: str) -> str:
    """A key name from Redis as a log line may quote it: bounded, without control codes."""
    shown = key if len(key) <= KEY_SHOWN else key[:KEY_SHOWN] + "..."
    return shown if shown.isprintable() else ascii(shown)


def _words(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
