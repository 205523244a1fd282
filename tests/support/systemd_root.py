"""A real systemd (the host's, 252) booted as PID 1 in private namespaces over an overlay of /.

Recipe from shared TESTING.md ("A real systemd"), with the host kept out of reach:

- pid, mount, net, uts, ipc and cgroup namespaces (`unshare`); `/` made private;
- an **overlayfs with lowerdir=/** and a throwaway upper dir as the new root: whatever systemd,
  dpkg or the daemon write lands in the upper dir (never boot without it: systemd's boot-time
  tmpfiles once wiped a host's /tmp);
- `pivot_root` into it (not chroot: see BOOT_SCRIPT); fresh proc with /proc/sys read-only,
  a read-only sysfs of the private network namespace, a small private /dev,
  tmpfs on /run and /tmp;
- cgroups: a child cgroup of our own in every hierarchy, made the root of the cgroup
  namespace, with fresh cgroup mounts inside, so systemd never moves processes out of the
  cgroups the host put us in, and we can remove every cgroup it made;
- units that would touch the host's kernel state (sysctl, modules, binfmt, clock, device
  nodes) are masked in the overlay; systemd boots a target of ours that starts nothing else.

Tear down always: SIGKILL to our PID 1 by pid (it ignores SIGTERM) ends the namespaces and
with them every mount; then our cgroups are removed and the directories deleted. Every wait
is bounded.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

TARGET = "hroute-test.target"

# Boot-time units that would change the host's kernel state or devices from inside the
# namespaces (the /proc/sys of a new namespace is still mostly the host's).
MASKED = [
    "systemd-sysctl.service",
    "systemd-modules-load.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "systemd-timesyncd.service",
    "systemd-pstore.service",
    "systemd-random-seed.service",
    "systemd-tmpfiles-setup-dev.service",
    "kmod-static-nodes.service",
    "systemd-firstboot.service",
    "systemd-repart.service",
    "systemd-machine-id-commit.service",
    "systemd-hwdb-update.service",
    "systemd-journal-catalog-update.service",
    "sys-kernel-config.mount",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "getty.target",
    "console-getty.service",
]

DEVICES = ["null", "zero", "full", "random", "urandom", "tty"]

# Runs as the namespaces' PID 1 until it execs systemd. "$1" is the merged dir; the rest of
# the arguments are cgroup mounts as TYPE:OPTIONS:NAME.
BOOT_SCRIPT = r"""
set -eu
M=$1; U=$2; W=$3; shift 3
mount --make-rprivate /
mount -t overlay overlay -o "lowerdir=/,upperdir=$U,workdir=$W" "$M"
mount -t proc proc "$M/proc"
# Most of /proc/sys is the host's whatever the namespaces: systemd must not raise its limits.
mount --bind "$M/proc/sys" "$M/proc/sys"
mount -o remount,bind,ro "$M/proc/sys"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$M/sys"
if [ "$1" = "cgroup2::" ]; then
    mount -t cgroup2 cgroup2 "$M/sys/fs/cgroup"  # unified hierarchy only
else
    mount -t tmpfs -o mode=755,size=4m tmpfs "$M/sys/fs/cgroup"
    for spec in "$@"; do
        IFS=: read -r type opts name <<<"$spec"
        mkdir -p "$M/sys/fs/cgroup/$name"
        if [ "$type" = cgroup2 ]; then
            mount -t cgroup2 cgroup2 "$M/sys/fs/cgroup/$name"
        else
            mount -t cgroup -o "$opts" cgroup "$M/sys/fs/cgroup/$name"
        fi
    done
    mount -o remount,ro "$M/sys/fs/cgroup"
fi
mount -t tmpfs -o mode=755,nosuid,size=16m tmpfs "$M/dev"
for dev in __DEVICES__; do
    touch "$M/dev/$dev"
    mount --bind "/dev/$dev" "$M/dev/$dev"
