"""The last check before a commit: a new global model, and the server state, are finite.

``fedcore.validation`` lets only finite updates through, but finite updates can still make a
non-finite model: a delta of 3e38 scaled by ``serverLearningRate: 10`` overflows float32, a
float16 model overflows at 65504, server momentum adds up over rounds, float64 sums of huge
float64 deltas overflow together. A model holding NaN or inf would poison every later round
and every client that trains from it, so the aggregator never commits one. What it does
instead (``fedcore.aggregator``, ``_guard``):

1. after ``finalize``, ``non_finite_tensors`` names the tensors of the new model and of the
   strategy's state that are not finite; when there are none, the round commits;
2. otherwise the round is recomputed from the store: every folded update is read and
   validated again, checked alone (``Strategy.alone_is_finite``: would this update, were it
   the only one, give a finite model and state?), rejected with ``non-finite-aggregate`` if
   it would not, and folded again if it would. The round's result is a weighted mean of the
   single-update results, so it is finite when each of them is;
3. if no single update is at fault (deltas that overflow only together, a mean that rounds
   past the edge of the dtype), the update of the largest magnitude (``largest_magnitude``)
   is rejected and the round recomputed again. Each pass rejects at least one update, so
   this ends;
4. the round then closes as the quorum rules say (``fedcore.rounds.decide``): it commits with
   the updates left, keeps waiting for clients still due, or fails as unreachable when too
   few can remain. Every rejection is in ``round.json`` with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedcore.strategies.base import arithmetic_threads
from fedcore.weights import FLOAT_DTYPES, Scratch, TensorSource


def non_finite_tensors(tensors: Mapping[str, torch.Tensor], label: str = "") -> list[str]:
    """Names (prefixed by ``label``) of the float tensors holding NaN or +-inf, sorted."""
    bad: list[str] = []
    with arithmetic_threads():
        for name in sorted(tensors):
            tensor = tensors[name]
            if tensor.dtype in FLOAT_DTYPES and not bool(torch.isfinite(tensor).all()):
                bad.append(f"{label}{name}")
    return bad


def largest_magnitude(update: TensorSource) -> float:
    """The largest absolute value among the float tensors of ``update`` (0.0 when none)."""
    scratch = Scratch()
    largest = 0.0
    with arithmetic_threads():
        for name, spec in update.template().items():
            if spec.dtype not in FLOAT_DTYPES:
                continue
            tensor = update.get(name, scratch)
            if tensor.numel():
                largest = max(largest, float(tensor.abs().max()))
    return largest


__all__ = ["largest_magnitude", "non_finite_tensors"]
