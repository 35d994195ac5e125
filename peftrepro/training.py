"""The one training loop, shared by every task: plain PyTorch, readable top to bottom.

A task supplies the model, an endless stream of batches, the loss of a batch and an evaluation;
this module turns them into optimizer steps. Seeds are set in exactly one place
(`seed_everything`), called by the job right before the adapter is created.
"""

from __future__ import annotations

import math
import os
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from peftrepro.measure import MemorySampler, MemoryStats, StepTimer
from peftrepro.runconfig import DEFAULT_LORAPLUS_RATIO, OPTIMIZERS, TrainingConfig


def make_optimizer(model: torch.nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    if cfg.optimizer_type == "lora-fa":
        from peft.optimizers import create_lorafa_optimizer

        lora: Any = getattr(model, "peft_config")["default"]  # noqa: B009 - a PeftModel's, by the manifest policy
        kwargs = {"r": lora.r, "lora_alpha": lora.lora_alpha, **cfg.optimizer_kwargs}
        return create_lorafa_optimizer(model, **kwargs)  # type: ignore[arg-type]
    if cfg.optimizer_type == "lora+":
        from peft.optimizers import create_loraplus_optimizer

        kwargs = {"loraplus_lr_ratio": DEFAULT_LORAPLUS_RATIO, **cfg.optimizer_kwargs}
        return create_loraplus_optimizer(model, torch.optim.AdamW, **kwargs)  # type: ignore[arg-type]
    if cfg.optimizer_type == "riemannian":
        from peft.optimizers import create_riemannian_optimizer

        return create_riemannian_optimizer(model, torch.optim.AdamW, **cfg.optimizer_kwargs)  # type: ignore[arg-type]
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


class Batch(Protocol):
    @property
    def units(self) -> int:
        """What the task's throughput counts: tokens (padding excluded), images."""


@dataclass
class TrainResult:
    steps: int
    train_seconds: float
    units: int  # tokens, images: see Batch.units
    train_loss_final: float
    valid_curve: list[dict[str, float]] = field(default_factory=list)
    memory: MemoryStats | None = None


def train(
    model: torch.nn.Module,
    batches: Iterator[Batch],
    loss_of: Callable[[torch.nn.Module, Any], torch.Tensor],
    cfg: TrainingConfig,
    *,
    validate: Callable[[torch.nn.Module], float],
    valid_key: str,
    device: torch.device,
    is_adalora: bool = False,
    progress: bool | None = None,
    on_step: Callable[[int], None] | None = None,
    empty_cache_every: int | None = None,
) -> TrainResult:
    """Train the trainable parameters of `model` for cfg.max_steps steps; validate every eval_steps."""
    optimizer = make_optimizer(model, cfg)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    timer, sampler = StepTimer(), MemorySampler(device)
    losses: list[float] = []
    curve: list[dict[str, float]] = []
    units = 0
    bar = _progress_bar(cfg.max_steps, progress)
    model.train()
    with sampler:
        for step in range(1, cfg.max_steps + 1):
            batch = next(batches)
            with timer:
                loss_t = loss_of(model, batch)
                loss_t.backward()
                if cfg.grad_norm_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_norm_clip)
                optimizer.step()
                if (
                    is_adalora
                ):  # AdaLoRA reallocates ranks from the gradients: after backward, before zero_grad
                    model.base_model.update_and_allocate(step)  # type: ignore[operator,union-attr]
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss = loss_t.item()
            sampler.step()
            if empty_cache_every and device.type == "cuda" and step % empty_cache_every == 0:
                torch.cuda.empty_cache()  # a task's choice that shapes reserved memory (metamathqa)
            if on_step is not None:
                on_step(step)
            losses.append(loss)
            units += batch.units
            if step % cfg.eval_steps == 0 or step == cfg.max_steps:
                curve.append({"step": step, valid_key: validate(model)})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", valid=curve[-1][valid_key] if curve else "-")
    if bar is not None:
        bar.close()
    window = losses[-min(len(losses), cfg.eval_steps) :]
    return TrainResult(
        steps=cfg.max_steps,
        train_seconds=timer.seconds,
        units=units,
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
