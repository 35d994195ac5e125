"""Method families: the `method` folder of a submission names one, and it fixes the PEFT type.

Variants that peft expresses as flags on a type get their own family (`dora` is LORA with
`use_dora: true`), so a leaderboard row's method name can be trusted to say what ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from peft.utils import PeftType


@dataclass(frozen=True)
class MethodFamily:
    name: str
    peft_type: str | None  # None: full fine-tuning, nothing attached
    # Fields that must hold exactly this value; `False` also accepts the field being absent.
    flags: dict[str, Any] = field(default_factory=dict)
    optimizer: str | None = None  # a method that is an optimizer (LoRA-FA) needs exactly this one


# Optimizers that make a method of their own: only their family may use them.
METHOD_OPTIMIZERS = frozenset({"lora-fa", "lora+", "riemannian"})


# Types that cannot be run safely or meaningfully by the shared training loop, and why.
UNSUPPORTED_TYPES: dict[str, str] = {
    "XLORA": "it loads other adapters from file paths",
    "POLY": "it needs per-example task ids the tasks do not provide",
    "MULTITASK_PROMPT_TUNING": "it needs per-example task ids the tasks do not provide",
    "CPT": "it needs per-example token-type masks the tasks do not provide",
}

# The baseline every method is measured against: every base weight trained, no adapter. Its
# manifest says `"peft_config": null`, as the public comparison's `full-finetuning` experiments do.
FULL_FINETUNING = "full-finetuning"

_VARIANTS = (
    MethodFamily(FULL_FINETUNING, None),
    MethodFamily("lora", "LORA", {"use_dora": False, "use_rslora": False}),
    MethodFamily("dora", "LORA", {"use_dora": True, "use_rslora": False}),
    MethodFamily("rslora", "LORA", {"use_rslora": True, "use_dora": False}),
    MethodFamily("lora-fa", "LORA", {"use_dora": False}, optimizer="lora-fa"),
    # LoRA+ (B learns faster than A) and Riemannian preconditioning: LoRA trained with peft's
    # optimizers of those names, as the public comparison's optimizer_type "lora+"/"riemannian".
    MethodFamily("lora-plus", "LORA", {"use_dora": False}, optimizer="lora+"),
    MethodFamily("lora-riemannian", "LORA", {"use_dora": False}, optimizer="riemannian"),
)


def _family_name(peft_type: str) -> str:
    return peft_type.lower().replace("_", "-")


def _build() -> dict[str, MethodFamily]:
    families = {f.name: f for f in _VARIANTS}
    for t in PeftType:
        name = _family_name(t.value)
        if t.value not in UNSUPPORTED_TYPES and name not in families:
            families[name] = MethodFamily(name, t.value)
    return dict(sorted(families.items()))


FAMILIES: dict[str, MethodFamily] = _build()


def family_for(peft_type: str) -> list[str]:
    """Family names that accept this PEFT type (for error messages)."""
    return [f.name for f in FAMILIES.values() if f.peft_type == peft_type]
