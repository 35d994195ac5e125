"""The `digits` image track on its tiny stand-in: the same code path as the real task (recipe build,
diffusers UNet, evaluator, drift, sample grids, leaderboard), with a recipe that builds in seconds."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from peftrepro import schemas
from peftrepro.cli import main
from peftrepro.metrics import METRICS_BY_KEY
from peftrepro.records import list_records, read_record
from peftrepro.tasks import digits
from tests.test_run import TASK_ONLY, TEXT_ONLY
from tests.test_verify import run_seeds
from tests.tiny import TINY_DIGITS_BASE, TINY_DIGITS_EVALUATOR, build_tiny_digits, register_tiny_digits

LORA_DIGITS = {
    "schema_version": 1,
    "task": "digits",
    "method": "lora",
    "name": "tiny",
    "title": "LoRA on the tiny digits stand-in",
    "authors": ["tests"],
    "description": "A digits LoRA manifest for the tests; a few steps so that it runs in seconds.",
    "peft_config": {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["to_q", "to_v", "conv1"],
    },
    "training": {"max_steps": 4, "eval_steps": 2, "batch_size": 4, "warmup_steps": 1},
}


@pytest.fixture(scope="session")
def tiny_digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_digits(tmp_path_factory.mktemp("tiny-digits") / "model")


@pytest.fixture
def digits_task(tiny_digits_dir: Path) -> None:
    register_tiny_digits(tiny_digits_dir)


def digits_manifest(write_manifest, **changes) -> Path:
    return write_manifest(changes, base=LORA_DIGITS)


def test_the_recipe_builds_the_same_bytes_twice(tiny_digits_dir: Path, tmp_path: Path) -> None:
    info = digits.build(tmp_path / "again", base=TINY_DIGITS_BASE, evaluator_recipe=TINY_DIGITS_EVALUATOR)
    for name in ("unet/diffusion_pytorch_model.safetensors", "evaluator.safetensors"):
        assert (tmp_path / "again" / name).read_bytes() == (tiny_digits_dir / name).read_bytes(), name
    assert info["recipe_sha256"] == digits.recipe_sha256(TINY_DIGITS_BASE, TINY_DIGITS_EVALUATOR)
    assert info["recipe_sha256"] != digits.recipe_sha256()  # the pinned recipe names another folder
    assert 0.1 < info["evaluator_accuracy"] <= 1.0


def test_drift_is_zero_for_the_same_features_and_one_for_orthogonal_ones() -> None:
    a = [[1.0, 0.0, 2.0], [0.0, 0.0, 0.0]]
    assert digits.drift(a, a) == pytest.approx(0.0, abs=1e-12)
    assert digits.drift([[1.0, 0.0]], [[0.0, 3.0]]) == 1.0
    assert digits.drift([[0.0, 0.0]], [[0.0, 1.0]]) == 1.0  # a dead feature vector is far from any other
    assert digits.drift([[1.0, 1.0]], [[2.0, 2.0]]) == pytest.approx(0.0, abs=1e-12)  # scale does not count
    half = digits.drift([[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]])
    assert half == pytest.approx(0.5)


def test_concept_images_are_the_held_out_digit_and_fixed() -> None:
    x, y = digits.digit_images()
    idx = digits.concept_train_indices(y)
    assert x.shape == (1797, 1, 16, 16) and float(x.min()) >= -1 and float(x.max()) <= 1
    assert len(idx) == digits.N_CONCEPT_TRAIN and set(y[idx].tolist()) == {digits.CONCEPT}
    assert idx.tolist() == digits.concept_train_indices(y).tolist()


def test_a_digits_run_records_score_drift_and_a_grid_and_verifies(
    digits_task, write_manifest, tmp_path: Path
) -> None:
    path = digits_manifest(write_manifest)
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(path)])
    assert result.exit_code == 0, result.output
    [record_file] = list_records(path.parent)
    record = read_record(record_file).to_json()
    schemas.check(record, schemas.RUN_RECORD, str(record_file))
    m = record["metrics"]
    assert record["status"] == "success" and set(m) == set(METRICS_BY_KEY) - TEXT_ONLY - TASK_ONLY
    assert 0 <= m["test_concept_score"] <= 1 and 0 <= m["base_test_concept_score"] <= 1
    assert 0 <= m["drift"] <= 1 and math.isfinite(m["train_loss_final"])
    assert [p["step"] for p in m["valid_curve"]] == [2, 4] and "valid_concept_score" in m["valid_curve"][0]
    assert m["images_per_second"] > 0 and m["trainable_params"] > 0
    png = record_file.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert hashlib.sha256(png.read_bytes()).hexdigest() == m["samples_sha256"]
    checks = record["checks"]
    assert checks["identity_at_init"]["status"] == "exact" and checks["round_trip"]["status"] == "passed"
    assert "test_concept_score" in result.output and "drift" in result.output

    verify = runner.invoke(main, ["verify", str(path)])
    assert verify.exit_code == 0, verify.output
    [verification] = (path.parent / "verifications").glob("*.json")
    v = json.loads(verification.read_text())
    assert v["verdict"] == "reproduced", v["reasons"]
    compared = {c["metric"]: c["outcome"] for c in v["comparisons"]}
    assert compared["samples_sha256"] == compared["drift"] == compared["adapter_sha256"] == "match"

    out = tmp_path / "board"
    board = runner.invoke(main, ["leaderboard", "--submissions", str(path.parents[3]), "--out", str(out)])
    assert board.exit_code == 0, board.output
    page = (out / "digits.md").read_text()
    assert "## Samples" in page and f"{png.name})" in page
    assert "drift ↓" in page and "concept score ↑" in page

    original = png.read_bytes()
    png.write_bytes(original + b"tampered")  # a grid that is not the record's is never shown
    runner.invoke(main, ["leaderboard", "--submissions", str(path.parents[3]), "--out", str(out)])
    page = (out / "digits.md").read_text()
    assert "grid does not match its record's samples_sha256" in page and f"{png.name})" not in page

    elsewhere = tmp_path / "elsewhere.png"  # the right bytes, but through a link: never followed
    elsewhere.write_bytes(original)
    png.unlink()
    png.symlink_to(elsewhere)
    runner.invoke(main, ["leaderboard", "--submissions", str(path.parents[3]), "--out", str(out)])
    assert "grid is a symbolic link; not shown" in (out / "digits.md").read_text()


def test_full_finetuning_of_the_unet_saves_and_reloads_the_whole_model(digits_task, write_manifest) -> None:
    path = digits_manifest(
        write_manifest,
        method="full-finetuning",
        name="all",
        peft_config=None,
        training={"max_steps": 2, "eval_steps": 2, "batch_size": 2},
    )
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 0, result.output
    record = read_record(list_records(path.parent)[0]).to_json()
    assert record["checks"] == {"round_trip": record["checks"]["round_trip"]}
    assert record["checks"]["round_trip"]["status"] == "passed"
    assert record["metrics"]["trainable_params"] == record["metrics"]["total_params"]


def test_a_text_task_type_is_refused_for_the_unet(digits_task, write_manifest) -> None:
    cfg = {**LORA_DIGITS["peft_config"], "task_type": "CAUSAL_LM"}
    result = CliRunner().invoke(main, ["validate", str(digits_manifest(write_manifest, peft_config=cfg))])
    assert result.exit_code == 2 and "omit task_type" in result.output


def a_digits_record(write_manifest) -> Path:
    """The tiny LoRA's record: one real run per session, its bytes copied for each later test (the
    tests that read records doctor a copy; none needs a run of its own)."""
    [record] = run_seeds(digits_manifest(write_manifest))
    return record


def test_a_record_made_with_other_models_than_the_pinned_ones_is_ignored(
    digits_task, write_manifest, monkeypatch
) -> None:
    from peftrepro.collect import load_submission

    record_file = a_digits_record(write_manifest)
    model = json.loads(record_file.read_text())["environment"]["artifacts"]["model"]
    pins = {"weights_sha256": model["weights_sha256"], "evaluator_sha256": model["evaluator_sha256"]}
    monkeypatch.setattr(digits.DigitsTask, "model_pins", lambda self: pins)
    assert load_submission(record_file.parents[1]).claims  # built to the pinned bytes: a claim
    other = {**pins, "weights_sha256": "0" * 64}  # as when another CPU builds the recipe
    monkeypatch.setattr(digits.DigitsTask, "model_pins", lambda self: other)
    sub = load_submission(record_file.parents[1])
    assert not sub.claims
    [(_, why)] = sub.ignored
    assert why.startswith("/environment/artifacts/model/weights_sha256: ") and "pinned 000000000000" in why


def test_a_digits_record_without_its_own_metrics_is_ignored(digits_task, write_manifest) -> None:
    record_file = a_digits_record(write_manifest)
    path = record_file.parents[1] / "manifest.json"
    record = json.loads(record_file.read_text())
    m = record["metrics"]
    for key in (
        "test_concept_score",
        "base_test_concept_score",
        "drift",
        "samples_sha256",
        "images_per_second",
        "test_outcomes",
    ):
        m.pop(key)  # dressed up as a text record: valid for the schema, not for this task
    m.update(test_accuracy=0.9, base_test_accuracy=0.1, forgetting=0.0, tokens_per_second=1.0)
    record_file.write_text(json.dumps(record))
    result = CliRunner().invoke(main, ["list", "submissions"])
    assert "awaiting run" in result.output or "ignored" in result.output.lower()
    from peftrepro.collect import load_submission

    sub = load_submission(path.parent)
    assert not sub.claims and any("a digits record needs test_concept_score" in why for _, why in sub.ignored)


def test_the_probe_sees_the_adapter(digits_task) -> None:
    from peftrepro.tasks import get_task

    prepared = get_task("digits").prepare()
    a = prepared.probe.outputs(prepared.model)
    b = prepared.probe.outputs(prepared.load_base())
    assert a.shape == (4, 1, 16, 16) and torch.equal(a, b)
