"""Structural checks of a PEFT integration, run before any training (`validate --deep`, every `run`).

A broken method costs a whole run and, worse, can reach the leaderboard as a "result" (peft 0.21.2's
OFT on 3x3 convolutions changes the output before training and then diverges, with no error).
Four cheap checks on a task's fixed probe batch catch that whole class of fault:

1. identity_at_init: a fresh adapter leaves the base model's outputs unchanged (see INIT_BEHAVIOUR);
2. disable_restores_base: after a short training burst, the disabled adapter gives the base outputs;
3. only_declared_change: the burst changes exactly the adapter's own parameters (modules_to_save
   included) and every base weight keeps the bytes that were loaded from the pinned file;
4. round_trip: the saved adapter reloads into a fresh base with the same outputs, and saving the
   reloaded adapter gives the same bytes.
"""

from __future__ import annotations

import copy
import hashlib
import math
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import AdaLoraConfig, PeftConfig, PeftModel

from peftrepro import peftconfig
from peftrepro.errors import CheckFailed
from peftrepro.measure import adapter_files
from peftrepro.metrics import CHECKS
from peftrepro.tasks.base import Probe

PASSED, FAILED = "passed", "failed"
EXACT, APPROXIMATE, BY_DESIGN = "exact", "approximate", "not_identity_by_design"
# The checks' own seed and burst: fixed, so that they never depend on (or disturb) the run's seed.
CHECK_SEED = 20261122
BURST_STEPS = 3
BURST_LR = 1e-3
# Relative to the largest base output: float32 rounding of an identity built from products.
APPROXIMATE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class InitBehaviour:
    kind: str  # EXACT | APPROXIMATE | BY_DESIGN
    reason: str


_PROMPT = "prompt learning: trained virtual tokens are attended to from the first step"
_ROTATION = "an orthogonal product that equals I only up to float rounding"


@dataclass(frozen=True)
class ByField:
    """A behaviour that depends on one config field: `at_value` where the field equals `value`
    (by default an exact identity), `otherwise` elsewhere."""

    field: str
    value: Any
    otherwise: InitBehaviour
    at_value: InitBehaviour | None = None


# PEFT type -> its behaviour. Types not listed are exact identities: a zero factor makes the update
# exactly zero.
INIT_BEHAVIOUR: dict[str, InitBehaviour | ByField] = {
    "PREFIX_TUNING": InitBehaviour(BY_DESIGN, _PROMPT),
    "PROMPT_TUNING": InitBehaviour(BY_DESIGN, _PROMPT),
    "P_TUNING": InitBehaviour(BY_DESIGN, _PROMPT),
    "CARTRIDGE": InitBehaviour(BY_DESIGN, _PROMPT + " (a trainable KV cache)"),
    "VBLORA": InitBehaviour(BY_DESIGN, "A and B are both mixed from a random vector bank; no factor is zero"),
    "UNILORA": InitBehaviour(BY_DESIGN, "its shared vector is drawn uniformly at random; no factor is zero"),
    "FOURIERFT": ByField(
        "init_weights", True, InitBehaviour(BY_DESIGN, "spectrum drawn from N(0,1), the default")
    ),
    "C3A": ByField("init_weights", True, InitBehaviour(BY_DESIGN, "kernels xavier-initialised, the default")),
    "HRA": InitBehaviour(APPROXIMATE, "paired Householder reflections: " + _ROTATION),
    "OSF": InitBehaviour(APPROXIMATE, "trainable SVD factors of the base weight, recomposed in float32"),
    "FROD": InitBehaviour(APPROXIMATE, "a decomposition of the base weights, recomposed in float32"),
    "DEFT": ByField(
        "para",
        False,
        otherwise=InitBehaviour(
            BY_DESIGN, "para=True (PaRa): pure subspace removal, no injection to cancel it"
        ),
        at_value=InitBehaviour(APPROXIMATE, "an injected projection that cancels only up to float rounding"),
    ),
}


def output_scale(out: torch.Tensor) -> float:
    """What APPROXIMATE_TOLERANCE is relative to: the largest output magnitude (1 for all-zero)."""
    return float(out.float().abs().max()) or 1.0


def peft_kind(config: PeftConfig | None) -> str:
    """The config's PEFT type as its name ("LORA"); "None" for no config."""
    peft_type = getattr(config, "peft_type", None)
    return str(getattr(peft_type, "value", peft_type))


