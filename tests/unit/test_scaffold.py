"""SCAFFOLD: the server's and the clients' arithmetic against a direct dense computation,
partial participation and an absent client, bit-identical resume, hostile variate deltas."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from fedcore.errors import TaskError, UpdateRejected
from fedcore.layout import UpdateManifest
from fedcore.spec import StrategySpec
from fedcore.strategies import FedAvg, Scaffold, build_strategy
from fedcore.strategies.scaffold import variate_template
from fedcore.tasks.scaffold import (
    ControlCorrection,
    LocalSGD,
    local_sgd,
    next_variate,
    trainable_names,
    zero_variate,
)
from fedcore.weights import (
    InMemoryWeights,
    Tensors,
    load_weights,
    save_weights,
    template_of,
)
from tests.unit.test_tasks_base import SlopeTask, make_ctx
from tests.unit.test_validation import Case, model

CLIENTS = ["a", "b", "c", "d"]
N = len(CLIENTS)
PARTICIPATION = [["a", "b", "c"], ["a", "c"], ["b", "c", "d"], ["a", "b"]]
"""Who is folded in rounds 1..4: d is absent for rounds 1, 2 and 4, a for round 3."""
SAMPLES = {"a": 10, "b": 30, "c": 7, "d": 20}


def initial_model() -> Tensors:
    g = torch.Generator().manual_seed(7)
    return {
        "w": torch.randn(5, 3, generator=g),
        "b": torch.zeros(3, dtype=torch.bfloat16),
        "steps": torch.tensor(0),
    }


def client_round(r: int, client: str, c_i: Tensors, c: Tensors) -> tuple[Tensors, Tensors]:
    """A client's (model delta, Δc_i) as if it trained: random, but drawn per (r, client)."""
    g = torch.Generator().manual_seed(1000 * r + CLIENTS.index(client))
    dy = {
        "w": torch.randn(5, 3, generator=g) * 0.1,
        "b": (torch.randn(3, generator=g) * 0.1).to(torch.bfloat16),
        "steps": torch.tensor(3),
    }
    target = {k: torch.randn(v.shape, generator=g) for k, v in c_i.items()}
    dc = {k: (target[k] - c_i[k]).to(torch.float32) for k in c_i}
    return dy, dc


def fold_round(
    strategy: Scaffold, base: Tensors, updates: list[tuple[Tensors, Tensors, int]]
) -> Tensors:
    strategy.begin_round(template_of(base))
    for dy, dc, n in updates:
        strategy.fold(InMemoryWeights({**dy, **dc}), n)
    return strategy.finalize(InMemoryWeights(base))


def test_rounds_with_partial_participation_match_a_dense_computation() -> None:
    strategy = Scaffold(server_learning_rate=0.7, num_clients=N)
    x = initial_model()
    dense_x = {k: v.clone() for k, v in x.items()}
    dense_c = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in zero_variate(x).items()}
    c_i = {name: zero_variate(x) for name in CLIENTS}

    for r, selected in enumerate(PARTICIPATION, start=1):
        c = {k: v.to(torch.float32) for k, v in dense_c.items()}
        updates = {name: client_round(r, name, c_i[name], c) for name in selected}
        x = fold_round(strategy, x, [(*updates[n], SAMPLES[n]) for n in selected])

        total = sum(SAMPLES[n] for n in selected)
        for name in ("w", "b"):
            mean = sum(updates[n][0][name].double() * SAMPLES[n] for n in selected) / total
            dense_x[name] = (dense_x[name].double() + 0.7 * mean).to(dense_x[name].dtype)
        mean_steps = sum(3 * SAMPLES[n] for n in selected) / total
        dense_x["steps"] = dense_x["steps"] + round(mean_steps)
        for key in dense_c:
            dense_c[key] = dense_c[key] + sum(updates[n][1][key].double() for n in selected) / N
        for n in selected:
            c_i[n] = {k: (c_i[n][k] + updates[n][1][k]) for k in c_i[n]}

        state = strategy.state_dict()
        for name in ("w", "b"):
            assert torch.allclose(x[name].double(), dense_x[name].double(), rtol=0, atol=1e-6)
        assert torch.equal(x["steps"], dense_x["steps"])
        for key in dense_c:
            assert state[key].dtype == torch.float32
            assert torch.allclose(state[key].double(), dense_c[key], rtol=0, atol=1e-6), key
            # The paper's invariant: c is the mean of all N clients' c_i, absent ones included.
            mean_ci = sum(c_i[n][key].double() for n in CLIENTS) / N
            assert torch.allclose(state[key].double(), mean_ci, rtol=0, atol=1e-5), key


