"""Learning-quality benchmark: every strategy on label-skewed digits, clean and poisoned,
next to Flower's implementation of the same strategy.

Why it exists: the unit tests show each strategy computes its formula; only training shows
that the formulas help where they should (FedProx against client drift, the robust ones
against poisoned updates) and that fedkube's versions learn as well as the reference ones.
It is not a test: it prints and writes figures (``make bench-learning``).

What one run is. The built-in digits task (``fedcore.tasks.digits``) with 10 clients whose
shards are cut by Dirichlet(0.1) label skew (``partition: dirichlet, alpha: 0.1``: most
clients hold two or three classes). Every round every client loads the global model and
trains it with the task's own ``train`` (``SupervisedTask.train``, with FedProx's proximal
term as ``ctx.proximal`` when the row sets ``proximalMu``, SCAFFOLD's correction as
``ctx.scaffold`` and its variate step for ``scaffold``), seeded as ``fedcore.client`` seeds
it; its delta goes to the strategy (``fedcore.strategies``, built from the row's
``spec.strategy`` by ``build_strategy``, folded through ``InMemoryWeights`` with the weight
cap applied as the aggregator applies it), and the new global model is scored on the
held-out split with the task's ``evaluate``. Everything runs in one process: no store, no
signatures, no subprocesses, so a round takes a fraction of a second.

Flower. Where Flower has the same strategy (``FLOWER``), the same clients' results go,
round after round, to Flower's class (``flwr.server.strategy``) through ``aggregate_fit``,
as ``FitRes`` built from NumPy arrays of the clients' weights (``global + delta``: Flower
aggregates weights, fedkube deltas; the same numbers). Both sides use the same seeds, the
same shards, the same client training code and hyper-parameters, so the two columns differ
only by the aggregation (and by where each trajectory takes the model afterwards).

The attack (setting ``poisoned``). Two of the ten clients, drawn per seed, train honestly,
then send ``ATTACK_SCALE x`` their delta (sign-flipped and scaled by 10) and declare
``num_samples = ATTACK_NUM_SAMPLES`` (10^9; fedkube accepts up to 10^12). A signed,
validated update can do exactly this: nothing in the bytes is malformed. An update that is
not finite is dropped (``fedcore.validation`` rejects it); a round whose new global model is
not finite keeps the previous one (the aggregator never commits a non-finite model).

A row of ``ROWS`` is one configuration: a label, ``spec.strategy`` as a job writes it
(camelCase), the Flower class that implements the same thing, and the settings it runs in.
Adding a strategy to the benchmark is adding a row.

Output: a progress line per run, then a table of the final accuracy (mean +- std over the
seeds) per row and setting, ``bench/results/learning.md`` (the table, the settings and the
command), ``learning.json`` (every round's accuracy of every run) and ``learning.png``
(mean accuracy per round, clean and poisoned panels).

Run ``make bench-learning`` (``BENCH_LEARNING_ARGS=--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"

NUM_CLIENTS = 10
ALPHA = 0.1
"""Dirichlet concentration of the label skew: 0.1 leaves most clients two or three classes."""
NUM_POISONED = 2
ATTACK_SCALE = -10.0
"""A poisoned client sends this multiple of its honest delta."""
ATTACK_NUM_SAMPLES = 10**9
"""...and declares this many samples (the honest ones hold 10 to 500)."""
LOCAL_TRAINING: dict[str, dict[str, Any]] = {
    "sgd": {
        "partition": "dirichlet",
        "alpha": ALPHA,
        "hidden": 64,
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.0,
        "localEpochs": 5,
        "batchSize": 32,
    },
    "momentum": {
        "partition": "dirichlet",
        "alpha": ALPHA,
        "hidden": 64,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "localEpochs": 2,
        "batchSize": 32,
    },
}
"""The clients' local training, chosen by ``$FEDKUBE_BENCH_LOCAL`` (read at import, so the
worker processes agree). ``sgd`` (the default): plain SGD for 5 local epochs, the setting
SCAFFOLD and FedProx were designed for (Karimireddy et al. and Li et al. train with plain
local SGD): many local steps on two or three classes make the clients drift, and FedAvg
learns slowly and unsteadily. ``momentum``: the digits task's own optimizer (SGD, momentum
0.9) for 2 epochs, which learns faster and drifts less; there SCAFFOLD's variate step, taken
through momentum, swings on one seed (``bench/results/momentum/``)."""
LOCAL = os.environ.get("FEDKUBE_BENCH_LOCAL", "sgd")
if LOCAL not in LOCAL_TRAINING:
    raise SystemExit(f"FEDKUBE_BENCH_LOCAL={LOCAL!r}: choose one of {sorted(LOCAL_TRAINING)}")
TASK_CONFIG: dict[str, Any] = LOCAL_TRAINING[LOCAL]
"""``spec.task.config`` of every run."""
PROXIMAL_MU = 0.1
SERVER_LR_ADAPTIVE = 0.03
"""``serverLearningRate`` of the FedOpt rows (Reddi et al.'s grid holds 0.01 to 0.1)."""
TAU = 1e-3
CLIP = {"maxWeightShare": 0.2, "clipNorm": 1.0, "clipQuantile": 0.5}
"""The weighted-mean defences together: no client above a fifth of the round, each delta
clipped at the median norm of the previous round's (1.0 in the first round)."""

DP = {"noiseMultiplier": 0.5, "clipNorm": 1.0, "delta": 1e-3}
"""``strategy.dp`` of the DP-FedAvg row: noise of std 0.5 x the bound on the sum of the
clipped deltas, i.e. 0.05 on the mean of 10 clients' (not tuned for accuracy)."""

SETTINGS = ("clean", "poisoned")
CLEAN_ONLY = ("clean",)
"""For rows with no defence against the attack: FedAvg's row shows what it does to them."""
POISONED_ONLY = ("poisoned",)
"""For variants of a row that runs clean too (FedAvg's defences, Multi-Krum)."""


@dataclass(frozen=True)
class Row:
    """One configuration of the benchmark."""

    label: str
    strategy: Mapping[str, Any] = field(compare=False)
    """``spec.strategy`` as a FederatedJob writes it (camelCase)."""
    flower: str | None = None
    """The key in ``FLOWER`` of Flower's implementation of the same strategy; None: none."""
    settings: tuple[str, ...] = SETTINGS


ROWS: tuple[Row, ...] = (
    Row("fedavg", {"name": "fedavg"}, flower="fedavg"),
    Row(
        "fedavgm", {"name": "fedavgm", "serverMomentum": 0.9}, flower="fedavgm", settings=CLEAN_ONLY
    ),
    Row(
        "fedprox",
        {"name": "fedprox", "proximalMu": PROXIMAL_MU},
        flower="fedprox",
        settings=CLEAN_ONLY,
    ),
    Row(
        "fedadam",
        {"name": "fedadam", "serverLearningRate": SERVER_LR_ADAPTIVE, "tau": TAU},
        flower="fedadam",
        settings=CLEAN_ONLY,
    ),
    Row(
        "fedyogi",
        {"name": "fedyogi", "serverLearningRate": SERVER_LR_ADAPTIVE, "tau": TAU},
        flower="fedyogi",
        settings=CLEAN_ONLY,
    ),
    Row(  # beta1 0: Flower's FedAdagrad has no first moment (fedkube's default is 0.9)
        "fedadagrad",
        {"name": "fedadagrad", "serverLearningRate": SERVER_LR_ADAPTIVE, "tau": TAU, "beta1": 0.0},
        flower="fedadagrad",
        settings=CLEAN_ONLY,
    ),
    Row("scaffold", {"name": "scaffold"}, settings=CLEAN_ONLY),  # Flower has no SCAFFOLD
    Row("dpfedavg", {"name": "dpfedavg", "dp": DP}, flower="dpfedavg"),
    Row("fedavg+cap+clip", {"name": "fedavg", **CLIP}, settings=POISONED_ONLY),
    Row("median", {"name": "median"}, flower="median"),
    Row("trimmedmean", {"name": "trimmedmean", "trimFraction": 0.2}, flower="trimmedmean"),
    Row("krum", {"name": "krum", "byzantineClients": NUM_POISONED}, flower="krum"),
    Row(
        "multikrum",
        {"name": "krum", "byzantineClients": NUM_POISONED, "krumSelect": 6},
        flower="multikrum",
        settings=POISONED_ONLY,
    ),
)
"""Every configuration; a strategy joins the benchmark by a row here."""


# --- the federation: data, clients, the attack ------------------------------------------


@dataclass(frozen=True)
class Update:
    client: int
    delta: dict[str, Any]
    """Tensors: the client's delta (poisoned already, for a poisoned client)."""
    num_samples: int


@dataclass
class Federation:
    """One seed's clients: the task, their shards, who is poisoned, one reusable model."""

    seed: int
    config: Mapping[str, Any]
    poisoned: frozenset[int]
    task: Any = field(repr=False)
    shards: list[Any] = field(repr=False)
    model: Any = field(repr=False)

    def ctx(self, round_: int, client: int | None) -> Any:
        from fedcore.tasks import TaskContext

        return TaskContext(
            config=self.config,
            seed=self.seed,
            round=round_,
            client=None if client is None else client_name(client),
            client_index=client,
            num_clients=NUM_CLIENTS,
        )


def client_name(index: int) -> str:
    return f"site-{index:02d}"


def poisoned_clients(seed: int) -> frozenset[int]:
    import numpy as np

    rng = np.random.default_rng([seed, 0x5EED])
    return frozenset(int(i) for i in rng.choice(NUM_CLIENTS, NUM_POISONED, replace=False))


def federation(seed: int, config: Mapping[str, Any] = TASK_CONFIG) -> Federation:
    from fedcore.tasks.base import derive_seed
    from fedcore.tasks.digits import DigitsTask

    task = DigitsTask()
    probe = Federation(seed, config, poisoned_clients(seed), task, [], None)
    shards = [task.train_dataset(probe.ctx(1, i)) for i in range(NUM_CLIENTS)]
    seed_everything(derive_seed(seed, "init"))
    model = task.build_model(probe.ctx(0, None))
    return replace(probe, shards=shards, model=model)


def seed_everything(seed: int) -> None:
    """As ``fedcore.client`` seeds a rank before building the model and before training."""
    import random

    import numpy as np
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))


