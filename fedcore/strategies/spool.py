"""The round's updates kept on local disk, for strategies that cannot stream.

Median, trimmed mean and Krum need every update of the round at once. Holding them in memory
would cost ``clients x model``; instead ``fold`` copies each validated update (a safetensors
file) into a private directory on the aggregator's local disk, and ``finalize`` reads the same
flat slice of one tensor from every kept file (``WeightsReader.get_flat_slice``) and reduces
it: memory O(N x slice), disk N x model.

The kept files are visited in a canonical order (sha256 of their bytes, then sample count),
not arrival order, so a round recomputed after a crash, whose updates arrive in another
order, gives the same bytes.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from fedcore.strategies.base import Strategy, arithmetic_threads, check_num_samples, check_update
from fedcore.strategies.weighting import FoldWeight
from fedcore.weights import (
    FLOAT_DTYPES,
    INT_DTYPES,
    Scratch,
    Template,
    TensorSource,
    TensorSpec,
    WeightsReader,
    dtype_name,
    open_weights,
    save_weights,
    sha256_file,
)

SLICE_BYTES = 32 << 20
"""Budget of one stacked slice (N rows of float64): bounds the reduction's memory."""


def slice_elements(num_updates: int) -> int:
    """Elements per slice so that ``num_updates`` float64 rows fit ``SLICE_BYTES``."""
    return max(1024, SLICE_BYTES // (8 * max(1, num_updates)))


SPOOL_PREFIX = "robust-round-"


def clear_spools(parent: Path) -> None:
    """Remove the kept-update directories under ``parent``: those a crashed process left, and
    an abandoned strategy's (the aggregator calls it before building a round's strategy, when
    no other strategy of the workdir is in use)."""
    for stale in parent.glob(f"{SPOOL_PREFIX}*"):
        shutil.rmtree(stale, ignore_errors=True)


@dataclass(frozen=True)
class Kept:
    path: Path
    num_samples: int
    sha256: str


class Spool:
    """Validated updates of one round, each a safetensors file in a private directory."""

    def __init__(self, parent: Path | None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=SPOOL_PREFIX, dir=parent))
        self.kept: list[Kept] = []
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.dir, True)

    def add(self, update: TensorSource, num_samples: int) -> None:
        path = self.dir / f"update-{len(self.kept):06d}.safetensors"
        if isinstance(update, WeightsReader):
            shutil.copyfile(update.path, path)
        else:
            template = update.template()
            save_weights(path, {name: update.get(name).clone() for name in template})
        self.kept.append(Kept(path, num_samples, sha256_file(path)))

    def ordered(self) -> list[Kept]:
        """The kept updates in canonical order (independent of arrival order)."""
        return sorted(self.kept, key=lambda k: (k.sha256, k.num_samples))

    @contextmanager
    def open_all(self) -> Iterator[list[tuple[Kept, WeightsReader]]]:
        with ExitStack() as stack:
            yield [(k, stack.enter_context(open_weights(k.path))) for k in self.ordered()]

    def close(self) -> None:
        self._cleanup()


def check_dtypes(template: Template, strategy: str) -> dict[str, TensorSpec]:
    specs = {name: TensorSpec(tuple(s.shape), s.dtype) for name, s in template.items()}
    for name, spec in specs.items():
        if spec.dtype not in FLOAT_DTYPES | INT_DTYPES | {torch.bool}:
            raise ValueError(
                f"tensor {name!r} has dtype {dtype_name(spec.dtype)}, which {strategy} "
                "cannot aggregate; keep it out of the state_dict or store it as float/int"
            )
    return dict(sorted(specs.items()))


def check_unweighted_fold(strategy: str, num_samples: int, weight: FoldWeight | None) -> None:
    check_num_samples(num_samples)
    if weight is not None:
        raise ValueError(
            f"{strategy} does not take capped weights (maxWeightShare): its aggregate is not a "
            "weighted mean of the updates; the spec refuses maxWeightShare with it"
        )


def step_is_finite(
    template: dict[str, TensorSpec], update: TensorSource, base: TensorSource
) -> bool:
    """Whether ``base + update`` is finite in the model's dtype for every float tensor."""
    scratch = Scratch()
    for name, spec in template.items():
        if spec.dtype not in FLOAT_DTYPES:
            continue
        total = update.get(name).to(torch.float64) + base.get(name, scratch).to(torch.float64)
        if not bool(torch.isfinite(total.to(spec.dtype)).all()):
            return False
    return True


class SpooledStrategy(Strategy):
    """Base of the strategies that cannot stream (``median``, ``trimmedmean``, ``krum``):
    ``fold`` checks each update and keeps it in a ``Spool``; a subclass's ``finalize`` reads
    the kept updates back through ``_round`` and ends with ``_end_round``."""

    def __init__(self, *, spool_dir: Path | None = None) -> None:
        self.spool_dir = spool_dir
        """Where the round's updates are kept (None: the system's temporary directory)."""
        self._template: dict[str, TensorSpec] | None = None
        self._spool: Spool | None = None
        self._num_samples = 0

    @property
    def num_updates(self) -> int:
        return len(self._spool.kept) if self._spool else 0

    @property
    def num_samples(self) -> int:
        return self._num_samples

    def begin_round(self, template: Template) -> None:
        self._template = check_dtypes(template, self.name)
        if self._spool is not None:
            self._spool.close()
        self._spool = Spool(self.spool_dir)
        self._num_samples = 0

    def _round(self, action: str) -> tuple[dict[str, TensorSpec], Spool]:
        if self._template is None or self._spool is None:
            raise RuntimeError(f"cannot {action}: call begin_round(template) first")
        return self._template, self._spool

    def _end_round(self) -> None:
        """Forget the round: its kept updates are removed from disk."""
        if self._spool is not None:
            self._spool.close()
        self._template, self._spool, self._num_samples = None, None, 0

    def fold(
        self, update: TensorSource, num_samples: int, *, weight: FoldWeight | None = None
    ) -> None:
        template, spool = self._round("fold an update")
        check_unweighted_fold(self.name, num_samples, weight)
        check_update(template, update)
        spool.add(update, num_samples)
        self._num_samples += num_samples

    def alone_is_finite(self, update: TensorSource, base: TensorSource) -> bool:
        template, _ = self._round("check an update")
        with arithmetic_threads():
            return step_is_finite(template, update, base)
