"""Built-in task: LoRA fine-tuning of a causal language model, where only the adapters travel.

Why it exists: federated fine-tuning of large models is affordable only when what leaves a
participant is small. This task freezes a transformer (the base) and trains low-rank adapters
(LoRA, Hu et al., 2021, via ``peft``) on each participant's text; the model fedkube sees
(``state_dict``: what the global model, every update and every strategy hold) is the adapter
tensors alone (``lora_A``/``lora_B``), a few MB for a base of hundreds of MB. Every
participant and the aggregator hold the base themselves:

* built from a config (GPT-2 architecture, ``layers``/``width``/``heads``/``context``) with a
  seed derived from ``spec.seed``: identical weights everywhere, no download; or
* loaded from ``basePath``, a directory in the participant's volume holding what
  ``save_pretrained`` writes (``config.json`` and the weights), read with
  ``local_files_only`` (never the network). Its vocabulary must hold the byte tokens below.

The base is pinned by its sha256 (over every tensor's name, dtype, shape and bytes), and
every adapter tensor's name starts with ``base-<first 16 hex digits>/``: the global model
carries the fingerprint of the base it belongs to, so a participant whose base differs (a
different config, library version or file) fails with a ``TaskError`` saying so when it
loads the global model, and the aggregator rejects such an update (its tensor names are not
the model's). ``baseSha256`` in the config pins the full hash up front.

Text and tokens: ``fedcore.tasks.text_corpus`` (docstrings of the standard library, byte
tokens, partitioned by module family). ``evaluate`` reports ``loss`` (mean next-token
cross-entropy, nats), ``perplexity`` and ``accuracy`` (next-byte) on the held-out documents.

Config (``spec.task.config``, each optional):

* ``layers`` (12), ``width`` (768), ``heads`` (12), ``context`` (128): the built base
  (defaults: 85 M parameters, 340 MB in float32; its adapters: 1.2 M parameters, 4.7 MB);
* ``rank`` (8), ``alpha`` (16), ``targetModules`` (``[c_attn, c_proj, c_fc]``, GPT-2's
  attention and MLP projections): the adapters;
* ``basePath``, ``baseSha256``: a base from the volume, and the hash it must have;
* ``partition`` (``family``) or ``iid``; ``samples`` (512) windows per client,
  ``testSamples`` (256) held-out windows;
* the ``SupervisedTask`` keys (``optimizer`` adamw, ``lr`` 0.003, ``localEpochs`` 1,
  ``batchSize`` 16, ``evalBatchSize`` 64).

Memory and time grow with the base (held once per process, plus one copy per model built)
and with ``context`` squared (attention); updates grow with ``rank`` x the targeted widths.
"""

from __future__ import annotations

import copy
import hashlib
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from torch.utils.data import DataLoader, Dataset
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from fedcore.errors import TaskError
from fedcore.tasks import text_corpus
from fedcore.tasks.base import SupervisedTask, TaskContext, TrainConfig, derive_seed, seeded

DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")
"""GPT-2's attention (``attn.c_attn``, ``attn.c_proj``) and MLP (``mlp.c_fc``,
``mlp.c_proj``) projections: every matrix multiply of a block."""
FINGERPRINT_HEX = 16
"""Hex digits of the base's sha256 in every adapter name: 64 bits, no accidental match."""


