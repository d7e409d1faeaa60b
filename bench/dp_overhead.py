"""What differential privacy costs the aggregator: dpfedavg against FedAvg with clipping.

Why it exists: dpfedavg promises FedAvg's O(model) memory and adds drawing one Gaussian per
parameter (ChaCha20 keystream, Box-Muller) in ``finalize``; only a measurement shows what that
costs. Each method runs one round (``N`` in-memory updates of a ``P``-parameter float32 model,
then ``finalize``) in a fresh subprocess, so its peak RSS is its own:

* ``fedavg+clip``: ``FedAvg(clip_norm=1.0)``, the baseline (it reads each update twice too);
* ``dpfedavg``: ``DPFedAvg`` with a fixed bound and a fixed noise key.

Memory is ``peak RSS - RSS after building the updates``, in multiples of one model's size.
Printed: time and memory of each, and dpfedavg's ratios against the baseline of the same run.

Run ``make bench-dp`` or ``python bench/dp_overhead.py --clients 4 --params 20000000``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

from fedcore.strategies import DPFedAvg, FedAvg, Strategy
from fedcore.strategies.dp_noise import NoiseKey
from fedcore.weights import InMemoryWeights, template_of

TENSORS = 8
"""The model is split into this many equal tensors (a model has many, of various sizes)."""


def rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def one(method: str, clients: int, params: int) -> dict[str, float]:
    """Run one round with ``method`` in this process; its seconds and extra memory."""
    size = params // TENSORS
    g = torch.Generator().manual_seed(0)
    base = {f"t{i}": torch.zeros(size) for i in range(TENSORS)}
    updates = [
        {name: torch.randn(size, generator=g) * 1e-3 for name in base} for _ in range(clients)
    ]
    strategy: Strategy
    if method == "dpfedavg":
        dp = DPFedAvg(noise_multiplier=1.0, clip_norm=1.0)
        dp.expected_clients = clients
        dp.noise_key = NoiseKey(bytes(32))
        strategy = dp
    else:
        strategy = FedAvg(clip_norm=1.0)
    before = current_rss()
    start = time.perf_counter()
    strategy.begin_round(template_of(base))
    for update in updates:
        strategy.fold(InMemoryWeights(update), 10)
    strategy.finalize(InMemoryWeights(base))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "models": max(0, rss_bytes() - before) / (4 * params)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--params", type=int, default=20_000_000)
    parser.add_argument("--one", choices=["fedavg+clip", "dpfedavg"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.clients, args.params)))
        return 0
    results = {}
    for method in ("fedavg+clip", "dpfedavg"):
        out = subprocess.run(
            [sys.executable, __file__, "--one", method, "--clients", str(args.clients),
             "--params", str(args.params)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        results[method] = json.loads(out.stdout)
    base, dp = results["fedavg+clip"], results["dpfedavg"]
    print(f"one round, {args.clients} clients, {args.params:,} float32 parameters")
    for method, r in results.items():
        print(f"  {method:12s} {r['seconds']:7.2f} s   peak +{r['models']:.2f} x model")
    print(
        f"  dpfedavg / fedavg+clip: time {dp['seconds'] / base['seconds']:.2f}x, "
        f"memory {dp['models'] / max(base['models'], 1e-9):.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
