"""The contract between fedkube and a user's training code, and a base class that fills most of it.

A FederatedJob names its task as ``module:attr`` (``spec.task.entrypoint``). The client calls
it to build the model, load the client's private data and run one local training pass; the
aggregator calls it to build the model and evaluate each round's global model. Everything
else (rounds, DDP, the store, signing) is fedkube's, so a task stays a few dozen lines.

``SupervisedTask`` is the usual starting point: subclass it, override ``build_model``,
``train_dataset`` and ``test_dataset``, and it brings the optimizer, the local epochs and
the evaluation loop, configured from ``spec.task.config``::

    task:
      entrypoint: mypkg.xray:task
      config: {optimizer: adam, lr: 0.001, localEpochs: 2, batchSize: 64}

Determinism is part of the contract: ``build_model`` must give the same weights for the same
``ctx.seed``, and datasets must not depend on the rank (every rank of a client's DDP group
loads the same data; fedkube's sampler shards it).
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, cast, runtime_checkable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fedcore.errors import TaskError
from fedcore.taskcheck import REQUIRED_METHODS  # what every task provides (see ``Task``)
from fedcore.tasks.proximal import ProximalTerm
from fedcore.tasks.scaffold import ControlCorrection, LocalSGD

if TYPE_CHECKING:
    from fedcore.spec import FederatedJobSpec


def _cpu() -> torch.device:
    return torch.device("cpu")


@dataclass(frozen=True)
class TaskContext:
    """Everything a task may base its decisions on; the same values give the same results."""

    config: Mapping[str, Any]
    """``spec.task.config`` with the client's ``taskConfig`` on top (the aggregator sees
    ``task.config`` alone)."""
    seed: int
    """``spec.seed``: model init, data splits and shuffling derive from it."""
    round: int
    """The round being trained (client) or the round whose global model is evaluated."""
    client: str | None
    """The client's name; None on the aggregator."""
    client_index: int | None
    """Position of the client in ``spec.clients``; None on the aggregator."""
    num_clients: int
    """Clients listed in the spec (e.g. how many partitions to cut a shared dataset into)."""
    rank: int = 0
    """Rank in the client's DDP group (0 on the aggregator)."""
    world_size: int = 1
    """Size of the client's DDP group: ``replicas * procsPerReplica``."""
    device: torch.device = field(default_factory=_cpu)
    """Where this process computes: ``cuda:<LOCAL_RANK>`` under NCCL, else the CPU."""
    proximal: ProximalTerm | None = None
    """FedProx's term for this round (``strategy.proximalMu`` > 0, clients only): a task's
    ``train`` adds ``ctx.proximal(model)`` to each batch's loss before ``backward``, as
    ``SupervisedTask.train`` does (``fedcore.tasks.proximal``)."""
    scaffold: ControlCorrection | None = None
    """SCAFFOLD's gradient correction for this round (``strategy.name: scaffold``, clients
    only): a task's ``train`` adds ``ctx.scaffold(model)`` to each batch's loss before
    ``backward``, once per optimizer step, as ``SupervisedTask.train`` does
    (``fedcore.tasks.scaffold``)."""
    sharded: bool = False
    """The client trains with FSDP (``parallelism.mode: fsdp``): the model's parameters are
    shards (DTensors) of the whole. ``SupervisedTask.train`` then steps each parameter's
    optimizer as soon as its gradient is reduced (``StepsInBackward``), so no rank holds
    the round's gradients next to its parameters."""

    @classmethod
    def for_aggregator(cls, spec: FederatedJobSpec, round_: int) -> TaskContext:
        """The context the aggregator builds and scores models in: the job's task config,
        no client."""
        return cls(
            config=dict(spec.task.config),
            seed=spec.seed,
            round=round_,
            client=None,
            client_index=None,
            num_clients=len(spec.clients),
        )

    def derive_seed(self, *parts: object) -> int:
        """A seed for one purpose, e.g. ``ctx.derive_seed("split")``: stable across runs and
        machines, different for different purposes."""
        return derive_seed(self.seed, *parts)


