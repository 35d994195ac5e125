"""The one training loop, shared by every task: plain PyTorch, readable top to bottom.

A task supplies the model, an endless stream of examples and an evaluation; this module turns
them into optimizer steps. Seeds are set in exactly one place (`seed_everything`), called by the
job right before the adapter is created.
"""

from __future__ import annotations

import math
import os
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from peftrepro.manifest import TrainingConfig
from peftrepro.measure import MemorySampler, MemoryStats, StepTimer
from peftrepro.tasks import Example

# name -> (class, accepted kwargs). An allowlist: a manifest can never name an arbitrary callable.
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], frozenset[str]]] = {
    "AdamW": (torch.optim.AdamW, frozenset({"lr", "weight_decay", "betas", "eps"})),
    "Adam": (torch.optim.Adam, frozenset({"lr", "weight_decay", "betas", "eps"})),
    "SGD": (torch.optim.SGD, frozenset({"lr", "weight_decay", "momentum"})),
    "RMSprop": (torch.optim.RMSprop, frozenset({"lr", "weight_decay", "momentum", "alpha", "eps"})),
    "Adagrad": (torch.optim.Adagrad, frozenset({"lr", "weight_decay", "eps"})),
    # peft's LoRA-FA (AdamW on lora_B with lora_A frozen, gradients projected); the method family
    # `lora-fa`. r and lora_alpha, as the public comparison writes them, must equal the LoRA config's.
    "lora-fa": (torch.optim.AdamW, frozenset({"lr", "weight_decay", "r", "lora_alpha"})),
}
BUCKET_BATCHES = 8  # length bucketing sorts this many batches' worth of examples at a time


def check_optimizer_kwargs(name: str, kwargs: dict[str, Any]) -> tuple[str, str] | None:
    """(JSON pointer, problem) if `kwargs` do not fit optimizer `name`, else None."""
    accepted = OPTIMIZERS[name][1]
    for key in sorted(kwargs):
        if key not in accepted:
            return (
                f"/training/optimizer_kwargs/{key}",
                f"{name} does not take {key!r}; it takes {', '.join(sorted(accepted))}",
            )
    if "lr" not in kwargs:
        return "/training/optimizer_kwargs/lr", "a learning rate is required"
    return None


def make_optimizer(model: torch.nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    if cfg.optimizer_type == "lora-fa":
        from peft.optimizers import create_lorafa_optimizer

        lora: Any = getattr(model, "peft_config")["default"]  # noqa: B009 - a PeftModel's, by the manifest policy
        kwargs = {"r": lora.r, "lora_alpha": lora.lora_alpha, **cfg.optimizer_kwargs}
        return create_lorafa_optimizer(model, **kwargs)  # type: ignore[arg-type]
    optimizer_cls, _ = OPTIMIZERS[cfg.optimizer_type]
    return optimizer_cls([p for p in model.parameters() if p.requires_grad], **cfg.optimizer_kwargs)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds CUDA too


def configure_determinism(num_threads: int) -> None:
    """Deterministic kernels and a pinned thread count: CPU results then repeat bit for bit."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(num_threads)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def lr_factor(cfg: TrainingConfig) -> Callable[[int], float]:
    """Linear warmup, then constant or cosine decay to zero at max_steps."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_scheduler == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(examples: list[Example], pad_token_id: int, max_len: int) -> Batch:
    rows = [(e.input_ids[:max_len], e.labels[:max_len]) for e in examples]
    width = max(len(ids) for ids, _ in rows)
    return Batch(
        input_ids=torch.tensor([ids + [pad_token_id] * (width - len(ids)) for ids, _ in rows]),
        attention_mask=torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
        labels=torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows]),
    )


def bucketed_batches(
    examples: Iterator[Example], cfg: TrainingConfig, pad_token_id: int, rng: random.Random
) -> Iterator[Batch]:
    """Take BUCKET_BATCHES batches' worth of examples, sort by length, cut, shuffle the batches:
    little padding, no length-ordered curriculum."""
    while True:
        pool = [next(examples) for _ in range(cfg.batch_size * BUCKET_BATCHES)]
        pool.sort(key=lambda e: len(e.input_ids))
        chunks = [pool[i : i + cfg.batch_size] for i in range(0, len(pool), cfg.batch_size)]
        rng.shuffle(chunks)
        for chunk in chunks:
            yield collate(chunk, pad_token_id, cfg.max_seq_length)


@dataclass
class TrainResult:
    steps: int
    train_seconds: float
    tokens: int
    train_loss_final: float
    valid_curve: list[dict[str, float]] = field(default_factory=list)
    memory: MemoryStats | None = None


def train(
    model: torch.nn.Module,
    examples: Iterator[Example],
    cfg: TrainingConfig,
    *,
    seed: int,
    pad_token_id: int,
    validate: Callable[[torch.nn.Module], float],
    device: torch.device,
    is_adalora: bool = False,
    progress: bool | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train the trainable parameters of `model` for cfg.max_steps steps; validate every eval_steps."""
    optimizer = make_optimizer(model, cfg)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    batches = bucketed_batches(examples, cfg, pad_token_id, random.Random(seed))
    timer, sampler = StepTimer(), MemorySampler(device)
    losses: list[float] = []
    curve: list[dict[str, float]] = []
    tokens = 0
    bar = _progress_bar(cfg.max_steps, progress)
    model.train()
    with sampler:
        for step in range(1, cfg.max_steps + 1):
            batch = next(batches)
            with timer:
                out = model(
                    input_ids=batch.input_ids.to(device),
                    attention_mask=batch.attention_mask.to(device),
                    labels=batch.labels.to(device),
                )
                out.loss.backward()
                if cfg.grad_norm_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_norm_clip)
                optimizer.step()
                if (
                    is_adalora
                ):  # AdaLoRA reallocates ranks from the gradients: after backward, before zero_grad
                    model.base_model.update_and_allocate(step)  # type: ignore[operator,union-attr]
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss = out.loss.item()
            sampler.step()
            if on_step is not None:
                on_step(step)
            losses.append(loss)
            tokens += batch.tokens
            if step % cfg.eval_steps == 0 or step == cfg.max_steps:
                curve.append({"step": step, "valid_accuracy": validate(model)})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", valid=curve[-1]["valid_accuracy"] if curve else "-")
    if bar is not None:
        bar.close()
    window = losses[-min(len(losses), cfg.eval_steps) :]
    return TrainResult(
        steps=cfg.max_steps,
        train_seconds=timer.seconds,
        tokens=tokens,
        train_loss_final=sum(window) / len(window),
        valid_curve=curve,
        memory=sampler.stats(),
    )


def _progress_bar(total: int, enabled: bool | None) -> Any:
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc="train", unit="step", file=sys.stderr, leave=False)
