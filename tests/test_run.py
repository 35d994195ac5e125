"""Runs on the tiny stand-in: success, determinism, failure, cancellation, and the loop's branches."""

from __future__ import annotations

import functools
import json
import os
import signal
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from peftrepro import schemas
from peftrepro.cli import main
from peftrepro.executors.batch import land, run_in_child
from peftrepro.manifest import resolve
from peftrepro.records import list_records, read_record
from peftrepro.runners.local import run_local
from peftrepro.tasks import register
from peftrepro.tasks.arithmetic import GGUFSource, LocalDirSource
from tests.conftest import LORA_MANIFEST
from tests.tiny import ExplodingTask, interrupt_during_training

REPO = Path(__file__).parent.parent
# The metrics of the image tasks (tests/test_digits.py checks the converse).
IMAGE_ONLY = {"test_concept_score", "base_test_concept_score", "drift", "samples_sha256", "images_per_second"}
TEXT_ONLY = {"test_accuracy", "base_test_accuracy", "forgetting", "general_ce_before", "general_ce_after"}
TEXT_ONLY |= {"tokens_per_second"}
# Recorded by one task only: metamathqa's forgetting as the public harness computes it, and
# gsm-symbolic's headline score (tests/test_gsm_symbolic.py checks its record's keys).
GSM_SYMBOLIC_ONLY = {"test_token_accuracy", "base_test_token_accuracy"}
TASK_ONLY = {"forgetting_same_position"} | GSM_SYMBOLIC_ONLY
SAME_EVERY_RUN = (
    "test_accuracy",
    "forgetting",
    "general_ce_after",
    "train_loss_final",
    "trainable_params",
    "total_params",
    "adapter_bytes",
    "adapter_sha256",
    "valid_curve",
)


def test_run_writes_a_valid_success_record(write_manifest) -> None:
    path = write_manifest()
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 0, result.output
    [record_file] = list_records(path.parent)
    record = read_record(record_file).to_json()  # schema-checked
    schemas.check(record, schemas.RUN_RECORD, str(record_file))
    m, env = record["metrics"], record["environment"]
    assert record["status"] == "success" and record["error"] is None
    assert record["submission"]["manifest_sha256"] == resolve(path).sha256
    assert record["resolved_config"]["training"]["max_steps"] == 6
    assert [p["step"] for p in m["valid_curve"]] == [3, 6]
    assert m["trainable_params"] == 2048 and m["steps_completed"] == 6
    assert m["forgetting"] == pytest.approx(m["general_ce_after"] - m["general_ce_before"])
    assert 0 < m["train_seconds"] < m["total_seconds"]
    assert m["memory_avg_bytes"] <= m["memory_p99_bytes"] <= m["peak_memory_bytes"]
    assert m["peak_memory_bytes"] > 50 * 2**20  # a process with torch loaded is far above 50 MiB RSS
    assert env["manifest_sha256"] == record["submission"]["manifest_sha256"]
    assert env["artifacts"]["model"]["weights_sha256"] and env["artifacts"]["data"]["general_text_sha256"]
    assert env["determinism"]["deterministic_algorithms"] is True and env["determinism"]["num_threads"] == 2
    assert env["distributions_sha256"] and any(d.startswith("torch==") for d in env["distributions"])
    assert "test_accuracy" in result.output and str(record_file) in result.output


def test_same_manifest_and_seed_give_identical_results(write_manifest) -> None:
    manifest = resolve(write_manifest())
    outputs = [run_local(manifest, seed=s) for s in (3, 3, 4)]
    for output in outputs:
        land(output, manifest.folder / "runs")
    a, b, c = (output.record.to_json() for output in outputs)
    assert a["run_id"] != b["run_id"]
    assert {k: a["metrics"][k] for k in SAME_EVERY_RUN} == {k: b["metrics"][k] for k in SAME_EVERY_RUN}
    assert a["environment"]["environment_sha256"] == b["environment"]["environment_sha256"]
    assert c["metrics"]["adapter_sha256"] != a["metrics"]["adapter_sha256"]  # the seed really is used
    assert len(list_records(manifest.folder)) == 3  # nothing overwritten


