"""Process exit codes: the contract between fedkube's processes and whoever restarts them.

``fedkube run``'s supervisor and the operator (through each Job's ``podFailurePolicy``) read a
pod's or process's exit code to decide whether a restart can help. It cannot help when the job
itself is wrong (a task entrypoint that does not import, a spec the runtime refuses, a task that
breaks its contract, scoped credentials asked of a store without STS): those exit with
``EXIT_CONFIG`` and are reported at once, naming the problem, instead of being retried until the
restart budget is spent.

The module needs nothing but ``fedcore.errors``, so the operator (which carries no torch)
shares the numbers.
"""

from __future__ import annotations

from fedcore.errors import BundleError, FedcoreError, SpecError, StsUnavailable, TaskError

EXIT_OK = 0
EXIT_FAILED = 1
"""A failure at run time (store trouble, a lost peer, a crash): a restart may help."""
EXIT_CONFIG = 2
"""The job file, the command line or the task is wrong: fix it; a restart cannot help."""
EXIT_INTERRUPTED = 130
"""Stopped by Ctrl-C (128 + SIGINT)."""
EXIT_BROKEN_PIPE = 141
"""The reader of the output went away (128 + SIGPIPE, as a shell reports ``cmd | head``)."""


def exit_code_for(error: FedcoreError) -> int:
    """``EXIT_CONFIG`` for what the user fixes in the job or the task, ``EXIT_FAILED`` else."""
    fix_the_job = SpecError | TaskError | StsUnavailable | BundleError
    return EXIT_CONFIG if isinstance(error, fix_the_job) else EXIT_FAILED
