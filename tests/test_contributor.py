"""The contributor's path: `new`, `list`."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from peftrepro.cli import main
from peftrepro.manifest import load_raw, resolve
from peftrepro.methods import FAMILIES
from peftrepro.scaffold import PLACEHOLDER, new_submission
from tests.golden_tree import GOLDEN


def test_new_writes_a_skeleton_that_resolves_and_attaches(tmp_path: Path) -> None:
    root = tmp_path / "submissions"
    result = CliRunner().invoke(main, ["new", "arithmetic", "dora", "my-try", "--submissions", str(root)])
    assert result.exit_code == 0, result.output
    path = root / "arithmetic" / "dora" / "my-try" / "manifest.json"
    doc = json.loads(path.read_text())
    assert doc["$schema"].endswith("schemas/manifest.schema.json")
    assert doc["peft_config"]["use_dora"] is True  # the family's flag
    assert doc["peft_config"]["r"] == 8 and doc["peft_config"]["lora_dropout"] == 0.0  # peft's defaults
    assert PLACEHOLDER in doc["title"] and PLACEHOLDER in doc["description"]
    assert resolve(path).method == "dora"
    assert "it attaches: " in result.output and "trainable of" in result.output
    assert f"peftrepro validate --deep {path.parent}" in result.output
    assert "peftrepro ci --changed-since" in result.output


def test_every_method_family_gets_a_skeleton_that_resolves(tmp_path: Path) -> None:
    for method in FAMILIES:
        path = new_submission(tmp_path, "arithmetic", method, "x")
        m = resolve(path)
        assert (m.peft_config is None) == (method == "full-finetuning")


def test_new_from_an_existing_submission_copies_its_settings(tmp_path: Path) -> None:
    old = new_submission(tmp_path, "arithmetic", "lora", "old")
    doc = json.loads(old.read_text())
    doc["peft_config"]["r"], doc["training"] = 16, {"optimizer_kwargs": {"lr": 1e-3}}
    old.write_text(json.dumps(doc))
    new = new_submission(tmp_path, "arithmetic", "lora-fa", "new", source=old.parent)
    m = resolve(new)
    assert m.peft_config is not None and m.peft_config["r"] == 16
    assert m.training.optimizer_type == "lora-fa" and m.training.optimizer_kwargs["lr"] == 1e-3


PUBLIC = Path("submissions/metamathqa")


def test_a_public_experiment_is_transplanted_to_its_cpu_track_under_the_tracks_conditions(
    tmp_path: Path,
) -> None:
    """The same PEFT config, the learning rate relative to its task's default (30 = arithmetic's
    3e-3 over metamathqa's 1e-4), the track's budget; what makes the method (its optimizer, a
    prefix's initial text) kept; AdaLoRA's step schedule scaled to the track's max_steps."""
    ia3 = resolve(
        new_submission(tmp_path, "arithmetic", "ia3", "x", PUBLIC / "ia3/llama-3.2-3b-all-attn-5k-lr0.005")
    )
    source = load_raw(PUBLIC / "ia3/llama-3.2-3b-all-attn-5k-lr0.005/manifest.json")
    assert ia3.raw["peft_config"] == source["peft_config"]
    assert ia3.training.optimizer_kwargs == {"lr": 0.15, "weight_decay": 0.0}  # 0.005 x 30; the track's decay
    assert ia3.training.max_steps == 120 and ia3.training.batch_size == 16  # the track's budget
    assert "0.005 x 30" in ia3.raw["description"] and "metamathqa/ia3/" in ia3.raw["title"]
    fa = resolve(
        new_submission(tmp_path, "arithmetic", "lora-fa", "x", PUBLIC / "lora-fa/llama-3.2-3b-rank32-lorafa")
    )
    assert fa.training.optimizer_type == "lora-fa"
    assert fa.training.optimizer_kwargs == {"r": 32, "lora_alpha": 64, "lr": 3e-3, "weight_decay": 0.0}
    prefix = PUBLIC / "prefix-tuning/llama-3.2-3b-tokens50-init_prefix-lr_0.005"
    kept = resolve(new_submission(tmp_path, "arithmetic", "prefix-tuning", "x", prefix))
    assert (
        kept.training.init_kv_cache_prefix
        == load_raw(prefix / "manifest.json")["training"]["init_kv_cache_prefix"]
    )
    ada = resolve(
        new_submission(tmp_path, "arithmetic", "adalora", "x", PUBLIC / "adalora/llama-3.2-3b-rank32")
    )
    assert ada.peft_config is not None
    assert (ada.peft_config["total_step"], ada.peft_config["tinit"], ada.peft_config["tfinal"]) == (
        120,
        5,
        12,
    )
    # Their model's width, depth and heads are left out: peft takes this model's.
    prompt = new_submission(
        tmp_path, "arithmetic", "prompt-tuning", "x", PUBLIC / "prompt-tuning/llama-3.2-3b-default"
    )
    assert not {"token_dim", "num_layers", "num_attention_heads"} & set(load_raw(prompt)["peft_config"])
    assert "token_dim left out" in load_raw(prompt)["description"]
    # A manifest of an unrelated task is copied as it is (the test above): only a stand-in transplants.
    digits = new_submission(tmp_path, "digits", "lora", "x", PUBLIC / "lora/llama-3.2-3b-rank32")
    assert "transplanted" not in load_raw(digits)["description"]


def test_new_refuses_bad_input_with_one_line_and_loses_nothing(tmp_path: Path) -> None:
    root = tmp_path / "submissions"
    existing = new_submission(root, "arithmetic", "lora", "taken")
    before = existing.read_bytes()
    cases = {
        ("arithmetic", "lora", "taken"): "exists; a submission is never edited in place",
        ("arithmetic", "nosuch", "x"): "unknown method family 'nosuch'",
        ("nosuch", "lora", "x"): "unknown task 'nosuch'",
        ("arithmetic", "lora", "../escape"): "must match",
    }
    for args, fragment in cases.items():
        result = CliRunner().invoke(main, ["new", *args, "--submissions", str(root)])
        assert result.exit_code == 2, result.output
        assert fragment in result.stderr and "Traceback" not in result.output
        assert len(result.stderr.strip().splitlines()) == 1
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    result = CliRunner().invoke(main, ["new", "arithmetic", "lora", "y", "--from", str(broken)])
    assert result.exit_code == 2 and "broken.json" in result.stderr
    assert existing.read_bytes() == before
    assert not (tmp_path / "escape").exists() and not (root / "arithmetic" / "lora" / "y").exists()


def test_list_shows_tasks_methods_and_submission_status() -> None:
    methods = CliRunner().invoke(main, ["list", "methods"])
    assert methods.exit_code == 0
    assert "full-finetuning" in methods.output and "lora-fa" in methods.output
    assert "xlora" in methods.output and "not supported" in methods.output
    tasks = CliRunner().invoke(main, ["list", "tasks"])
    assert "arithmetic" in tasks.output and "120 steps" in tasks.output
    subs = CliRunner().invoke(main, ["list", "submissions", "--submissions", str(GOLDEN / "submissions")])
    assert subs.exit_code == 0, subs.output
    lines = {line.split()[0]: line for line in subs.output.splitlines()[2:]}
    assert "verified (1/3, by tester@peftrepro.test)" in lines["arithmetic/lora/r8"]
    assert "stale" in lines["arithmetic/lokr/v2"] and "record format v2" in lines["arithmetic/lokr/v2"]
    assert "superseded" in lines["arithmetic/lokr/old"]
    assert "awaiting run" in lines["arithmetic/miss/pending"]
