"""Peak memory per rank of an FSDP client against a DDP client, on CPU (gloo).

Why it exists: ``parallelism.mode: fsdp`` promises that a client's ranks each hold about
their share of the model, so a client can train a model no rank could hold; only a
measurement shows what a rank really holds at its peak. One ``fedkube run`` per mode trains
the same job (the synthetic task, one client of ``--ranks`` ranks, one round, plain SGD),
and each rank reports its peak RSS minus its RSS before the model was built (after torch,
the process group and FSDP2's code were loaded: ``tests.fixtures.rank_memory``). RSS counts
everything (parameters, gradients, gathered units, download and upload buffers, allocator
slack). Both runs use the same allocator setting (``MALLOC_MMAP_THRESHOLD_``, which
``fedcore.sharding`` sets for itself), so DDP's figure is not inflated by freed blocks.

Printed: each rank's peak in MB and in models, the largest of each mode, and FSDP's
largest rank against DDP's, measured in the same run. With 4 ranks, FSDP's floor is a
quarter of the model (its parameters: gradients are stepped and freed in backward) plus the
gathered units in flight (a few layers: 1/36 of the model each by default) and the
process's fixed overhead.

Run ``make bench-fsdp`` or ``python bench/fsdp_memory.py --params 64000000 --depth 36 --ranks 4``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.rank_memory import model_bytes  # noqa: E402


def run(mode: str, args: argparse.Namespace, tmp: Path) -> tuple[list[int], float]:
    reports = tmp / f"memory-{mode}"
    reports.mkdir()
    config = {
        "params": args.params,
        "depth": args.depth,
        "samples": 16 * args.ranks,
        "batchSize": 4 * args.ranks,
        "localEpochs": 1,
        "momentum": 0.0,
        "memoryReport": str(reports),
    }
    job = {
        "apiVersion": "fedkube.io/v1alpha1",
        "kind": "FederatedJob",
        "metadata": {"name": f"bench-{mode}"},
        "spec": {
            "rounds": 1,
            "seed": 1,
            "task": {"entrypoint": "tests.fixtures.rank_memory:task", "config": config},
            "strategy": {"minClients": 1},
            "clients": [
                {"name": "alpha", "procsPerReplica": args.ranks, "parallelism": {"mode": mode}}
            ],
        },
    }
    job_file = tmp / f"{mode}.yaml"
    job_file.write_text(yaml.safe_dump(job))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "fedcore.cli", "run", str(job_file), "--store", str(tmp / mode)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        sys.exit(f"the {mode} run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    peaks = []
    for rank in range(args.ranks):
        report = json.loads((reports / f"alpha-rank{rank}.json").read_text())
        peaks.append(report["peak_bytes"] - report["baseline_bytes"])
    return peaks, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=64_000_000)
    parser.add_argument("--depth", type=int, default=36, help="linear layers (FSDP units)")
    parser.add_argument("--ranks", type=int, default=4)
    args = parser.parse_args()
    model = model_bytes({"params": args.params, "depth": args.depth})
    print(
        f"model: {args.params:,} parameters, {model / 1e6:.0f} MB float32, {args.depth} "
        f"layers; one client of {args.ranks} CPU ranks (gloo), one round"
    )
    print("memory: peak RSS - RSS before the model was built, per rank")
    with tempfile.TemporaryDirectory(prefix="fedkube-bench-fsdp-") as folder:
        tmp = Path(folder)
        largest: dict[str, int] = {}
        for mode in ("ddp", "fsdp"):
            peaks, seconds = run(mode, args, tmp)
            largest[mode] = max(peaks)
            shown = "  ".join(f"{p / 1e6:6.0f} MB ({p / model:.2f}x)" for p in peaks)
            print(f"{mode:>5}: {shown}   [run {seconds:.0f} s]")
    print(
        f"largest rank: DDP {largest['ddp'] / model:.2f} models, FSDP "
        f"{largest['fsdp'] / model:.2f} models (a {args.ranks}-rank share is "
        f"{1 / args.ranks:.2f}); FSDP/DDP = {largest['fsdp'] / largest['ddp']:.2f}"
    )


if __name__ == "__main__":
    main()