def initial_model(fed: Federation) -> dict[str, Any]:
    from fedcore.tasks.base import derive_seed

    seed_everything(derive_seed(fed.seed, "init"))
    model = fed.task.build_model(fed.ctx(0, None))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@dataclass
class Variates:
    """SCAFFOLD's control variates in one run: the server's ``c`` (``control/<name>``, read
    from the strategy every round) and each client's own ``c_i`` (zeros until it has one)."""

    server: dict[str, Any]
    clients: dict[int, dict[str, Any]] = field(default_factory=dict)


def train_client(
    fed: Federation,
    global_model: Mapping[str, Any],
    round_: int,
    client: int,
    mu: float | None,
    variates: Variates | None = None,
) -> Update:
    """One client's round, as ``fedcore.client.ClientRank.train_round`` runs it on one rank
    (with SCAFFOLD's correction and variate step when ``variates`` is given: its ``Δc_i``
    travels in the update as ``control/<name>``); a poisoned client's update then goes
    through ``poison``."""
    from fedcore.tasks.base import derive_seed, global_batch_size, train_loader
    from fedcore.tasks.proximal import ProximalTerm
    from fedcore.weights import delta

    model, name = fed.model, client_name(client)
    model.load_state_dict(global_model, strict=True)
    ctx = fed.ctx(round_, client)
    if mu:
        ctx = replace(ctx, proximal=ProximalTerm.snapshot(model, mu))
    own: dict[str, Any] = {}
    if variates is not None:
        from fedcore.tasks.scaffold import ControlCorrection, zero_variate
        from fedcore.weights import template_of

        own = variates.clients.get(client) or zero_variate(template_of(global_model))
        ctx = replace(ctx, scaffold=ControlCorrection.snapshot(model, variates.server, own))
    seed_everything(derive_seed(fed.seed, "train", round_, name, 0))
    loader = train_loader(
        fed.shards[client],
        batch_size=global_batch_size(fed.task, ctx),
        ctx=ctx,
        shuffle_seed=derive_seed(fed.seed, "shuffle", round_, name),
    )
    fed.task.train(model, loader, ctx)
    local = {k: v.detach().clone() for k, v in model.state_dict().items()}
    update = Update(client, delta(local, global_model), len(fed.shards[client]))
    if variates is not None and ctx.scaffold is not None:
        from fedcore.tasks.scaffold import local_sgd, next_variate, trainable_names

        new, change = next_variate(
            global_model,
            local,
            variates.server,
            own,
            steps=ctx.scaffold.steps,
            sgd=local_sgd(fed.task, ctx),
            trainable=trainable_names(model),
        )
        variates.clients[client] = new
        update.delta.update(change)
    return poison(update) if client in fed.poisoned else update