def init_behaviour(config: PeftConfig) -> InitBehaviour:
    entry = INIT_BEHAVIOUR.get(peft_kind(config))
    if entry is None:
        return InitBehaviour(EXACT, "a zero factor makes the initial update exactly zero")
    if isinstance(entry, InitBehaviour):
        return entry
    if getattr(config, entry.field, None) != entry.value:
        return entry.otherwise
    return entry.at_value or InitBehaviour(
        EXACT, f"{entry.field}={entry.value!r} zero-initialises the update"
    )


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str  # identity_at_init: EXACT | APPROXIMATE | BY_DESIGN | FAILED; others: PASSED | FAILED
    # (round_trip: APPROXIMATE too, where pruned_at_save explains a float-rounding difference)
    detail: str  # one line, for people
    max_abs_diff: float | None = None

    @property
    def ok(self) -> bool:
        return self.status != FAILED

    def as_record(self) -> dict[str, Any]:
        out = asdict(self)
        del out["name"]
        if out["max_abs_diff"] is not None and not math.isfinite(out["max_abs_diff"]):
            out["max_abs_diff"] = None  # JSON has no NaN; the detail says "not finite"
        return out


def failed(file: str, method: str, results: list[CheckResult]) -> CheckFailed:
    """The error for a list of results of which some failed."""
    return CheckFailed(file, method, [(r.name, r.detail) for r in results if not r.ok])


def tensor_digest(t: torch.Tensor) -> str:
    data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.sha256(data.tobytes()).hexdigest()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Largest absolute difference; None when the shapes differ (prompt learning adds positions)."""
    if a.shape != b.shape:
        return None
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def _outputs(probe: Probe, model: torch.nn.Module) -> torch.Tensor:
    """The probe's outputs in eval mode with every parameter frozen: some kernels (diffusers'
    attention on CPU) take another path, ~1e-6 apart, when a parameter requires grad."""
    was_training = model.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    try:
        for p in trainable:
            p.requires_grad_(False)
        with torch.no_grad():
            return probe.outputs(model).detach().to("cpu")
    finally:
        for p in trainable:
            p.requires_grad_(True)
        model.train(was_training)


def check_identity(
    config: PeftConfig, base_out: torch.Tensor, fresh_out: torch.Tensor, rounding: Mapping[str, str] = {}
) -> CheckResult:
    """`rounding`: PEFT types whose identity the task's model keeps only up to float rounding (Probe)."""
    name, behaviour = "identity_at_init", init_behaviour(config)
    kind = peft_kind(config)
    if behaviour.kind == EXACT and kind in rounding:
        behaviour = InitBehaviour(APPROXIMATE, rounding[kind])
    diff = max_diff(base_out, fresh_out)
    if behaviour.kind == BY_DESIGN:
        return CheckResult(name, BY_DESIGN, behaviour.reason, diff)
    if diff is None:
        return CheckResult(name, FAILED, f"output shape {tuple(fresh_out.shape)} != {tuple(base_out.shape)}")
    scale = output_scale(base_out)
    if diff == 0.0:
        return CheckResult(name, EXACT, "outputs equal the base model's bit for bit", 0.0)
    if not math.isfinite(diff):
        return CheckResult(name, FAILED, "outputs are not finite", diff)
    if behaviour.kind == APPROXIMATE and diff <= APPROXIMATE_TOLERANCE * scale:
        return CheckResult(
            name, APPROXIMATE, f"max |diff| {diff:.3g} within {APPROXIMATE_TOLERANCE:g} x max |output|", diff
        )
    allowed = "0" if behaviour.kind == EXACT else f"{APPROXIMATE_TOLERANCE:g} x {scale:.3g}"
    return CheckResult(
        name, FAILED, f"a fresh adapter changes the output by up to {diff:.3g} (allowed {allowed})", diff
    )


