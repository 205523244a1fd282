"""A supervised server process at the OS level: spawn, await its exit, signal, stop, read its output.

The child runs in its own session (so its process group can be signalled whole, and a
Ctrl-C at hroute's terminal does not reach it) and gets SIGKILL when hroute dies
(PR_SET_PDEATHSIG), so a SIGKILLed hroute never leaves a server holding the GPU and the port.
Exit is awaited on a pidfd (no polling, no thread).

A server that daemonizes (a `setsid` grandchild, a double fork) escapes its process group.
Every child carries a tag in its environment (HROUTE_SUPERVISED_ID, inherited by what it
starts); `hroute run` is a child subreaper (PR_SET_CHILD_SUBREAPER), so such orphans are
reparented to it. When a server ends, whatever carries its tag, or descends from it, is
killed and reaped: nothing hroute started outlives the server it belongs to.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import signal
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

MAX_LINE_BYTES = 4096  # a longer line is cut: a runaway child never grows hroute's memory
READ_CHUNK_BYTES = 65536
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
TAG_ENV = "HROUTE_SUPERVISED_ID"
STRAY_EXIT_S = 5.0  # SIGKILLed strays are awaited this long, in all, to be reaped
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4


@dataclass
class Child:
    """One spawned process; `exited` is set (and `returncode` known) once it has been reaped."""

    popen: subprocess.Popen[bytes]
    output_fd: int  # stdout and stderr, merged, so lines keep their order
    started_at: float
    exited: anyio.Event = field(default_factory=anyio.Event)
    returncode: int | None = None
    tag: str = ""  # TAG_ENV's value in its environment: what it starts carries it too
    # pid -> pidfd of what was told to stop with it: a pidfd names that process even if the
    # pid is reused by the time it is killed and reaped
    strays: dict[int, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    async def wait(self) -> int:
        """Await the exit and reap (only one task, the supervisor's watcher, calls this)."""
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:  # an old kernel: let a worker thread block in waitpid instead
            code = await anyio.to_thread.run_sync(self.popen.wait, abandon_on_cancel=True)
        else:
            try:
                await anyio.wait_readable(pidfd)
            finally:
                os.close(pidfd)
            code = self.popen.wait()
        self.returncode = code
        await self.sweep()
        self.exited.set()
        return code

    def tell_strays(self, sig: int) -> None:
        """Signal what the server started outside its process group (a daemonized helper)."""
        if self.tag:
            found = _pidfds(find_strays(self.tag, self.pid) - set(self.strays))
            self.strays.update(found)
            _signal_all(self.strays.values(), sig)

    async def sweep(self) -> None:
        """Once the server has ended: SIGKILL its group and its strays; reap adopted ones."""
        self.signal_group(signal.SIGKILL)
        if not self.tag:
            return
        # Not by ancestry from the server's pid: it is reaped, and may be someone else's now.
        found = await anyio.to_thread.run_sync(find_strays, self.tag, None)
        self.strays.update(_pidfds(found - set(self.strays)))
        _signal_all(self.strays.values(), signal.SIGKILL)
        try:
            with anyio.move_on_after(STRAY_EXIT_S):
                for pidfd in self.strays.values():
                    await anyio.wait_readable(pidfd)
                    with contextlib.suppress(ChildProcessError):  # reaped if adopted by us
                        os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
        finally:
            for pidfd in self.strays.values():
                os.close(pidfd)
            self.strays = {}

    def signal_group(self, sig: int) -> None:
        """Signal the child's whole process group (it leads it: pgid == pid)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


def spawn_child(argv: list[str], env: dict[str, str], cwd: Path | None, now: float) -> Child:
    """Start `argv` in its own session with merged stdout/stderr on a pipe; raise OSError.

    Must be called from the thread that lives as long as hroute (the event loop's, which is
    the main thread in `hroute run`): Linux sends the parent-death signal when the thread
    that forked exits, not the process.
    """
    read_fd, write_fd = os.pipe()
    tag = f"{os.getpid()}-{secrets.token_hex(8)}"
    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            env={**env, TAG_ENV: tag},
            cwd=cwd,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGKILL),
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    os.set_blocking(read_fd, False)
    return Child(popen, read_fd, now, tag=tag)


def become_subreaper() -> bool:
    """Have orphaned descendants reparented to this process rather than to init (Linux), so
    a server's daemonized helpers can be found, stopped and reaped. False if refused."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def find_strays(tag: str, root: int | None, proc: Path = Path("/proc")) -> set[int]:
    """Processes carrying `tag` in their environment, and every descendant of those and of
    `root`, a live server (a helper that scrubbed its environment is found by its ancestry)."""
    needle = f"{TAG_ENV}={tag}".encode() + b"\0"
    parents: dict[int, int] = {}
    tagged: set[int] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            parents[pid] = int((entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            if needle in (entry / "environ").read_bytes():
                tagged.add(pid)
        except (OSError, IndexError, ValueError):
            continue  # gone, or not ours to read
    found, grew = tagged | ({root} if root else set()), True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        found |= more
        grew = bool(more)
    return found - {root, os.getpid()}


def _pidfds(pids: set[int]) -> dict[int, int]:
    """A pidfd for each of `pids` still there."""
    opened = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            opened[pid] = os.pidfd_open(pid)
    return opened


def _signal_all(pidfds: Iterable[int], sig: int) -> None:
    for pidfd in pidfds:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            signal.pidfd_send_signal(pidfd, sig)


def die_with_parent(sig: int) -> Callable[[], None]:
    """A `preexec_fn` that has the child get `sig` when the forking thread dies (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    prctl, parent = libc.prctl, os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        # hroute may hold CAP_SYSLOG as an ambient capability (to read the kernel log for
        # GPU resets): a server it starts must not inherit it.
        prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        if os.getppid() != parent:  # hroute died between fork and prctl
            os._exit(1)

    return preexec


async def stop_child(child: Child, timeout_s: float) -> str:
    """SIGTERM the group, SIGKILL it after `timeout_s`; return how it ended. Always reaps."""
    if not child.exited.is_set():
        await anyio.to_thread.run_sync(child.tell_strays, signal.SIGTERM)
        child.signal_group(signal.SIGTERM)
        child.signal_group(signal.SIGCONT)  # like systemd: a stopped process gets to exit cleanly
        with anyio.move_on_after(timeout_s):
            await child.exited.wait()
    how = "stopped"
    if not child.exited.is_set():
        how = f"killed (no exit within stop_timeout_s {timeout_s:g}s of SIGTERM)"
        child.signal_group(signal.SIGKILL)
        await child.exited.wait()
    return how  # stragglers the server forked, in its group or not, went with it (wait)


def describe_exit(returncode: int) -> str:
    """`exited with code 2` or `was killed by SIGKILL`."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


async def forward_lines(fd: int, emit: Callable[[str], None]) -> None:
    """Hand every line read from `fd` to `emit` until EOF; close `fd`. Memory stays bounded."""
    pending = b""
    dropping = False  # inside a line already cut at MAX_LINE_BYTES
    try:
        while True:
            await anyio.wait_readable(fd)
            try:
                chunk = os.read(fd, READ_CHUNK_BYTES)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:
                    break
                raise
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if not dropping:
                    emit(_text(line))
                dropping = False
            if len(pending) > MAX_LINE_BYTES:
                if not dropping:
                    emit(_text(pending[:MAX_LINE_BYTES]) + " [line cut]")
                dropping, pending = True, b""
        if pending and not dropping:
            emit(_text(pending))
    finally:
        os.close(fd)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip("\r")


async def port_listener(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """Whether something accepts connections on host:port already."""
    try:
        with anyio.fail_after(timeout_s):
            stream = await anyio.connect_tcp(host, port)
    except (OSError, TimeoutError):
        return False
    await stream.aclose()
    return True