def poison(update: Update) -> Update:
    """The attack: ``ATTACK_SCALE x`` the honest delta, ``ATTACK_NUM_SAMPLES`` declared."""
    scaled = {k: v * ATTACK_SCALE if v.is_floating_point() else v for k, v in update.delta.items()}
    return Update(update.client, scaled, ATTACK_NUM_SAMPLES)


def is_finite(tensors: Mapping[str, Any]) -> bool:
    import torch

    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


# --- the two sides: fedkube's strategies and Flower's ------------------------------------


class Ours:
    """fedkube's strategy, driven as the aggregator drives it (``fedcore.folding``)."""

    def __init__(self, row: Row, workdir: Path, seed: int = 0) -> None:
        from fedcore.spec import StrategySpec

        self.spec = StrategySpec.model_validate(dict(row.strategy))
        self.workdir = workdir
        self.seed = seed
        self.strategy = self._fresh()

    def _fresh(self) -> Any:
        from fedcore.strategies import build_strategy
        from fedcore.strategies.spool import SpooledStrategy

        strategy = build_strategy(self.spec)
        if isinstance(strategy, SpooledStrategy):
            strategy.spool_dir = self.workdir
        if hasattr(strategy, "num_clients"):  # scaffold: N of c += |S|/N mean(dc)
            strategy.num_clients = NUM_CLIENTS
        return strategy

    def step(self, round_: int, base: dict[str, Any], updates: list[Update]) -> dict[str, Any]:
        from fedcore.strategies.weighting import capped_weights
        from fedcore.weights import InMemoryWeights, template_of

        saved = {k: v.clone() for k, v in self.strategy.state_dict().items()}
        strategy = self.strategy
        if hasattr(strategy, "noise_key"):  # dpfedavg: as the aggregator sets them
            from fedcore.strategies.dp_noise import NoiseKey

            secret = hashlib.sha256(f"bench-learning/{self.seed}/{round_}".encode()).digest()
            strategy.noise_key = NoiseKey(secret)  # the aggregator's is secret; this one fixed
            strategy.expected_clients = NUM_CLIENTS  # every client is selected every round
        strategy.begin_round(template_of(base))
        counts = {u.client: u.num_samples for u in updates}
        # The aggregator folds the plain counts first and again with these when the cap
        # binds; folding once with the final weights gives the same model.
        weights = capped_weights(counts, strategy.max_weight_share) or {}
        for u in updates:
            source = InMemoryWeights(u.delta, client_name(u.client))
            strategy.fold(source, u.num_samples, weight=weights.get(u.client))
        new: dict[str, Any] = strategy.finalize(InMemoryWeights(base, "global"))
        if not is_finite(new) or not is_finite(strategy.state_dict()):
            self.strategy = self._fresh()  # as a restarted round: the last committed state
            self.strategy.load_state_dict(saved)
            return base
        return new


