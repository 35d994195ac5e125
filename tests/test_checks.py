"""Structural checks: each one passes on healthy adapters and fails on an adapter broken its way.

The broken adapters are made by wrapping `peftconfig.attach` (the one place every check attaches
through), so that the checks see them exactly as they would see a buggy PEFT method.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from peft import (
    AdaLoraConfig,
    BOFTConfig,
    DeftConfig,
    HRAConfig,
    LoraConfig,
    OFTConfig,
    PeftModel,
    PrefixTuningConfig,
)

from peftrepro import checks, peftconfig
from peftrepro.cli import main
from peftrepro.manifest import resolve
from peftrepro.records import list_records, read_record
from peftrepro.runners.local import run_local
from peftrepro.tasks import Prepared, Probe, get_task

LORA = {"task_type": "CAUSAL_LM", "r": 4, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture
def prepared() -> Prepared:
    return get_task("arithmetic").prepare()


def statuses(results: list[checks.CheckResult]) -> dict[str, str]:
    return {r.name: r.status for r in results}


def broken(monkeypatch: pytest.MonkeyPatch, breakage: Callable[[PeftModel], None]) -> None:
    """Every adapter attached from now on gets `breakage` applied to it."""
    real = peftconfig.attach

    def attach(model: torch.nn.Module, config: Any) -> PeftModel:
        peft_model = real(model, config)
        breakage(peft_model)
        return peft_model

    monkeypatch.setattr(peftconfig, "attach", attach)


def lora_layers(model: PeftModel) -> list[torch.nn.Module]:
    return [m for n, m in model.named_modules() if n.endswith(("q_proj", "v_proj")) and hasattr(m, "lora_B")]


@pytest.mark.parametrize(
    ("config", "identity"),
    [
        (LoraConfig(**LORA), checks.EXACT),
        (BOFTConfig(task_type="CAUSAL_LM", target_modules=["q_proj"], boft_block_size=4), checks.EXACT),
        (HRAConfig(task_type="CAUSAL_LM", target_modules=["q_proj"], r=4), checks.APPROXIMATE),
        (PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4), checks.BY_DESIGN),
        # PaRa: pure subspace removal, an identity at init by no choice of its fields (peft's docs)
        (DeftConfig(task_type="CAUSAL_LM", target_modules=["q_proj"], r=4, para=True), checks.BY_DESIGN),
    ],
    ids=["lora", "boft", "hra", "prefix-tuning", "deft-para"],
)
def test_healthy_adapters_pass_every_check(prepared: Prepared, config: Any, identity: str) -> None:
    results = checks.run_checks(prepared.model, config, prepared.probe)
    assert [r.name for r in results] == [c.key for c in checks.CHECKS]
    assert statuses(results) == {
        "identity_at_init": identity,
        "disable_restores_base": checks.PASSED,
        "only_declared_change": checks.PASSED,
        "round_trip": checks.PASSED,
    }
    if identity == checks.APPROXIMATE:
        assert 0 < results[0].max_abs_diff <= checks.APPROXIMATE_TOLERANCE * 100


def test_checks_leave_the_base_model_and_the_rng_alone(prepared: Prepared) -> None:
    before = {n: checks.tensor_digest(p) for n, p in prepared.model.named_parameters()}
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    checks.run_checks(prepared.model, LoraConfig(**LORA), prepared.probe)
    assert torch.equal(torch.rand(3), expected)
    assert {n: checks.tensor_digest(p) for n, p in prepared.model.named_parameters()} == before
    assert not any(hasattr(m, "lora_A") for m in prepared.model.modules())


def test_non_zero_initialised_lora_b_fails_identity(prepared: Prepared) -> None:
    results = checks.run_checks(prepared.model, LoraConfig(**LORA, init_lora_weights=False), prepared.probe)
    assert statuses(results)["identity_at_init"] == checks.FAILED
    assert "a fresh adapter changes the output by up to" in results[0].detail
    assert all(r.ok for r in results[1:])  # the other three checks are not fooled into failing


def test_a_hook_that_perturbs_the_base_fails_disable(prepared: Prepared, monkeypatch) -> None:
    """Zero at init (so identity holds), but it stays on when the adapter is disabled."""

    def perturb(model: PeftModel) -> None:
        layer = lora_layers(model)[0]
        layer.register_forward_hook(lambda m, args, out: out + m.lora_B["default"].weight.sum())

    broken(monkeypatch, perturb)
    results = statuses(checks.run_checks(prepared.model, LoraConfig(**LORA), prepared.probe))
    assert results["identity_at_init"] == checks.EXACT
    assert results["disable_restores_base"] == checks.FAILED


def test_an_adapter_that_also_trains_a_base_weight_fails_declared(prepared: Prepared, monkeypatch) -> None:
    broken(monkeypatch, lambda model: model.base_model.model.model.norm.weight.requires_grad_(True))
    results = checks.run_checks(prepared.model, LoraConfig(**LORA), prepared.probe)
    declared = next(r for r in results if r.name == "only_declared_change")
    assert declared.status == checks.FAILED
    assert "base weights are trainable: model.norm.weight" in declared.detail
    assert "base weights differ from the loaded ones: model.norm.weight" in declared.detail


def test_an_adapter_weight_that_is_not_saved_fails_the_round_trip(prepared: Prepared, monkeypatch) -> None:
    """A gate the method forgot to declare: trained, used in forward, never saved."""

    def add_gate(model: PeftModel) -> None:
        layer = lora_layers(model)[0]
        layer.gate = torch.nn.Parameter(torch.zeros(()))

        def gated(m: torch.nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
            return out if m.disable_adapters else out * (1 + m.gate)

        layer.register_forward_hook(gated)

    broken(monkeypatch, add_gate)
    results = statuses(checks.run_checks(prepared.model, LoraConfig(**LORA), prepared.probe))
    assert results == {
        "identity_at_init": checks.EXACT,
        "disable_restores_base": checks.PASSED,
        "only_declared_change": checks.PASSED,
        "round_trip": checks.FAILED,
    }


def pruned_adalora(prepared: Prepared) -> PeftModel:
    """AdaLoRA trained on the probe batch past its schedule's end, so its allocator pruned ranks."""
    import copy

    torch.manual_seed(0)
    config = AdaLoraConfig(
        task_type="CAUSAL_LM", init_r=6, target_r=2, target_modules=["q_proj", "v_proj"], total_step=30,
        tinit=3, tfinal=10, deltaT=2,
    )  # fmt: skip
    model = peftconfig.attach(copy.deepcopy(prepared.model), config)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.03)
    model.train()
    for step in range(30):
        prepared.probe.loss(model).backward()
        optimizer.step()
        model.base_model.update_and_allocate(step)
        optimizer.zero_grad(set_to_none=True)
    assert model.peft_config["default"].rank_pattern  # the allocator ran
    return model