def test_a_run_that_breaks_writes_a_failed_record_and_exits_1(write_manifest, tiny_model_dir) -> None:
    # A registered task, not a monkeypatch: `run` trains in a child process, which gets the registry.
    register(
        "arithmetic", functools.partial(ExplodingTask, LocalDirSource(tiny_model_dir, GGUFSource.model_id))
    )
    path = write_manifest()
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 1
    [record_file] = list_records(path.parent)
    record = read_record(record_file).to_json()
    assert record["status"] == "failed"
    assert record["error"] == {"type": "RuntimeError", "message": "evaluation exploded second line"}
    assert record["metrics"] == {"steps_completed": 6}
    assert record["environment"]["artifacts"]["model"]  # what was known before the failure is kept


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_leaves_a_cancelled_record(write_manifest, tiny_model_dir: Path, sig) -> None:
    path = write_manifest({"training": {"max_steps": 100000, "eval_steps": 100000}})
    code, out, err = interrupt_during_training(["run", str(path)], tiny_model_dir, sig)
    assert code == 130, err
    [record_file] = list_records(path.parent)
    record = read_record(record_file).to_json()
    assert record["status"] == "cancelled"
    assert record["error"]["message"] == f"stopped by {sig.name}"
    assert record["metrics"]["steps_completed"] > 0
    assert "Traceback" not in err
    assert "cancelled" in out
    cache = Path(os.environ["PEFTREPRO_CACHE"])  # nothing half-written is left behind
    assert not list(cache.glob("adapters/**/*.safetensors")) and not list(cache.glob("work/*"))


METHOD_CONFIGS = {
    "adalora": {
        "peft_type": "ADALORA",
        "init_r": 6,
        "target_r": 2,
        "total_step": 6,
        "tinit": 1,
        "tfinal": 2,
        "deltaT": 1,
        "target_modules": ["q_proj", "v_proj"],
    },
    "prefix-tuning": {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4},
    "prompt-tuning": {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4},
    "p-tuning": {"peft_type": "P_TUNING", "num_virtual_tokens": 4, "encoder_hidden_size": 32},
    "ia3": {
        "peft_type": "IA3",
        "target_modules": ["k_proj", "v_proj", "down_proj"],
        "feedforward_modules": ["down_proj"],
    },
    "loha": {"peft_type": "LOHA", "r": 2, "target_modules": ["q_proj", "v_proj"]},
    "dora": {"peft_type": "LORA", "use_dora": True, "r": 2, "target_modules": ["q_proj", "v_proj"]},
}


@pytest.mark.parametrize("method", sorted(METHOD_CONFIGS))
def test_loop_handles_each_kind_of_method(write_manifest, method) -> None:
    path = write_manifest(
        {
            "method": method,
            "peft_config": METHOD_CONFIGS[method],
            "training": {"max_steps": 4, "eval_steps": 4, "batch_size": 4},
        }
    )
    outcome = run_local(resolve(path), seed=0)
    assert outcome.status == "success", outcome.record.error
    m = outcome.record.metrics
    assert m["trainable_params"] > 0 and m["adapter_bytes"] > 0 and m["steps_completed"] == 4


def test_prefix_tuning_starts_from_the_base_models_cache_of_a_text(write_manifest) -> None:
    """init_kv_cache_prefix (the public prefix-tuning experiment) on the arithmetic task: its text
    is encoded with the task's tokenizer (it failed with KeyError 'tokenizer' before)."""
    path = write_manifest(
        {
            "method": "prefix-tuning",
            "peft_config": METHOD_CONFIGS["prefix-tuning"],
            "training": {
                "max_steps": 2,
                "eval_steps": 2,
                "batch_size": 4,
                "init_kv_cache_prefix": "Add the numbers.",
            },
        }
    )
    outcome = run_local(resolve(path), seed=0)
    assert outcome.status == "success", outcome.record.error


def test_full_finetuning_trains_every_weight_and_saves_the_whole_model(write_manifest) -> None:
    path = write_manifest(
        {"method": "full-finetuning", "peft_config": None, "training": {"max_steps": 3, "eval_steps": 3}}
    )
    outcome = run_local(resolve(path), seed=0)
    assert outcome.status == "success", outcome.record.error
    m = outcome.record.metrics
    assert m["trainable_params"] == m["total_params"] > 100_000
    assert m["adapter_bytes"] > 4 * m["total_params"] * 0.99  # every fp32 weight, saved once
    assert m["train_loss_final"] > 0 and m["forgetting"] != 0  # the base weights really moved
    # Nothing is attached, so only the round trip applies: the trained weights reload to the same outputs.
    assert set(outcome.record.checks) == {"round_trip"}
    assert outcome.record.checks["round_trip"]["status"] == "passed"
    assert outcome.record.resolved_config["peft_config"] is None