def test_the_model_half_is_fedavg_bit_for_bit() -> None:
    scaffold, fedavg = Scaffold(num_clients=3), FedAvg()
    a = b = initial_model()
    zero = zero_variate(a)

    for r in range(1, 3):
        updates = [client_round(r, n, zero, zero) for n in ("a", "b", "c")]
        a = fold_round(scaffold, a, [(dy, dc, SAMPLES["a"]) for dy, dc in updates])
        fedavg.begin_round(template_of(b))
        for dy, _ in updates:
            fedavg.fold(InMemoryWeights(dy), SAMPLES["a"])
        b = fedavg.finalize(InMemoryWeights(b))

    for name in a:
        assert torch.equal(a[name], b[name]), name


def run_rounds(strategy: Scaffold, x: Tensors, rounds: range, c_i: dict[str, Tensors]) -> Tensors:
    for r in rounds:
        selected = PARTICIPATION[r - 1]
        c = strategy.server_variate(template_of(x))
        updates = {n: client_round(r, n, c_i[n], c) for n in selected}
        x = fold_round(strategy, x, [(*updates[n], SAMPLES[n]) for n in selected])
        for n in selected:
            c_i[n] = {k: c_i[n][k] + updates[n][1][k] for k in c_i[n]}
    return x


def test_a_restarted_aggregator_resumes_bit_identically_from_the_persisted_variate(
    tmp_path: Path,
) -> None:
    x0 = initial_model()
    undisturbed = Scaffold(num_clients=N)
    x = run_rounds(undisturbed, x0, range(1, 5), {n: zero_variate(x0) for n in CLIENTS})

    first = Scaffold(num_clients=N)
    c_i = {n: zero_variate(x0) for n in CLIENTS}
    y = run_rounds(first, x0, range(1, 3), c_i)
    save_weights(tmp_path / "state.safetensors", first.state_dict(), {"kind": "state"})
    save_weights(tmp_path / "global.safetensors", y)
    del first  # the crash
    second = Scaffold(num_clients=N)
    second.load_state_dict(load_weights(tmp_path / "state.safetensors"))
    y = run_rounds(second, load_weights(tmp_path / "global.safetensors"), range(3, 5), c_i)

    for name in x:
        assert torch.equal(x[name], y[name]), name
    assert undisturbed.state_dict().keys() == second.state_dict().keys()
    for key, value in undisturbed.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key


def test_the_variate_covers_float_tensors_only_in_at_least_float32() -> None:
    template = template_of(initial_model())

    variates = variate_template(template)

    assert sorted(variates) == ["control/b", "control/w"]
    assert variates["control/b"].dtype == torch.float32
    assert Scaffold(num_clients=2).update_template(template).keys() == {
        "w",
        "b",
        "steps",
        "control/w",
        "control/b",
    }


def test_scaffold_is_built_from_the_spec_and_needs_the_number_of_clients() -> None:
    strategy = build_strategy(StrategySpec(name="scaffold", server_learning_rate=0.5))

    assert isinstance(strategy, Scaffold)
    assert strategy.server_learning_rate == 0.5
    with pytest.raises(ValueError, match="scaffold needs num_clients"):
        strategy.begin_round(template_of(initial_model()))


def test_a_model_tensor_named_like_a_variate_is_refused() -> None:
    with pytest.raises(ValueError, match="uses for its control variates"):
        Scaffold(num_clients=2).begin_round(template_of({"control/w": torch.zeros(2)}))


def test_an_update_without_its_variate_delta_is_refused_before_anything_is_folded() -> None:
    strategy = Scaffold(num_clients=2)
    base = initial_model()
    strategy.begin_round(template_of(base))
    dy, dc = client_round(1, "a", zero_variate(base), zero_variate(base))
    del dc["control/w"]

    with pytest.raises(ValueError, match=r"missing \['control/w'\]"):
        strategy.fold(InMemoryWeights({**dy, **dc}), 5)
    assert strategy.num_updates == 0


def test_state_of_another_strategy_or_model_is_refused() -> None:
    with pytest.raises(ValueError, match="not a scaffold state key"):
        Scaffold(num_clients=2).load_state_dict({"momentum/w": torch.zeros(5, 3)})
    strategy = Scaffold(num_clients=2)
    strategy.load_state_dict({"control/w": torch.zeros(4, 4)})
    with pytest.raises(ValueError, match="belongs to another model"):
        strategy.begin_round(template_of(initial_model()))


def test_a_variate_delta_that_would_overflow_the_server_variate_is_not_finite_alone() -> None:
    strategy = Scaffold(num_clients=1)
    base = initial_model()
    strategy.begin_round(template_of(base))
    dy, dc = client_round(1, "a", zero_variate(base), zero_variate(base))
    huge = {**dc, "control/w": torch.full((5, 3), 3e38)}
    strategy.load_state_dict({"control/w": torch.full((5, 3), 3e38)})

    assert strategy.alone_is_finite(InMemoryWeights({**dy, **dc}), InMemoryWeights(base))
    assert not strategy.alone_is_finite(InMemoryWeights({**dy, **huge}), InMemoryWeights(base))


