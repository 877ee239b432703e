"""How llama.cpp's OpenMP threads wait, default against short spinning, in process (issue 19).

libgomp reads `GOMP_SPINCOUNT` / `OMP_WAIT_POLICY` once, when it loads, so each setting runs in a
process of its own: per round, one child per setting (order swapped each round) runs `BatchEngine` on
SmolLM2-135M (2 threads) at 4 concurrent sequences of 64 tokens, temperature 0, and reports tokens/s,
TTFT p50 and CPU per token (`benchmarks.threadpool.run_cell`). The figures are medians of per-round ratios.

    PYTHONPATH=. python -m benchmarks.omp_wait [--rounds 4] [--spin 10000] [--out benchmarks/omp_wait.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHILD = """
import json, sys
from benchmarks.threadpool import GGUF, REPO, run_cell
from server.engine.batch_engine import BatchEngine
from server.engine.llama_model import LlamaModel, ModelOptions
from server.registry import resolve_gguf
engine = BatchEngine(LlamaModel(resolve_gguf(GGUF, registry_dir=REPO, model_dirs=[]),
                                ModelOptions(n_ctx=512, parallel=8, n_threads=2)))
run_cell(engine, 4, "warm")
cells = [run_cell(engine, 4, f"{sys.argv[1]}-{k}") for k in range(2)]
engine.close()
print(json.dumps({key: sum(c[key] for c in cells) / len(cells) for key in cells[0]}))
"""


def child(tag: str, env_extra: dict[str, str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **env_extra}
    out = subprocess.run([sys.executable, "-c", CHILD, tag], env=env, cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=900)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--spin", default="10000", help="GOMP_SPINCOUNT of the short-spin side")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "omp_wait.json")
    args = parser.parse_args()
    settings = {"default": {}, f"spin{args.spin}": {"GOMP_SPINCOUNT": args.spin}}
    names = list(settings)
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        record: dict[str, Any] = {"round": r, "order": order}
        for name in order:
            record[name] = child(f"r{r}-{name}", settings[name])
        rounds.append(record)
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
    summary = {metric: statistics.median(rd[names[1]][metric] / rd[names[0]][metric] for rd in rounds)
               for metric in ("tok_s", "ttft_p50_ms", "cpu_ms_per_token")}
    sys.stdout.write(f"{names[1]} / default, median of per-round ratios: {json.dumps(summary)}\n")
    args.out.write_text(json.dumps({"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "load_average": list(os.getloadavg()), "settings": settings,
                                    "ratios": summary, "rounds": rounds}, indent=1) + "\n")


if __name__ == "__main__":
    main()
