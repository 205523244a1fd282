"""The tree is the architecture: the core decides and touches nothing; this keeps it so."""

from __future__ import annotations

import ast
from pathlib import Path

import hroute

SRC = Path(hroute.__file__).parent
# What deciding code may use: pure standard library, and the core itself.
FORBIDDEN = {
    "anyio", "aiohttp", "asyncio", "socket", "subprocess", "os", "time", "signal", "select",
    "threading", "shutil", "pathlib", "prometheus_client", "sdnotify", "watchfiles", "random",
}  # fmt: skip
ALLOWED_HROUTE = ("hroute.core",)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_the_core_does_no_io_and_imports_only_downward() -> None:
    problems = []
    core = sorted((SRC / "core").glob("*.py"))
    assert len(core) >= 10, "the core moved: update this test"
    for path in core:
        for name in _imports(path):
            top = name.split(".")[0]
            if top in FORBIDDEN:
                problems.append(f"{path.name} imports {name}")
            if top == "hroute" and not name.startswith(ALLOWED_HROUTE):
                problems.append(f"{path.name} imports {name} (outside the core)")
    assert problems == []


def test_the_config_imports_only_what_is_below_it() -> None:
    below = ("hroute.config", "hroute.core", "hroute.core.errors", "hroute.paths")
    problems = [
        f"{path.name} imports {name}"
        for path in sorted((SRC / "config").glob("*.py"))
        for name in _imports(path)
        if name.split(".")[0] == "hroute" and not name.startswith(below)
    ]
    assert problems == []


def test_nothing_imports_the_composition_root_or_the_cli() -> None:
    problems = []
    for path in SRC.rglob("*.py"):
        if path.name in ("cli.py", "daemon.py") and path.parent == SRC:
            continue
        for name in _imports(path):
            if name in ("hroute.daemon", "hroute.cli"):
                problems.append(f"{path.relative_to(SRC)} imports {name}")
    assert problems == []


def test_the_client_needs_only_the_standard_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import hroute.client; "
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('pydantic', 'aiohttp', 'anyio', 'yaml', 'prometheus_client')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_daemon_does_not_load_aiohttp() -> None:
    # Its probes speak HTTP through edges/probe_http.py: aiohttp loaded cost an idle daemon
    # 10 MiB of memory and most of its CPU (docs/benchmarks.md, 2026-12-05).
    import subprocess
    import sys

    code = (
        "import sys; import hroute.cli, hroute.daemon, hroute.edges.prober; "
        "bad = [m for m in sys.modules if m.split('.')[0] == 'aiohttp']; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _graph() -> dict[str, set[str]]:
    """Module -> the hroute modules it imports (at any depth of the file, TYPE_CHECKING too)."""
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        found = set()
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    found.add(target)
        graph[name] = found
    return graph


def test_no_module_imports_itself_through_others() -> None:
    graph = _graph()
    assert len(graph) > 40, "the tree moved: update this test"
    circles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert circles == []


# The fields of a health record (Health) and of one scope's hold (Held, Cooldown).
HEALTH_FIELDS = {
    "cooldown", "incidents", "decay_anchor", "block", "seen_down", "consecutive_failures",
    "consecutive_successes", "probe_failed", "streaks", "spawned", "last_probe_at",
    "latency_ms", "until", "inferred",
}  # fmt: skip
HEALTH_OWNERS = {"health.py", "cooldowns.py"}


def test_only_the_health_owner_writes_health() -> None:
    problems = []
    for path in SRC.rglob("*.py"):
        if path.parent.name == "core" and path.name in HEALTH_OWNERS:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
                targets = [node.target]
            for target in targets:
                for t in ast.walk(target):
                    if (
                        isinstance(t, ast.Attribute)
                        and t.attr in HEALTH_FIELDS
                        and not (isinstance(t.value, ast.Name) and t.value.id == "self")
                    ):
                        problems.append(f"{path.relative_to(SRC)}:{t.lineno} sets .{t.attr}")
    assert problems == []
