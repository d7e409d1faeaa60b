"""``kill -USR1`` shows where a fedkube process is stuck. (That registering it does not break a
command whose streams a caller redirected in-process is what every test calling
``fedcore.cli.main`` under ``contextlib.redirect_stderr`` or capsys checks.)"""

from __future__ import annotations

import subprocess
import sys

SIGNALLED = """
import os, signal, threading, time
from fedcore.diagnostics import stacks_on_sigusr1
stacks_on_sigusr1()
def parked_helper():
    time.sleep(5)
threading.Thread(target=parked_helper, daemon=True).start()
time.sleep(0.2)
os.kill(os.getpid(), signal.SIGUSR1)
time.sleep(0.2)
print("still running")
"""


def test_sigusr1_prints_every_threads_stack_and_the_process_goes_on() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SIGNALLED], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "still running"
    assert "parked_helper" in done.stderr  # the other thread, not only the signalled one
    assert "most recent call first" in done.stderr
