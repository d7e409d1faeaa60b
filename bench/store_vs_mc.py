"""Store transfer against MinIO's own client: a 1 GiB object up and down a loopback MinIO
with ``S3Store.put_file`` / ``get_file`` versus ``mc cp``, measured in the same run.

Why it exists: a billion-parameter model is gigabytes, every client downloads the global
model every round and uploads its update, so the store should move bytes about as fast as
the server's own client does (goal: at least 0.9x ``mc cp``'s throughput both ways). The
store does more than ``mc cp``: it hashes what it sends, verifies the sha256 of what it
receives, and fsyncs the file before renaming it into place; all of that is in its time.

Rows (each the median of ``--repeats`` runs, the same file, the same server):

* ``mc cp``: the baseline;
* ``S3Store``: the store's defaults (16 MiB parts, 8 in flight; downloads are parallel
  ranged GETs written with ``pwrite`` and hashed in order, ``fedcore.store.ranged``);
* ``boto3 transfer manager``: download only, what ``get_file`` did before (boto3's
  ``download_fileobj`` into the temp file, then a second pass to hash it), for reference.

Results: a table with ratios to ``mc cp`` (throughput, higher is better; and CPU seconds
of the client, lower is better, which a busy machine disturbs less than wall time) and
``bench/results/store_vs_mc.json``.

Run ``python bench/store_vs_mc.py --mib 1024`` (needs MinIO and mc: ``make minio``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the MinIO manager lives with the test fixtures

from fedcore.store.base import atomic_output, sha256_file  # noqa: E402
from fedcore.store.s3 import MiB, S3Config, S3Store  # noqa: E402
from tests.fixtures.minio import MinioServer, mc_binary, minio_binary  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"


CPU: dict[tuple[str, str], list[float]] = {}
"""CPU seconds of each run (this process's threads, or the finished ``mc`` child)."""


def timed(action: Callable[[], object], cpu_key: tuple[str, str] | None = None) -> float:
    start, cpu = time.perf_counter(), _cpu()
    action()
    seconds = time.perf_counter() - start
    if cpu_key is not None:
        CPU.setdefault(cpu_key, []).append(_cpu() - cpu)
    return seconds


def _cpu() -> float:
    """CPU seconds used so far by this process and its waited-for children (``mc``; the
    running MinIO server is not counted until it exits)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="object size in MiB (default 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (default 3)")
    args = parser.parse_args()
    size = args.mib * MiB
    mc_binary()  # built (or found) before any timing

    with tempfile.TemporaryDirectory(prefix="fedkube-bench-") as tmp:
        work = Path(tmp)
        source, down = work / "model.bin", work / "down.bin"
        with source.open("wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(MiB))

        with MinioServer(minio_binary(), work / "minio") as server:
            config = S3Config(endpoint=server.endpoint, bucket=server.bucket)
            store = S3Store(config, session=server.session())
            bucket = server.bucket

            def mc_up(key: str) -> None:
                server.mc("cp", str(source), f"fk/{bucket}/{key}")

            def mc_down(key: str) -> None:
                server.mc("cp", f"fk/{bucket}/{key}", str(down))

            def store_up(key: str) -> None:
                store.put_file(key, source)

            def store_down(key: str) -> None:
                store.get_file(key, down)

            def transfer_manager_down(key: str) -> None:
                with atomic_output(down) as (out, tmp_path):
                    store._client.download_fileobj(bucket, key, out, Config=store._transfer)
                    out.flush()
                    sha256_file(tmp_path)

            modes: list[tuple[str, Callable[[str], None] | None, Callable[[str], None]]] = [
                ("mc cp", mc_up, mc_down),
                ("S3Store", store_up, store_down),
                ("boto3 transfer manager", None, transfer_manager_down),
            ]
            times: dict[tuple[str, str], list[float]] = {}
            for i in range(args.repeats):
                # Interleaved, so a slow moment of a shared machine hits every row alike.
                for name, up, get in modes:
                    key = f"bench-{i}-{name.replace(' ', '-')}.bin"  # no store prefix
                    if up is not None:
                        times.setdefault((name, "upload"), []).append(
                            timed(partial(up, key), (name, "upload"))
                        )
                    else:
                        store.put_file(key, source)
                    times.setdefault((name, "download"), []).append(
                        timed(partial(get, key), (name, "download"))
                    )
                    if sha256_file(down) != sha256_file(source):
                        raise SystemExit(f"{name} downloaded different bytes")
                    down.unlink()
                    store.delete(key)

    rows = [_row(name, direction, size, runs) for (name, direction), runs in times.items()]
    for row in rows:
        row["cpu_seconds"] = statistics.median(CPU[(row["mode"], row["direction"])])
    baseline = {r["direction"]: r for r in rows if r["mode"] == "mc cp"}
    print(f"\n{args.mib} MiB object, MinIO on loopback, median of {args.repeats} runs")
    print("(cpu: the client's CPU seconds, server excluded; on a busy machine wall time")
    print(" follows whoever gets the cores, CPU time does not)")
    header = f"{'mode':<24} {'direction':<9} {'seconds':>8} {'MiB/s':>8} {'vs mc cp':>9}"
    print(f"{header} {'cpu s':>6} {'cpu vs mc':>10}")
    for row in sorted(rows, key=lambda r: (r["direction"] != "upload", r["mode"] != "mc cp")):
        mc = baseline[row["direction"]]
        row["vs_mc"] = row["mib_s"] / mc["mib_s"]
        row["cpu_vs_mc"] = row["cpu_seconds"] / mc["cpu_seconds"]
        print(
            f"{row['mode']:<24} {row['direction']:<9} {row['seconds']:>8.2f} "
            f"{row['mib_s']:>8.0f} {row['vs_mc']:>8.2f}x {row['cpu_seconds']:>6.2f} "
            f"{row['cpu_vs_mc']:>9.2f}x"
        )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / "store_vs_mc.json"
    out.write_text(
        json.dumps(
            {
                "mib": args.mib,
                "repeats": args.repeats,
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out.relative_to(REPO)}")


def _row(mode: str, direction: str, size: int, seconds: list[float]) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {
        "mode": mode,
        "direction": direction,
        "seconds": median,
        "mib_s": size / MiB / median,
        "runs": seconds,
    }


if __name__ == "__main__":
    main()