FlowerFactory = Callable[[list[Any]], Any]


def _flower_factories() -> dict[str, FlowerFactory]:
    """Flower's class for each strategy, configured as the row configures fedkube's."""
    import logging

    flower_available()  # imports Flower quietly
    from flwr.common import ndarrays_to_parameters
    from flwr.server import strategy as fl

    logging.getLogger("flwr").setLevel(logging.ERROR)  # "no metrics aggregation fn"

    def adaptive(cls: Any) -> FlowerFactory:
        # Flower's FedAdagrad takes no betas: it fixes beta_1 = 0 (the row sets beta1 0 too).
        betas = {} if cls is fl.FedAdagrad else {"beta_1": 0.9, "beta_2": 0.99}
        return lambda init: cls(
            initial_parameters=ndarrays_to_parameters(init),
            eta=SERVER_LR_ADAPTIVE,
            tau=TAU,
            **betas,
        )

    return {
        "fedavg": lambda init: fl.FedAvg(),
        "fedavgm": lambda init: fl.FedAvgM(
            initial_parameters=ndarrays_to_parameters(init), server_momentum=0.9
        ),
        "fedprox": lambda init: fl.FedProx(proximal_mu=PROXIMAL_MU),
        "fedadam": adaptive(fl.FedAdam),
        "fedyogi": adaptive(fl.FedYogi),
        "fedadagrad": adaptive(fl.FedAdagrad),
        "median": lambda init: fl.FedMedian(),
        "trimmedmean": lambda init: fl.FedTrimmedAvg(beta=0.2),
        "krum": lambda init: fl.Krum(num_malicious_clients=NUM_POISONED, num_clients_to_keep=0),
        "multikrum": lambda init: fl.Krum(
            num_malicious_clients=NUM_POISONED, num_clients_to_keep=6
        ),
        # Flower's server-side DP wraps its FedAvg, which weighs by num_examples (fedkube's
        # dpfedavg weighs every client equally).
        "dpfedavg": lambda init: fl.DifferentialPrivacyServerSideFixedClipping(
            fl.FedAvg(), DP["noiseMultiplier"], DP["clipNorm"], NUM_CLIENTS
        ),
    }


