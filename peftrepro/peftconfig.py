"""From a manifest's `peft_config` dict to a PEFT model, with errors that name the field."""

from __future__ import annotations

import copy
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from peft import PeftConfig, PeftModel, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

from peftrepro.errors import ManifestError

T = TypeVar("T")
# Wall-clock limits on what a manifest makes peft do before training: matching its module patterns
# and creating the adapter (on a weightless copy), then the structural checks. Far above what an
# honest config needs: the slowest attach in the tree, FourierFT on FLUX.2-klein-4B (a randperm per
# layer, on the CPU), took 94 s on 2 cores; most take < 1 s; the checks ~20 s on the CPU tracks.
ATTACH_LIMIT_S = 600.0
CHECKS_LIMIT_S = 900.0


class TimeLimitExceeded(BaseException):
    """Raised by time_limit's alarm. A BaseException, so that no `except Exception` swallows it."""


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


@contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise TimeLimitExceeded in this thread once `seconds` have passed (SIGALRM). Only the main
    thread can take signals: elsewhere (a Ray worker thread, say) the block runs unbounded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise TimeLimitExceeded

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def within(seconds: float, what: str, file: str, work: Callable[[], T]) -> T:
    """`work()`, refused as the manifest's fault when it takes longer than `seconds`."""
    try:
        with time_limit(seconds):
            return work()
    except TimeLimitExceeded:
        raise ManifestError(
            file, "/peft_config", f"{what} took more than {seconds:.0f} s; a config this costly is refused"
        ) from None


def weightless_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same modules with every parameter and buffer on the meta device: no memory, no copying."""
    memo: dict[int, Any] = {}
    for p in model.parameters():
        memo[id(p)] = torch.nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in model.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(model, memo)


def check_attach(
    model: torch.nn.Module,
    config: PeftConfig,
    file: str,
    autocast_adapter_dtype: bool | None = None,
    limit_s: float | None = None,
) -> PeftModel | None:
    """Attach `config` to a weightless copy of `model` under a wall-clock limit, before anything is
    allocated: refuse (ManifestError) a config that does not attach, takes longer than `limit_s`,
    or trains more parameters than the whole base model has. Returns the weightless adapted model
    (to count what it trains), or None when the initialisation reads the weights (SVD-based,
    data-driven): check_trainable runs after the real attach then. `model` and the RNG state are
    left as they were."""
    limit_s = ATTACH_LIMIT_S if limit_s is None else limit_s
    check_token_indices(model, config, file)
    check_model_fields(model, config, file)
    skeleton = weightless_copy(model)
    _, base_total = count_params(skeleton)
    rng = torch.random.get_rng_state()
    try:
        attached = within(
            limit_s, "attaching the adapter", file, lambda: attach(skeleton, config, autocast_adapter_dtype)
        )
    except ManifestError:
        raise
    except Exception as e:  # peft's refusal (no matching module, unsupported layer), or a weight-reading init
        if "meta" in str(e).lower():
            return None
        raise ManifestError(
            file, "/peft_config", f"does not attach to the task's model: {one_line(e)}"
        ) from None
    finally:
        torch.random.set_rng_state(rng)
    check_trainable(count_params(attached)[0], base_total, file)
    return attached


# Prompt-learning fields peft fills from the model's config when they are left out (peft's
# _prepare_prompt_learning_config); a saved config carries its own model's values.
MODEL_FIELDS = {
    "token_dim": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
}


def check_model_fields(model: torch.nn.Module, config: PeftConfig, file: str) -> None:
    """A prompt-learning config that names another model's width, depth or heads (a config saved on
    Llama-3.2-3B says token_dim 3072) attaches on the meta device and fails only when its adapter is
    reloaded: refuse it here, naming the field."""
    model_config = getattr(model, "config", None)
    for name, attr in MODEL_FIELDS.items():
        value, want = getattr(config, name, None), getattr(model_config, attr, None)
        if isinstance(value, int) and isinstance(want, int) and value != want:
            raise ManifestError(
                file,
                f"/peft_config/{name}",
                f"{value} does not fit the task's model ({attr} {want}); leave it out and peft takes it "
                "from the model",
            )


TOKEN_FIELDS = ("token_indices", "trainable_token_indices")  # TRAINABLE_TOKENS; LoRA's extra tokens


def check_token_indices(model: torch.nn.Module, config: PeftConfig, file: str) -> None:
    """Token ids a config trains must exist in the model's vocabulary: a public config written for
    Llama-3's 128k vocabulary (BOS 128000) attaches to a smaller model's embedding without complaint
    on the meta device, and would fail only in the run."""
    get = getattr(model, "get_input_embeddings", None)
    size = getattr(get() if callable(get) else None, "num_embeddings", None)
    if not isinstance(size, int):
        return
    for name in TOKEN_FIELDS:
        value = getattr(config, name, None)
        for ids in value.values() if isinstance(value, dict) else [value] if value else []:
            bad = [i for i in ids if not (isinstance(i, int) and 0 <= i < size)]
            if bad:
                raise ManifestError(
                    file,
                    f"/peft_config/{name}",
                    f"token ids {', '.join(map(str, bad[:3]))} are not in the task's model's vocabulary "
                    f"(ids 0 to {size - 1})",
                )


def check_trainable(trainable: int, base_total: int, file: str) -> None:
    """An adapter trains something, and no more parameters than full fine-tuning of the task's model
    would. Nothing: a config sized for a larger model (OSF preserving 2944 of a 576-wide layer's
    singular directions leaves it none to train) would run, learn nothing and rank last."""
    if trainable == 0:
        raise ManifestError(
            file,
            "/peft_config",
            "trains no parameter of the task's model (sized for a larger model?); a run of it "
            "would measure the base model",
        )
    if trainable > base_total:
        raise ManifestError(
            file,
            "/peft_config",
            f"trains {trainable:,} parameters, more than the task's whole base model ({base_total:,}); "
            "a parameter-efficient config stays below full fine-tuning",
        )
