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

import peftrepro.tasks as tasks
from peftrepro import schemas
from peftrepro.manifest import resolve
from peftrepro.records import read_record
from peftrepro.runners.local import run_local
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


def test_real_arithmetic_lora_few_steps_twice(real_task, tmp_path: Path) -> None:
    folder = tmp_path / "submissions" / "arithmetic" / "lora" / "default"
    folder.mkdir(parents=True)
    doc = json.loads((REPO / "submissions/arithmetic/lora/default/manifest.json").read_text())
    doc["training"] = {"max_steps": 4, "eval_steps": 2, "batch_size": 4}
    (folder / "manifest.json").write_text(json.dumps(doc))
    manifest = resolve(folder / "manifest.json")

    first = run_local(manifest, seed=0)
    second = run_local(manifest, seed=0)
    assert first.status == second.status == "success", first.record["error"]
    for outcome in (first, second):
        schemas.check(read_record(outcome.path), schemas.RUN_RECORD, str(outcome.path))
    a, b = first.record["metrics"], second.record["metrics"]
    for key in ("test_accuracy", "forgetting", "trainable_params", "adapter_sha256", "valid_curve"):
        assert a[key] == b[key], key
    assert a["trainable_params"] == 2_442_240  # rank 8 on every linear layer of SmolLM2-135M
    assert a["base_test_accuracy"] <= 0.10  # the concept is absent from the base model
    artifacts = first.record["environment"]["artifacts"]
    assert artifacts["model"]["gguf_sha256"] == GGUF_SHA256
    assert artifacts["model"]["weights_sha256"] == WEIGHTS_SHA256


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
