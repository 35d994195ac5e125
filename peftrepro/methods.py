"""Method families: the `method` folder of a submission names one, and it fixes the PEFT type.

Variants that peft expresses as flags on a type get their own family (`dora` is LORA with
`use_dora: true`), so a leaderboard row's method name can be trusted to say what ran.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from peft import LoraConfig
from peft.utils import PeftType


@dataclass(frozen=True)
class MethodFamily:
    name: str
    peft_type: str | None  # None: full fine-tuning, nothing attached
    # Fields that must hold exactly this value; `False` also accepts the field being absent.
    flags: dict[str, Any] = field(default_factory=dict)
    optimizer: str | None = None  # a method that is an optimizer (LoRA-FA) needs exactly this one
    variant: str | None = None  # the peft LoRA variant it is; a LORA family without one allows none


def _lora_variants() -> dict[str, tuple[str, Any]]:
    """peft's own registry of LoRA variants (what `resolve_lora_variant` reads): variant name ->
    (LoraConfig field, the value a skeleton starts from). A field marked `is_lora_variant` is a
    variant when truthy; a value of `init_lora_weights` listed in its `lora_variants` is one too."""
    found: dict[str, tuple[str, Any]] = {}
    for f in dataclasses.fields(LoraConfig):
        if f.name == "init_lora_weights":
            found.update({v: (f.name, v) for v in f.metadata.get("lora_variants", ())})
        elif f.metadata.get("is_lora_variant"):
            name = f.name.removeprefix("use_").removesuffix("_config").removesuffix("_invocation_tokens")
            name = VARIANT_NAMES.get(name, name)
            found[name] = (f.name, True if f.type in (bool, "bool") else VARIANT_STARTERS.get(name, {}))
    return found


# Family names for peft's variant fields where the field's own name is not the method's name.
VARIANT_NAMES = {"bdlora": "bd-lora"}
# A variant's sub-config where peft's defaults do not attach: BD-LoRA with no block-diagonal
# modules refuses every target; this is the public comparison's split for Llama-style blocks.
VARIANT_STARTERS: dict[str, dict[str, Any]] = {
    "bd-lora": {
        "target_modules_bd_a": ["o_proj", "down_proj"],
        "target_modules_bd_b": ["q_proj", "k_proj", "v_proj", "up_proj", "gate_proj"],
        "nblocks": 2,
    }
}
# LoRA variants the shared training loop cannot run, and why (a manifest using one is refused).
UNSUPPORTED_VARIANTS: dict[str, str] = {
    "arrow": "it routes among other LoRA adapters loaded from paths",
    "alora": "it trains only after invocation tokens that the tasks' inputs do not contain",
}
LORA_VARIANTS: dict[str, tuple[str, Any]] = _lora_variants()


def active_variants(peft_config: dict[str, Any]) -> list[str]:
    """The peft LoRA variants a LORA config turns on, as peft decides it: a variant field is on when
    truthy (a sub-config given as a dict, even `{}`, is on: peft builds it with its defaults)."""
    on = []
    for name, (key, start) in LORA_VARIANTS.items():
        value = peft_config.get(key)
        if key == "init_lora_weights":
            hit = isinstance(value, str) and value == start
        else:
            hit = isinstance(value, dict) or bool(value)
        if hit:
            on.append(name)
    return sorted(on)


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
    MethodFamily("lora", "LORA", {"use_rslora": False}),
    MethodFamily("rslora", "LORA", {"use_rslora": True}),
    MethodFamily("lora-fa", "LORA", optimizer="lora-fa"),
    # LoRA+ (B learns faster than A) and Riemannian preconditioning: LoRA trained with peft's
    # optimizers of those names, as the public comparison's optimizer_type "lora+"/"riemannian".
    MethodFamily("lora-plus", "LORA", optimizer="lora+"),
    MethodFamily("lora-riemannian", "LORA", optimizer="riemannian"),
    # One family per variant peft registers (dora, kasa, mica, bd-lora, ...), so "the best lora
    # row" is plain LoRA: a variant's config in the `lora` folder is refused, naming its family.
    *(
        MethodFamily(name, "LORA", {"use_rslora": False}, variant=name)
        for name in LORA_VARIANTS
        if name not in UNSUPPORTED_VARIANTS
    ),
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


def starter(family: MethodFamily) -> dict[str, Any]:
    """The peft_config fields a new manifest of this family starts from (its flags, its variant on)."""
    on = dict([LORA_VARIANTS[family.variant]]) if family.variant else {}
    return copy.deepcopy({**family.flags, **on})


def family_of(peft_type: str, peft_config: dict[str, Any], optimizer: str | None) -> str:
    """The family a config belongs in (the importer's folder; the hint when a manifest is misplaced)."""
    for f in FAMILIES.values():
        if f.optimizer is not None and f.optimizer == optimizer:
            return f.name
    if peft_type == "LORA":
        on = active_variants(peft_config)
        if on:
            return "+".join(on)  # two variants at once: no family; the name says which
        return "rslora" if peft_config.get("use_rslora") else "lora"
    return _family_name(peft_type)


def family_for(peft_type: str) -> list[str]:
    """Family names that accept this PEFT type (for error messages)."""
    return [f.name for f in FAMILIES.values() if f.peft_type == peft_type]