done
touch "$M/dev/console"
mount --bind /dev/null "$M/dev/console"
mkdir -p "$M/dev/pts" "$M/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$M/dev/pts"
ln -s pts/ptmx "$M/dev/ptmx"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$M/dev/shm"
ln -s /proc/self/fd "$M/dev/fd"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$M/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$M/tmp"
# pivot_root, not chroot: in a chroot the kernel refuses new user namespaces, which
# PrivateUsers=yes needs; and `nsenter -a` then lands in the overlay by itself.
mkdir "$M/run/oldroot"
cd "$M"
pivot_root . run/oldroot
cd /
umount -l /run/oldroot
rmdir /run/oldroot
export container=docker
exec /lib/systemd/systemd --unit=__TARGET__ --log-target=journal --log-level=info
""".replace("__DEVICES__", " ".join(DEVICES)).replace("__TARGET__", TARGET)

# Runs in the host's namespaces: move this shell into our cgroups, then unshare.
LAUNCH_SCRIPT = r"""
set -eu
for dir in $HROUTE_CGROUPS; do echo $$ > "$dir/cgroup.procs"; done
exec unshare --pid --fork --kill-child --mount --net --uts --ipc --cgroup --propagation private \
    bash -c "$HROUTE_BOOT" pid1 "$@"