# ---- the variate delta on the wire: validated like the model delta ---------------------------


def scaffold_case(**spoil: torch.Tensor) -> Case:
    """test_validation's good update, with a variate delta, checked as the aggregator does."""
    case = Case()
    control = {
        "control/fc.weight": torch.full((4, 3), 0.25),
        "control/fc.bias": torch.full((4,), -0.5),
    }
    case.tensors = {**case.tensors, **control, **spoil}
    case.check = {"template": Scaffold(num_clients=2).update_template(template_of(model()))}
    return case


def test_an_update_with_its_variate_delta_passes_validation(tmp_path: Path) -> None:
    manifest = scaffold_case().run(tmp_path)

    assert manifest.client == "hospital-a"


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        ({"control/fc.bias": torch.tensor([1.0, float("nan"), 0.0, 0.0])}, "non-finite"),
        ({"control/fc.bias": torch.zeros(5)}, "shape-mismatch"),
        ({"control/fc.bias": torch.zeros(4, dtype=torch.int32)}, "dtype-mismatch"),
        ({"control/extra": torch.zeros(1)}, "unknown-tensor"),
    ],
    ids=["nan", "shape", "int-dtype", "unknown"],
)
def test_a_bad_variate_delta_rejects_the_update_with_a_reason(
    tmp_path: Path, spoil: dict[str, torch.Tensor], reason: str
) -> None:
    case = scaffold_case(**spoil)

    with pytest.raises(UpdateRejected) as caught:
        case.run(tmp_path)

    assert caught.value.reason == reason


def test_an_update_missing_its_variate_delta_is_rejected(tmp_path: Path) -> None:
    case = scaffold_case()
    del case.tensors["control/fc.bias"]

    with pytest.raises(UpdateRejected) as caught:
        case.run(tmp_path)

    assert caught.value.reason == "missing-tensor"


def test_a_variate_delta_changed_after_signing_is_a_bad_signature(tmp_path: Path) -> None:
    case = scaffold_case()

    def tamper(path: Path, manifest: UpdateManifest) -> UpdateManifest:
        tensors = load_weights(path)
        tensors["control/fc.bias"] = tensors["control/fc.bias"] + 1
        save_weights(path, tensors, {"kind": "update", "round": 5, "client": "hospital-a"})
        return manifest

    case.after_signing = tamper

    with pytest.raises(UpdateRejected) as caught:
        case.run(tmp_path)
    assert caught.value.reason == "bad-signature"


# ---- the client's side ---------------------------------------------------------------------


def test_the_correction_term_has_gradient_c_minus_c_i_on_trainable_parameters_only() -> None:
    model = nn.Linear(2, 1)
    model.bias.requires_grad_(False)
    c = {"control/weight": torch.tensor([[1.0, 2.0]]), "control/bias": torch.tensor([5.0])}
    ci = {"control/weight": torch.tensor([[0.5, -1.0]]), "control/bias": torch.tensor([1.0])}
    term = ControlCorrection.snapshot(model, c, ci)

    term(model).backward()  # type: ignore[no-untyped-call]

    assert model.weight.grad is not None
    assert model.weight.grad.tolist() == [[0.5, 3.0]]
    assert model.bias.grad is None
    assert term.steps == 1


def test_the_variate_step_is_option_two_by_hand() -> None:
    x = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    y = {"w": torch.tensor([0.5, 3.0]), "n": torch.tensor(5)}
    c = {"control/w": torch.tensor([0.25, -0.5])}
    ci = {"control/w": torch.tensor([1.0, 1.0])}

    new, change = next_variate(x, y, c, ci, steps=4, sgd=LocalSGD(lr=0.125), trainable={"w"})

    # c_i+ = c_i - c + (x - y) / (K lr) = [1, 1] - [0.25, -0.5] + [0.5, -1] / 0.5
    assert new["control/w"].tolist() == [1.75, -0.5]
    assert change["control/w"].tolist() == [0.75, -1.5]
    assert list(new) == ["control/w"]  # no variate for the integer tensor


