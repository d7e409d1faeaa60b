"""Aggregation benchmark: fedkube's streaming FedAvg against Flower's and a naive average.

Why it exists: the aggregator must stay O(model) in memory whatever the number of clients and
no slower than the reference implementation, and only a measurement shows that. It writes
``N`` client updates of a ``P``-parameter float32 model as safetensors files, then runs each
method in a fresh subprocess (so its peak RSS is its own) and times it end to end, from files
on local disk to the averaged model in memory:

* ``fedkube``: ``fedcore.strategies.FedAvg``, folding one file at a time, tensor by tensor;
* ``fedkube+validation``: the same, each update first passing ``validate_update`` (signature,
  sha256 of the bytes, structure, finite values), as the aggregator really runs;
* ``flower``: Flower's ``aggregate`` (``flwr.server.strategy.aggregate``) on numpy arrays
  loaded from the same files; its time is also given for the ``aggregate`` call alone;
* ``naive``: load every state_dict with torch, then average them;
* ``median``, ``trimmedmean``, ``krum``: fedkube's robust strategies
  (``fedcore.strategies``), which keep the round's updates on local disk
  (``fedcore.strategies.spool``, in the work directory here) and reduce them slice by slice;
  Krum withstands ``min(2, (N - 3) // 2)`` hostile clients. Their aim is at most 3x one
  model of peak memory, against FedAvg's 2.5x; their time includes keeping the updates.
  Measured at 10 x 100M parameters on 2 busy CPUs: median 1.57x, trimmed mean 1.42x, Krum
  2.14x, fedkube's FedAvg 2.12x, Flower's 20.9x.

Memory is ``peak RSS - RSS after imports and a warm-up run on a tiny model``, in multiples of
one model's size. The files are
read once before the runs, so every method reads from a warm page cache. Results: a table
with ratios against Flower from the same run, ``bench/results/aggregation.json`` and a PNG
bar chart next to it.

Run ``make bench`` or ``python bench/aggregation.py --clients 10 --params 100000000``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ROBUST = ("median", "trimmedmean", "krum")
METHODS = ("fedkube", "fedkube+validation", "flower", "naive", *ROBUST)
REFERENCE = "flower"
SAMPLES_PER_TENSOR = 512
"""Elements per tensor each method reports, to check that all methods agree."""
BENCH_KEY = b"bench-only-signing-key-" * 2
"""A fixed key for the validation run; the files live and die inside this benchmark."""
ROUND = 1
WARMUP = "warmup"
"""Subdirectory with a tiny model each worker aggregates once before it is measured."""


def cache_root() -> Path:
    explicit = os.environ.get("FEDKUBE_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "fedkube"


def layer_plan(params: int) -> tuple[int, int]:
    """(layers, width) of a stack of ``width x width`` linear layers with about ``params``."""
    width = 2048 if params >= 16 * (2048 * 2048 + 2048) else max(8, math.isqrt(params // 16))
    layers = max(1, round(params / (width * width + width)))
    return layers, width


def sample_counts(clients: int) -> list[int]:
    return [100 + 37 * k for k in range(clients)]


# --- preparing the files (parent process) ---------------------------------------------------


def make_files(workdir: Path, clients: int, params: int, seed: int) -> dict[str, Any]:
    import torch

    from fedcore.layout import UpdateManifest
    from fedcore.signing import SigningKey, sign_manifest
    from fedcore.weights import save_weights, sha256_file, update_metadata

    layers, width = layer_plan(params)
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
        shapes[f"layers.{i:02d}.weight"] = (width, width)
        shapes[f"layers.{i:02d}.bias"] = (width,)
    # The base is all zeros so every method computes the same number: Σ n_k/n · x_k.
    save_weights(
        workdir / "base.safetensors",
        {name: torch.zeros(shape) for name, shape in shapes.items()},
        {"kind": "global", "round": ROUND - 1},
    )
    base_sha = sha256_file(workdir / "base.safetensors")
    key = SigningKey(BENCH_KEY)
    gen = torch.Generator().manual_seed(seed)
    for k, n in enumerate(sample_counts(clients)):
        client = f"client-{k:03d}"
        path = workdir / f"{client}.safetensors"
        tensors = {name: torch.randn(shape, generator=gen) * 0.01 for name, shape in shapes.items()}
        save_weights(path, tensors, update_metadata(ROUND, client))
        del tensors
        manifest = UpdateManifest(
            client=client,
            round=ROUND,
            base_round=ROUND - 1,
            base_sha256=base_sha,
            num_samples=n,
            update_sha256=sha256_file(path),
            update_bytes=path.stat().st_size,
            dtype="float32",
        )
        (workdir / f"{client}.json").write_bytes(sign_manifest(manifest, key).to_json())
    total = sum(math.prod(s) for s in shapes.values())
    return {"layers": layers, "width": width, "params": total, "model_bytes": 4 * total}


def warm_page_cache(workdir: Path) -> None:
    for path in sorted(workdir.glob("*.safetensors")):
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass


# --- the methods (each in its own worker process) -------------------------------------------


def client_files(workdir: Path) -> list[tuple[Path, int]]:
    paths = sorted(workdir.glob("client-*.safetensors"))
    return list(zip(paths, sample_counts(len(paths)), strict=True))


def run_fedkube(workdir: Path, validate: bool) -> tuple[dict[str, Any], dict[str, float]]:
    from fedcore.signing import SigningKey
    from fedcore.strategies import FedAvg
    from fedcore.validation import validate_update
    from fedcore.weights import open_weights, sha256_file

    base_path = workdir / "base.safetensors"
    with open_weights(base_path) as base:
        template = base.template()
    base_sha = sha256_file(base_path) if validate else ""
    key = SigningKey(BENCH_KEY)
    strategy = FedAvg()
    strategy.begin_round(template)
    for path, n in client_files(workdir):
        if validate:
            with open_weights(base_path) as base:
                manifest = validate_update(
                    (path.with_suffix(".json")).read_bytes(),
                    path,
                    client=path.stem,
                    expected_round=ROUND,
                    base_sha256=base_sha,
                    template=template,
                    max_bytes=1 << 40,
                    key=key,
                    base=base,
                )
            n = manifest.num_samples
        with open_weights(path) as update:
            strategy.fold(update, n)
    with open_weights(base_path) as base:
        result = strategy.finalize(base)
    return {name: t.numpy() for name, t in result.items()}, {}


def run_robust(workdir: Path, name: str) -> tuple[dict[str, Any], dict[str, float]]:
    from fedcore.spec import StrategySpec
    from fedcore.strategies import build_strategy
    from fedcore.strategies.spool import SpooledStrategy
    from fedcore.weights import open_weights

    files = client_files(workdir)
    options: dict[str, Any] = {"name": name}
    if name == "krum":
        options["byzantineClients"] = min(2, (len(files) - 3) // 2)
    strategy = build_strategy(StrategySpec.model_validate(options))
    if not isinstance(strategy, SpooledStrategy):
        raise TypeError(f"{name} is not a spooled strategy")
    strategy.spool_dir = workdir  # the aggregator keeps them in its workdir, on local disk
    base_path = workdir / "base.safetensors"
    with open_weights(base_path) as base:
        strategy.begin_round(base.template())
    for path, n in files:
        with open_weights(path) as update:
            strategy.fold(update, n)
    with open_weights(base_path) as base:
        result = strategy.finalize(base)
    return {name: t.numpy() for name, t in result.items()}, {}


def run_flower(workdir: Path) -> tuple[dict[str, Any], dict[str, float]]:
    from flwr.server.strategy.aggregate import aggregate
    from safetensors.numpy import load_file

    names: list[str] = []
    results = []
    for path, n in client_files(workdir):
        arrays = load_file(str(path))
        names = sorted(arrays)
        results.append(([arrays[name] for name in names], n))
        del arrays
    start = time.perf_counter()
    averaged = aggregate(results)
    aggregate_only = time.perf_counter() - start
    return dict(zip(names, averaged, strict=True)), {"aggregate_only_s": aggregate_only}


def run_naive(workdir: Path) -> tuple[dict[str, Any], dict[str, float]]:
    from safetensors.torch import load_file

    loaded = [(load_file(str(path)), n) for path, n in client_files(workdir)]
    total = sum(n for _, n in loaded)
    first = loaded[0][0]
    averaged = {
        name: sum((sd[name] * n for sd, n in loaded), torch_zeros_like(first[name])) / total
        for name in first
    }
    return {name: t.numpy() for name, t in averaged.items()}, {}


def torch_zeros_like(t: Any) -> Any:
    import torch

    return torch.zeros_like(t)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def worker(method: str, workdir: Path) -> None:
    """Import, settle, then run one method and print its measurements as one JSON line."""
    import numpy as np
    import psutil
    import torch  # noqa: F401  (imported before measuring so its RSS is not counted)

    import fedcore.strategies
    import fedcore.validation  # noqa: F401

    runners: dict[str, Callable[[Path], tuple[dict[str, Any], dict[str, float]]]] = {
        "fedkube": lambda d: run_fedkube(d, validate=False),
        "fedkube+validation": lambda d: run_fedkube(d, validate=True),
        "flower": run_flower,
        "naive": run_naive,
        **{name: lambda d, name=name: run_robust(d, name) for name in ROBUST},
    }
    # A run on a tiny model first: the code pages of the kernels a method uses, lazily
    # loaded shared libraries and thread pools are then in place and not counted as its
    # memory (tens of MiB, which would otherwise swamp small --params).
    runners[method](workdir / WARMUP)
    gc.collect()
    rss_baseline = psutil.Process().memory_info().rss
    cpu_start = _cpu_seconds()
    start = time.perf_counter()
    result, extra = runners[method](workdir)
    seconds = time.perf_counter() - start
    cpu_seconds = _cpu_seconds() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    samples = {}
    for name, array in sorted(result.items()):
        step = max(1, array.size // SAMPLES_PER_TENSOR)
        flat = np.asarray(array).ravel()[::step][:SAMPLES_PER_TENSOR]
        samples[name] = flat.astype(np.float64).tolist()
    print(
        json.dumps(
            {
                "method": method,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "peak_rss": peak,
                "rss_baseline": rss_baseline,
                "peak_above_baseline": peak - rss_baseline,
                "samples": samples,
                **extra,
            }
        )
    )


# --- reporting ------------------------------------------------------------------------------


def run_method(method: str, workdir: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", method, "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    line = proc.stdout.strip().splitlines()[-1]
    measured: dict[str, Any] = json.loads(line)
    return measured


def max_sample_diff(a: dict[str, list[float]], b: dict[str, list[float]]) -> float:
    worst = 0.0
    for name, values in a.items():
        for x, y in zip(values, b[name], strict=True):
            worst = max(worst, abs(x - y))
    return worst


def print_table(setup: dict[str, Any], runs: dict[str, dict[str, Any]]) -> None:
    model = setup["model_bytes"]
    ref = runs.get(REFERENCE)
    print()
    print(
        f"aggregation: {setup['clients']} clients x {setup['params'] / 1e6:.1f}M float32 params "
        f"({model / 2**20:.1f} MiB per model, {setup['layers']} layers of "
        f"{setup['width']}x{setup['width']}), {setup['threads']} torch threads, warm page cache, "
        f"fastest of {setup['repeat']} run(s) per method"
    )
    header = (
        f"{'method':<20}{'wall s':>8}{'vs flower':>10}{'cpu s':>8}{'vs flower':>10}"
        f"{'peak mem x model':>18}{'vs flower':>10}"
    )
    print(header)
    print("-" * len(header))
    for method, run in runs.items():
        mem = run["peak_above_baseline"] / model
        t_ratio = f"{run['seconds'] / ref['seconds']:.2f}x" if ref else "-"
        c_ratio = f"{run['cpu_seconds'] / ref['cpu_seconds']:.2f}x" if ref else "-"
        m_ratio = f"{run['peak_above_baseline'] / ref['peak_above_baseline']:.2f}x" if ref else "-"
        print(
            f"{method:<20}{run['seconds']:>8.2f}{t_ratio:>10}{run['cpu_seconds']:>8.2f}"
            f"{c_ratio:>10}{mem:>18.2f}{m_ratio:>10}"
        )
    load = setup["load_average"]
    print(
        f"load average {load[0]:.1f} / {load[1]:.1f} (1 / 5 min) on {setup['cpus']} CPUs"
        + (
            ": other work competed for the CPUs; cpu s compares more steadily than wall s"
            if load[1] > 0.5 * setup["cpus"]
            else ""
        )
    )
    for method in ROBUST:
        if method in runs:
            mem = runs[method]["peak_above_baseline"] / model
            verdict = "within" if mem <= 3.0 else "ABOVE"
            print(f"{method}: peak {mem:.2f}x one model, {verdict} the aim of 3x")
    if ref and "aggregate_only_s" in ref:
        print(
            f"(flower: {ref['aggregate_only_s']:.2f} s of its time is the aggregate() call "
            "itself; the rest is loading the files)"
        )
    if ref:
        for method, run in runs.items():
            if method != REFERENCE and method not in ROBUST:  # those differ by design
                diff = max_sample_diff(run["samples"], ref["samples"])
                print(f"max |{method} - flower| over sampled elements: {diff:.2e}")


def draw_chart(setup: dict[str, Any], runs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(runs)
    model = setup["model_bytes"]
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.4))
    colors = [
        "#2a7ab9" if m.startswith("fedkube") else "#7b4fa0" if m in ROBUST else "#999999"
        for m in methods
    ]
    xs = list(range(len(methods)))
    walls = [runs[m]["seconds"] for m in methods]
    cpus = [runs[m]["cpu_seconds"] for m in methods]
    mems = [runs[m]["peak_above_baseline"] / model for m in methods]
    ax_time.bar([x - 0.2 for x in xs], walls, width=0.4, color=colors, label="wall")
    ax_time.bar([x + 0.2 for x in xs], cpus, width=0.4, color=colors, alpha=0.45, label="cpu")
    ax_time.set_ylabel("files to averaged model [s]")
    ax_time.legend(title="time")
    for x, wall, cpu in zip(xs, walls, cpus, strict=True):
        ax_time.annotate(f"{wall:.1f}", (x - 0.2, wall), ha="center", va="bottom", fontsize=8)
        ax_time.annotate(f"{cpu:.1f}", (x + 0.2, cpu), ha="center", va="bottom", fontsize=8)
    ax_mem.bar(xs, mems, color=colors)
    ax_mem.set_ylabel("peak memory above baseline [x one model]")
    ax_mem.axhline(2.5, color="#c0392b", linestyle="--", linewidth=1, label="aim FedAvg: 2.5x")
    if any(m in ROBUST for m in methods):
        ax_mem.axhline(3.0, color="#8e44ad", linestyle=":", linewidth=1, label="aim robust: 3x")
    ax_mem.legend()
    for x, mem in zip(xs, mems, strict=True):
        ax_mem.annotate(f"{mem:.2f}x", (x, mem), ha="center", va="bottom", fontsize=9)
    for ax in (ax_time, ax_mem):
        ax.set_xticks(xs, methods, rotation=15)
    fig.suptitle(
        f"Aggregating {setup['clients']} updates of a {setup['params'] / 1e6:.0f}M-parameter "
        f"float32 model (load average {setup['load_average'][1]:.1f} on {setup['cpus']} CPUs)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10, help="number of client updates (10)")
    parser.add_argument(
        "--params", type=int, default=100_000_000, help="float32 parameters per model (1e8)"
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per method; the fastest is reported (1)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="where the update files go (temporary)")
    parser.add_argument("--keep", action="store_true", help="keep the update files")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        worker(args.worker, args.workdir)
        return 0

    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        parser.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    if args.clients < 1 or args.params < 16 or args.repeat < 1:
        parser.error("--clients and --repeat must be >= 1, --params >= 16")

    import torch

    if args.workdir is None:
        root = cache_root() / "bench"
        root.mkdir(parents=True, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="aggregation-", dir=root))
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        setup = make_files(workdir, args.clients, args.params, args.seed)
        setup.update(clients=args.clients, threads=torch.get_num_threads(), repeat=args.repeat)
        print(
            f"wrote {args.clients} updates of {setup['model_bytes'] / 2**20:.0f} MiB to "
            f"{workdir} in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        (workdir / WARMUP).mkdir(exist_ok=True)
        make_files(workdir / WARMUP, 3, 4096, args.seed)  # Krum needs 3
        warm_page_cache(workdir)
        runs: dict[str, dict[str, Any]] = {}
        # Round-robin repeats: load from other processes on the machine then hits every
        # method alike, and the fastest of each method's runs is the least disturbed one.
        for attempt in range(1, args.repeat + 1):
            for method in methods:
                print(f"running {method} ({attempt}/{args.repeat}) ...", flush=True)
                measured = run_method(method, workdir)
                if method not in runs or measured["seconds"] < runs[method]["seconds"]:
                    runs[method] = measured
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    setup.update(load_average=os.getloadavg(), cpus=os.cpu_count() or 1)
    print_table(setup, runs)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"aggregation-{args.clients}x{args.params}"
    summary = {
        "setup": setup,
        "runs": {m: {k: v for k, v in r.items() if k != "samples"} for m, r in runs.items()},
    }
    (args.out / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    draw_chart(setup, runs, args.out / f"{stem}.png")
    print(f"results: {args.out / stem}.json, {args.out / stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
