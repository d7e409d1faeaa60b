"""Check that ``spec.task.entrypoint`` names a task, without running the task.

``fedkube validate`` imports the entrypoint's module (a typo would otherwise surface only once
pods start) and looks at the object it names, but calls nothing: not a factory, not a class,
not whatever callable the entrypoint happens to name (``sys:exit``, ``os:abort``). A task is
an object, or a class, providing ``build_model``, ``train_dataset``, ``train`` and
``evaluate`` (``fedcore.tasks.load_task`` instantiates a class with no arguments at run time,
and refuses anything else alike).

Importing a module runs its top-level code, so anything it raises is caught and reported,
``SystemExit`` included; only ``KeyboardInterrupt`` passes (the user pressed Ctrl-C). Code
that ends the process outright at import (``os._exit``) cannot be caught in-process.

This module does not import torch: it works where only the operator's dependencies are
installed, and says when the task's module, or torch it needs, cannot be imported here (the
runtime image needs them then) instead of failing a good job.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from fedcore.errors import SpecError

FIELD = "spec.task.entrypoint"
RUNTIME_ONLY = frozenset({"torch"})
"""Packages of the runtime image an operator-only install lacks: a task module that needs them
is not loaded here, and that is no error."""
REQUIRED_METHODS = ("build_model", "train_dataset", "train", "evaluate")
"""The task contract (``fedcore.tasks.base.REQUIRED_METHODS``, repeated here without torch)."""


def _refuse(entrypoint: str, why: str, source: str | None) -> SpecError:
    return SpecError([(FIELD, f"{entrypoint!r}: {why}")], source=source)


def _describe(error: BaseException) -> str:
    if isinstance(error, SystemExit):
        return f"it called sys.exit({error.code!r})"
    return f"{type(error).__name__}: {error}"


def check_entrypoint(entrypoint: str, *, source: str | None = None) -> str:
    """A note on what was checked (``loads``, or why it could not be loaded here); raise
    ``SpecError`` naming ``spec.task.entrypoint`` when it does not name a task."""
    module_name, _, attr_path = entrypoint.partition(":")
    try:
        importable = importlib.util.find_spec(module_name) is not None
    except KeyboardInterrupt:
        raise
    except BaseException:  # a parent package is missing, broken, or exits at import
        importable = False
    if not importable:
        return (
            f"not loaded: module {module_name!r} is not importable here; the runtime image needs it"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except KeyboardInterrupt:
        raise
    except ModuleNotFoundError as e:
        if e.name in RUNTIME_ONLY:
            return f"not loaded: the runtime ({e.name}) is not installed here"
        raise _refuse(
            entrypoint,
            f"importing module {module_name!r} failed: {_describe(e)}; install it in the "
            "runtime image (and here, to check it), or fix the entrypoint",
            source,
        ) from e
    except BaseException as e:  # user code at import may raise anything, SystemExit too
        raise _refuse(
            entrypoint,
            f"importing module {module_name!r} failed: {_describe(e)}; fix the module or the "
            "entrypoint",
            source,
        ) from e
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except KeyboardInterrupt:
            raise
        except BaseException as e:
            detail = "" if isinstance(e, AttributeError) else f" ({_describe(e)})"
            raise _refuse(
                entrypoint,
                f"module {module_name!r} has no attribute {attr_path!r} (missing {part!r})"
                f"{detail}; name the task object, e.g. 'mypkg.train:task'",
                source,
            ) from e
    try:
        missing = [m for m in REQUIRED_METHODS if not callable(getattr(obj, m, None))]
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # a property or __getattr__ of the user's object
        raise _refuse(entrypoint, f"reading its task methods failed: {_describe(e)}", source) from e
    if missing:
        what = (
            "a class"
            if isinstance(obj, type)
            else "a function"
            if callable(obj)
            else f"a {type(obj).__name__} object"
        )
        raise _refuse(
            entrypoint,
            f"names {what} that is not a task (it lacks {', '.join(missing)}); a task is an "
            f"object or class providing {', '.join(REQUIRED_METHODS)}: point the entrypoint at "
            "one (subclass fedcore.tasks.SupervisedTask)",
            source,
        )
    return "loads (a class, instantiated when the job runs)" if isinstance(obj, type) else "loads"
