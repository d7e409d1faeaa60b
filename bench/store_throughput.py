"""Store throughput: a model-sized file up to and down from a real MinIO, in parallel parts
versus one request.

Why it exists: every round moves the global model down to each client and an update up, so
the S3 store's transfer settings (``S3Config.multipart_*``, ``max_concurrency``) decide a
round's floor on a fast network. This measures ``S3Store.put_file`` / ``get_file`` end to end,
sha256 included (the store hashes what it sends and verifies what it receives), against a
MinIO started on loopback with a temp data folder, for:

* ``multipart``: the defaults (16 MiB parts, 8 in flight): boto3's transfer manager up,
  the store's own ranged GETs down (``fedcore.store.ranged``);
* ``multipart, create-if-absent``: the same parts through the store's own conditional
  multipart upload (how the aggregator commits), upload only;
* ``single-part``: threshold above the file size, one PUT and one GET.

Each row is the median of ``--repeats`` runs; the local sha256 speed is printed for context.
Results: a table and ``bench/results/store_throughput.json``.

Run ``python bench/store_throughput.py --mib 256`` (needs the MinIO binary: ``make minio``).
``bench/store_vs_mc.py`` compares a 1 GiB object against MinIO's own ``mc cp``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

from fedcore.store.base import sha256_file  # noqa: E402
from fedcore.store.s3 import MiB, S3Config, S3Store  # noqa: E402
from tests.fixtures.minio import MinioServer, minio_binary  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="file size in MiB (default 256)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (default 3)")
    args = parser.parse_args()
    size = args.mib * MiB

    with tempfile.TemporaryDirectory(prefix="fedkube-bench-") as tmp:
        work = Path(tmp)
        source = work / "model.bin"
        with source.open("wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(MiB))
        sha_seconds = timed(lambda: sha256_file(source))

        with MinioServer(minio_binary(), work / "minio") as server:
            base: dict[str, Any] = {"endpoint": server.endpoint, "bucket": server.bucket}
            modes: dict[str, dict[str, Any]] = {
                "multipart": {},
                "single-part": {"multipart_threshold": 8 * size},
            }
            rows: list[dict[str, Any]] = []
            for mode, overrides in modes.items():
                store = S3Store(S3Config(**base, **overrides), session=server.session())
                ups, downs, creates = [], [], []
                for i in range(args.repeats):
                    key = f"{mode}/{i}/model.bin"
                    ups.append(timed(partial(store.put_file, key, source)))
                    downs.append(timed(partial(store.get_file, key, work / "down.bin")))
                    (work / "down.bin").unlink()
                    if mode == "multipart":
                        new = f"{mode}/{i}/new.bin"
                        create = partial(store.put_file, new, source, if_absent=True)
                        creates.append(timed(create))
                    store.delete(key)
                rows.append(_row(mode, "upload", size, ups))
                rows.append(_row(mode, "download", size, downs))
                if creates:
                    rows.append(_row(mode + ", create-if-absent", "upload", size, creates))

    print(f"\n{args.mib} MiB file, MinIO on loopback, median of {args.repeats} runs")
    print(f"(local sha256 alone: {size / MiB / sha_seconds:,.0f} MiB/s)\n")
    # Baseline: a plain single-part transfer in the same direction, measured in this run.
    base = {r["direction"]: r["seconds"] for r in rows if r["mode"] == "single-part"}
    print(f"{'mode':<30} {'direction':<9} {'seconds':>8} {'MiB/s':>8} {'vs single-part':>15}")
    for row in rows:
        ratio = row["seconds"] / base[row["direction"]] if row["direction"] in base else None
        shown = f"{ratio:.2f}x time" if ratio is not None else "-"
        print(
            f"{row['mode']:<30} {row['direction']:<9} {row['seconds']:>8.2f} "
            f"{row['mib_s']:>8.0f} {shown:>15}"
        )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / "store_throughput.json"
    out.write_text(
        json.dumps(
            {
                "mib": args.mib,
                "repeats": args.repeats,
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
                "sha256_mib_s": size / MiB / sha_seconds,
                "defaults": {
                    "multipart_threshold": S3Config(bucket="b").multipart_threshold,
                    "multipart_chunksize": S3Config(bucket="b").multipart_chunksize,
                    "max_concurrency": S3Config(bucket="b").max_concurrency,
                },
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