@runtime_checkable
class Task(Protocol):
    """What ``spec.task.entrypoint`` names.

    Optional extra: ``batch_size(ctx) -> int``, the group's global batch size for the
    training loader fedkube builds (default: ``config["batchSize"]``, else 32).
    """

    def build_model(self, ctx: TaskContext) -> nn.Module:
        """A fresh model; its initial weights depend only on ``ctx.seed`` and ``ctx.config``."""
        ...

    def train_dataset(self, ctx: TaskContext) -> Dataset[Any]:
        """This client's private training data (all of it: fedkube shards it over ranks)."""
        ...

    def train(
        self, model: nn.Module, loader: DataLoader[Any], ctx: TaskContext
    ) -> dict[str, float]:
        """One local training pass over ``loader``; returns metrics (at least ``loss``).

        ``model`` is wrapped in DistributedDataParallel when the group has several ranks, and
        ``loader`` draws from a ``DistributedSampler``: call ``loader.sampler.set_epoch(e)``
        at the start of every local epoch. When ``ctx.proximal`` is set (FedProx), add
        ``ctx.proximal(model)`` to each batch's loss before ``backward``; when
        ``ctx.scaffold`` is set (SCAFFOLD), add ``ctx.scaffold(model)`` likewise, once per
        optimizer step, and provide ``local_sgd(ctx)``.
        """
        ...

    def evaluate(self, model: nn.Module, ctx: TaskContext) -> dict[str, float]:
        """Metrics of ``model`` on held-out data; keys include ``loss`` and ``accuracy``."""
        ...


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (seed, round, client, rank, purpose), stable everywhere.

    Python's ``hash`` is salted per process, so it cannot be used: ranks of one group and a
    rerun of a round must agree.
    """
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (typically a model's construction) under ``torch.manual_seed(seed)`` and
    restore the global CPU random state afterwards, so building a model never shifts the
    random stream of whatever runs next."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ---- loading a task ---------------------------------------------------------------------------


def load_task(entrypoint: str) -> Task:
    """Import ``module:attr`` and return the task object it names.

    ``attr`` may be dotted (``module:tasks.small``). It may name a task instance, or a task
    class, which is called with no arguments to make one; no other callable is called (so
    ``fedkube validate`` can check the same thing without running user code, see
    ``fedcore.taskcheck``). ``TaskError`` says what is wrong: a malformed entrypoint, a module
    that fails to import, a missing attribute, or an object that lacks one of the task methods.
    """
    module_name, sep, attr_path = entrypoint.partition(":")
    if not sep or not module_name or not attr_path:
        raise TaskError(
            f"task entrypoint {entrypoint!r} must be 'module:attribute', "
            "e.g. 'fedcore.tasks.digits:task'"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # a user module can fail to import in any way
        raise TaskError(
            f"cannot import module {module_name!r} of task entrypoint {entrypoint!r}: "
            f"{type(e).__name__}: {e}; make sure it is installed in the runtime image "
            "(or on PYTHONPATH)"
        ) from e
    obj: Any = module
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise TaskError(
                f"task entrypoint {entrypoint!r}: {module_name!r} has no attribute "
                f"{attr_path!r} (missing {part!r})"
            ) from e
    if isinstance(obj, type) and not _missing_methods(obj):
        try:
            obj = obj()
        except Exception as e:
            raise TaskError(
                f"task entrypoint {entrypoint!r} is a class, and calling it with no "
                f"arguments failed: {type(e).__name__}: {e}"
            ) from e
    missing = _missing_methods(obj)
    if missing:
        raise TaskError(
            f"task entrypoint {entrypoint!r} gives a {type(obj).__name__}, which lacks "
            f"{', '.join(missing)}; a task provides {', '.join(REQUIRED_METHODS)} "
            "(subclass fedcore.tasks.SupervisedTask to get train and evaluate)"
        )
    return cast(Task, obj)


def _missing_methods(obj: object) -> list[str]:
    return [name for name in REQUIRED_METHODS if not callable(getattr(obj, name, None))]


# ---- the training loader fedkube builds -------------------------------------------------------

DEFAULT_BATCH_SIZE = 32


def global_batch_size(task: Task, ctx: TaskContext) -> int:
    """The group's batch size per optimizer step: the task's ``batch_size(ctx)`` when it has
    one, else ``config["batchSize"]``, else 32."""
    hook = getattr(task, "batch_size", None)
    value: object = hook(ctx) if callable(hook) else ctx.config.get("batchSize", DEFAULT_BATCH_SIZE)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TaskError(f"task.config.batchSize: must be a positive integer (got {value!r})")
    return value


def train_loader(
    dataset: Dataset[Any], *, batch_size: int, ctx: TaskContext, shuffle_seed: int
) -> DataLoader[Any]:
    """This rank's loader over its ``DistributedSampler`` shard of the client's data.

    ``batch_size`` is the group's: each rank takes ``ceil(batch_size / world_size)``, so one
    DDP step over all ranks sees the same samples as one step of a single process with
    ``batch_size`` (exactly so when ``world_size`` divides both the batch and the data size).
    ``shuffle_seed`` must be the same on every rank, or the shards overlap.
    """
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset,
        num_replicas=ctx.world_size,
        rank=ctx.rank,
        shuffle=True,
        seed=shuffle_seed % (2**31),
        drop_last=False,
    )
    per_rank = math.ceil(batch_size / ctx.world_size)
    return DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=sampler,
        num_workers=0,
        pin_memory=ctx.device.type == "cuda",
    )


# ---- a supervised-learning base class -----------------------------------------------------------

Optimizer = Literal["sgd", "adam", "adamw"]


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of ``SupervisedTask``'s training loop, read from ``spec.task.config``.

    Keys are camelCase in the config (``localEpochs``); unknown keys are left to the task.
    """

    optimizer: Optimizer = "sgd"
    """``sgd`` (with ``momentum``), ``adam`` or ``adamw``. The optimizer is rebuilt every
    round: its state does not survive averaging."""
    lr: float = 0.05
    """Learning rate of the local optimizer."""
    momentum: float = 0.0
    """SGD momentum (ignored by Adam)."""
    weight_decay: float = 0.0
    """L2 penalty (decoupled for ``adamw``)."""
    local_epochs: int = 1
    """Passes over the client's data per round."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Samples per optimizer step for the whole DDP group (split evenly over its ranks)."""
    eval_batch_size: int = 1024
    """Batch size of evaluation: no gradients, so larger is just faster."""

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], defaults: TrainConfig | None = None
    ) -> TrainConfig:
        """Read the keys this class knows from ``config`` over ``defaults``; ``TaskError``
        names the key, the value and what it must be."""
        base = defaults or cls()
        changes: dict[str, Any] = {}
        for f in fields(cls):
            key = _camel(f.name)
            if key not in config:
                continue
            value = config[key]
            if f.name == "optimizer":
                if value not in ("sgd", "adam", "adamw"):
                    raise TaskError(
                        "task.config.optimizer: must be one of 'sgd', 'adam', 'adamw' "
                        f"(got {value!r})"
                    )
            elif f.name in ("local_epochs", "batch_size", "eval_batch_size"):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise TaskError(
                        f"task.config.{key}: must be a positive integer (got {value!r})"
                    )
            else:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise TaskError(f"task.config.{key}: must be a number (got {value!r})")
                low_ok = value > 0 if f.name == "lr" else value >= 0
                if not (low_ok and math.isfinite(value)):
                    bound = "> 0" if f.name == "lr" else ">= 0"
                    raise TaskError(
                        f"task.config.{key}: must be a finite number {bound} (got {value!r})"
                    )
                value = float(value)
            changes[f.name] = value
        return replace(base, **changes)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