def _burst(model: PeftModel, probe: Probe) -> None:
    """A few optimizer steps on the probe batch: enough to move every trainable parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return
    optimizer = torch.optim.Adam(params, lr=BURST_LR)
    model.train()
    for _ in range(BURST_STEPS):
        probe.loss(model).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _burst_then_compare(
    model: PeftModel, probe: Probe, base_digests: dict[str, str], base_params: dict[int, str]
) -> CheckResult:
    before = {n: tensor_digest(p) for n, p in model.named_parameters()}
    _burst(model, probe)
    return check_declared(base_digests, base_params, model, before)


def check_declared(
    base_digests: dict[str, str],
    base_params: dict[int, str],
    model: PeftModel,
    before: dict[str, str],
) -> CheckResult:
    """Compare the burst's changes with what the adapter declares: its own (new) parameters."""
    name = "only_declared_change"
    params = dict(model.named_parameters())
    after = {n: tensor_digest(p) for n, p in params.items()}
    changed = {n for n in after if before.get(n) != after[n]}
    base_now = {base_params[id(p)]: n for n, p in params.items() if id(p) in base_params}
    declared = set(params) - set(base_now.values())
    trainable = {n for n, p in params.items() if p.requires_grad}
    problems = []
    if differ := sorted(b for b, n in base_now.items() if after[n] != base_digests[b]):
        problems.append(f"base weights differ from the loaded ones: {_some(differ)}")
    if missing := sorted(set(base_digests) - set(base_now)):
        problems.append(f"base weights no longer in the model: {_some(missing)}")
    if trained_base := sorted(base_params[id(params[n])] for n in trainable - declared):
        problems.append(f"base weights are trainable: {_some(trained_base)}")
    if unchanged := sorted((declared & trainable) - changed):
        problems.append(f"adapter parameters the burst did not change: {_some(unchanged)}")
    if problems:
        return CheckResult(name, FAILED, "; ".join(problems))
    return CheckResult(
        name, PASSED, f"{len(changed)} adapter tensors changed; {len(base_now)} base tensors bit-identical"
    )


