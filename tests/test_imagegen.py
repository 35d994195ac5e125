"""The `image-gen` GPU track on CPU with a tiny FLUX.2-klein stand-in: the real loaders, latent
and prompt caches, flow-matching loss, DINOv2 scoring, drift and sample grid run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from peftrepro.cli import main
from tests.tiny import register_tiny_imagegen

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "peft-method-comparison"
MANIFEST = {
    "schema_version": 1,
    "task": "image-gen",
    "method": "lora",
    "name": "tiny",
    "title": "LoRA on the image-gen stand-ins",
    "authors": ["tests"],
    "description": "A LoRA manifest for the image-gen stand-ins; a few steps so that it runs in seconds.",
    "peft_config": {"peft_type": "LORA", "r": 4, "lora_alpha": 4, "target_modules": ["to_q", "to_k", "to_v"]},
    "training": {"max_steps": 4, "eval_steps": 2, "max_seq_length": 32},
}


@pytest.mark.skipif(not REFERENCE.exists(), reason="../shared/reference is not beside the checkout")
def test_validate_counts_parameters_as_the_public_result_file_does(tmp_path: Path) -> None:
    from peftrepro.tasks import get_task
    from peftrepro.validate import validate_one

    skeleton = get_task("image-gen").skeleton()
    assert skeleton is not None and sum(p.numel() for p in skeleton.parameters()) == 3_875_544_576
    exp = REFERENCE / "image-gen" / "experiments" / "lora" / "flux2-klein-default"
    out = CliRunner().invoke(main, ["import", str(exp), "--submissions", str(tmp_path)])
    assert out.exit_code == 0, out.output
    theirs = json.loads((REFERENCE / "image-gen" / "results" / "lora--flux2-klein-default.json").read_text())
    checked = validate_one(tmp_path / "image-gen" / "lora" / "flux2-klein-default" / "manifest.json")
    assert checked.ok, checked.error
    info = theirs["train_info"]
    assert (checked.trainable_params, checked.total_params) == (
        info["num_trainable_params"],
        info["num_total_params"],
    )


def test_a_run_on_the_stand_ins_records_score_drift_and_grid(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch
) -> None:
    register_tiny_imagegen(tmp_path_factory.getbasetemp() / "tiny-imagegen")
    monkeypatch.setenv("PEFTREPRO_ALLOW_CPU", "1")
    path = tmp_path / "submissions" / "image-gen" / "lora" / "tiny" / "manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(MANIFEST))
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 0, result.output
    (record_path,) = (path.parent / "runs").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "success", record["error"]
    m = record["metrics"]
    assert -1 <= m["test_concept_score"] <= 1 and -1 <= m["base_test_concept_score"] <= 1
    assert 0 <= m["drift"] <= 1 and m["steps_completed"] == 4
    assert [c["step"] for c in m["valid_curve"]] == [2, 4]
    assert m["trainable_params"] > 0 and m["images_per_second"] > 0
    assert (path.parent / "runs" / f"{record['run_id']}.png").exists()  # the sample grid, named by the record
    data = record["environment"]["artifacts"]["data"]
    assert (
        data["photos"]["rows"] == 8 and len(data["split"]["test"]) == 2 and len(data["split"]["train"]) == 4
    )
