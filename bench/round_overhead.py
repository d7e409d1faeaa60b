"""A round's fixed cost and the start-up to round 1: ``fedkube run`` next to Flower's
simulation engine, with the same tiny model and the same ten clients, in the same run.

Why it exists: with a tiny model a round's work is a few milliseconds of training, so what
a round takes is the framework's own overhead (polling, the store, signing and checking
updates, evaluating); and before round 1 every process of a local run has to start. Both
are what a user of ``fedkube run`` waits for on a laptop, and Flower's simulation engine is
the usual way to run the same experiment on one machine.

The job: ``fedcore.tasks.synthetic`` (an MLP of ``--params`` parameters, 256 samples per
client, one local epoch of batch 64, the aggregator scoring 1,024 held-out samples after
every round), ``--clients`` clients of one process each, FedAvg over all of them,
``--rounds`` rounds. Flower gets the same model, data sizes, training loop and server-side
evaluation through ``flwr.simulation.run_simulation`` (Ray backend, one CPU per client
actor, its defaults otherwise).

Rows (median of ``--repeats`` runs, interleaved so a busy moment hits every row alike):

* ``fedkube run --fork-server``: processes forked from a fork server (``fedcore.zygote``);
* ``fedkube run``: the default, every process started from scratch (the reference for
  the start-up);
* ``Flower simulation``: the baseline.

Figures: ``startup_s``, from launching the command to the line (fedkube: the round's line
on stdout; Flower: its ``aggregate_fit`` of round 1 returning) that says round 1 is done;
``per_round_s``, (time of the last round - time of round 1) / (rounds - 1). Each is
measured from outside, on the line as it arrives.

Run ``python bench/round_overhead.py`` (needs ``pip install -e '.[bench]'`` for Flower).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"

ROUND_LINE = re.compile(r"^round\s+(\d+)/(\d+)\s+clients")
FLOWER_LINE = re.compile(r"^BENCH round (\d+)$")

SAMPLES = 256
TEST_SAMPLES = 1024
BATCH = 64
FEATURES = 64
CLASSES = 10


def job_yaml(clients: int, rounds: int, params: int) -> str:
    names = "\n".join(f"    - name: c{i:02d}" for i in range(clients))
    return f"""\
apiVersion: fedkube.io/v1alpha1
kind: FederatedJob
metadata:
  name: round-overhead
