"""The contributor's path: `new`, `list`."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from peftrepro.cli import main
from peftrepro.manifest import resolve
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
