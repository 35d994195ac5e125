"""The `metamathqa` GPU track on CPU with local stand-ins: the real loaders, data pipeline,
generation-based scoring and forgetting run end to end; only the download is not exercised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from peftrepro.cli import main
from peftrepro.tasks.metamathqa import accuracy, generation_limit, is_correct, parse_answer
from tests.tiny import register_tiny_metamathqa

MANIFEST = {
    "schema_version": 1,
    "task": "metamathqa",
    "method": "lora",
    "name": "tiny",
    "title": "LoRA on the metamathqa stand-ins",
    "authors": ["tests"],
    "description": "A LoRA manifest for the metamathqa stand-ins; a few steps so that it runs in seconds.",
    "peft_config": {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    "training": {"max_steps": 4, "eval_steps": 2, "batch_size": 2, "batch_size_eval": 4, "warmup_steps": 1},
}


def test_answers_are_parsed_and_matched_as_the_public_comparison_does() -> None:
    assert parse_answer("so $4^2 = 16$.The answer is: 16") == "16"
    assert parse_answer("Natalia sold 48/2 = 24 clips.\n#### 72") == "72"
    assert parse_answer("no delimiter here") is None
    assert is_correct("... The answer is: 0.5", "#### 1/2")  # numbers by value
    assert not is_correct("The answer is: 1,000", "#### 1000")  # theirs: '1,000' is not a number
    assert is_correct("The answer is $18.00.", "#### 18")
    assert accuracy(["The answer is 3", "nothing"], ["#### 3", "#### 4"]) == 0.5
    with pytest.raises(ValueError, match="without a delimiter"):
        is_correct("The answer is 3", "3")
    assert generation_limit(100) == 400 and generation_limit(600) == 800  # max_new_tokens, max_length


@pytest.fixture
def tiny_track(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, monkeypatch) -> Path:
    register_tiny_metamathqa(tmp_path_factory.getbasetemp() / "tiny-metamathqa")
    path = tmp_path / "submissions" / "metamathqa" / "lora" / "tiny" / "manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(MANIFEST))
    return path


def test_a_gpu_track_on_a_machine_without_one_is_a_one_line_refusal(tiny_track: Path, monkeypatch) -> None:
    monkeypatch.delenv("PEFTREPRO_ALLOW_CPU", raising=False)
    result = CliRunner().invoke(main, ["run", str(tiny_track)])
    assert result.exit_code == 2, result.output
    assert "needs a CUDA GPU and none is visible here" in result.output and "Traceback" not in result.output
    assert not (tiny_track.parent / "runs").exists()


def test_a_run_on_the_stand_ins_records_the_public_metrics(tiny_track: Path, monkeypatch) -> None:
    monkeypatch.setenv("PEFTREPRO_ALLOW_CPU", "1")
    result = CliRunner().invoke(main, ["run", str(tiny_track)])
    assert result.exit_code == 0, result.output
    (record_path,) = (tiny_track.parent / "runs").glob("*.json")
    record = json.loads(record_path.read_text())
    m = record["metrics"]
    assert record["status"] == "success"
    assert 0 <= m["test_accuracy"] <= 1 and 0 <= m["base_test_accuracy"] <= 1
    assert [c["step"] for c in m["valid_curve"]] == [2, 4]
    assert m["general_ce_before"] > 0 and m["forgetting"] == m["general_ce_after"] - m["general_ce_before"]
    assert isinstance(m["forgetting_same_position"], float)  # the public harness's definition, beside ours
    assert m["peak_memory_bytes"] > 0 and m["trainable_params"] > 0 and m["steps_completed"] == 4
    artifacts = record["environment"]["artifacts"]
    assert artifacts["model"]["dtype"] == "bfloat16"  # the task's default, as the public comparison's
    data = artifacts["data"]
    assert data["train"]["rows"] == 64  # the 1,400-character pair is filtered out, as theirs
    assert data["eval"]["valid"] == 2 and data["eval"]["test"] == 4 and data["general_text"]["rows"] == 6


REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "peft-method-comparison"


@pytest.mark.skipif(not REFERENCE.exists(), reason="../shared/reference is not beside the checkout")
def test_validate_counts_parameters_as_the_public_result_files_do(tmp_path: Path) -> None:
    """No weights are loaded: the pinned architecture on the meta device gives their exact counts."""
    from peftrepro.tasks import get_task
    from peftrepro.validate import validate_one

    skeleton = get_task("metamathqa").skeleton()
    assert skeleton is not None and sum(p.numel() for p in skeleton.parameters()) == 3_212_749_824
    for exp, result in (
        ("lora/llama-3.2-3B-rank32", "lora--llama-3.2-3B-rank32"),
        ("ia3/llama-3.2-3B-lr_0.001", "ia3--llama-3.2-3B-lr_0.001"),
    ):
        out = CliRunner().invoke(
            main,
            ["import", str(REFERENCE / "MetaMathQA" / "experiments" / exp), "--submissions", str(tmp_path)],
        )
        assert out.exit_code == 0, out.output
        (path,) = tmp_path.glob(f"metamathqa/*/{exp.split('/')[1].lower()}/manifest.json")
        theirs = json.loads((REFERENCE / "MetaMathQA" / "results" / f"{result}.json").read_text())[
            "train_info"
        ]
        checked = validate_one(path)
        assert checked.ok, checked.error
        assert (checked.trainable_params, checked.total_params) == (
            theirs["num_trainable_params"],
            theirs["num_total_params"],
        )


def test_a_quantized_base_without_bitsandbytes_is_a_one_line_refusal(tiny_track: Path, monkeypatch) -> None:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here")
    monkeypatch.setenv("PEFTREPRO_ALLOW_CPU", "1")
    doc = json.loads(tiny_track.read_text())
    doc["training"]["dtype"] = "int4"
    tiny_track.write_text(json.dumps(doc))
    result = CliRunner().invoke(main, ["run", str(tiny_track)])
    assert result.exit_code == 2, result.output
    assert "dtype int4 needs bitsandbytes: pip install bitsandbytes" in result.output
    assert "Traceback" not in result.output
