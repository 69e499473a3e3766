"""Throughput and latency of ``aligngpt serve`` under concurrent clients, batched vs one request at a time.

Starts ``aligngpt serve`` on 127.0.0.1 (a random free port, loopback only) twice, as a separate process so the
clients do not compete with it for the GIL: with the batching worker (``--max-batch-size`` N) and with batches of
one. Each time, ``--clients`` threads send
``--requests`` chat completions each (an image + a question, greedy, ``--max-tokens`` new tokens), stopping early
at ``--max-seconds``. Prints requests/s, p50/p95 latency, failures, and the batched / one-at-a-time ratio.

    HF_HUB_OFFLINE=1 python benchmarks/bench_serve.py --clients 8 --requests 4 --max-tokens 16

By default a tiny random model is built in a temporary folder; ``--model PATH`` benchmarks any model folder.
Exits with status 1 if any request failed.

With ``--vllm-python PATH`` (the vLLM environment's Python, e.g. ``.venv-vllm/bin/python``; see
scripts/build-vllm-env.sh) the second run is vLLM's OpenAI server with the aligngpt plugin on the same model instead
of batches of one, and the ratio is vLLM / aligngpt (throughput) plus both p50/p95; the default tiny model then has
a head size of 64 (vLLM's CPU attention has no kernel for the usual tiny model's 16), and ``--size`` picks a larger
random LLaMA (``small``: 512 wide, 8 layers; ``medium``: 1024 wide, 12 layers). vLLM runs ``aligngpt_vllm.serve``
(what ``aligngpt serve --engine vllm`` runs), eager unless ``--vllm-compile``; both servers in ``--dtype`` (float32):

    HF_HUB_OFFLINE=1 python benchmarks/bench_serve.py --clients 16 --requests 4 --vllm-python .venv-vllm/bin/python \
        [--size small]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 600
# --size: the random LLaMA of the built model (hidden size, MLP width, layers; heads of 64): "tiny" is the tests' model,
# where per-step overheads dominate; the larger ones make the model's own compute matter.
SIZES = {"tiny": (64, 128, 2), "small": (512, 1408, 8), "medium": (1024, 2816, 12)}
VLLM_KV_CACHE_GIB = "2"  # vLLM's CPU backend otherwise reserves nearly all free memory
HTTP_OK = 200
MAX_CLIENTS = 64
REQUEST_TIMEOUT_S = 300
PERCENT = 100


@dataclass
class RunStats:
    label: str
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    wall_s: float = 0.0
    health: dict = field(default_factory=dict)

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q / PERCENT * (len(ordered) - 1)))]

    def summary(self) -> dict:
        done = len(self.latencies)
        return {
            "mode": self.label,
            "requests_ok": done,
            "failures": len(self.failures),
            "wall_s": round(self.wall_s, 3),
            "requests_per_s": round(done / self.wall_s, 3) if self.wall_s else 0.0,
            "tokens_per_s": round(self.completion_tokens / self.wall_s, 1) if self.wall_s else 0.0,
            "latency_p50_s": round(self.percentile(50), 3),
            "latency_p95_s": round(self.percentile(95), 3),
            "latency_mean_s": round(statistics.fmean(self.latencies), 3) if self.latencies else None,
            "batches_run": self.health.get("batches_run"),
            "largest_batch": self.health.get("largest_batch"),
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def image_url(seed: int) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), ((seed * 53) % 256, (seed * 97) % 256, (seed * 31) % 256)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


class ServerProcess:
    """``aligngpt serve`` on a loopback port in a child process."""

    def __init__(self, model_dir: Path, args, batch_size: int, vllm_python: str | None = None):
        self.port = free_port()
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        if vllm_python:
            self.command = [
                vllm_python, "-m", "aligngpt_vllm.serve", "--model", str(model_dir), "--served-model-name", "bench",
                "--host", HOST, "--port", str(self.port), "--dtype", args.dtype,
                "--max-num-seqs", str(max(16, args.clients)), "--uvicorn-log-level", "warning",
            ]  # fmt: skip
            if not args.vllm_compile:
                self.command.append("--enforce-eager")
            self.env = {**self.env, "VLLM_CPU_KVCACHE_SPACE": VLLM_KV_CACHE_GIB, "VLLM_LOGGING_LEVEL": "WARNING"}
            self.env.pop("PYTHONPATH", None)
            self.process = None
            return
        self.command = [
            sys.executable, "-m", "aligngpt.cli", "serve", "--model", str(model_dir), "--host", HOST,
            "--port", str(self.port), "--model-name", "bench", "--max-batch-size", str(batch_size),
            "--max-queue", str(max(64, 2 * args.clients)), "--batch-wait-ms", str(args.batch_wait_ms),
            "--dtype", args.dtype, "--log-level", "warning",
        ]  # fmt: skip
        if args.threads:
            self.command += ["--threads", str(args.threads)]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> str:
        import httpx

        self.process = subprocess.Popen(self.command, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://{HOST}:{self.port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == HTTP_OK:
                    return base
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in time")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(STARTUP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()


def run_clients(base: str, args, label: str) -> RunStats:
    import httpx

    stats = RunStats(label)
    lock = threading.Lock()
    barrier = threading.Barrier(args.clients)
    deadline_holder: list[float] = []

    def client(index: int) -> None:
        with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S) as http:
            barrier.wait()
            for turn in range(args.requests):
                if time.monotonic() > deadline_holder[0]:
                    return
                payload = {
                    "model": "bench",
                    "temperature": 0,
                    "max_tokens": args.max_tokens,
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "image_url", "image_url": {"url": image_url(index * 31 + turn)}},
                                {"type": "text", "text": f"Client {index}, question {turn}: what is shown?"},
                            ],
                        }
                    ],
                }
                start = time.perf_counter()
                try:
                    response = http.post("/v1/chat/completions", json=payload)
                    ok = response.status_code == HTTP_OK
                    detail = response.text[:200]
                except httpx.HTTPError as err:
                    ok, detail = False, repr(err)
                elapsed = time.perf_counter() - start
                with lock:
                    if ok:
                        stats.latencies.append(elapsed)
                        stats.completion_tokens += response.json()["usage"]["completion_tokens"]
                    else:
                        stats.failures.append(detail)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    started = time.perf_counter()
    deadline_holder.append(time.monotonic() + args.max_seconds)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats.wall_s = time.perf_counter() - started
    health = httpx.get(f"{base}/health")
    stats.health = health.json() if health.headers.get("content-type", "").startswith("application/json") else {}
    return stats


def benchmark(model_dir: Path, args, batch_size: int, label: str, vllm_python: str | None = None) -> RunStats:
    with ServerProcess(model_dir, args, batch_size, vllm_python) as base:
        run_clients(base, argparse.Namespace(**{**vars(args), "clients": 1, "requests": 1}), "warm-up")
        return run_clients(base, args, label)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model folder (default: a tiny random model built in a temp folder)")
    parser.add_argument("--clients", type=int, default=8, help=f"concurrent clients (1..{MAX_CLIENTS})")
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=10.0)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="stop issuing requests after this long")
    parser.add_argument("--threads", type=int, default=1, help="server torch threads (0: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--vllm-python", help="compare with vLLM's server run by this Python (the vLLM venv's)")
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="tiny",
        help="LLaMA of the built model: tiny 64x2, small 512x8, medium 1024x12 (heads of 64)",
    )
    parser.add_argument("--dtype", default="float32", help="both servers' dtype")
    parser.add_argument(
        "--vllm-compile",
        action="store_true",
        help="let vLLM compile its model (torch.compile; start-up takes minutes) instead of running it eager",
    )
    args = parser.parse_args()
    if not 1 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients must be between 1 and {MAX_CLIENTS}")

    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            model_dir = Path(args.model)
        else:
            sys.path.insert(0, str(REPO_ROOT))
            from tests.helpers import tiny_model_dir
            from tests.serving.models import LlamaSize, tiny_vllm_model_dir

            if args.vllm_python or args.size != "tiny":
                model_dir = tiny_vllm_model_dir(Path(tmp), LlamaSize(*SIZES[args.size]))
            else:
                model_dir = tiny_model_dir(Path(tmp))
        batched = benchmark(model_dir, args, args.max_batch_size, f"batched (max {args.max_batch_size})")
        if args.vllm_python:
            single = benchmark(model_dir, args, 0, "vLLM (plugin)", args.vllm_python)
        else:
            single = benchmark(model_dir, args, 1, "one at a time")

    rows = [batched.summary(), single.summary()]
    ratio = rows[0]["requests_per_s"] / rows[1]["requests_per_s"] if rows[1]["requests_per_s"] else float("nan")
    model = args.model or f"random {args.size} model"
    print(f"{model}, {args.dtype}: {args.clients} clients x {args.requests} requests, {args.max_tokens} new tokens "
          f"each, aligngpt server torch threads: {args.threads or 'default'}")  # fmt: skip
    header = f"{'mode':<22}{'ok':>5}{'fail':>6}{'req/s':>9}{'tok/s':>9}{'p50 s':>8}{'p95 s':>8}{'batches':>9}{'max':>5}"
    print(header)
    for row in rows:
        print(
            f"{row['mode']:<22}{row['requests_ok']:>5}{row['failures']:>6}{row['requests_per_s']:>9.2f}"
            f"{row['tokens_per_s']:>9.1f}{row['latency_p50_s']:>8.2f}{row['latency_p95_s']:>8.2f}"
            f"{str(row['batches_run'] or '-'):>9}{str(row['largest_batch'] or '-'):>5}"
        )
    if args.vllm_python:
        ratio = 1 / ratio if ratio else float("nan")
        ours, vllm = rows
        print(f"throughput vLLM / aligngpt serve: {ratio:.2f}x")
        for name in ("latency_p50_s", "latency_p95_s"):
            print(f"{name}: vLLM {vllm[name]:.2f} s, aligngpt serve {ours[name]:.2f} s")
    else:
        print(f"throughput batched / one-at-a-time: {ratio:.2f}x")
    for stats in (batched, single):
        for failure in stats.failures[:3]:
            print(f"failure ({stats.label}): {failure}")
    if args.json:
        args.json.write_text(json.dumps({"runs": rows, "throughput_ratio": ratio}, indent=2) + "\n")
    return 1 if batched.failures or single.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
