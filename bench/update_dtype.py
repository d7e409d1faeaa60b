"""What ``strategy.updateDtype`` costs in accuracy: float32, bfloat16 and int8 deltas side by side.

Why it exists: narrower updates save upload bytes (bfloat16 half, int8 a quarter) at some
rounding error; only training shows whether that error changes what the federation learns.
It is not a test: it prints a table.

What one run is. A task's clients (``fedcore.tasks.digits`` or ``fedcore.tasks.causal_lm``),
all selected every round, each training the global model with the task's own ``train``
(one process, no store, seeded as ``fedcore.client`` seeds it); each delta goes through the
wire format (float32: as is; bfloat16: cast and back; int8: ``quantise_tensor`` and
``dequantise`` of ``fedcore.quantization``, exactly what the client writes and the aggregator
reads) and FedAvg adds the ``num_samples``-weighted mean in float32. The same seeds, shards
and training for every dtype, so the columns differ only by the wire format. The final
global model is scored with the task's ``evaluate``; the bytes are the update's tensor data.

Run ``make bench-update-dtype``, or ``python bench/update_dtype.py`` (``--task causal_lm``,
``--seeds 0 1 2``, ``--rounds``).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from fedcore.quantization import dequantise, quantise_tensor
from fedcore.tasks.base import TaskContext, derive_seed, global_batch_size, load_task, train_loader
from fedcore.weights import FLOAT_DTYPES

TASKS: dict[str, tuple[str, dict[str, Any], int]] = {
    "digits": ("fedcore.tasks.digits:task", {"hidden": 64, "partition": "iid"}, 10),
    "causal_lm": (
        "fedcore.tasks.causal_lm:task",
        {"layers": 2, "width": 128, "heads": 4, "context": 64, "rank": 8, "samples": 256},
        8,
    ),
}
"""Task -> (entrypoint, config, default rounds). The LM is small enough for a CPU."""
WIRES = ("float32", "bfloat16", "int8")
CLIENTS = 3


def wire(delta: torch.Tensor, dtype: str) -> tuple[torch.Tensor, int]:
    """The delta as the aggregator reads it after the wire, and its bytes on the wire."""
    if delta.dtype not in FLOAT_DTYPES or dtype == "float32":
        return delta, delta.numel() * delta.element_size()
    if dtype == "bfloat16":
        return delta.to(torch.bfloat16).to(delta.dtype), delta.numel() * 2
    q, scales = quantise_tensor(delta)
    return dequantise(q, scales).to(delta.dtype), q.numel() + scales.numel() * 4


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def run(task_name: str, dtype: str, seed: int, rounds: int) -> tuple[dict[str, float], int]:
    entrypoint, config, _ = TASKS[task_name]
    task = load_task(entrypoint)

    def ctx(r: int, client: int | None) -> TaskContext:
        return TaskContext(
            config=config,
            seed=seed,
            round=r,
            client=None if client is None else f"c{client}",
            client_index=client,
            num_clients=CLIENTS,
        )

    seed_everything(derive_seed(seed, "init"))
    model: nn.Module = task.build_model(ctx(0, None))
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    data = [task.train_dataset(ctx(1, k)) for k in range(CLIENTS)]
    sizes = [len(d) for d in data]  # type: ignore[arg-type]
    update_bytes = 0
    for r in range(1, rounds + 1):
        total = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_state.items()}
        for k in range(CLIENTS):
            c = ctx(r, k)
            model.load_state_dict(global_state)
            seed_everything(derive_seed(seed, "train", r, c.client, 0))
            loader = train_loader(
                data[k],
                batch_size=global_batch_size(task, c),
                ctx=c,
                shuffle_seed=derive_seed(seed, "shuffle", r, c.client),
            )
            task.train(model, loader, c)
            update_bytes = 0
            for name, local in model.state_dict().items():
                received, size = wire(local.detach() - global_state[name], dtype)
                update_bytes += size
                total[name] += received.to(torch.float64) * sizes[k] / sum(sizes)
        global_state = {k: (v + total[k]).to(v.dtype) for k, v in global_state.items()}
    model.load_state_dict(global_state)
    with torch.no_grad():
        metrics = task.evaluate(model, ctx(rounds, None))
    return metrics, update_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="digits")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    rounds = args.rounds or TASKS[args.task][2]
    torch.set_num_threads(1)  # small models: threads only contend
    print(f"task {args.task}, {CLIENTS} clients, {rounds} rounds, seeds {args.seeds}")
    rows: dict[str, list[dict[str, float]]] = {}
    sizes: dict[str, int] = {}
    for dtype in WIRES:
        for seed in args.seeds:
            start = time.perf_counter()
            metrics, size = run(args.task, dtype, seed, rounds)
            rows.setdefault(dtype, []).append(metrics)
            sizes[dtype] = size
            shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
            print(f"  {dtype:>8} seed {seed}: {shown} ({time.perf_counter() - start:.0f}s)")
    print()
    keys = sorted(rows["float32"][0])
    print(f"| updateDtype | {' | '.join(keys)} | update bytes | vs float32 |")
    print(f"|---|{'---|' * len(keys)}---|---|")
    for dtype in WIRES:
        cells = []
        for key in keys:
            values = [m[key] for m in rows[dtype]]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} ± {spread:.4f}")
        ratio = sizes[dtype] / sizes["float32"]
        print(f"| {dtype} | {' | '.join(cells)} | {sizes[dtype]:,} | {ratio:.3f} |")
    base = [m["loss"] for m in rows["float32"]]
    for dtype in WIRES[1:]:
        diffs = [m["loss"] - b for m, b in zip(rows[dtype], base, strict=True)]
        print(f"{dtype} - float32 final loss, per seed: {', '.join(f'{d:+.4f}' for d in diffs)}")
    return 0 if all(math.isfinite(m["loss"]) for ms in rows.values() for m in ms) else 1


if __name__ == "__main__":
    sys.exit(main())