class Theirs:
    """Flower's strategy, given the same clients' results through ``aggregate_fit``."""

    def __init__(self, row: Row, initial: Mapping[str, Any]) -> None:
        if row.flower is None:
            raise ValueError(f"row {row.label!r} has no Flower counterpart")
        self.names = sorted(initial)
        self.strategy = _flower_factories()[row.flower]([initial[n].numpy() for n in self.names])

    def step(self, round_: int, base: dict[str, Any], updates: list[Update]) -> dict[str, Any]:
        import torch
        from flwr.common import (
            Code,
            FitRes,
            Status,
            ndarrays_to_parameters,
            parameters_to_ndarrays,
        )

        if hasattr(self.strategy, "current_round_params"):  # its DP wrapper: set in configure_fit
            self.strategy.current_round_params = [base[n].numpy() for n in self.names]
        results = []
        for u in updates:
            weights = [(base[n] + u.delta[n]).numpy() for n in self.names]
            res = FitRes(
                status=Status(code=Code.OK, message=""),
                parameters=ndarrays_to_parameters(weights),
                num_examples=u.num_samples,
                metrics={},
            )
            results.append((FlowerClient(client_name(u.client)), res))
        parameters, _ = self.strategy.aggregate_fit(round_, results, [])
        if parameters is None:
            return base
        arrays = parameters_to_ndarrays(parameters)
        new = {
            n: torch.from_numpy(a.copy()).to(base[n].dtype)
            for n, a in zip(self.names, arrays, strict=True)
        }
        return new if is_finite(new) else base


class FlowerClient:
    """The ``ClientProxy`` slot of Flower's results: only its ``cid`` is ever read."""

    def __init__(self, cid: str) -> None:
        self.cid = cid


# --- one run: a row, a side, a setting, a seed -----------------------------------------


@dataclass(frozen=True)
class Run:
    row: Row
    side: str
    """``fedkube`` or ``flower``."""
    setting: str
    seed: int


def run_one(run: Run, rounds: int) -> list[float]:
    """Test accuracy of the global model after each round (index 0: the initial model)."""
    import torch

    torch.set_num_threads(1)  # a 20k-parameter MLP: threads only add overhead
    fed = federation(run.seed)
    if run.setting == "clean":
        fed = replace(fed, poisoned=frozenset())
    model = initial_model(fed)
    mu = run.row.strategy.get("proximalMu")
    with tempfile.TemporaryDirectory(prefix="bench-learning-") as tmp:
        side = (
            Ours(run.row, Path(tmp), run.seed) if run.side == "fedkube" else Theirs(run.row, model)
        )
        accuracies = [evaluate(fed, model)]
        strategy = getattr(side, "strategy", None)
        variates = Variates({}) if hasattr(strategy, "server_variate") else None
        for r in range(1, rounds + 1):
            if variates is not None:
                from fedcore.weights import template_of

                variates.server = side.strategy.server_variate(template_of(model))
            updates = [train_client(fed, model, r, c, mu, variates) for c in range(NUM_CLIENTS)]
            updates = [u for u in updates if is_finite(u.delta)]  # validation's finite check
            model = side.step(r, model, updates) if updates else model
            accuracies.append(evaluate(fed, model))
    return accuracies


def evaluate(fed: Federation, model: Mapping[str, Any]) -> float:
    fed.model.load_state_dict(model, strict=True)
    if not is_finite(model):
        return float("nan")
    return float(fed.task.evaluate(fed.model, fed.ctx(0, None))["accuracy"])


@lru_cache(maxsize=1)
def flower_available() -> bool:
    import warnings

    try:
        with warnings.catch_warnings():  # Flower's CLI dependencies warn about their own
            warnings.simplefilter("ignore", DeprecationWarning)
            import flwr.server.strategy  # noqa: F401
    except ImportError:
        return False
    return True


