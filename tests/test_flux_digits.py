"""The `flux-digits` track on a tiny stand-in: a public image-gen adapter config, naming FLUX.2's
modules, runs on the small Flux2 transformer as it is; the record, its sample grid and a bit-exact
re-run; the patch packing and the concept score's ends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from peftrepro.cli import main
from peftrepro.records import list_records, read_record
from peftrepro.tasks import flux_digits
from tests.tiny import register_tiny_flux_digits

# The public image-gen LoRA's own target list (FLUX.2-klein's module names), as transplanted.
PUBLIC_TARGETS = [
    "to_out.0", "to_add_out", "to_qkv_mlp_proj", "add_k_proj", "add_q_proj", "add_v_proj",
    "to_k", "to_q", "to_v", "linear_in", "linear_out",
]  # fmt: skip
MANIFEST = {
    "schema_version": 1,
    "task": "flux-digits",
    "method": "lora",
    "name": "tiny",
    "title": "LoRA with the public image-gen targets on the tiny flux-digits stand-in",
    "authors": ["tests"],
    "description": "A few steps, so that it runs in seconds.",
    "peft_config": {"peft_type": "LORA", "r": 4, "lora_alpha": 4, "target_modules": PUBLIC_TARGETS},
    "training": {"max_steps": 4, "eval_steps": 2, "batch_size": 4},
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-flux-digits") / "model"


@pytest.fixture
def flux_task(tiny_dir: Path) -> None:
    register_tiny_flux_digits(tiny_dir)


def test_patches_round_trip_in_row_major_order() -> None:
    x = torch.arange(2 * 256, dtype=torch.float32).view(2, 1, 16, 16)
    packed = flux_digits.pack(x)
    assert packed.shape == (2, 16, 16) and torch.equal(flux_digits.unpack(packed), x)
    assert packed[0, 1].tolist()[:4] == [4.0, 5.0, 6.0, 7.0]  # token 1: the patch right of the first
    assert packed[0, 4].tolist()[:4] == [64.0, 65.0, 66.0, 67.0]  # token 4: the second patch row


def test_the_concept_score_is_high_for_real_held_out_digits_and_lower_for_others() -> None:
    from peftrepro.tasks import digits

    x, y = digits.digit_images()
    torch.manual_seed(0)
    evaluator, _ = digits.train_evaluator(x, y, {**digits.EVALUATOR_RECIPE, "epochs": 3})
    refs = flux_digits.concept_references(x, y)
    assert len(refs) == int((y == digits.CONCEPT).sum()) - digits.N_CONCEPT_TRAIN
    same = flux_digits.similarity(evaluator, x[y == digits.CONCEPT][:40], refs).mean()
    other = flux_digits.similarity(evaluator, x[y == 0][:40], refs).mean()
    assert 0 <= other < same <= 1


def test_a_public_config_runs_as_it_is_records_a_grid_and_verifies_bit_exact(
    flux_task, write_manifest
) -> None:
    path = write_manifest({}, base=MANIFEST)
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(path)])
    assert result.exit_code == 0, result.output
    [record_file] = list_records(path.parent)
    record = read_record(record_file).to_json()
    m = record["metrics"]
    assert record["status"] == "success"
    assert 0 <= m["test_concept_score"] <= 1 and 0 <= m["drift"] <= 1
    assert len(m["test_outcomes"]["values"]) == flux_digits.N_TEST
    assert record["checks"]["identity_at_init"]["status"] == "exact"
    assert record_file.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    verify = runner.invoke(main, ["verify", str(path)])
    assert verify.exit_code == 0, verify.output
    [verification] = (path.parent / "verifications").glob("*.json")
    v = json.loads(verification.read_text())
    assert v["verdict"] == "reproduced", v["reasons"]