"""


class SystemdRoot:
    """One booted systemd; `run()` a command inside it, `path()` reaches its files."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.upper, self.work, self.merged = base / "upper", base / "work", base / "merged"
        self.console = base / "console.log"
        self.token = f"hroute-systest-{secrets.token_hex(4)}"
        self.cgroups: list[Path] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid1: int | None = None

    # --- life cycle -------------------------------------------------------------------

    def boot(self, timeout_s: float = 60.0) -> SystemdRoot:
        for d in (self.upper, self.work, self.merged):
            d.mkdir(parents=True)
        self._prepare_upper()
        mounts = _cgroup_mounts()
        self.cgroups = _make_cgroups(mounts, self.token)
        specs = [f"{kind}:{opts}:{name}" for kind, opts, name, _ in mounts]
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HROUTE_CGROUPS": " ".join(str(c) for c in self.cgroups),
            "HROUTE_BOOT": BOOT_SCRIPT,
        }
        dirs = [str(self.merged), str(self.upper), str(self.work)]
        with open(self.console, "wb") as console:
            self.proc = subprocess.Popen(
                ["bash", "-c", LAUNCH_SCRIPT, "launch", *dirs, *specs],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.pid1 = self._wait(self._find_pid1, 10, "the namespaces' PID 1")
        self._wait(self._booted, timeout_s, "systemd to finish booting")
        return self

    def _prepare_upper(self) -> None:
        units = self.upper / "etc/systemd/system"
        units.mkdir(parents=True)
        (units / TARGET).write_text(
            "[Unit]\nDescription=hroute system test\nRequires=systemd-journald.socket\n"
            "After=systemd-journald.socket\n"
        )
        for unit in MASKED:
            (units / unit).symlink_to("/dev/null")

    def _find_pid1(self) -> int | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"unshare exited with {self.proc.returncode}:\n{self.console_text}"
            )
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            pids = children.read_text().split()
            if pids:
                pid = int(pids[0])
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return pid
        return None

    def _booted(self) -> bool:
        result = self.run("systemctl", "is-system-running", check=False, timeout_s=10)
        return result.stdout.strip() in ("running", "degraded")

    def teardown(self) -> None:
        """Kill PID 1 (which ends the namespaces and their mounts), remove our cgroups and
        the overlay's directories. Safe to call more than once, and after a failed boot."""
        if self.pid1 is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid1, signal.SIGKILL)
        if self.proc is not None:
            if self.proc.poll() is None and self.pid1 is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        _remove_cgroups(self.cgroups)
        # Nothing is mounted on these directories from the host's view: the mounts lived in
        # the mount namespace that ended with PID 1.
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> SystemdRoot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # --- talking to it ----------------------------------------------------------------

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout_s: float = 30.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside (all of PID 1's namespaces; its root is the overlay)."""
        assert self.pid1 is not None
        cmd = ["nsenter", "-t", str(self.pid1), "-a", *argv]
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_PAGER": ""}
        result = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, input=input, env=env
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}\nstdout: {result.stdout}\n"
                f"stderr: {result.stderr}"
            )
        return result

    def path(self, inside: str) -> Path:
        """A path inside the root, reachable from the host through PID 1's root."""
        assert self.pid1 is not None
        return Path(f"/proc/{self.pid1}/root") / inside.lstrip("/")

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "-p", prop, "--value", unit).stdout.strip()

    @property
    def console_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.console.read_text(errors="replace")[-4000:]
        return ""

    def _wait(self, predicate, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(
            f"timed out after {timeout_s}s waiting for {what}\n{self.console_text}"
        )


def _die_with_parent() -> None:
    # Should the test process itself be killed, unshare dies too, and --kill-child takes
    # PID 1 and the namespaces with it.
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _cgroup_mounts() -> list[tuple[str, str, str, Path]]:
    """The host's cgroup hierarchies under /sys/fs/cgroup: (type, options, name, mountpoint)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, right = line.split(" - ", 1)
        mountpoint = left.split()[4]
        fstype, _source, super_opts = right.split()[:3]
        if fstype not in ("cgroup", "cgroup2") or not mountpoint.startswith("/sys/fs/cgroup"):
            continue
        opts = ",".join(o for o in super_opts.split(",") if o not in ("rw", "ro"))
        name = os.path.relpath(mountpoint, "/sys/fs/cgroup")
        if name == ".":
            name = ""
        found.append((fstype, opts, name, Path(mountpoint)))
    if not found:
        raise RuntimeError("no cgroup hierarchy mounted under /sys/fs/cgroup")
    return found


def _own_cgroup(fstype: str, opts: str) -> str:
    """This process's cgroup path in the hierarchy mounted with these options."""
    wanted = set(opts.split(",")) - {"none"}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _id, controllers, path = line.split(":", 2)
        if fstype == "cgroup2" and controllers == "":
            return path
        names = set(controllers.split(","))
        if fstype == "cgroup" and controllers and names <= wanted:
            return path
    raise RuntimeError(f"cannot find this process's cgroup for {fstype} {opts}")


def _make_cgroups(mounts: list[tuple[str, str, str, Path]], token: str) -> list[Path]:
    made = []
    try:
        for fstype, opts, _name, mountpoint in mounts:
            own = _own_cgroup(fstype, opts).lstrip("/")
            path = mountpoint / own / token
            path.mkdir()
            made.append(path)
            # A new v1 cpuset cgroup has no CPUs or memory nodes: joining it fails until set.
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (path / knob).exists():
                    (path / knob).write_text((path.parent / knob).read_text())
    except BaseException:
        _remove_cgroups(made)
        raise
    return made


def _remove_cgroups(cgroups: list[Path], timeout_s: float = 10.0) -> None:
    """rmdir every cgroup under ours, deepest first; killed processes may take a moment to
    leave them."""
    deadline = time.monotonic() + timeout_s
    for top in cgroups:
        while top.exists():
            dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for d in [*dirs, top]:
                with contextlib.suppress(OSError):
                    d.rmdir()
            if not top.exists() or time.monotonic() > deadline:
                break
            time.sleep(0.05)


def root_skip_reason() -> str | None:
    """Why the real-systemd test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (boots systemd as PID 1 in namespaces)"
    for tool in ("unshare", "nsenter", "pivot_root"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/lib/systemd/systemd").exists():
        return "systemd is not installed (/lib/systemd/systemd)"
    if "overlay" not in Path("/proc/filesystems").read_text():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["modprobe", "overlay"], check=False, timeout=10)
        if "overlay" not in Path("/proc/filesystems").read_text():
            return "the kernel has no overlayfs"
    return None
