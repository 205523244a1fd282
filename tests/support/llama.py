"""A real llama-server and a tiny model for tests and benchmarks (see TESTING.md).

`HROUTE_LLAMA_SERVER` names the binary (`make llama-server` builds one; `.ci/run` sets it).
Without it, tests that need the binary skip with the reason, unless `HROUTE_REQUIRE_LLAMA=1`
(CI), where a missing binary is a failure instead.
"""

from __future__ import annotations

import os
from pathlib import Path

HOW = "build it with `make llama-server` and export HROUTE_LLAMA_SERVER=<path it prints>"


def llama_server_problem(env: dict[str, str] | None = None) -> str | None:
    """Why no usable llama-server binary is configured; None when there is one."""
    env = os.environ if env is None else env
    path = env.get("HROUTE_LLAMA_SERVER")
    if not path:
        return f"HROUTE_LLAMA_SERVER is not set; {HOW}"
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        return f"HROUTE_LLAMA_SERVER={path} is not an executable file; {HOW}"
    return None


def require_llama_server() -> str:
    """The binary's path; skip the test (fail it when HROUTE_REQUIRE_LLAMA=1) without one."""
    import pytest  # here, so that the benchmark can use this module without pytest

    problem = llama_server_problem()
    if problem is None:
        return os.environ["HROUTE_LLAMA_SERVER"]
    if os.environ.get("HROUTE_REQUIRE_LLAMA") == "1":
        pytest.fail(f"HROUTE_REQUIRE_LLAMA=1 but {problem}", pytrace=False)
    pytest.skip(problem)


def tiny_model(directory: Path) -> Path:
    """Write the tiny random-weight GGUF into `directory` (once) and return its path."""
    from tests.support.tiny_gguf import write_tiny_gguf

    path = directory / "tiny.gguf"
    if not path.exists():
        write_tiny_gguf(path)
    return path


def llama_command(binary: str, model: Path, port: int) -> list[str]:
    """The command line hroute supervises: the tiny model, loopback, a small context."""
    return [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", "256"]
