"""The LoRA task: adapters are the whole model fedkube sees, the base is the same everywhere,
a foreign base fails clearly, the text is partitioned by module family, training lowers the loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from fedcore.errors import TaskError
from fedcore.tasks import TaskContext
from fedcore.tasks import text_corpus as tc
from fedcore.tasks.base import train_loader
from fedcore.tasks.causal_lm import AdapterLM, CausalLMConfig, CausalLMTask, build_base, task

SMALL: dict[str, Any] = {
    "layers": 2,
    "width": 32,
    "heads": 2,
    "context": 32,
    "rank": 4,
    "samples": 64,
    "testSamples": 32,
}


def ctx(
    config: dict[str, Any] | None = None, *, seed: int = 0, client: int | None = None
) -> TaskContext:
    return TaskContext(
        config={**SMALL, **(config or {})},
        seed=seed,
        round=1,
        client=None if client is None else f"c{client}",
        client_index=client,
        num_clients=3,
    )


def adapters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---- the model fedkube sees -------------------------------------------------------------------


def test_the_state_dict_is_the_adapters_alone_named_after_the_base() -> None:
    model = task.build_model(ctx())
    state = model.state_dict()

    assert isinstance(model, AdapterLM)
    assert state
    assert all(".lora_A." in n or ".lora_B." in n for n in state)
    assert all(n.startswith(model.fingerprint + "/") for n in state)
    # 2 layers x (c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) x (A, B)
    assert len(state) == 2 * 4 * 2
    base_params = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert sum(t.numel() for t in state.values()) < base_params / 5


def test_the_default_update_is_a_few_mb_for_a_base_of_hundreds_of_mb() -> None:
    cfg = CausalLMConfig()
    per_layer = cfg.rank * ((768 + 3 * 768) + (768 + 768) + (768 + 4 * 768) + (4 * 768 + 768))
    adapter_mb = cfg.layers * per_layer * 4 / 1e6
    base = build_base(CausalLMConfig(layers=1), seed=0)
    one_layer = sum(p.numel() for p in base.parameters())
    embeddings = tc.VOCAB_SIZE * 768 + cfg.context * 768
    base_mb = (embeddings + cfg.layers * (one_layer - embeddings)) * 4 / 1e6

    assert 3 < adapter_mb < 6
    assert 300 < base_mb < 400


def test_every_process_builds_the_same_base_and_adapters() -> None:
    one, two = CausalLMTask().build_model(ctx()), CausalLMTask().build_model(ctx())

    assert isinstance(one, AdapterLM)
    assert isinstance(two, AdapterLM)
    assert one.base_sha256 == two.base_sha256
    pairs = zip(adapters(one).values(), adapters(two).values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_another_seed_builds_another_base() -> None:
    one, two = task.build_model(ctx(seed=0)), task.build_model(ctx(seed=1))

    assert isinstance(one, AdapterLM)
    assert isinstance(two, AdapterLM)
    assert one.base_sha256 != two.base_sha256


def test_lora_b_starts_at_zero_so_the_initial_model_is_the_base() -> None:
    state = task.build_model(ctx()).state_dict()

    assert all(torch.all(v == 0) for n, v in state.items() if ".lora_B." in n)
    assert any(torch.any(v != 0) for n, v in state.items() if ".lora_A." in n)


def test_loading_adapters_of_another_base_names_the_mismatch() -> None:
    theirs = task.build_model(ctx(seed=1)).state_dict()
    mine = task.build_model(ctx(seed=0))

    with pytest.raises(TaskError, match=r"belong to base model base-[0-9a-f]{16}.*same base"):
        mine.load_state_dict(theirs)


def test_loading_other_adapter_shapes_is_a_runtime_error_the_client_reports() -> None:
    theirs = task.build_model(ctx({"targetModules": ["c_attn"]})).state_dict()
    mine = task.build_model(ctx())

    with pytest.raises(RuntimeError, match="adapter tensors differ"):
        mine.load_state_dict(theirs)


def test_a_pinned_base_hash_that_differs_fails_clearly() -> None:
    with pytest.raises(TaskError, match=r"task\.config\.baseSha256: the base this process holds"):
        CausalLMTask().build_model(ctx({"baseSha256": "0" * 64}))


def test_a_base_saved_to_a_volume_loads_without_network(tmp_path: Path) -> None:
    built = task.build_model(ctx())
    base = build_base(CausalLMConfig.from_config(SMALL), seed=123)
    base.save_pretrained(tmp_path / "base")  # type: ignore[operator]

    loaded = CausalLMTask().build_model(ctx({"basePath": str(tmp_path / "base")}))

    assert isinstance(loaded, AdapterLM)
    assert isinstance(built, AdapterLM)
    assert loaded.base_sha256 != built.base_sha256
    assert sorted(n.split("/", 1)[1] for n in loaded.state_dict()) == sorted(
        n.split("/", 1)[1] for n in built.state_dict()
    )


def test_a_base_path_without_a_model_is_named(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match=r"task\.config\.basePath: .* holds no config\.json"):
        CausalLMTask().build_model(ctx({"basePath": str(tmp_path)}))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"layers": 0}, "task.config.layers: must be an integer >= 1"),
        ({"width": 30, "heads": 4}, r"task.config.width \(30\) must be a multiple of heads"),
        ({"alpha": 0.5}, "task.config.alpha: must be an integer >= 1"),
        ({"targetModules": []}, "task.config.targetModules: must be a non-empty list"),
        ({"targetModules": ["nope"]}, "task.config.targetModules"),
        ({"partition": "random"}, "task.config.partition: must be 'family' or 'iid'"),
        ({"baseSha256": "abc"}, "task.config.baseSha256: must be 64 lowercase hex digits"),
        ({"basePath": 3}, "task.config.basePath: must be a non-empty string"),
    ],
)
def test_bad_config_is_named(config: dict[str, Any], message: str) -> None:
    with pytest.raises(TaskError, match=message):
        CausalLMTask().build_model(ctx(config))


# ---- text ---------------------------------------------------------------------------------------


def test_families_go_to_different_clients_and_held_out_documents_to_none() -> None:
    docs = tc.documents()
    parts = [tc.partition_of(docs, k, 3, "family") for k in range(3)]
    families = [{d.family for d in part} for part in parts]
    names = [{d.name for d in part} for part in parts]

    assert all(families)
    assert not families[0] & families[1]
    assert not families[1] & families[2]
    assert not names[0] & names[1]
    assert not names[0] & names[2]
    held = {d.name for d in tc.held_out(docs)}
    assert held
    assert not held & (names[0] | names[1] | names[2])


def test_more_clients_than_families_share_each_family() -> None:
    docs = tc.documents()
    parts = [tc.partition_of(docs, k, 8, "family") for k in range(8)]

    assert all(parts)
    assert {d.family for d in parts[0]} == {d.family for d in parts[6]}
    assert not {d.name for d in parts[0]} & {d.name for d in parts[6]}


def test_windows_are_bytes_and_end_of_document_tokens() -> None:
    docs = [tc.Document("text", "a", b"hello"), tc.Document("text", "b", b"world!")]

    rows = tc.windows(docs, context=3)

    assert rows.tolist() == [[104, 101, 108, 108], [111, tc.EOS, 119, 111], [114, 108, 100, 33]]
    assert tc.decode(tc.encode("héllo").tolist()) == "héllo"


def test_each_client_reads_the_same_samples_on_every_rank() -> None:
    one = task.train_dataset(ctx(client=1))
    two = CausalLMTask().train_dataset(ctx(client=1))

    assert torch.equal(one[:][0], two[:][0])  # type: ignore[index]
    assert len(one) == SMALL["samples"]  # type: ignore[arg-type]


# ---- learning ---------------------------------------------------------------------------------


def test_local_training_moves_only_the_adapters_and_lowers_the_held_out_loss() -> None:
    c = ctx({"lr": 0.01, "localEpochs": 2}, client=0)
    model = task.build_model(c)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = task.evaluate(model, c)
    loader = train_loader(task.train_dataset(c), batch_size=16, ctx=c, shuffle_seed=0)

    metrics = task.train(model, loader, c)
    after = task.evaluate(model, c)

    assert metrics["loss"] > 0
    assert after["loss"] < before["loss"]
    assert after["perplexity"] == pytest.approx(torch.tensor(after["loss"]).exp().item())
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
