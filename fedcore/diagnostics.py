"""What a process shows about itself on demand, for whoever finds it stuck."""

from __future__ import annotations

import faulthandler
import signal
import sys


def stacks_on_sigusr1() -> None:
    """``kill -USR1 PID`` prints every thread's stack to the process's own standard error.

    Written to the stream the process started with (``sys.__stderr__``), so a caller that has
    redirected ``sys.stderr`` in-process (tests, an embedding program) neither breaks this nor
    receives the stacks; without such a stream nothing is registered.
    """
    stream = sys.__stderr__
    if stream is None:
        return
    try:
        faulthandler.register(signal.SIGUSR1, file=stream, all_threads=True)
    except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is both of the last
        return  # no file descriptor behind the stream: nowhere to print to
