"""child.py with real processes: exit awaited, groups signalled, output bounded, parent death."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from hroute.supervise.process import (
    MAX_LINE_BYTES,
    describe_exit,
    forward_lines,
    port_listener,
    spawn_child,
    stop_child,
)
from tests.support.daemon import wait_until
from tests.support.procs import dead, free_port

FAKE = str(Path(__file__).resolve().parents[1] / "support" / "fake_llama.py")


def run_child(argv: list[str], then=None) -> tuple[int, list[str], object]:
    """Spawn `argv`, collect its lines, optionally run `then(child)`; return (code, lines, result)."""
    lines: list[str] = []

    async def main() -> tuple[int, list[str], object]:
        child = spawn_child(argv, dict(os.environ), None, time.monotonic())
        async with anyio.create_task_group() as tg:
            tg.start_soon(forward_lines, child.output_fd, lines.append)
            tg.start_soon(child.wait)
            result = await then(child) if then else None
            await child.exited.wait()
        return child.returncode, lines, result

    return anyio.run(main)


def test_exit_code_is_awaited_and_output_forwarded_line_by_line() -> None:
    code, lines, _ = run_child([sys.executable, FAKE, "--port", "1", "--crash-on-start", "7"])
    assert code == 7 and describe_exit(code) == "exited with code 7"
    assert lines[-1] == "fake_llama: --crash-on-start, exiting with 7"
    assert lines[0].startswith("fake_llama: pid=")


def test_child_leads_its_own_session_and_process_group() -> None:
    async def check(child) -> tuple[int, int]:
        ids = os.getsid(child.pid), os.getpgid(child.pid)
        child.signal_group(signal.SIGTERM)
        return ids

    code, _, ids = run_child(["sleep", "30"], check)
    assert ids == (ids[0], ids[0]) and ids[0] != os.getsid(0)
    assert code == -signal.SIGTERM and describe_exit(code) == "was killed by SIGTERM"


def test_long_lines_are_cut_and_memory_stays_bounded() -> None:
    script = "import sys; sys.stdout.write('x' * 100000 + '\\nafter\\r\\n' + 'y' * 10); sys.stdout.flush()"
    code, lines, _ = run_child([sys.executable, "-c", script])
    assert code == 0
    assert lines == ["x" * MAX_LINE_BYTES + " [line cut]", "after", "y" * 10]


def test_sigterm_then_exit_is_a_graceful_stop() -> None:
    port = free_port()

    async def stop(child) -> str:
        await wait_for_port(port)
        return await stop_child(child, timeout_s=5)

    code, lines, how = run_child([sys.executable, FAKE, "--port", str(port)], stop)
    assert how == "stopped" and code == 0  # it exited on SIGTERM: no SIGKILL was needed
    assert "fake_llama: received SIGTERM, exiting with 0" in lines


def test_ignored_sigterm_gets_sigkill_after_the_stop_timeout() -> None:
    port = free_port()

    async def stop(child) -> tuple[str, float]:
        await wait_for_port(port)
        started = time.monotonic()
        return await stop_child(child, timeout_s=0.5), time.monotonic() - started

    argv = [sys.executable, FAKE, "--port", str(port), "--ignore-sigterm"]
    code, lines, (how, took) = run_child(argv, stop)
    assert how.startswith("killed (no exit within stop_timeout_s 0.5s")
    assert code == -signal.SIGKILL and took >= 0.5  # SIGKILL only once the timeout ran out
    assert "fake_llama: ignoring SIGTERM" in lines


def test_stop_takes_the_whole_group_with_it() -> None:
    async def stop(child) -> int:
        grandchild = int(await anyio.to_thread.run_sync(lambda: read_first_line(child)))
        await stop_child(child, timeout_s=2)
        return grandchild

    lines: list[str] = []

    def read_first_line(child) -> str:
        return wait_until(lambda: lines and lines[0], 5, what="the grandchild's pid")

    async def main() -> int:
        child = spawn_child(["sh", "-c", "sleep 30 & echo $!; wait"], dict(os.environ), None, 0.0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(forward_lines, child.output_fd, lines.append)
            tg.start_soon(child.wait)
            return await stop(child)

    grandchild = anyio.run(main)
    wait_until(lambda: dead(grandchild), 5, what="the grandchild to die with its group")


def test_port_listener_tells_a_listening_port_from_a_free_one() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        assert anyio.run(port_listener, "127.0.0.1", taken) is True
    assert anyio.run(port_listener, "127.0.0.1", free_port()) is False


def test_child_dies_when_its_parent_is_killed(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: a SIGKILLed supervisor leaves no server behind."""
    parent_code = textwrap.dedent(
        """
        import os, sys, time
        from hroute.supervise.process import spawn_child
        child = spawn_child(["sleep", "30"], dict(os.environ), None, time.monotonic())
        print(child.pid, flush=True)
        time.sleep(30)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert not dead(child_pid)
        parent.kill()
        parent.wait(5)
        wait_until(lambda: dead(child_pid), 5, what="the orphaned child to die")
    finally:
        parent.kill()
        parent.wait(5)
        if parent.stdout is not None:
            parent.stdout.close()


async def wait_for_port(port: int, timeout_s: float = 10) -> None:
    with anyio.fail_after(timeout_s):
        while not await port_listener("127.0.0.1", port):
            await anyio.sleep(0.02)


SPAWN_AND_SHOW_CAPS = """
import os, sys, time
from hroute.supervise.process import spawn_child
child = spawn_child(["grep", "^CapAmb", "/proc/self/status"], dict(os.environ), None, 0.0)
child.popen.wait()
print("child", os.read(child.output_fd, 4096).decode().strip())
print("parent", [l for l in open("/proc/self/status") if l.startswith("CapAmb")][0].strip())
"""


def test_a_child_does_not_inherit_hroutes_ambient_capabilities() -> None:
    """The GPU drop-in grants hroute CAP_SYSLOG (the kernel log) as an ambient capability."""
    if os.geteuid() != 0 or not Path("/usr/sbin/capsh").exists():
        pytest.skip("needs root and capsh to raise an ambient capability")
    out = subprocess.run(
        [
            "capsh",
            "--inh=cap_syslog",
            "--addamb=cap_syslog",
            "--",
            "-c",
            f'exec {sys.executable} -c "$0"',
            SPAWN_AND_SHOW_CAPS,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "parent CapAmb:\t0000000400000000" in out.stdout, out.stdout + out.stderr
    assert "child CapAmb:\t0000000000000000" in out.stdout, out.stdout + out.stderr


def test_a_helper_in_its_own_session_without_the_tag_is_stopped_with_the_server(
    tmp_path: Path,
) -> None:
    # Out of the server's process group (setsid) and with an empty environment: found by
    # its ancestry while the server lives, and stopped with it.
    pidfile = tmp_path / "helper.pid"
    script = textwrap.dedent(f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            open({str(pidfile)!r} + ".tmp", "w").write(str(os.getpid()))
            os.replace({str(pidfile)!r} + ".tmp", {str(pidfile)!r})
            os.execve("/bin/sleep", ["sleep", "300"], {{}})
        time.sleep(300)
    """)

    async def stop(child) -> int:
        while not pidfile.exists() or not pidfile.read_text():
            await anyio.sleep(0.02)
        helper = int(pidfile.read_text())
        assert os.getsid(helper) != os.getsid(child.pid)
        await stop_child(child, timeout_s=5)
        return helper

    _, _, helper = run_child([sys.executable, "-c", script], stop)
    wait_until(lambda: dead(helper), 5, what=f"the helper {helper} to end")
