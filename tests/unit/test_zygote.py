"""The fork server of ``fedkube run`` (``fedcore.zygote``): processes it starts run the module
asked for, with the environment asked for, become the runner's children, and report their
exit codes; a zygote that cannot serve says so instead of forking a broken process.

Each case runs in a subprocess of its own: the runner's side makes its process a subreaper,
which the test runner itself must not become.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"


def run_script(script: str, tmp_path: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


RUNNER = """
    import json, os, sys
    from pathlib import Path
    import psutil
    from fedcore.runner import become_subreaper
    from fedcore.zygote import start_zygote

    become_subreaper()
    logs = Path("logs")
    zygote = start_zygote(dict(os.environ), logs / "zygote.log", ["fedcore.cli"])
    out = {}
    for name, job in (("valid", GOOD_JOB), ("invalid", BAD_JOB)):
        env = dict(os.environ, FEDKUBE_TEST_MARK=name)
        argv = [sys.executable, "-m", "fedcore.cli", "validate", job]
        proc = zygote.start(argv, env, logs / f"{name}.log")
        parent = psutil.Process(proc.pid).ppid() if psutil.pid_exists(proc.pid) else None
        out[name] = {
            "code": proc.wait(timeout=120),
            "parent_is_runner": parent in (None, os.getpid()),
            "log": (logs / f"{name}.log").read_text(),
        }
    out["zygote_alive"] = zygote.alive()
    zygote.close()
    print(json.dumps(out))
"""


def test_a_forked_process_runs_its_module_and_reports_its_exit_code(tmp_path: Path) -> None:
    valid = sorted((DATA / "valid-jobs").glob("*.yaml"))[0]
    invalid = sorted((DATA / "invalid-jobs").glob("*.yaml"))[0]
    script = RUNNER.replace("GOOD_JOB", repr(str(valid))).replace("BAD_JOB", repr(str(invalid)))

    out = run_script(script, tmp_path)

    valid_run, invalid_run = out["valid"], out["invalid"]
    assert isinstance(valid_run, dict)
    assert isinstance(invalid_run, dict)
    assert valid_run["code"] == 0, valid_run["log"]
    assert valid_run["parent_is_runner"]
    assert invalid_run["code"] not in (0, None)
    assert invalid_run["log"], "the process's output goes to its log"
    assert out["zygote_alive"], "one failed process does not take the zygote down"


def test_a_zygote_whose_preload_fails_says_it_cannot_serve(tmp_path: Path) -> None:
    script = """
        import json, os
        from pathlib import Path
        from fedcore.zygote import ZygoteError, start_zygote
        try:
            start_zygote(dict(os.environ), Path("z.log"), ["no_such_module_for_fedkube"])
            print(json.dumps({"error": None}))
        except ZygoteError as e:
            print(json.dumps({"error": str(e)}))
    """

    out = run_script(script, tmp_path)

    assert out["error"]
    assert "z.log" in str(out["error"])
    assert "no_such_module_for_fedkube" in (tmp_path / "z.log").read_text() + str(out["error"])


def test_preload_refuses_to_fork_from_a_process_with_another_thread(tmp_path: Path) -> None:
    script = """
        import json, threading, time
        from fedcore.zygote import ZygoteError, preload
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
        try:
            preload(["json"])
            print(json.dumps({"error": None}))
        except ZygoteError as e:
            print(json.dumps({"error": str(e)}))
    """

    out = run_script(script, tmp_path)

    assert "thread" in str(out["error"])


def test_preload_serves_once_numpys_blas_threads_are_stopped_for_the_fork(
    tmp_path: Path,
) -> None:
    script = """
        import json, os
        os.environ["OMP_NUM_THREADS"] = "2"  # OpenBLAS starts a pool thread at import
        from fedcore.zygote import preload
        preload(["numpy"])
        print(json.dumps({"threads": len(os.listdir("/proc/self/task"))}))
    """

    out = run_script(script, tmp_path)

    assert out["threads"] == 1