def test_lora_fa_trains_lora_b_only(write_manifest) -> None:
    from safetensors.torch import load_file

    from peftrepro import peftconfig
    from peftrepro.paths import adapter_dir
    from peftrepro.tasks import get_task
    from peftrepro.training import seed_everything

    training = {"optimizer_type": "lora-fa", "optimizer_kwargs": {"lr": 1e-2}, "max_steps": 3}
    manifest = resolve(write_manifest({"method": "lora-fa", "training": training}))
    outcome = run_local(manifest, seed=0)
    assert outcome.status == "success", outcome.record.error
    saved = adapter_dir("arithmetic", "lora-fa", "tiny", outcome.record.run_id)
    trained = load_file(saved / "adapter_model.safetensors")
    seed_everything(0)  # as the run does right before attaching: the same initial adapter
    config = peftconfig.build(manifest.peft_config, "")
    fresh = peftconfig.attach(get_task("arithmetic").prepare().model, config)
    init = {k.replace(".default", ""): v for k, v in fresh.state_dict().items() if "lora_" in k}
    a_keys = [k for k in trained if "lora_A" in k]
    b_keys = [k for k in trained if "lora_B" in k]
    assert a_keys and b_keys
    assert all(torch.equal(trained[k], init[k]) for k in a_keys)  # LoRA-FA freezes A ...
    assert not any(torch.equal(trained[k], init[k]) for k in b_keys)  # ... and trains B
    assert outcome.record.metrics["trainable_params"] == sum(trained[k].numel() for k in b_keys)


def test_run_refuses_a_folder_without_a_manifest(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr == f"error: no manifest.json found under {tmp_path}\n"
    result = CliRunner().invoke(main, ["run"])
    assert result.exit_code == 2 and result.stderr.startswith("error: name the submissions to run")
    result = CliRunner().invoke(main, ["run", str(tmp_path / "nope")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1


def test_record_is_pretty_sorted_json(write_manifest) -> None:
    manifest = resolve(write_manifest())
    outcome = run_local(manifest, seed=0)
    text = land(outcome, manifest.folder / "runs").read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    assert (
        LORA_MANIFEST["peft_config"]["target_modules"]
        == outcome.record.resolved_config["peft_config"]["target_modules"]
    )


def test_metric_registry_schema_and_runner_agree(write_manifest) -> None:
    from peftrepro.metrics import METRICS_BY_KEY

    schema_keys = set(schemas.validator(schemas.RUN_RECORD).schema["$defs"]["metrics"]["properties"])
    assert schema_keys == set(METRICS_BY_KEY)
    outcome = run_local(resolve(write_manifest()), seed=0)
    assert set(outcome.record.metrics) == set(METRICS_BY_KEY) - IMAGE_ONLY - TASK_ONLY


def test_runs_after_the_first_get_a_fresh_process_with_the_same_results(write_manifest) -> None:
    """`run --seeds` runs each seed in a child process (RSS is a per-process figure); the child
    uses the parent's task registration (the tiny stand-in: 2,048 trainable parameters)."""
    manifest = resolve(write_manifest())
    inside = run_local(manifest, seed=2).record
    child, path = run_in_child(manifest, seed=2)
    assert child.record.metrics["trainable_params"] == 2048
    for key in SAME_EVERY_RUN:
        assert child.record.metrics[key] == inside.metrics[key], key
    assert path.parent == manifest.folder / "runs"


def test_an_interrupted_multi_seed_run_leaves_a_cancelled_record(write_manifest, tiny_model_dir) -> None:
    # a run that cannot finish before the signal, however fast the machine (400 steps once did)
    path = write_manifest(
        {"training": {**LORA_MANIFEST["training"], "max_steps": 100000, "eval_steps": 100000}}
    )
    code, _, _ = interrupt_during_training(
        ["run", str(path), "--seeds", "0,1"], tiny_model_dir, signal.SIGINT
    )
    assert code == 130
    [record] = [read_record(p).to_json() for p in list_records(path.parent)]
    assert record["status"] == "cancelled" and record["seed"] == 0


def test_the_manifest_is_read_once_and_its_peft_config_built_once(write_manifest, monkeypatch) -> None:
    """A job carries the bytes `resolve` read (the file is not read again), and the run attaches a
    copy of the PEFT config `resolve` built (peft may mutate the config it attaches)."""
    from peftrepro import peftconfig
    from peftrepro.executors import Job

    path = write_manifest()
    source = path.read_bytes()
    manifest = resolve(path)
    path.unlink()  # nothing below may need the file again
    job = Job.for_manifest(manifest, seed=0)
    assert job.manifest == source and job.submission.manifest_sha256 == manifest.sha256
    built = []
    monkeypatch.setattr(peftconfig, "build", lambda *a, **k: built.append(a) or None)
    output = run_local(manifest, seed=0)
    assert output.status == "success", output.record.error
    assert built == []  # the run used manifest.peft, not a config built again
    assert manifest.peft_config_object() is not manifest.peft