def test_adalora_pruned_at_save_round_trips_within_float_rounding(prepared: Prepared) -> None:
    """peft saves only AdaLoRA's kept ranks: the reload sums fewer (zero) terms, so its outputs may
    differ by float rounding. That is accepted only because the pruned ranks are exactly zero."""
    import copy

    model = pruned_adalora(prepared)
    result = checks.check_round_trip(model, prepared.probe, lambda: copy.deepcopy(prepared.model))
    # Whether the shorter sum rounds differently depends on the CPU's kernels (it does with AVX2,
    # not with AVX512): either way the check must not fail.
    assert result.status in (checks.PASSED, checks.APPROXIMATE), result.detail

    def nudged_base() -> torch.nn.Module:
        """A base a few float steps off in one projection: a rounding-sized difference on any CPU."""
        base = copy.deepcopy(prepared.model)
        weight = next(p for n, p in base.named_parameters() if n.endswith("q_proj.weight"))
        with torch.no_grad():
            weight.mul_(1 + 2**-20)
        return base

    result = checks.check_round_trip(model, prepared.probe, nudged_base)
    assert result.status == checks.APPROXIMATE, result.detail
    assert 0 < result.max_abs_diff <= checks.APPROXIMATE_TOLERANCE * 100
    assert "pruned ones are exactly zero" in result.detail

    # A live rank dropped at save is a fault, not rounding: no tolerance, the check fails.
    pattern = model.peft_config["default"].rank_pattern
    key, keep = next((k, v) for k, v in pattern.items() if not all(v))
    layer = model.base_model.model.get_submodule(key.removesuffix(".default").removesuffix(".lora_E"))
    dropped = (~torch.as_tensor(keep, dtype=torch.bool).view(-1)).nonzero()[0]
    with torch.no_grad():
        layer.lora_E["default"].view(-1)[dropped] = 1.0
    assert checks.pruned_at_save(model) is None
    broken = checks.check_round_trip(model, prepared.probe, lambda: copy.deepcopy(prepared.model))
    assert broken.status == checks.FAILED and "outputs differ" in broken.detail