def plan(rows: Sequence[Row], seeds: Sequence[int], *, flower: bool) -> list[Run]:
    """Every run, seed by seed: an interrupted benchmark has whole seeds to report."""
    runs = []
    for seed in seeds:
        for setting in SETTINGS:
            for row in rows:
                if setting not in row.settings:
                    continue
                sides = ["fedkube"] + (["flower"] if flower and row.flower else [])
                runs += [Run(row, side, setting, seed) for side in sides]
    return runs


def run_key(run: Run) -> str:
    """What makes two runs the same run (for resuming). Not the rounds: a run is
    deterministic, so the first R rounds of a longer run are the run of R rounds."""
    return json.dumps(
        [run.row.label, dict(run.row.strategy), run.side, run.setting, run.seed, TASK_CONFIG],
        sort_keys=True,
    )


def run_all(
    runs: Sequence[Run],
    rounds: int,
    jobs: int,
    log: Callable[[str], None] = print,
    checkpoint: Path | None = None,
) -> dict[Run, list[float]]:
    """Every run, ``jobs`` at a time in worker processes (1: in this process). With
    ``checkpoint``, each finished run is appended to it (a JSON line) and runs already
    there are not run again: an interrupted benchmark resumes where it stopped."""
    results: dict[Run, list[float]] = {}
    if checkpoint is not None and checkpoint.exists():
        kept = dict(json.loads(line) for line in checkpoint.read_text().splitlines() if line)
        results = {
            run: kept[run_key(run)][: rounds + 1]
            for run in runs
            if len(kept.get(run_key(run), [])) > rounds
        }
        if results:
            log(f"resuming: {len(results)} of {len(runs)} runs are in {checkpoint}")
    todo = [run for run in runs if run not in results]
    resumed = len(results)
    started = time.perf_counter()

    def done(run: Run, accs: list[float]) -> None:
        results[run] = accs
        if checkpoint is not None:
            with checkpoint.open("a") as f:
                f.write(json.dumps([run_key(run), accs]) + "\n")
        elapsed = time.perf_counter() - started
        eta = elapsed / (len(results) - resumed) * (len(runs) - len(results))
        log(
            f"[{len(results):>3}/{len(runs)}] {run.setting:<8} {run.row.label:<16} "
            f"{run.side:<7} seed {run.seed}: accuracy {accs[-1]:.3f}  "
            f"({elapsed:.0f} s, ~{eta:.0f} s left)"
        )

    if jobs <= 1:
        for run in todo:
            done(run, run_one(run, rounds))
        return {run: results[run] for run in runs}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {pool.submit(run_one, run, rounds): run for run in todo}
        for future in as_completed(futures):
            done(futures[future], future.result())
    return {run: results[run] for run in runs}


# --- reporting ----------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    finite = [0.0 if math.isnan(v) else v for v in values]  # a NaN model scores nothing
    if len(finite) == 1:
        return finite[0], 0.0
    return statistics.fmean(finite), statistics.stdev(finite)


def fmt(values: Sequence[float] | None) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


Metric = Callable[[list[float]], float]


def final(accuracies: list[float]) -> float:
    """Accuracy after the last round: where a run ends."""
    return accuracies[-1]


def over_rounds(accuracies: list[float]) -> float:
    """Mean accuracy over rounds 1..R: how fast and how steadily a run gets there (a run
    whose accuracy swings from round to round scores lower than its final round may say)."""
    return statistics.fmean(0.0 if math.isnan(a) else a for a in accuracies[1:])


def seed_values(
    results: Mapping[Run, list[float]], row: Row, side: str, setting: str, metric: Metric
) -> dict[int, float]:
    """Seed -> ``metric`` of one row's runs on one side in one setting."""
    return {
        run.seed: metric(accs)
        for run, accs in results.items()
        if run.row == row and run.side == side and run.setting == setting
    }


def paired_difference(ours: Mapping[int, float], theirs: Mapping[int, float]) -> str:
    """fedkube minus Flower in points, seed by seed (same shards, same attackers)."""
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return "-"
    mean, std = mean_std([ours[s] - theirs[s] for s in seeds])
    return f"{100 * mean:+.1f} ± {100 * std:.1f}"


