"""FedProx in a real client group: the proximal term is added on every gloo rank, so a
2-rank group uploads what one process computes, and a large mu keeps the update small."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.integration.test_client_ddp import GroupRun, assert_same_update, run_group

pytestmark = pytest.mark.timeout(300)

FEDPROX = {"name": "fedprox", "proximalMu": 10.0}


def update_norm(run: GroupRun) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in run.update.values()))


@pytest.fixture(scope="module")
def prox_single(tmp_path_factory: pytest.TempPathFactory) -> GroupRun:
    return run_group(tmp_path_factory.mktemp("prox-single"), replicas=1, procs=1, strategy=FEDPROX)


def test_two_rank_fedprox_group_uploads_what_one_process_computes(
    prox_single: GroupRun, tmp_path: Path
) -> None:
    two_ranks = run_group(tmp_path / "prox-two", replicas=1, procs=2, strategy=FEDPROX)

    assert_same_update(two_ranks, prox_single)


def test_a_large_mu_keeps_the_update_smaller_than_plain_training(
    prox_single: GroupRun, tmp_path: Path
) -> None:
    plain = run_group(tmp_path / "plain", replicas=1, procs=1)

    assert update_norm(plain) > 0
    assert update_norm(prox_single) < 0.8 * update_norm(plain)