spec:
  rounds: {rounds}
  seed: 0
  task:
    entrypoint: fedcore.tasks.synthetic:task
    config:
      params: {params}
      samples: {SAMPLES}
      testSamples: {TEST_SAMPLES}
      localEpochs: 1
      batchSize: {BATCH}
  strategy:
    name: fedavg
    minClients: {clients}
    roundTimeoutSeconds: 600
  clients:
{names}
"""


def timed_lines(argv: list[str], pattern: re.Pattern[str], log: Path) -> dict[int, float]:
    """Run ``argv``; seconds from its launch to each line matching ``pattern`` (group 1: the
    round), keyed by round. Everything it prints goes to ``log``."""
    start = time.monotonic()
    seen: dict[int, float] = {}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("w") as out:
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            match = pattern.match(line.strip())
            if match:
                seen.setdefault(int(match.group(1)), time.monotonic() - start)
        code = proc.wait()
    if code != 0:
        raise SystemExit(f"{' '.join(argv)} exited {code}; output in {log}")
    return seen


def figures(seen: dict[int, float], rounds: int) -> dict[str, float]:
    missing = [r for r in range(1, rounds + 1) if r not in seen]
    if missing:
        raise SystemExit(f"rounds {missing} were never reported")
    return {"startup_s": seen[1], "per_round_s": (seen[rounds] - seen[1]) / (rounds - 1)}


def fedkube(work: Path, job: Path, fork_server: bool, log: Path, rounds: int) -> dict[str, float]:
    argv = [sys.executable, "-m", "fedcore.cli", "run", str(job), "--store", str(work)]
    argv += ["--fresh"] + (["--fork-server"] if fork_server else [])
    return figures(timed_lines(argv, ROUND_LINE, log), rounds)


def flower(args: argparse.Namespace, log: Path) -> dict[str, float]:
    argv = [sys.executable, __file__, "--flower-child", "--clients", str(args.clients)]
    argv += ["--rounds", str(args.rounds), "--params", str(args.params)]
    return figures(timed_lines(argv, FLOWER_LINE, log), args.rounds)


# ---- the Flower side (runs in a child process) --------------------------------------------------


def _flower_child(args: argparse.Namespace) -> None:
    """Flower's simulation engine on the same task; prints ``BENCH round N`` as each round's
    aggregation returns."""
    import logging

    import numpy as np
    import torch
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    from fedcore.tasks.synthetic import SyntheticConfig

    logging.getLogger("flwr").setLevel(logging.WARNING)
    cfg = SyntheticConfig(params=args.params, samples=SAMPLES, test_samples=TEST_SAMPLES)
    hidden = cfg.hidden()

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(FEATURES, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, CLASSES),
        )

    teacher = torch.randn(FEATURES, CLASSES, generator=torch.Generator().manual_seed(1))

    def data(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, FEATURES, generator=torch.Generator().manual_seed(seed))
        return x, (x @ teacher).argmax(dim=1)

    def get(m: torch.nn.Module) -> list[np.ndarray[Any, Any]]:
        return [p.detach().numpy().copy() for p in m.state_dict().values()]

    def put(m: torch.nn.Module, arrays: list[np.ndarray[Any, Any]]) -> None:
        keys = list(m.state_dict())
        m.load_state_dict({k: torch.from_numpy(a) for k, a in zip(keys, arrays, strict=True)})

    class Client(NumPyClient):  # type: ignore[misc]
        def __init__(self, index: int) -> None:
            torch.set_num_threads(1)
            self.model = model()
            self.x, self.y = data(100 + index, SAMPLES)

        def fit(self, parameters: Any, config: Any) -> Any:
            put(self.model, parameters)
            opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
            for i in range(0, SAMPLES, BATCH):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(
                    self.model(self.x[i : i + BATCH]), self.y[i : i + BATCH]
                )
                loss.backward()
                opt.step()
            return get(self.model), SAMPLES, {}

    test_x, test_y = data(7, TEST_SAMPLES)

    def evaluate(server_round: int, parameters: Any, config: Any) -> Any:
        m = model()
        put(m, parameters)
        with torch.no_grad():
            out = m(test_x)
            loss = torch.nn.functional.cross_entropy(out, test_y).item()
            acc = (out.argmax(dim=1) == test_y).float().mean().item()
        return loss, {"accuracy": acc}

    class Timed(FedAvg):  # type: ignore[misc]
        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            out = super().aggregate_fit(server_round, results, failures)
            print(f"BENCH round {server_round}", flush=True)
            return out

    def server_fn(context: Context) -> ServerAppComponents:
        strategy = Timed(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=args.clients,
            min_available_clients=args.clients,
            evaluate_fn=evaluate,
            initial_parameters=ndarrays_to_parameters(get(model())),
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=args.rounds))

    def client_fn(context: Context) -> Any:
        return Client(int(context.node_config["partition-id"])).to_client()

    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=args.clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )


# ---- main ---------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--params", type=int, default=10_000, help="model size (default 10,000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flower-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-flower", action="store_true", help="fedkube rows only")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (a round's time is a difference)")
    if args.flower_child:
        _flower_child(args)
        return

    with tempfile.TemporaryDirectory(prefix="fedkube-bench-rounds-") as tmp:
        work = Path(tmp)
        job = work / "job.yaml"
        job.write_text(job_yaml(args.clients, args.rounds, args.params))
        rows: dict[str, list[dict[str, float]]] = {}
        modes = ["fedkube run --fork-server", "fedkube run"]
        modes += [] if args.no_flower else ["Flower simulation"]
        for i in range(args.repeats):
            for name in modes:  # interleaved: a busy moment hits every row alike
                load = os.getloadavg()[0]
                log = work / f"{name.replace(' ', '_')}-{i}.log"
                if name == "Flower simulation":
                    result = flower(args, log)
                else:
                    fork = name == "fedkube run --fork-server"
                    result = fedkube(work / "run", job, fork, log, args.rounds)
                result["load"] = load
                rows.setdefault(name, []).append(result)
                print(
                    f"  run {i + 1}: {name:<30} start-up {result['startup_s']:6.1f} s  "
                    f"{result['per_round_s']:6.2f} s/round  (load {load:.1f})",
                    flush=True,
                )

    table = report(rows, args)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / "round_overhead.json"
    out.write_text(json.dumps(table, indent=2))
    print(f"\nwrote {out.relative_to(REPO)}")


def report(rows: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> dict[str, Any]:
    base = "Flower simulation" if "Flower simulation" in rows else "fedkube run"
    med = {
        name: {k: statistics.median(r[k] for r in runs) for k in ("startup_s", "per_round_s")}
        for name, runs in rows.items()
    }
    print(
        f"\n{args.clients} clients, {args.rounds} rounds, {args.params:,}-parameter MLP, "
        f"{os.cpu_count()} CPUs, median of {args.repeats} runs (ratios: to {base})"
    )
    print(f"{'mode':<30} {'start-up s':>10} {'vs':>7} {'s/round':>8} {'vs':>7}")
    for name, m in med.items():
        b = med[base]
        print(
            f"{name:<30} {m['startup_s']:>10.1f} {m['startup_s'] / b['startup_s']:>6.2f}x "
            f"{m['per_round_s']:>8.2f} {m['per_round_s'] / b['per_round_s']:>6.2f}x"
        )
    return {
        "clients": args.clients,
        "rounds": args.rounds,
        "params": args.params,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "baseline": base,
        "median": med,
        "runs": rows,
    }


if __name__ == "__main__":
    main()
