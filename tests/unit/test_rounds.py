"""Round decisions: who trains, when a round closes, when it can never close."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fedcore.rounds import (
    Decision,
    RoundState,
    decide,
    explain_unreachable,
    round_deadline,
    select_clients,
    training_differences,
)
from fedcore.spec import FederatedJobSpec, parse_spec

T0 = datetime(2030, 1, 1, tzinfo=UTC)
DEADLINE = T0 + timedelta(seconds=60)
BEFORE = T0 + timedelta(seconds=10)
AFTER = T0 + timedelta(seconds=61)


def make_spec(num_clients: int = 3, **overrides: Any) -> FederatedJobSpec:
    spec: dict[str, Any] = {
        "rounds": 5,
        "task": {"entrypoint": "fedcore.tasks.digits:task"},
        "clients": [{"name": f"c{i}"} for i in range(num_clients)],
    }
    spec.update(overrides)
    return parse_spec(spec)


def state(**kw: Any) -> RoundState:
    values: dict[str, Any] = {
        "selected": ["a", "b", "c"],
        "deadline": DEADLINE,
        "min_clients": 2,
    }
    values.update({k: frozenset(v) if isinstance(v, set) else v for k, v in kw.items()})
    return RoundState(**values)


# ---- selection ---------------------------------------------------------------------------------


def test_full_fraction_selects_every_client_in_spec_order() -> None:
    assert select_clients(make_spec(), 1) == ["c0", "c1", "c2"]


def test_excluded_clients_are_never_selected() -> None:
    assert select_clients(make_spec(), 4, excluded={"c1"}) == ["c0", "c2"]


def test_partial_fraction_selects_at_least_min_clients() -> None:
    spec = make_spec(num_clients=10, strategy={"fractionFit": 0.1, "minClients": 3})

    chosen = select_clients(spec, 1)

    assert len(chosen) == 3
    assert chosen == sorted(chosen, key=lambda n: int(n[1:]))  # spec order


def test_selection_is_reproducible_for_the_same_seed_and_round() -> None:
    spec = make_spec(num_clients=10, strategy={"fractionFit": 0.3, "minClients": 1})

    assert select_clients(spec, 7) == select_clients(spec, 7)


def test_selection_varies_over_rounds() -> None:
    spec = make_spec(num_clients=10, strategy={"fractionFit": 0.3, "minClients": 1})

    picks = {tuple(select_clients(spec, r)) for r in range(1, 21)}

    assert len(picks) > 1


def test_deadline_is_round_timeout_after_start() -> None:
    spec = make_spec(strategy={"roundTimeoutSeconds": 90})

    assert round_deadline(T0, spec) == T0 + timedelta(seconds=90)


# ---- closing a round ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "now", "expected"),
    [
        pytest.param({}, BEFORE, Decision.WAIT, id="nothing arrived: wait"),
        pytest.param(
            {"folded": {"a", "b"}},
            BEFORE,
            Decision.WAIT,
            id="quorum before the deadline: wait for the rest",
        ),
        pytest.param(
            {"folded": {"a", "b", "c"}}, BEFORE, Decision.ALL_REPORTED, id="everyone folded: close"
        ),
        pytest.param(
            {"folded": {"a", "b"}, "rejected": {"c"}},
            BEFORE,
            Decision.ALL_REPORTED,
            id="a rejected client counts as answered",
        ),
        pytest.param(
            {"folded": {"a", "b"}, "excluded": {"c"}},
            BEFORE,
            Decision.ALL_REPORTED,
            id="an excluded client is not waited for",
        ),
        pytest.param(
            {"folded": {"a", "b"}}, AFTER, Decision.DEADLINE, id="quorum after the deadline: close"
        ),
        pytest.param(
            {"folded": {"a", "b"}}, DEADLINE, Decision.DEADLINE, id="exactly at the deadline: close"
        ),
        pytest.param(
            {"folded": {"a"}}, AFTER, Decision.WAIT, id="no quorum after the deadline: keep waiting"
        ),
        pytest.param(
            {"folded": {"a"}, "rejected": {"b", "c"}},
            BEFORE,
            Decision.UNREACHABLE,
            id="too many rejected: unreachable",
        ),
        pytest.param(
            {"excluded": {"b", "c"}},
            BEFORE,
            Decision.UNREACHABLE,
            id="too many excluded: unreachable",
        ),
        pytest.param(
            {"folded": {"a"}, "rejected": {"b"}},
            BEFORE,
            Decision.WAIT,
            id="one rejected but quorum still reachable: wait",
        ),
    ],
)
def test_round_decision(kw: dict[str, Any], now: datetime, expected: Decision) -> None:
    assert decide(state(**kw), now) == expected


def test_pending_lists_selected_clients_still_due_in_order() -> None:
    s = state(folded={"b"}, rejected={"c"})

    assert s.pending == ["a"]


def test_unreachable_explanation_names_clients_and_the_fix() -> None:
    s = state(folded={"a"}, rejected={"b"}, excluded={"c"})

    text = explain_unreachable(4, s, {"b": "bad-signature: forged"})

    assert "round 4" in text
    assert "b (bad-signature: forged)" in text
    assert "c (excluded)" in text
    assert "minClients" in text


# ---- spec changes under a running job ----------------------------------------------------------


def test_placement_changes_are_not_training_differences() -> None:
    before = make_spec()
    after = make_spec(
        image="registry.example/fedkube:2",
        runPolicy={"backoffLimit": 7},
        clients=[{"name": f"c{i}", "resources": {"limits": {"cpu": "2"}}} for i in range(3)],
    )

    assert not training_differences(before, after)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"rounds": 6}, "spec.rounds", id="rounds"),
        pytest.param({"seed": 3}, "spec.seed", id="seed"),
        pytest.param(
            {"task": {"entrypoint": "fedcore.tasks.digits:task", "config": {"lr": 0.3}}},
            "spec.task.config",
            id="task config",
        ),
        pytest.param({"strategy": {"minClients": 1}}, "spec.strategy.min_clients", id="strategy"),
        pytest.param(
            {"clients": [{"name": "c0"}, {"name": "c1", "replicas": 2}, {"name": "c2"}]},
            "spec.clients[1].replicas",
            id="replicas",
        ),
        pytest.param(
            {"clients": [{"name": "c0"}, {"name": "c2"}, {"name": "c1"}]},
            "spec.clients (names or order)",
            id="client order",
        ),
    ],
)
def test_training_field_changes_are_named(overrides: dict[str, Any], field: str) -> None:
    diff = training_differences(make_spec(), make_spec(**overrides))

    assert any(f.startswith(field) for f in diff.fields), diff.fields
