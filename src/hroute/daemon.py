"""The composition root: builds every part, wires them, runs them in one task group."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.from_thread

from hroute import __version__
from hroute.config.model import Config, missing_keys
from hroute.core.clients import Clients
from hroute.core.clock import Clock
from hroute.core.events import Topic
from hroute.core.registry import Registry
from hroute.edges.api import Deps, make_api
from hroute.edges.clock import RealClock, wait_until
from hroute.edges.cluster import Cluster
from hroute.edges.config_file import read_config
from hroute.edges.fault_injection import serve_test_hooks, socket_timeouts
from hroute.edges.files import prepare_dir, remove_leftovers
from hroute.edges.gpu import GpuTelemetry
from hroute.edges.http import HttpServer
from hroute.edges.limits import connection_cap, raise_fd_limit
from hroute.edges.memory import give_back_memory
from hroute.edges.metrics import Metrics
from hroute.edges.prober import Prober
from hroute.edges.reloader import Reloader, ReloadResult
from hroute.edges.snapshot import SnapshotPublisher
from hroute.edges.sockets import (
    bind_unix_socket,
    inherited_socket,
    keep_lock,
    listen_tcp,
    lock_socket_path,
    socket_inode,
)
from hroute.edges.state_file import StateSaver, load_state
from hroute.paths import snapshot_path
from hroute.supervise.supervisors import Supervision
from hroute.systemd.logs import log_event
from hroute.systemd.notify import Notifier, keep_status, keep_watchdog

log = logging.getLogger("hroute")
T = TypeVar("T")

EXPIRY_TICK_S = 0.25
GPU_READ_EVERY_S = 1.0  # `hroute top` and scrapes read the GPUs at most this often


async def run_daemon(
    config_path: Path,
    *,
    clock: Clock | None = None,
    notifier: Notifier | None = None,
    hup_pending: Callable[[], bool] = lambda: False,
) -> None:
    """Run hroute until SIGTERM/SIGINT. `hup_pending()` says a SIGHUP came while starting."""
    config = read_config(config_path)
    clock = clock or RealClock()
    notifier = notifier or Notifier()
    rng = random.Random()
    registry = Registry(
        config,
        clock,
        events_kept=config.daemon.events_kept,
        jitter=lambda: rng.uniform(-1.0, 1.0),  # spreads cooldown ends (Envoy's jitter)
    )
    registry.subscribe(Topic.EVENT, log_event)
    clients = Clients()  # what agent plugins say of their guards
    metrics = Metrics(lambda: registry, clients, clock.now)
    registry.subscribe(Topic.EVENT, metrics.on_event)
    _note_missing_keys(registry, config)
    state_path = config.daemon.state_path
    # Before reading or writing anything there: a directory another user can write could
    # hold a link that a root daemon writes through.
    prepare_dir(state_path.parent, "keep state")
    remove_leftovers(state_path)  # from a daemon killed while it saved
    saved = load_state(state_path, clock)
    restored = registry.restore(saved.records)
    registry.router.tasks.load(saved.tasks)
    if saved.spend is not None:
        registry.router.spend.load(*saved.spend)
    if restored:
        log.info("restored health of %d backends from %s", restored, state_path)

    fd_limit = raise_fd_limit()
    socket_path = config.daemon.socket_path
    sock = inherited_socket()
    owns_socket = sock is None
    if sock is None:
        lock = [lock_socket_path(socket_path)]  # held until exit: one daemon per path
        sock = bind_unix_socket(socket_path)
    else:
        prepare_dir(socket_path.parent, "publish the snapshot")  # systemd made it: check it
    remove_leftovers(snapshot_path(socket_path))  # the path is ours alone now
    cluster = None
    if config.cluster is not None:
        cluster = Cluster(
            registry, clock, config.cluster, config.cluster.host or socket.gethostname()
        )
        metrics.cluster = cluster.view
    gpu = GpuTelemetry.from_env()
    gpus = _recent(gpu.samples, clock, GPU_READ_EVERY_S)
    metrics.gpus = gpus
    supervision = Supervision(
        registry,
        clock,
        poke=lambda name: prober.poke(name, floor=False),
        probe=lambda name: prober.probe_once(name),
        gpu=gpu,
        kernel_log=Path(os.environ.get("HROUTE_KMSG") or "/dev/kmsg"),
    )
    prober = Prober(
        registry,
        clock,
        on_outcome=lambda name, outcome: (
            metrics.on_probe(name, outcome),
            supervision.observe(name, outcome),
        ),
    )
    publisher = SnapshotPublisher(registry, clock, snapshot_path(socket_path))
    saver = StateSaver(registry, clock, state_path)
    reloader = Reloader(config_path, config, sleep=clock.sleep)
    reloader.apply += [
        lambda old, new, diff: registry.apply_config(new),
        lambda old, new, diff: _note_missing_keys(registry, new),
        lambda old, new, diff: prober.sync(new),
        lambda old, new, diff: supervision.sync(new),
        lambda old, new, diff: _note_cluster_change(old, new),
    ]
    reloader.on_start = notifier.reloading
    reloader.on_result = lambda result, trigger: _tell_reload(
        result, trigger, registry, metrics, notifier
    )

    def probe_when_cooldown_ends(event: dict) -> None:
        # A server that waited out its cooldown is worth a look now, not at the next turn.
        if event["event"] == "cooldown_end" and event.get("scope") == "server":
            prober.poke(event["backend"])

    registry.subscribe(Topic.EVENT, probe_when_cooldown_ends)

    def after_report(name: str, body: dict) -> None:
        if body.get("outcome") == "failure":
            prober.poke(name)

    async def reload_from_api() -> dict:
        return (await reloader.reload("hroute reload")).as_json()

    deps = Deps(
        registry=registry,
        metrics=metrics,
        on_report=after_report,
        reload=reload_from_api,
        restart=supervision.restart,
        clients=clients,
        now=clock.now,
        cluster=None if cluster is None else cluster.view,
        gpus=lambda: [g.as_dict() for g in gpus()],
    )
    # Idle keep-alive clients are let go after a while: they hold descriptors.
    api = make_api(deps, max_connections=connection_cap(fd_limit), **socket_timeouts())
    try:
        async with anyio.create_task_group() as tg:
            # Signals first: a SIGTERM that comes as soon as the socket answers must stop
            # the daemon cleanly, not kill it with the default action.
            await tg.start(_watch_signals, tg.cancel_scope, notifier, reloader, hup_pending)
            if cluster is not None:
                # The fleet's cooldowns before the first answer (a second at most), so that a
                # starting host does not call usable what the fleet holds.
                await tg.start(cluster.run)
            await api.serve(sock)
            if owns_socket:
                reloader.also_check.append(SocketKeeper(socket_path, lock, api).check)
            if config.daemon.metrics_listen:
                await api.serve(listen_tcp(config.daemon.metrics_listen))
            await tg.start(publisher.run)
            await tg.start(supervision.run)
            await tg.start(prober.run)  # loads its HTTP client off the loop: the socket answers
            await tg.start(saver.run)
            await tg.start(reloader.watch)
            tg.start_soon(_expire_cooldowns, registry, clock)
            tg.start_soon(keep_watchdog, notifier, clock.sleep)
            tg.start_soon(serve_test_hooks)
            tg.start_soon(give_back_memory, clock)
            log.info(
                "hroute %s serving on %s: %d backends, %d profiles",
                __version__,
                socket_path,
                len(config.backends),
                len(config.profiles),
            )
            notifier.ready(f"{len(config.backends)} backends; serving on {socket_path}")
            tg.start_soon(keep_status, registry, notifier)
    finally:
        with anyio.CancelScope(shield=True):
            await api.aclose()
            if owns_socket:
                with contextlib.suppress(OSError):
                    os.unlink(socket_path)
                os.close(lock[0])
    log.info("hroute stopped")


def _note_missing_keys(registry: Registry, config: Config) -> None:
    missing = missing_keys(config)
    for name in config.backends:
        registry.annotations.set_note(name, None)
    for name, var in missing.items():
        log.warning(
            "%s: key_env %s is not set in the environment; not probing it "
            "(agents' own reports still count)",
            name,
            var,
        )
        registry.annotations.set_note(name, f"key_env {var} is not set; not probed")


def _note_cluster_change(old: Config, new: Config) -> None:
    if old.cluster != new.cluster:
        log.warning("cluster: settings changed; they take effect when hroute restarts")


class SocketKeeper:
    """Notice the socket file removed or replaced and listen there again.

    Deleted, it left the daemon serving nobody, silently. Checked once a second by the
    config watcher's thread (a stat; an idle loop woken for it each second spent a third
    of its CPU there). If it cannot be recreated the daemon stops with an error, and
    systemd (Restart=on-failure) starts it afresh.
    """

    def __init__(self, path: Path, lock: list[int], api: HttpServer) -> None:
        self.path, self.lock, self.api = path, lock, api
        self.inode = socket_inode(path)

    def check(self) -> None:
        """In a worker thread: call into the loop only when the file changed."""
        if socket_inode(self.path) != self.inode:
            anyio.from_thread.run(self._listen_again)

    async def _listen_again(self) -> None:
        if socket_inode(self.path) == self.inode:
            return
        log.warning("%s was removed or replaced; listening there again", self.path)
        self.lock[0] = keep_lock(self.path, self.lock[0])
        await self.api.serve(bind_unix_socket(self.path))
        self.inode = socket_inode(self.path)


async def _expire_cooldowns(registry: Registry, clock: Clock) -> None:
    """End cooldowns when they run out: sleep until the next deadline, not on a tick.

    A change wakes it to look at `registry.due()` (O(1): a report may arm an earlier
    deadline); only a deadline reached walks the records (at most once a tick: cooldowns are
    never shorter), so a re-sync's thousands of changes cost no walk each."""
    wake = anyio.Event()

    def on_change() -> None:
        wake.set()

    registry.subscribe(Topic.CHANGED, on_change)
    walked = clock.now()
    registry.expire()
    while True:
        wake = anyio.Event()
        due = registry.due()
        # From the last walk, not from now: changes that keep coming must not put it off.
        at = None if due is None else max(due, walked + EXPIRY_TICK_S)
        if (at is not None and at <= clock.now()) or not await wait_until(clock, wake, at):
            walked = clock.now()
            registry.expire()  # the deadline came: end what ran out, find the next


