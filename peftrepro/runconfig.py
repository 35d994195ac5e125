"""The run configuration: the training settings a run uses and the optimizers a manifest may name.

A leaf module (it imports nothing of peftrepro): the manifest resolves into it, the tasks and the
training loop read it, so none of them needs to import another to agree on what a run is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

OPTIONAL_TRAINING = frozenset({"dtype", "autocast_adapter_dtype", "init_kv_cache_prefix"})


@dataclass(frozen=True)
class TrainingConfig:
    """The training settings a run uses: the task defaults with the manifest's overrides merged in."""

    max_steps: int
    batch_size: int
    batch_size_eval: int
    eval_steps: int
    max_seq_length: int
    seed: int
    grad_norm_clip: float | None
    optimizer_type: str
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)
    lr_scheduler: str = "cosine"
    warmup_steps: int = 0
    # GPU-track settings; None means the task's own (they are left out of as_dict() then, so the
    # resolved config of a CPU-track manifest, and every hash over it, is what it was before them).
    dtype: str | None = None  # the base model's weights: float32, bfloat16, ..., int8/int4 (bitsandbytes)
    autocast_adapter_dtype: bool | None = None  # peft's get_peft_model flag (True: adapters in float32)
    init_kv_cache_prefix: str | None = None  # prefix tuning: start from the base model's cache of this text

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None or k not in OPTIONAL_TRAINING}


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
    # peft's LoRA+ (lora_B's rate = lr x loraplus_lr_ratio) and Riemannian-preconditioned LoRA,
    # both over AdamW as in the public comparison; the method families `lora-plus`, `lora-riemannian`.
    "lora+": (
        torch.optim.AdamW,
        frozenset({"lr", "weight_decay", "betas", "eps", "loraplus_lr_ratio", "loraplus_lr_embedding"}),
    ),
    "riemannian": (torch.optim.AdamW, frozenset({"lr", "weight_decay", "betas", "eps", "reg"})),
}
DEFAULT_LORAPLUS_RATIO = 16.0  # the LoRA+ paper's and peft's documented starting point


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
