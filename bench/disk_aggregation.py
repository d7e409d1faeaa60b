"""Disk accumulator benchmark: a round through a real MinIO with its sum in memory or on disk.

Why it exists: ``spec.aggregator.accumulator: disk`` promises an aggregator whose memory does
not grow with the model (goal: peak RSS under 0.25 of one model) and a round that still
closes one update's fold plus one write after the last update arrived. Only a measurement
shows both. It starts a MinIO on loopback (temp data folder), uploads a ``P``-parameter
float32 base model and client updates (stacks of 2048 x 2048 linear layers, written tensor
by tensor), then runs one round per accumulator in a fresh subprocess (its peak RSS is its
own), the way the aggregator runs it: download the base; for each of ``N`` updates, download
it, fold it, delete it; ``finalize_to_file`` the new global model and upload it.

Figures, each against an anchor measured in the same run:

* ``peak RSS / model``: peak RSS minus the RSS after imports and a warm-up round on a tiny
  model, in multiples of one model's bytes;
* ``close / anchor``: time from the last update's download starting to the global model
  uploaded (download, fold, finalize, upload), against one update's download plus one
  upload of the global, timed in the same worker right after.

``--strategy`` picks the weighted sum (FedAvg by default; ``fedavgm``, ``fedadam``,
``fedyogi``, ``fedadagrad`` also step and write their server state, streamed into its file
and uploaded as the aggregator does; ``dpfedavg`` clips and noises with a fixed key).

Both accumulators must produce the same global model and state (sha256 compared). Disk space:
MinIO holds the base, the global and ``--distinct`` update objects (the ``N`` updates cycle
over them: each is downloaded and folded anyway), and the worker's scratch holds the base,
one update, the new model and, for ``disk``, the 2x accumulator (and a server optimizer's
previous-round state is zero here: its new state and state file). The run refuses to start
(and says by how much) unless that fits with ``--margin-gib`` to spare, and removes
everything it wrote when it ends.

Run ``python bench/disk_aggregation.py --params 250000000 --clients 10`` (needs the MinIO
binary: ``make minio``). Results: a table and ``bench/results/disk_aggregation.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the MinIO manager lives with the test fixtures

import torch  # noqa: E402

from fedcore.store.s3 import S3Config, S3Store  # noqa: E402
from fedcore.strategies import (  # noqa: E402
    DPFedAvg,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    Strategy,
)
from fedcore.strategies.dp_noise import NoiseKey  # noqa: E402
from fedcore.weights import TensorSpec, open_weights, sha256_file  # noqa: E402
from fedcore.weights_stream import StreamingWeightsWriter  # noqa: E402
from tests.fixtures.minio import MinioServer, minio_binary  # noqa: E402

RESULTS = REPO / "bench" / "results" / "disk_aggregation.json"
MODES = ("memory", "disk")
STRATEGIES: dict[str, Any] = {
    "fedavg": FedAvg,
    "fedavgm": lambda: FedAvgM(server_momentum=0.9),
    "fedadam": lambda: FedAdam(server_learning_rate=0.01),
    "fedyogi": lambda: FedYogi(server_learning_rate=0.01),
    "fedadagrad": lambda: FedAdagrad(server_learning_rate=0.01),
    "dpfedavg": lambda: DPFedAvg(noise_multiplier=1.0, clip_norm=1.0),
}
"""The strategies that take the disk accumulator, as the benchmark configures them."""
STATE_MODELS = {"fedavgm": 2, "fedadam": 4, "fedyogi": 4, "fedadagrad": 4}
"""Models' worth of scratch disk a round's new server state takes (scratch file, its copy)."""
WIDTH = 2048
GiB = 1 << 30
WARMUP = "warmup/"
"""Key prefix of the tiny model each worker aggregates once before it is measured."""


def template(params: int) -> dict[str, TensorSpec]:
    """A stack of ``WIDTH x WIDTH`` layers (weight and bias) with about ``params`` parameters."""
    layers = max(1, round(params / (WIDTH * WIDTH + WIDTH)))
    specs = {}
    for i in range(layers):
        specs[f"layers.{i:04d}.weight"] = TensorSpec((WIDTH, WIDTH), torch.float32)
        specs[f"layers.{i:04d}.bias"] = TensorSpec((WIDTH,), torch.float32)
    return specs


def model_bytes(specs: dict[str, TensorSpec]) -> int:
    return sum(4 * math.prod(s.shape) for s in specs.values())


def write_model(path: Path, specs: dict[str, TensorSpec], seed: int, scale: float) -> None:
    """Random float32 tensors, generated and written one at a time (never the whole model)."""
    generator = torch.Generator().manual_seed(seed)
    with StreamingWeightsWriter(path, specs, {"kind": "bench"}) as out:
        for name in out.order:
            values = torch.randn(math.prod(specs[name].shape), generator=generator)
            out.write(name, values.mul_(scale))


# -- the measured worker (a fresh process per accumulator) -------------------------------------


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fold_round(
    strategy: Strategy,
    store: S3Store,
    scratch: Path,
    clients: int,
    distinct: int,
    prefix: str,
    out_key: str,
) -> tuple[Path, str, float]:
    """One round as the aggregator runs it; the new model's path, the state's sha256 ("" for
    none) and the seconds from the last update's download starting to the global and its
    state uploaded."""
    base = scratch / "base.safetensors"
    store.get_file(f"{prefix}base.safetensors", base)
    with open_weights(base) as reader:
        strategy.begin_round(reader.template())
    last_start = 0.0
    for i in range(clients):
        last_start = time.perf_counter()
        update = scratch / "update.safetensors"
        store.get_file(f"{prefix}updates/{i % distinct}.safetensors", update)
        with open_weights(update) as reader:
            strategy.fold(reader, 100 + 37 * i)
        update.unlink()
    out = scratch / "global.safetensors"
    if isinstance(strategy, DPFedAvg):
        strategy.noise_key = NoiseKey(bytes(32))  # the same noise in both modes
    with open_weights(base) as reader:
        bad = strategy.finalize_to_file(reader, out, {"kind": "global", "round": 1})
    state = scratch / "state.safetensors"
    bad += strategy.save_state(state, {"kind": "state", "round": 1}) or []
    if bad:
        raise RuntimeError(f"the benchmark's global model is not finite in {bad[:3]}")
    store.put_file(out_key, out)
    state_sha256 = ""
    if state.exists():
        store.put_file(f"{out_key}-state", state)
        state_sha256 = sha256_file(state)
        state.unlink()
        store.delete(f"{out_key}-state")
    base.unlink()
    return out, state_sha256, time.perf_counter() - last_start


def worker(
    mode: str, name: str, config: dict[str, Any], clients: int, distinct: int, scratch: Path
) -> None:
    store = S3Store(S3Config(**config))

    def strategy() -> Strategy:
        made: Strategy = STRATEGIES[name]()
        if mode == "disk":
            made.accumulator, made.accumulator_dir = "disk", scratch
        return made

    # A round on a tiny model first: imports, kernels, the store's connections.
    warm, _, _ = fold_round(strategy(), store, scratch, 2, 1, WARMUP, f"{WARMUP}out")
    warm.unlink()
    store.delete(f"{WARMUP}out")
    baseline = rss_now()
    started = time.perf_counter()
    out, state_sha256, close = fold_round(
        strategy(), store, scratch, clients, distinct, "", f"global-{mode}"
    )
    total = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    anchor_start = time.perf_counter()
    probe = scratch / "anchor.safetensors"
    store.get_file("updates/0.safetensors", probe)
    store.put_file(f"anchor-{mode}", out)
    anchor = time.perf_counter() - anchor_start
    probe.unlink()
    digest = sha256_file(out)
    out.unlink()
    for key in (f"global-{mode}", f"anchor-{mode}"):
        store.delete(key)
    print(
        json.dumps(
            {
                "mode": mode,
                "peak_rss_bytes": peak - baseline,
                "close_seconds": close,
                "anchor_seconds": anchor,
                "total_seconds": total,
                "sha256": digest,
                "state_sha256": state_sha256,
            }
        )
    )


# -- the driver ---------------------------------------------------------------------------------


def disk_needed(size: int, distinct: int, strategy: str = "fedavg") -> int:
    """MinIO: base, global, updates (and the tiny warm-up ones); scratch: base, one update,
    the new model, the 2x accumulator, a server optimizer's new state and its file."""
    return (distinct + 2) * size + (5 + STATE_MODELS.get(strategy, 0)) * size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=250_000_000, help="model parameters")
    parser.add_argument("--clients", type=int, default=10, help="updates folded in the round")
    parser.add_argument(
        "--distinct", type=int, default=0, help="distinct update objects (0: as many as fit)"
    )
    parser.add_argument("--margin-gib", type=float, default=4.0, help="disk left free, GiB")
    parser.add_argument("--modes", default=",".join(MODES), help="accumulators to run")
    parser.add_argument(
        "--strategy", default="fedavg", choices=sorted(STRATEGIES), help="the weighted sum"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="JSON file to write (default: bench/results/disk_aggregation[_<strategy>].json)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(
            args.worker,
            args.strategy,
            json.loads(args.config),
            args.clients,
            args.distinct,
            Path(args.scratch),
        )
        return
    if args.results is None:
        suffix = "" if args.strategy == "fedavg" else f"_{args.strategy}"
        args.results = RESULTS.with_name(f"disk_aggregation{suffix}.json")

    # A stopped run removes its files too (the MinIO data may be tens of GB).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("stopped (SIGTERM)"))
    specs = template(args.params)
    size = model_bytes(specs)
    work = Path(tempfile.mkdtemp(prefix="fedkube-bench-disk-"))
    try:
        free = shutil.disk_usage(work).free - int(args.margin_gib * GiB)
        fits = max(0, (free - (7 + STATE_MODELS.get(args.strategy, 0)) * size) // size)
        distinct = min(args.clients, args.distinct or args.clients, fits)
        if distinct < 1:
            sys.exit(
                f"not enough disk: a {size / GiB:.2f} GiB model needs "
                f"{disk_needed(size, 1, args.strategy) / GiB:.1f} GiB with one update object, "
                f"{(free + args.margin_gib * GiB) / GiB:.1f} GiB are free; lower --params"
            )
        print(
            f"model {size / GiB:.2f} GiB ({len(specs)} tensors), {args.clients} updates over "
            f"{distinct} distinct objects; disk needed "
            f"{disk_needed(size, distinct, args.strategy) / GiB:.1f} GiB",
            flush=True,
        )
        rows = run(args, specs, size, distinct, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(args, size, distinct, rows)


def run(
    args: argparse.Namespace, specs: dict[str, TensorSpec], size: int, distinct: int, work: Path
) -> list[dict[str, Any]]:
    with MinioServer(minio_binary(), work / "minio") as server:
        config: dict[str, Any] = {"endpoint": server.endpoint, "bucket": server.bucket}
        store = S3Store(S3Config(**config), session=server.session())
        local = work / "upload.safetensors"
        write_model(local, specs, 0, 1.0)
        store.put_file("base.safetensors", local)
        for k in range(distinct):
            write_model(local, specs, k + 1, 1e-3)
            store.put_file(f"updates/{k}.safetensors", local)
        tiny = template(WIDTH * WIDTH)
        for key, seed in (("base", 0), ("updates/0", 1)):
            write_model(local, tiny, seed, 1.0)
            store.put_file(f"{WARMUP}{key}.safetensors", local)
        local.unlink()
        env = {**os.environ, **server.env(), "OMP_NUM_THREADS": "1"}
        rows = []
        for mode in args.modes.split(","):
            scratch = work / f"scratch-{mode}"
            scratch.mkdir()
            row = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--worker",
                    mode,
                    "--strategy",
                    args.strategy,
                    "--config",
                    json.dumps(config),
                    "--clients",
                    str(args.clients),
                    "--distinct",
                    str(distinct),
                    "--scratch",
                    str(scratch),
                ],
                env=env,
                check=False,
                capture_output=True,
                text=True,
            )
            if row.returncode != 0:
                sys.exit(f"the {mode} worker failed ({row.returncode}):\n{row.stderr[-4000:]}")
            rows.append(json.loads(row.stdout.strip().splitlines()[-1]))
            shutil.rmtree(scratch)
            print(f"  {mode}: done", flush=True)
    return rows