def test_an_adapter_that_does_not_train_fails_declared(prepared: Prepared, monkeypatch) -> None:
    """Parameters that require grad but never receive a gradient: an adapter cut off the graph."""

    def detach_q(model: PeftModel) -> None:
        for name, layer in model.named_modules():
            if name.endswith("q_proj") and hasattr(layer, "lora_B"):
                layer.register_forward_hook(lambda m, args, out: out.detach())

    broken(monkeypatch, detach_q)
    results = checks.run_checks(prepared.model, LoraConfig(**LORA), prepared.probe)
    declared = next(r for r in results if r.name == "only_declared_change")
    assert declared.status == checks.FAILED
    assert "adapter parameters the burst did not change: " in declared.detail
    assert "q_proj.lora_A" in declared.detail and "v_proj" not in declared.detail


def test_a_raising_method_is_a_failed_check_not_a_crash(prepared: Prepared, monkeypatch) -> None:
    def explode(model: PeftModel) -> None:
        lora_layers(model)[0].register_forward_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))

    broken(monkeypatch, explode)
    results = checks.run_checks(prepared.model, LoraConfig(**LORA), prepared.probe)
    assert results[0].status == checks.FAILED and results[0].detail == "raised RuntimeError: boom"


def tiny_unet() -> tuple[torch.nn.Module, Probe]:
    """A class-conditional diffusers UNet of the `digits` shape (random weights, 16x16)."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=10,
        norm_num_groups=8,
        attention_head_dim=8,
    )
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(4, 1, 16, 16, generator=g), torch.randn(4, 1, 16, 16, generator=g)
    t, y = torch.tensor([10, 200, 500, 900]), torch.tensor([1, 3, 5, 7])
    return unet, Probe(
        outputs=lambda m: m(x, t, class_labels=y).sample,
        loss=lambda m: torch.nn.functional.mse_loss(m(x, t, class_labels=y).sample, noise),
    )


def test_oft_on_3x3_convolutions_is_caught_on_a_unet() -> None:
    """peft 0.21.2: OFT's unfold/fold rotation of a 3x3 conv does not invert, so a fresh adapter
    changes the output. The same UNet with OFT on linear layers, or LoRA on the convs, is exact."""
    unet, probe = tiny_unet()
    oft_conv = checks.run_checks(
        unet, OFTConfig(target_modules=["conv1", "conv2"], r=0, oft_block_size=8), probe
    )
    assert oft_conv[0].status == checks.FAILED and oft_conv[0].max_abs_diff > 0.1
    for config in (
        OFTConfig(target_modules=["to_q", "to_v"], r=0, oft_block_size=8),
        LoraConfig(target_modules=["conv1", "conv2", "to_q"], r=4),
    ):
        assert statuses(checks.run_checks(unet, config, probe))["identity_at_init"] == checks.EXACT


def test_validate_deep_names_the_check_and_the_method(write_manifest) -> None:
    good = write_manifest()
    bad = write_manifest(
        {
            "name": "bad",
            "peft_config": {**json.loads(good.read_text())["peft_config"], "init_lora_weights": False},
        }
    )
    result = CliRunner().invoke(main, ["validate", "--deep", str(good), str(bad)])
    assert result.exit_code == 2
    assert f"ok {good}" in result.output and "identity at init exact" in result.output
    [error] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert error.startswith(
        f"error: {bad}: structural check of lora: identity_at_init failed: "
        "a fresh adapter changes the output by up to "
    )
    assert error.endswith("(allowed 0)")
    assert "Traceback" not in result.output


def test_run_refuses_a_broken_adapter_before_training(write_manifest) -> None:
    path = write_manifest({"peft_config": {"peft_type": "LORA", "r": 4, "init_lora_weights": False}})
    result = CliRunner().invoke(main, ["run", str(path), "--seeds", "0,1"])
    assert result.exit_code == 2
    [error] = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: {path}: structural check of lora")
    assert "1 of 2 runs recorded" in result.output
    [record_file] = list_records(path.parent)  # the first seed only: the checks do not depend on it
    record = read_record(record_file).to_json()
    assert record["status"] == "failed" and record["error"]["type"] == "CheckFailed"
    assert record["metrics"] == {"steps_completed": 0}
    assert record["checks"]["identity_at_init"]["status"] == "failed"
    assert record["checks"]["round_trip"]["status"] == "passed"


def test_a_run_records_its_checks_and_they_do_not_change_the_run(write_manifest, monkeypatch) -> None:
    manifest = resolve(write_manifest())
    checked = run_local(manifest, seed=1).record.to_json()
    assert {k: v["status"] for k, v in checked["checks"].items()} == {
        "identity_at_init": "exact",
        "disable_restores_base": "passed",
        "only_declared_change": "passed",
        "round_trip": "passed",
    }
    assert checked["metrics"]["adapter_sha256"][:12] in checked["checks"]["round_trip"]["detail"]
    monkeypatch.setattr(checks, "run_checks", lambda *a, **k: [])
    unchecked = run_local(manifest, seed=1).record.to_json()
    for key in ("adapter_sha256", "test_accuracy", "train_loss_final", "valid_curve"):
        assert checked["metrics"][key] == unchecked["metrics"][key]


def test_token_ids_outside_the_models_vocabulary_are_refused_before_attaching(prepared: Prepared) -> None:
    """A public config names Llama-3's BOS and EOS (128000, 128001): on a smaller vocabulary it is
    refused at validate, naming the field, not left to fail in the run."""
    from peft import TrainableTokensConfig

    from peftrepro.errors import ManifestError

    size = prepared.model.get_input_embeddings().num_embeddings
    bad = [
        (TrainableTokensConfig(task_type="CAUSAL_LM", token_indices=[0, size]), "token_indices"),
        (LoraConfig(**LORA, trainable_token_indices=[size + 5]), "trainable_token_indices"),
    ]
    for config, field in bad:
        with pytest.raises(ManifestError) as caught:
            peftconfig.check_attach(prepared.model, config, "m.json")
        assert (
            f"/peft_config/{field}" in caught.value.message
            and "not in the task's model's vocabulary" in caught.value.message
        )
    fine = TrainableTokensConfig(task_type="CAUSAL_LM", token_indices=[0, size - 1])
    assert peftconfig.check_attach(prepared.model, fine, "m.json") is not None


def test_a_prompt_config_sized_for_another_model_is_refused_before_attaching(prepared: Prepared) -> None:
    """Saved on Llama-3.2-3B, a prompt-tuning config says token_dim 3072: it attaches on the meta
    device and failed only at the round trip of a run; validate refuses it, naming the field."""
    from peft import PromptTuningConfig

    from peftrepro.errors import ManifestError

    width = prepared.model.config.hidden_size
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, token_dim=width + 1)
    with pytest.raises(ManifestError) as caught:
        peftconfig.check_attach(prepared.model, config, "m.json")
    assert "/peft_config/token_dim" in caught.value.message and f"hidden_size {width}" in caught.value.message
    fits = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, token_dim=width)
    assert peftconfig.check_attach(prepared.model, fits, "m.json") is not None
