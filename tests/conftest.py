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

REAL_NODE_DIR = Path(__file__).resolve().parent / "realnode"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """tests/realnode runs in a session of its own (``make test-realnode``): collected only
    when named on the command line, never by a plain ``pytest``."""
    if collection_path != REAL_NODE_DIR:
        return None
    named = [Path(str(arg).split("::")[0]).resolve() for arg in config.args]
    return not any(p == REAL_NODE_DIR or REAL_NODE_DIR in p.parents for p in named)
