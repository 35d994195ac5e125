"""End to end on the real `arithmetic` task: the pinned SmolLM2 GGUF, real data, a few steps.

Slow (the first call dequantizes the model, ~20 s, and measures the base model, ~30 s), so the
cache is shared across the module; it still runs in the default suite because it is the one test
that proves the real path works.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import peftrepro.tasks as tasks
from peftrepro import schemas
from peftrepro.cli import main
from peftrepro.manifest import resolve
from peftrepro.records import read_record
from peftrepro.runners.local import run_isolated
from peftrepro.tasks.arithmetic import GGUF_SHA256, WEIGHTS_SHA256, ArithmeticTask

REPO = Path(__file__).parent.parent
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real-cache")


@pytest.fixture
def real_task(real_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFTREPRO_CACHE", str(real_cache))
    tasks.register("arithmetic", ArithmeticTask)


def test_real_arithmetic_run_verify_and_a_doctored_copy(real_task, tmp_path: Path) -> None:
    folder = tmp_path / "submissions" / "arithmetic" / "lora" / "default"
    folder.mkdir(parents=True)
    doc = json.loads((REPO / "submissions/arithmetic/lora/default/manifest.json").read_text())
    doc["training"] = {"max_steps": 4, "eval_steps": 2, "batch_size": 4}
    (folder / "manifest.json").write_text(json.dumps(doc))
    manifest = resolve(folder / "manifest.json")

    first = run_isolated(manifest, seed=0)  # as `peftrepro run` does: a fresh process, pinned allocator
    assert first.status == "success", first.record["error"]
    schemas.check(read_record(first.path), schemas.RUN_RECORD, str(first.path))
    m = first.record["metrics"]
    assert m["trainable_params"] == 2_442_240  # rank 8 on every linear layer of SmolLM2-135M
    assert m["base_test_accuracy"] <= 0.10  # the concept is absent from the base model
    artifacts = first.record["environment"]["artifacts"]
    assert artifacts["model"]["gguf_sha256"] == GGUF_SHA256
    assert artifacts["model"]["weights_sha256"] == WEIGHTS_SHA256

    # The re-run reproduces the record bit for bit: scores, curve, adapter bytes.
    result = CliRunner().invoke(main, ["verify", str(folder), "--seed", "0"])
    assert result.exit_code == 0 and "verdict: REPRODUCED" in result.output, result.output
    [vfile] = (folder / "verifications").glob("*.json")
    rerun = json.loads(vfile.read_text())["rerun"]["metrics"]
    for key in ("test_accuracy", "forgetting", "valid_curve", "train_loss_final", "adapter_sha256"):
        assert rerun[key] == m[key], key

    # A doctored copy (a better score typed in, under a newer run id) becomes the claim and fails.
    doctored = json.loads(first.path.read_text())
    doctored["run_id"] = first.record["run_id"][:-6] + "ffffff"
    doctored["metrics"]["test_accuracy"] = min(1.0, m["test_accuracy"] + 0.05)
    (folder / "runs" / f"{doctored['run_id']}.json").write_text(json.dumps(doctored))
    result = CliRunner().invoke(main, ["verify", str(folder), "--seed", "0"])
    assert result.exit_code == 1 and "verdict: NOT_REPRODUCED" in result.output, result.output
    assert "reason: test_accuracy: claimed" in result.output


def test_corrupted_model_cache_is_detected(real_task, real_cache: Path, tmp_path: Path) -> None:
    from peftrepro.errors import UsageError
    from peftrepro.tasks.arithmetic import GGUFSource

    folder, _ = GGUFSource().materialize()  # cached by the previous test
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    with open(folder / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\0" * 8)
    try:
        with pytest.raises(UsageError, match="differs from the pinned"):
            GGUFSource().materialize()
    finally:
        shutil.copy(copy / "model.safetensors", folder / "model.safetensors")


def test_a_committed_corpus_claim_drawn_at_random_reproduces(real_task, tmp_path: Path) -> None:
    """CI re-runs one committed arithmetic claim (submission and seed drawn at random) on a copy of
    its folder: the corpus on the leaderboard is checked a sample at a time, on every CI run."""
    import random

    from peftrepro.collect import load_submission

    claims = [
        (folder, seed)
        for folder in sorted((REPO / "submissions" / "arithmetic").glob("*/*"))
        if (folder / "manifest.json").exists()
        for seed in sorted(load_submission(folder).claims)
    ]
    if not claims:
        pytest.skip("no committed arithmetic claims")
    folder, seed = random.Random().choice(claims)
    copy = tmp_path / "submissions" / "arithmetic" / folder.parent.name / folder.name
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("verifications"))
    print(f"verifying {folder.relative_to(REPO)} seed {seed}")
    result = CliRunner().invoke(main, ["verify", str(copy), "--seed", str(seed)])
    assert result.exit_code == 0 and "verdict: REPRODUCED" in result.output, result.output
