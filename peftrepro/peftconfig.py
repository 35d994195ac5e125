"""From a manifest's `peft_config` dict to a PEFT model, with errors that name the field."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

from peftrepro.errors import ManifestError


def build(config: dict[str, Any], file: str) -> PeftConfig:
    """Instantiate the installed peft's config class for `peft_type` with the manifest's fields."""
    fields = dict(config)
    peft_type = fields.pop("peft_type")
    cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    if cls is None:
        known = ", ".join(sorted(PEFT_TYPE_TO_CONFIG_MAPPING))
        raise ManifestError(
            file, "/peft_config/peft_type", f"unknown PEFT type {peft_type!r}; known: {known}"
        )
    accepted = set(cls.__dataclass_fields__)
    for key in sorted(fields):
        if key not in accepted:
            raise ManifestError(file, f"/peft_config/{key}", f"{cls.__name__} (peft) has no field {key!r}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(**fields)
    except (TypeError, ValueError, KeyError, AssertionError) as e:
        raise ManifestError(
            file, "/peft_config", f"peft refused this {peft_type} config: {one_line(e)}"
        ) from None


def attach(
    model: torch.nn.Module, config: PeftConfig, autocast_adapter_dtype: bool | None = None
) -> PeftModel:
    """peft's get_peft_model; `autocast_adapter_dtype` None keeps peft's default (True)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(
            model,
            config,
            autocast_adapter_dtype=True if autocast_adapter_dtype is None else autocast_adapter_dtype,
        )


def attach_checked(
    model: torch.nn.Module, config: PeftConfig, file: str, autocast_adapter_dtype: bool | None = None
) -> PeftModel:
    """`attach`, with peft's refusals (no matching modules, unsupported layer) as a ManifestError."""
    try:
        return attach(model, config, autocast_adapter_dtype)
    except Exception as e:  # whatever peft raises while wrapping the model, the config is at fault
        raise ManifestError(
            file, "/peft_config", f"does not attach to the task's model: {one_line(e)}"
        ) from None


def count_params(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, counting tied/shared tensors once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:300] + "...") if len(text) > 300 else text