class StepsInBackward:
    """One optimizer per trainable parameter, stepped by a hook the moment the parameter's
    gradient is complete (``register_post_accumulate_grad_hook``; FSDP2 runs it on the
    sharded parameter right after the reduce-scatter), after which the gradient is freed.

    Why: a rank of an FSDP client holds its share of the parameters and, until a classic
    ``optimizer.step()``, its share of every gradient as well: with 4 ranks that alone is
    half the model. Stepping in backward keeps at most a few units' gradients alive. For
    ``SupervisedTask.train``'s loop (one backward per step, no clipping or accumulation
    across batches) and per-element optimizers (SGD, Adam, AdamW) the result is the same as
    one optimizer's ``step()``: each parameter's update reads only its own gradient and
    state. A task whose loop needs the whole gradient (clipping by the global norm,
    accumulation) keeps its own ``train``."""

    def __init__(
        self,
        params: list[nn.Parameter],
        make: Callable[[list[nn.Parameter]], torch.optim.Optimizer],
    ) -> None:
        self._optimizers = {id(p): make([p]) for p in params}
        self._handles = [
            p.register_post_accumulate_grad_hook(self._step)  # type: ignore[no-untyped-call]
            for p in params
        ]

    def _step(self, param: torch.Tensor) -> None:
        optimizer = self._optimizers[id(param)]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @staticmethod
    @contextmanager
    def or_optimizer(
        model: nn.Module, cfg: TrainConfig, task: SupervisedTask, in_backward: bool
    ) -> Iterator[torch.optim.Optimizer | None]:
        """None while the model's parameters step in backward (``in_backward``), else one
        optimizer over all of them (``task.make_optimizer``)."""
        if not in_backward:
            yield task.make_optimizer(model.parameters(), cfg)
            return
        trainable = [p for p in model.parameters() if p.requires_grad]
        steps = StepsInBackward(trainable, lambda ps: task.make_optimizer(ps, cfg))
        try:
            yield None
        finally:
            steps.close()