def report(args: argparse.Namespace, size: int, distinct: int, rows: list[dict[str, Any]]) -> None:
    digests = {(r["sha256"], r["state_sha256"]) for r in rows}
    gib = size / GiB
    print(f"\n{args.strategy}, {args.clients} updates of a {gib:.2f} GiB model through MinIO")
    print(f"{'accumulator':<12} {'peak RSS / model':>17} {'close s':>9} {'anchor s':>9} "
          f"{'close / anchor':>15} {'total s':>9}")  # fmt: skip
    for r in rows:
        r["peak_rss_per_model"] = r["peak_rss_bytes"] / size
        r["close_per_anchor"] = r["close_seconds"] / r["anchor_seconds"]
        print(
            f"{r['mode']:<12} {r['peak_rss_per_model']:>17.3f} {r['close_seconds']:>9.1f} "
            f"{r['anchor_seconds']:>9.1f} {r['close_per_anchor']:>15.2f} "
            f"{r['total_seconds']:>9.1f}"
        )
    print(f"same global model and state from every accumulator: {len(digests) == 1}")
    if len(digests) != 1:
        sys.exit("the accumulators disagree: the global models' or states' sha256 differ")
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(
        json.dumps(
            {
                "strategy": args.strategy,
                "params": args.params,
                "model_bytes": size,
                "clients": args.clients,
                "distinct_updates": distinct,
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