@dataclass(frozen=True)
class CausalLMConfig:
    """The task's own keys of ``spec.task.config``."""

    layers: int = 12
    width: int = 768
    heads: int = 12
    context: int = 128
    """Tokens per training window (and the built base's positions)."""
    rank: int = 8
    """LoRA rank ``r``: each adapted ``d_in x d_out`` matrix gains ``r * (d_in + d_out)``."""
    alpha: int = 16
    """LoRA scale numerator: adapters are scaled by ``alpha / rank``."""
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    base_path: str | None = None
    base_sha256: str | None = None
    partition: text_corpus.Partition = "family"
    samples: int = 512
    test_samples: int = 256

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CausalLMConfig:
        values: dict[str, Any] = {}
        for key, attr in (
            ("layers", "layers"),
            ("width", "width"),
            ("heads", "heads"),
            ("context", "context"),
            ("rank", "rank"),
            ("alpha", "alpha"),
            ("samples", "samples"),
            ("testSamples", "test_samples"),
        ):
            if key in config:
                value = config[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise TaskError(f"task.config.{key}: must be an integer >= 1 (got {value!r})")
                values[attr] = value
        if "targetModules" in config:
            targets = config["targetModules"]
            if (
                not isinstance(targets, list)
                or not targets
                or not all(isinstance(t, str) and t for t in targets)
            ):
                raise TaskError(
                    "task.config.targetModules: must be a non-empty list of module names, "
                    f"e.g. [c_attn, c_proj] (got {targets!r})"
                )
            values["target_modules"] = tuple(targets)
        for key, attr in (("basePath", "base_path"), ("baseSha256", "base_sha256")):
            if key in config:
                value = config[key]
                if not isinstance(value, str) or not value:
                    raise TaskError(
                        f"task.config.{key}: must be a non-empty string (got {value!r})"
                    )
                values[attr] = value
        sha = values.get("base_sha256")
        if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
            raise TaskError(
                f"task.config.baseSha256: must be 64 lowercase hex digits (got {sha!r})"
            )
        partition = config.get("partition", "family")
        if partition not in ("family", "iid"):
            raise TaskError(f"task.config.partition: must be 'family' or 'iid' (got {partition!r})")
        values["partition"] = partition
        cfg = cls(**values)
        if cfg.base_path is None and cfg.width % cfg.heads:
            raise TaskError(
                f"task.config.width ({cfg.width}) must be a multiple of heads ({cfg.heads})"
            )
        return cfg

    def base_key(self, seed: int) -> tuple[object, ...]:
        """What the base depends on: one cached base per distinct key."""
        if self.base_path is not None:
            return ("path", self.base_path)
        return ("built", self.layers, self.width, self.heads, self.context, seed)


def base_sha256(model: nn.Module) -> str:
    """sha256 of a model's tensors: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def build_base(cfg: CausalLMConfig, seed: int) -> nn.Module:
    """The frozen base: GPT-2 built from the config under ``seed``, or loaded from
    ``basePath``."""
    if cfg.base_path is not None:
        return _load_base(Path(cfg.base_path))
    config = GPT2Config(
        vocab_size=text_corpus.VOCAB_SIZE,
        n_positions=cfg.context,
        n_embd=cfg.width,
        n_layer=cfg.layers,
        n_head=cfg.heads,
        bos_token_id=text_corpus.BOS,
        eos_token_id=text_corpus.EOS,
        pad_token_id=text_corpus.PAD,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
    )
    with seeded(seed):
        return cast(nn.Module, GPT2LMHeadModel(config))


def _load_base(path: Path) -> nn.Module:
    if not (path / "config.json").is_file():
        raise TaskError(
            f"task.config.basePath: {str(path)!r} holds no config.json; point it at a "
            "directory written by save_pretrained in the participant's volume"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise TaskError(f"task.config.basePath: cannot load a model from {str(path)!r}: {e}") from e
    vocab = int(getattr(model.config, "vocab_size", 0))
    if vocab < text_corpus.VOCAB_SIZE:
        raise TaskError(
            f"task.config.basePath: the model at {str(path)!r} has {vocab} tokens; this task's "
            f"byte tokenizer needs at least {text_corpus.VOCAB_SIZE} (256 bytes + PAD, BOS, EOS)"
        )
    return cast(nn.Module, model)


class AdapterLM(nn.Module):
    """A frozen causal LM with LoRA adapters whose ``state_dict`` is the adapters alone.

    ``state_dict`` names are ``base-<fingerprint>/<module path>.lora_A.weight`` (and
    ``lora_B``); ``load_state_dict`` takes exactly those, and raises ``TaskError`` when the
    tensors belong to another base. ``forward(input_ids)`` returns next-token logits.
    """

    def __init__(self, lm: nn.Module, base_sha256: str) -> None:
        super().__init__()
        self.lm = lm
        self.base_sha256 = base_sha256
        self.fingerprint = f"base-{base_sha256[:FINGERPRINT_HEX]}"
        self._adapters = {
            self._wire_name(name): p for name, p in lm.named_parameters() if p.requires_grad
        }
        # DDP need not broadcast the frozen base when it wraps this module: every rank built
        # the same one (the fingerprint proves it at the first load), and a base of hundreds
        # of MB would cross the group's network at every start for nothing.
        self._ddp_params_and_buffers_to_ignore = [
            name for name, p in self.named_parameters() if not p.requires_grad
        ] + [name for name, _ in self.named_buffers()]

    def _wire_name(self, name: str) -> str:
        short = name.removeprefix("base_model.model.").replace(".default.", ".")
        return f"{self.fingerprint}/{short}"

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = self.lm(input_ids=input_ids, use_cache=False)
        return cast(torch.Tensor, out.logits)

    def adapter_names(self) -> list[str]:
        return sorted(self._adapters)

    def state_dict(  # type: ignore[override]
        self, *, destination: Any = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Any]:
        out: dict[str, Any] = {} if destination is None else destination
        for name in sorted(self._adapters):
            p = self._adapters[name]
            out[prefix + name] = p if keep_vars else p.detach()
        return out

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        names = set(state_dict)
        bases = sorted({n.split("/", 1)[0] for n in names} - {self.fingerprint})
        if bases:
            raise TaskError(
                f"the model's adapters belong to base model {bases[0]}, but this process "
                f"built {self.fingerprint} (sha256 {self.base_sha256}); every participant "
                "must hold the same base: the same task.config layers/width/heads/context "
                "and seed with the same torch and transformers versions, or the same files "
                "at basePath"
            )
        missing = sorted(set(self._adapters) - names)
        unexpected = sorted(names - set(self._adapters))
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"adapter tensors differ: missing {missing[:3]}, unexpected {unexpected[:3]}; "
                "the global model was made with other rank or targetModules"
            )
        with torch.no_grad():
            for name in sorted(names & set(self._adapters)):
                self._adapters[name].copy_(state_dict[name])
        return nn.modules.module._IncompatibleKeys(missing, unexpected)


class CausalLMTask(SupervisedTask):
    """LoRA fine-tuning of a causal LM on the standard library's docstrings."""

    defaults: ClassVar[TrainConfig] = TrainConfig(
        optimizer="adamw", lr=0.003, local_epochs=1, batch_size=16, eval_batch_size=64
    )
    classification: ClassVar[bool] = False

    def __init__(self) -> None:
        self._bases: dict[tuple[object, ...], tuple[nn.Module, str]] = {}
        self._docs: list[text_corpus.Document] | None = None

    def config(self, ctx: TaskContext) -> CausalLMConfig:
        return CausalLMConfig.from_config(ctx.config)

    def base(self, ctx: TaskContext) -> tuple[nn.Module, str]:
        """The frozen base and its sha256, built (or loaded) once per process."""
        cfg = self.config(ctx)
        key = cfg.base_key(ctx.seed)
        if key not in self._bases:
            base = build_base(cfg, derive_seed(ctx.seed, "causal-lm-base"))
            base.requires_grad_(False)
            sha = base_sha256(base)
            if cfg.base_sha256 is not None and sha != cfg.base_sha256:
                raise TaskError(
                    f"task.config.baseSha256: the base this process holds has sha256 {sha}, "
                    f"not {cfg.base_sha256}; give it the same base (config, library versions "
                    "or basePath files), or update baseSha256"
                )
            self._bases[key] = (base, sha)
        return self._bases[key]

    def build_model(self, ctx: TaskContext) -> nn.Module:
        cfg = self.config(ctx)
        base, sha = self.base(ctx)
        lm = copy.deepcopy(base)
        fan_in_fan_out = any(
            isinstance(m, Conv1D)
            for name, m in lm.named_modules()
            if name.rsplit(".", 1)[-1] in cfg.target_modules
        )
        lora = LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            target_modules=list(cfg.target_modules),
            lora_dropout=0.0,
            bias="none",
            fan_in_fan_out=fan_in_fan_out,
        )
        with seeded(derive_seed(ctx.seed, "causal-lm-adapters")), warnings.catch_warnings():
            # peft asks transformers a question transformers 5 renamed; nothing to act on.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            try:
                peft_model = get_peft_model(cast(Any, lm), lora)
            except ValueError as e:
                raise TaskError(f"task.config.targetModules: {e}") from e
        return AdapterLM(cast(nn.Module, peft_model), sha)

    def _documents(self) -> list[text_corpus.Document]:
        if self._docs is None:
            self._docs = text_corpus.documents()
        return self._docs

    def train_dataset(self, ctx: TaskContext) -> Dataset[Any]:
        cfg = self.config(ctx)
        index = ctx.client_index or 0
        docs = text_corpus.partition_of(self._documents(), index, ctx.num_clients, cfg.partition)
        return text_corpus.lm_dataset(
            docs,
            context=cfg.context,
            limit=cfg.samples,
            seed=derive_seed(ctx.seed, "causal-lm-train", index),
            what=f"client {ctx.client!r}'s documents",
        )

    def test_dataset(self, ctx: TaskContext) -> Dataset[Any]:
        cfg = self.config(ctx)
        return text_corpus.lm_dataset(
            text_corpus.held_out(self._documents()),
            context=cfg.context,
            limit=cfg.test_samples,
            seed=derive_seed(ctx.seed, "causal-lm-test"),
            what="the held-out documents",
        )

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor, ctx: TaskContext) -> torch.Tensor:
        return nn.functional.cross_entropy(
            outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1)
        )

    def make_optimizer(
        self, params: Iterable[nn.Parameter], cfg: TrainConfig
    ) -> torch.optim.Optimizer:
        return super().make_optimizer((p for p in params if p.requires_grad), cfg)

    def evaluate(self, model: nn.Module, ctx: TaskContext) -> dict[str, float]:
        """Mean next-token loss (nats), perplexity and next-byte accuracy on held-out text."""
        cfg = self.train_config(ctx)
        loader: DataLoader[Any] = DataLoader(self.test_dataset(ctx), batch_size=cfg.eval_batch_size)
        model.eval()
        loss_sum, correct, tokens = 0.0, 0, 0
        with torch.no_grad():
            for inputs, targets in loader:
                inputs, targets = inputs.to(ctx.device), targets.to(ctx.device)
                logits = model(inputs)
                n = targets.numel()
                loss_sum += float(self.loss(logits, targets, ctx)) * n
                correct += int((logits.argmax(dim=-1) == targets).sum())
                tokens += n
        loss = loss_sum / max(tokens, 1)
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 80.0)),
            "accuracy": correct / max(tokens, 1),
        }


task = CausalLMTask()
"""The entrypoint ``fedcore.tasks.causal_lm:task``."""

__all__ = [
    "AdapterLM",
    "CausalLMConfig",
    "CausalLMTask",
    "base_sha256",
    "build_base",
    "task",
]