async def _watch_signals(
    scope: anyio.CancelScope,
    notifier: Notifier,
    reloader: Reloader,
    hup_pending: Callable[[], bool],
    *,
    task_status: anyio.abc.TaskStatus = anyio.TASK_STATUS_IGNORED,
) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        if hup_pending():
            await reloader.reload("SIGHUP while starting")
        async for signum in signals:
            if signum == signal.SIGHUP:
                await reloader.reload("SIGHUP")
                continue
            log.info("received %s; stopping", signal.Signals(signum).name)
            notifier.stopping()
            scope.cancel()
            return


def _tell_reload(
    result: ReloadResult, trigger: str, registry: Registry, metrics: Metrics, notifier: Notifier
) -> None:
    """Say what a reload did: an event (which is the log line), a metric, systemd's STATUS=."""
    if result.ok:
        metrics.config_reloads.inc("applied")
        registry.emit("config_reloaded", reason=trigger, detail=result.summary)
        notifier.ready(f"{len(registry.directory.names)} backends; {result.summary}")
        return
    metrics.config_reloads.inc("rejected")
    first = result.error.splitlines()[1].strip() if "\n" in result.error else result.error
    registry.emit("config_rejected", reason=trigger, detail=result.error)
    notifier.ready(f"config rejected: {first}")


def _recent(read: Callable[[], list[T]], clock: Clock, max_age_s: float) -> Callable[[], list[T]]:
    """`read()`, called again only when its last answer is older than `max_age_s`."""
    last: list[tuple[float, list[T]]] = []

    def recent() -> list[T]:
        now = clock.now()
        if not last or now - last[0][0] >= max_age_s:
            last[:] = [(now, read())]
        return last[0][1]

    return recent
