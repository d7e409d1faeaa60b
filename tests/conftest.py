"""Shared fixtures, one plugin module per area (add yours to ``pytest_plugins``)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.minio",
    "tests.fixtures.stores",
    "tests.fixtures.operator",
    "tests.fixtures.site_cluster",
    "tests.fixtures.images",
    "tests.fixtures.realnode",
]

HERE = Path(__file__).resolve().parent
CONTAINER_LANES = (HERE / "images", HERE / "realnode")
"""Lanes that build and run container images: minutes of image builds and gigabytes of disk
each, so they run as their own make targets (``make test-images``, ``make test-realnode``, both
in ``make test-containers``), never in a plain ``pytest``. tests/realnode also needs a session
of its own: the e2e session's cluster-wide operator would handle its jobs too."""


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """A container lane is collected only when named on the command line."""
    if collection_path not in CONTAINER_LANES:
        return None
    named = [Path(str(arg).split("::")[0]).resolve() for arg in config.args]
    return not any(p == collection_path or collection_path in p.parents for p in named)