def _some(names: list[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (f" and {len(names) - k} more" if len(names) > k else "")


def check_disable(model: PeftModel, probe: Probe, base_out: torch.Tensor) -> CheckResult:
    name = "disable_restores_base"
    with model.disable_adapter():
        out = _outputs(probe, model)
    diff = max_diff(base_out, out)
    if diff == 0.0:
        return CheckResult(name, PASSED, "disabled adapter gives the base outputs bit for bit", 0.0)
    kind = peft_kind(model.peft_config.get(model.active_adapter))
    if (
        kind in probe.identity_rounding
        and diff is not None
        and diff <= APPROXIMATE_TOLERANCE * output_scale(base_out)
    ):
        why = probe.identity_rounding[kind]
        return CheckResult(
            name,
            APPROXIMATE,
            f"max |diff| {diff:.3g} within {APPROXIMATE_TOLERANCE:g} x max |output| ({why})",
            diff,
        )
    what = f"by up to {diff:.3g}" if diff is not None else f"in shape {tuple(out.shape)}"
    return CheckResult(name, FAILED, f"with the adapter disabled the outputs differ {what}", diff)


def pruned_at_save(model: torch.nn.Module) -> str | None:
    """Why a reload may differ from the trained model by float rounding only, or None (it must be
    bit-exact). AdaLoRA saves only the ranks its allocator kept (`rank_pattern`) and the reload
    builds smaller layers, so it computes the same sum with fewer terms, in another order. That
    holds only if every pruned rank is exactly zero in the trained model, which is checked here:
    a live rank dropped at save is a real fault and gets no tolerance."""
    config = model.peft_config.get(model.active_adapter) if isinstance(model, PeftModel) else None
    if not isinstance(config, AdaLoraConfig):
        return None
    pattern, adapter, pruned = config.rank_pattern or {}, model.active_adapter, 0
    inner: Any = model.base_model.model  # type: ignore[union-attr]
    for key, keep in pattern.items():
        # keys name the lora_E tensor: "model.layers.0.mlp.up_proj.lora_E[.adapter]"
        path = key.removesuffix(f".{adapter}").removesuffix(".lora_E")
        values = inner.get_submodule(path).lora_E[adapter].detach().view(-1)
        dropped = ~torch.as_tensor(keep, dtype=torch.bool).view(-1)
        if bool((values[dropped] != 0).any()):
            return None
        pruned += int(dropped.sum())
    return f"AdaLoRA saves only its kept ranks; the {pruned} pruned ones are exactly zero" if pruned else None


def check_round_trip(
    model: torch.nn.Module,
    probe: Probe,
    fresh_base: Callable[[], torch.nn.Module],
    saved: Path | None = None,
) -> CheckResult:
    """Reload the adapter (saved in `saved`, or saved here) into a fresh base; same outputs, same bytes.
    A model that is not a PeftModel (full fine-tuning) is reloaded whole, by its own class. Outputs
    must be bit-identical, except where `pruned_at_save` explains a float-rounding difference."""
    name = "round_trip"
    with tempfile.TemporaryDirectory(prefix="peftrepro-roundtrip-") as tmp:
        if saved is None:
            saved = Path(tmp) / "saved"
            model.save_pretrained(str(saved))  # type: ignore[operator]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if isinstance(model, PeftModel):
                loaded = PeftModel.from_pretrained(fresh_base(), str(saved))
            else:
                loaded = type(model).from_pretrained(str(saved), dtype=model.dtype)  # type: ignore[attr-defined]
        before = _outputs(probe, model)
        diff = max_diff(before, _outputs(probe, loaded))
        again = Path(tmp) / "again"
        loaded.save_pretrained(str(again))
        first, second = adapter_files(saved), adapter_files(again)
    bytes_same = f"re-saved bytes identical ({first[1][:12]})"
    rounding = None
    if diff != 0.0:  # NaN compares false: no tolerance
        within = diff is not None and diff <= APPROXIMATE_TOLERANCE * output_scale(before)
        rounding = pruned_at_save(model) if within else None
        if rounding is None:
            what = f"by up to {diff:.3g}" if diff is not None else "in shape"
            return CheckResult(name, FAILED, f"the reloaded adapter's outputs differ {what}", diff)
    if first != second:
        return CheckResult(
            name,
            FAILED,
            f"re-saving the reloaded adapter gives other bytes ({first[1][:12]} vs {second[1][:12]})",
        )
    if rounding:
        return CheckResult(
            name,
            APPROXIMATE,
            f"reloaded outputs within {APPROXIMATE_TOLERANCE:g} x max |output| (max |diff| {diff:.3g}): "
            f"{rounding}; {bytes_same}",
            diff,
        )
    return CheckResult(name, PASSED, f"reloaded outputs identical; {bytes_same}", 0.0)


def run_checks(
    base: torch.nn.Module,
    config: PeftConfig,
    probe: Probe,
    fresh_base: Callable[[], torch.nn.Module] | None = None,
) -> list[CheckResult]:
    """All four checks on a copy of `base` (left untouched). Restores the global RNG state, so a
    run's adapter init and data order are the same with or without the checks."""
    fresh_base = fresh_base or (lambda: copy.deepcopy(base))
    rng = torch.random.get_rng_state()
    try:
        base_digests = {n: tensor_digest(p) for n, p in base.named_parameters()}
        base_out = _outputs(probe, base)
        work = copy.deepcopy(base)
        base_params = {id(p): n for n, p in work.named_parameters()}
        torch.manual_seed(CHECK_SEED)
        model = peftconfig.attach(work, config)
        identity = guarded(
            "identity_at_init",
            lambda: check_identity(config, base_out, _outputs(probe, model), probe.identity_rounding),
        )
        declared = guarded(
            "only_declared_change", lambda: _burst_then_compare(model, probe, base_digests, base_params)
        )
        disable = guarded("disable_restores_base", lambda: check_disable(model, probe, base_out))
        round_trip = guarded("round_trip", lambda: check_round_trip(model, probe, fresh_base))
        return [identity, disable, declared, round_trip]
    finally:
        torch.random.set_rng_state(rng)


def guarded(name: str, check: Callable[[], CheckResult]) -> CheckResult:
    """A check that raises (peft refusing to disable, save or reload, say) has failed; say why."""
    try:
        return check()
    except Exception as e:  # whatever the method's code raises is the finding
        return CheckResult(name, FAILED, f"raised {type(e).__name__}: {peftconfig.one_line(e)}")


def as_record(results: list[CheckResult]) -> dict[str, dict[str, Any]]:
    return {r.name: r.as_record() for r in results}


def summary(results: list[CheckResult]) -> str:
    """One line: `identity at init exact, disable restores base passed, ...`."""
    labels = {c.key: c.label for c in CHECKS}
    return ", ".join(f"{labels[r.name]} {r.status.replace('_', ' ')}" for r in results)