class SupervisedTask:
    """A task for supervised learning with a standard loop; subclass and override the data
    and the model.

    Override ``build_model``, ``train_dataset`` and ``test_dataset`` (each returns an
    ``(input, target)`` dataset). Set ``defaults`` for your task's hyper-parameters and
    ``classification = False`` for regression (MSE loss, no accuracy). Override ``loss`` or
    ``make_optimizer`` for anything else; ``train`` and ``evaluate`` rarely need changing.
    """

    defaults: ClassVar[TrainConfig] = TrainConfig()
    """Hyper-parameters used where ``spec.task.config`` does not set them."""
    classification: ClassVar[bool] = True
    """Cross-entropy over class logits and an ``accuracy`` metric; False: MSE regression."""

    # -- to override --------------------------------------------------------------------------

    def build_model(self, ctx: TaskContext) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must override build_model(ctx)")

    def train_dataset(self, ctx: TaskContext) -> Dataset[Any]:
        raise NotImplementedError(f"{type(self).__name__} must override train_dataset(ctx)")

    def test_dataset(self, ctx: TaskContext) -> Dataset[Any]:
        """Held-out data the aggregator evaluates every round's global model on."""
        raise NotImplementedError(f"{type(self).__name__} must override test_dataset(ctx)")

    def is_classification(self, ctx: TaskContext) -> bool:
        """Whether targets are class indices (override when the config decides)."""
        return self.classification

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, ctx: TaskContext) -> torch.Tensor:
        """Mean loss of a batch: cross-entropy over logits, or MSE for regression."""
        if self.is_classification(ctx):
            return nn.functional.cross_entropy(outputs, targets)
        return nn.functional.mse_loss(outputs, targets)

    def make_optimizer(
        self, params: Iterable[nn.Parameter], cfg: TrainConfig
    ) -> torch.optim.Optimizer:
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if cfg.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )

    # -- provided -----------------------------------------------------------------------------

    def train_config(self, ctx: TaskContext) -> TrainConfig:
        return TrainConfig.from_config(ctx.config, self.defaults)

    def batch_size(self, ctx: TaskContext) -> int:
        return self.train_config(ctx).batch_size

    def local_sgd(self, ctx: TaskContext) -> LocalSGD:
        """The SGD learning rate and momentum of ``train`` (SCAFFOLD's variate step needs
        them); Adam and AdamW are refused: their steps are not ``lr x gradient``."""
        cfg = self.train_config(ctx)
        if cfg.optimizer != "sgd":
            raise TaskError(
                f"task.config.optimizer: strategy scaffold needs plain SGD local steps, got "
                f"{cfg.optimizer!r}; set optimizer: sgd (SCAFFOLD's variate update assumes steps "
                "of lr x gradient)"
            )
        return LocalSGD(lr=cfg.lr, momentum=cfg.momentum)

    def train(
        self, model: nn.Module, loader: DataLoader[Any], ctx: TaskContext
    ) -> dict[str, float]:
        """``localEpochs`` passes of the optimizer over ``loader``; returns the mean batch
        loss over all steps (``loss``) and, for classification, the training accuracy.
        With FedProx the optimizer minimises the loss plus ``ctx.proximal(model)``, with
        SCAFFOLD plus ``ctx.scaffold(model)``; the reported ``loss`` is the task's own,
        without the terms."""
        cfg = self.train_config(ctx)
        classification = self.is_classification(ctx)
        with StepsInBackward.or_optimizer(model, cfg, self, ctx.sharded) as optimizer:
            return self._train_steps(model, loader, ctx, cfg, classification, optimizer)

    def _train_steps(
        self,
        model: nn.Module,
        loader: DataLoader[Any],
        ctx: TaskContext,
        cfg: TrainConfig,
        classification: bool,
        optimizer: torch.optim.Optimizer | None,
    ) -> dict[str, float]:
        """``train``'s loop; ``optimizer`` None: the parameters step in backward."""
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        correct = torch.zeros((), dtype=torch.int64, device=ctx.device)
        seen = 0
        for epoch in range(cfg.local_epochs):
            if isinstance(loader.sampler, DistributedSampler):
                loader.sampler.set_epoch(epoch)
            for inputs, targets in loader:
                inputs = inputs.to(ctx.device, non_blocking=True)
                targets = targets.to(ctx.device, non_blocking=True)
                if optimizer is not None:
                    optimizer.zero_grad(set_to_none=True)
                outputs = model(inputs)
                loss = self.loss(outputs, targets, ctx)
                objective = loss if ctx.proximal is None else loss + ctx.proximal(model)
                if ctx.scaffold is not None:
                    objective = objective + ctx.scaffold(model)
                objective.backward()  # type: ignore[no-untyped-call]
                if optimizer is not None:
                    optimizer.step()
                n = int(targets.shape[0])
                loss_sum += loss.detach().to(torch.float64) * n
                if classification:
                    correct += (outputs.detach().argmax(dim=1) == targets).sum()
                seen += n
        metrics = {"loss": float(loss_sum) / max(seen, 1)}
        if classification:
            metrics["accuracy"] = int(correct) / max(seen, 1)
        return metrics

    def evaluate(self, model: nn.Module, ctx: TaskContext) -> dict[str, float]:
        """Mean loss (and accuracy) of ``model`` over ``test_dataset``."""
        cfg = self.train_config(ctx)
        classification = self.is_classification(ctx)
        loader: DataLoader[Any] = DataLoader(self.test_dataset(ctx), batch_size=cfg.eval_batch_size)
        model.eval()
        loss_sum = 0.0
        correct = 0
        seen = 0
        with torch.no_grad():
            for inputs, targets in loader:
                inputs, targets = inputs.to(ctx.device), targets.to(ctx.device)
                outputs = model(inputs)
                n = int(targets.shape[0])
                loss_sum += float(self.loss(outputs, targets, ctx)) * n
                if classification:
                    correct += int((outputs.argmax(dim=1) == targets).sum())
                seen += n
        if seen == 0:
            raise TaskError(f"{type(self).__name__}.test_dataset is empty; nothing to evaluate")
        metrics = {"loss": loss_sum / seen}
        if classification:
            metrics["accuracy"] = correct / seen
        return metrics