def test_a_float_tensor_that_is_not_trained_keeps_a_zero_variate() -> None:
    x = {"w": torch.ones(2), "stat": torch.ones(2)}
    y = {"w": torch.zeros(2), "stat": torch.full((2,), 9.0)}
    ci = {"control/w": torch.zeros(2), "control/stat": torch.full((2,), 0.5)}

    new, change = next_variate(
        x, y, zero_variate(x), ci, steps=1, sgd=LocalSGD(1.0), trainable={"w"}
    )

    assert new["control/stat"].tolist() == [0.0, 0.0]
    assert change["control/stat"].tolist() == [-0.5, -0.5]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_with_a_constant_gradient_the_new_variate_is_that_gradient(momentum: float) -> None:
    """SGD (with momentum) on a linear loss moves by lr · K_eff · g, so c_i+ must be g."""
    model = nn.Linear(3, 1, bias=False)
    gradient = torch.tensor([[0.5, -2.0, 1.0]])
    x = {k: v.clone() for k, v in model.state_dict().items()}
    zero = zero_variate(x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=momentum)
    term = ControlCorrection.snapshot(model, zero, zero)
    for _ in range(7):
        optimizer.zero_grad()
        ((model.weight * gradient).sum() + term(model)).backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    new, _ = next_variate(
        x,
        model.state_dict(),
        zero,
        zero,
        steps=term.steps,
        sgd=LocalSGD(lr=0.01, momentum=momentum),
        trainable=trainable_names(model),
    )

    assert torch.allclose(new["control/weight"], gradient, rtol=1e-4, atol=0)


def test_supervised_tasks_give_their_sgd_and_refuse_adam() -> None:
    task = SlopeTask()

    assert local_sgd(task, make_ctx({"lr": 0.2, "momentum": 0.5})) == LocalSGD(0.2, 0.5)
    with pytest.raises(TaskError, match="needs plain SGD local steps"):
        local_sgd(task, make_ctx({"optimizer": "adam"}))
    with pytest.raises(TaskError, match="has no local_sgd"):
        local_sgd(object(), make_ctx({}))


def test_supervised_train_adds_the_correction_once_per_step_and_is_pulled_by_it() -> None:
    from fedcore.tasks.base import train_loader

    task = SlopeTask()
    ctx = make_ctx({"localEpochs": 2, "lr": 0.1})
    plain, corrected = task.build_model(ctx), task.build_model(ctx)
    x = {k: v.clone() for k, v in plain.state_dict().items()}
    pull = {k: torch.full(v.shape, 50.0) for k, v in zero_variate(x).items()}
    term = ControlCorrection.snapshot(corrected, pull, zero_variate(x))
    loader = train_loader(task.train_dataset(ctx), batch_size=16, ctx=ctx, shuffle_seed=1)

    task.train(plain, loader, ctx)
    task.train(corrected, loader, replace(ctx, scaffold=term))

    assert term.steps == 2 * len(loader)
    for p, q in zip(plain.parameters(), corrected.parameters(), strict=True):
        assert bool((q < p).all())  # c - c_i = +50 pushes every parameter down


def test_a_task_that_never_adds_the_correction_is_caught() -> None:
    model = nn.Linear(2, 1)
    x = dict(model.state_dict())
    term = ControlCorrection.snapshot(model, zero_variate(x), zero_variate(x))

    with pytest.raises(TaskError, match=r"never added ctx\.scaffold\(model\)"):
        term.require_used("my.task:task")
    term(model)
    term.require_used("my.task:task")


def test_variates_of_another_model_are_refused_at_snapshot() -> None:
    with pytest.raises(ValueError, match="made for another model"):
        ControlCorrection.snapshot(nn.Linear(2, 1), {}, {})


def test_the_in_process_loop_a_benchmark_runs_keeps_c_the_mean_of_the_clients_variates() -> None:
    from fedcore.tasks.base import train_loader
    from fedcore.weights import delta as model_delta

    task = SlopeTask()
    ctx = make_ctx({"lr": 0.05, "momentum": 0.5})
    model = task.build_model(ctx)
    x = {k: v.detach().clone() for k, v in model.state_dict().items()}
    server = Scaffold(num_clients=3)
    c_i = {name: zero_variate(x) for name in ("a", "b", "c")}
    loader = train_loader(task.train_dataset(ctx), batch_size=16, ctx=ctx, shuffle_seed=1)

    for selected in (["a", "b"], ["b", "c"]):
        c = server.server_variate(template_of(x))
        server.begin_round(template_of(x))
        for name in selected:
            model.load_state_dict(x)
            term = ControlCorrection.snapshot(model, c, c_i[name])
            task.train(model, loader, replace(ctx, scaffold=term))
            local = dict(model.state_dict())
            c_i[name], dc = next_variate(
                x,
                local,
                c,
                c_i[name],
                steps=term.steps,
                sgd=local_sgd(task, ctx),
                trainable=trainable_names(model),
            )
            server.fold(InMemoryWeights({**model_delta(local, x), **dc}), 10)
        x = server.finalize(InMemoryWeights(x))

    c = server.server_variate(template_of(x))
    for key, value in c.items():
        mean = sum(v[key].double() for v in c_i.values()) / 3
        assert float(value.abs().max()) > 0
        torch.testing.assert_close(value.double(), mean, rtol=0, atol=1e-6)