def table(
    results: Mapping[Run, list[float]], rows: Sequence[Row], metric: Metric = final
) -> list[str]:
    """Markdown lines: ``metric`` (%) per row, fedkube next to Flower and their paired
    difference, per setting."""
    columns = [
        f"{setting}: {what}" for setting in SETTINGS for what in ("fedkube", "Flower", "difference")
    ]
    lines = [
        "| strategy | `spec.strategy` | " + " | ".join(columns) + " |",
        "|---" * (2 + len(columns)) + "|",
    ]
    for row in rows:
        spec = ", ".join(f"{k}: {v}" for k, v in row.strategy.items())
        cells = []
        for setting in SETTINGS:
            ours = seed_values(results, row, "fedkube", setting, metric)
            theirs = seed_values(results, row, "flower", setting, metric)
            cells += [fmt(list(ours.values())), fmt(list(theirs.values()))]
            cells.append(paired_difference(ours, theirs))
        lines.append(f"| {row.label} | `{spec}` | " + " | ".join(cells) + " |")
    return lines


def report(
    results: Mapping[Run, list[float]],
    rows: Sequence[Row],
    *,
    seeds: Sequence[int],
    rounds: int,
    command: str,
    seconds: float,
    out: Path,
) -> Path:
    """Write ``learning.md``, ``learning.json`` and ``learning.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Learning quality: fedkube's strategies next to Flower's",
        "",
        f"Final test accuracy (%) after {rounds} rounds, mean ± std over seeds "
        f"{', '.join(map(str, seeds))}; *difference*: fedkube minus Flower in points, seed by "
        "seed (same shards, same attackers). Written by `bench/learning.py` (its docstring "
        "has the method).",
        "",
        *table(results, rows),
        "",
        f"Mean test accuracy (%) over rounds 1-{rounds} (how fast and how steadily each run "
        "learns; same layout):",
        "",
        *table(results, rows, over_rounds),
        "",
        "Settings:",
        "",
        f"- data: scikit-learn digits (`fedcore.tasks.digits`), {NUM_CLIENTS} clients, "
        f"Dirichlet({ALPHA}) label skew; the held-out 20% scores the global model",
        f"- every client trains every round; `task.config`: `{json.dumps(TASK_CONFIG)}`",
        f"- poisoned: {NUM_POISONED} of {NUM_CLIENTS} clients (drawn per seed) send "
        f"{ATTACK_SCALE:g} x their honest delta and declare num_samples = "
        f"{ATTACK_NUM_SAMPLES:.0e}",
        "- Flower: its `flwr.server.strategy` class for the same strategy, given the same "
        "clients' results through `aggregate_fit`; `-`: not run (Flower has no such strategy, "
        "or the row has no defence against the attack and runs clean only)",
        "- dpfedavg: fedkube's noise from a fixed per-seed, per-round key (the aggregator's "
        "is secret); Flower's `DifferentialPrivacyServerSideFixedClipping` around its FedAvg, "
        "which weighs clients by num_examples where fedkube's weighs them equally",
        "- scaffold: each client keeps its control variate across rounds, the server's is "
        "the strategy's; Flower has no SCAFFOLD",
        "",
        f"Command: `{command}` ({seconds / 60:.1f} min on {os.cpu_count()} CPUs"
        + (", for the runs not already in learning.runs.jsonl" if "--resume" in command else "")
        + ").",
        "",
        "![accuracy per round](learning.png)",
        "",
        "In the plot Flower's curves are dashed; where they coincide with fedkube's they lie "
        "under them.",
        "",
    ]
    md = out / "learning.md"
    md.write_text("\n".join(lines))
    (out / "learning.json").write_text(
        json.dumps(
            {
                "rounds": rounds,
                "seeds": list(seeds),
                "command": command,
                "seconds": seconds,
                "task_config": TASK_CONFIG,
                "runs": [
                    {
                        "row": run.row.label,
                        "strategy": dict(run.row.strategy),
                        "side": run.side,
                        "setting": run.setting,
                        "seed": run.seed,
                        "accuracy": accs,
                    }
                    for run, accs in results.items()
                ],
            },
            indent=1,
        )
        + "\n"
    )
    plot(results, rows, out / "learning.png")
    return md


def plot(results: Mapping[Run, list[float]], rows: Sequence[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), sharey=True)
    colors = plt.get_cmap("tab20").colors
    for ax, setting in zip(axes, SETTINGS, strict=True):
        for i, row in enumerate(rows):
            for side, style in (("fedkube", "-"), ("flower", "--")):
                curves = [
                    [0.0 if math.isnan(a) else a for a in accs]
                    for run, accs in results.items()
                    if run.row == row and run.side == side and run.setting == setting
                ]
                if not curves:
                    continue
                mean = [statistics.fmean(c) for c in zip(*curves, strict=True)]
                label = row.label if side == "fedkube" else f"{row.label} (Flower)"
                color = colors[(2 * i) % 20 + (2 * i) // 20]  # dark shades, then light ones
                ax.plot(range(len(mean)), mean, style, color=color, label=label)
        ax.set_title(
            f"{setting}: {NUM_CLIENTS} clients, Dirichlet({ALPHA})"
            + (f", {NUM_POISONED} poisoned" if setting == "poisoned" else "")
        )
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (mean over seeds)")
    axes[0].set_ylim(0, 1)
    legend: dict[str, Any] = {}  # rows of both panels (some run in one setting only)
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    order = [r.label + suffix for r in rows for suffix in ("", " (Flower)")]
    labels = [label for label in order if label in legend]
    fig.legend([legend[label] for label in labels], labels, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def replot(out: Path) -> Path:
    """Rewrite ``learning.md`` and ``learning.png`` from ``learning.json`` (after a change to
    the report, without training again)."""
    saved = json.loads((out / "learning.json").read_text())
    by_label = {row.label: row for row in ROWS}
    for r in saved["runs"]:
        row = by_label.get(r["row"])
        if row is not None and dict(row.strategy) != r["strategy"]:
            raise SystemExit(
                f"{out / 'learning.json'} ran row {r['row']!r} as {r['strategy']}, but ROWS now "
                f"says {dict(row.strategy)}; run the benchmark again"
            )
    results = {
        Run(by_label[r["row"]], r["side"], r["setting"], r["seed"]): r["accuracy"]
        for r in saved["runs"]
        if r["row"] in by_label
    }
    rows = [row for row in ROWS if any(run.row == row for run in results)]
    return report(
        results,
        rows,
        seeds=saved["seeds"],
        rounds=saved["rounds"],
        command=saved["command"],
        seconds=saved["seconds"],
        out=out,
    )


# --- command line -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="rounds per run (15)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per row (3)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 3 rounds, 1 seed (overrides both)"
    )
    parser.add_argument("--rows", default="", help="comma-separated row labels (all)")
    parser.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes"
    )
    parser.add_argument("--no-flower", action="store_true", help="fedkube's side only")
    parser.add_argument(
        "--out", type=Path, help="results directory (bench/results; --quick: bench/results/quick)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the runs an interrupted benchmark finished"
    )
    parser.add_argument(
        "--replot", action="store_true", help="no training: rewrite the report from learning.json"
    )
    args = parser.parse_args(argv)
    out = args.out or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    if args.replot:
        md = replot(out)
        print(f"results: {md}, {md.with_suffix('.png')}")
        return 0
    rounds, n_seeds = (3, 1) if args.quick else (args.rounds, args.seeds)
    if rounds < 1 or n_seeds < 1 or args.jobs < 1:
        parser.error("--rounds, --seeds and --jobs must be >= 1")
    wanted = [w for w in args.rows.split(",") if w]
    unknown = sorted(set(wanted) - {r.label for r in ROWS})
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(r.label for r in ROWS)}")
    rows = [r for r in ROWS if not wanted or r.label in wanted]
    flower = not args.no_flower
    if flower and not flower_available():
        parser.error("Flower is not installed: `make bench-deps`, or pass --no-flower")
    seeds = list(range(n_seeds))
    runs = plan(rows, seeds, flower=flower)
    print(
        f"{len(runs)} runs of {rounds} rounds x {NUM_CLIENTS} clients, {args.jobs} at a time",
        flush=True,
    )
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "learning.runs.jsonl"
    if not args.resume:
        checkpoint.unlink(missing_ok=True)
    results = run_all(
        runs, rounds, args.jobs, log=lambda line: print(line, flush=True), checkpoint=checkpoint
    )
    seconds = time.perf_counter() - started
    print()
    print("\n".join(table(results, rows)))
    local = "" if LOCAL == "sgd" else f"FEDKUBE_BENCH_LOCAL={LOCAL} "
    command = f"{local}python bench/learning.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    md = report(
        results,
        rows,
        seeds=seeds,
        rounds=rounds,
        command=command.strip(),
        seconds=seconds,
        out=out,
    )
    print(f"\nresults: {md}, {md.with_suffix('.json')}, {md.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
