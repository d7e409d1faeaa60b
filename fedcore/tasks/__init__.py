"""The task API: how a user's model and data plug into fedkube.

``spec.task.entrypoint`` names a ``Task`` (``module:attr``); ``load_task`` imports it. Most
tasks subclass ``SupervisedTask``. Built-ins: ``fedcore.tasks.digits:task`` (scikit-learn's
bundled digits, offline) and ``fedcore.tasks.synthetic:task`` (any model size, benchmarks).
"""

from __future__ import annotations

from fedcore.tasks.base import (
    SupervisedTask,
    Task,
    TaskContext,
    TrainConfig,
    derive_seed,
    load_task,
    seeded,
)
from fedcore.tasks.scaffold import LocalSGD

__all__ = [
    "LocalSGD",
    "SupervisedTask",
    "Task",
    "TaskContext",
    "TrainConfig",
    "derive_seed",
    "load_task",
    "seeded",
]
