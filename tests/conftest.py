"""Shared fixtures, one plugin module per area (add yours to ``pytest_plugins``)."""

pytest_plugins = [
    "tests.fixtures.minio",
    "tests.fixtures.stores",
    "tests.fixtures.operator",
    "tests.fixtures.site_cluster",
    "tests.fixtures.images",
]
