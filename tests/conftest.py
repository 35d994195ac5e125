from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import peftrepro.tasks as tasks
from peftrepro.records import RunRecord
from tests.tiny import build_tiny_model, register_tiny

LORA_MANIFEST: dict[str, Any] = {
    "schema_version": 1,
    "task": "arithmetic",
    "method": "lora",
    "name": "tiny",
    "title": "LoRA on the tiny stand-in",
    "authors": ["tests"],
    "description": "A LoRA manifest used by the tests; short training so that it runs in seconds.",
    "peft_config": {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    "training": {"max_steps": 6, "eval_steps": 3, "batch_size": 4, "warmup_steps": 1},
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that need the test image run last: scripts/test builds it in the background meanwhile."""
    items.sort(key=lambda item: "test_image" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(autouse=True)
def isolated(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test: its own cache folder, and `arithmetic` backed by the tiny stand-in."""
    monkeypatch.setenv("PEFTREPRO_CACHE", str(tmp_path / "cache"))
    saved = (dict(tasks._FACTORIES), dict(tasks._INSTANCES))
    register_tiny(tiny_model_dir)
    yield
    tasks._FACTORIES.clear(), tasks._FACTORIES.update(saved[0])
    tasks._INSTANCES.clear(), tasks._INSTANCES.update(saved[1])


WriteManifest = Callable[..., Path]


@pytest.fixture
def write_manifest(tmp_path: Path) -> WriteManifest:
    """Write a manifest (default: the tiny LoRA one, with `changes` deep-applied) at its proper path."""

    def write(
        changes: dict[str, Any] | None = None,
        *,
        raw: bytes | None = None,
        base: dict | None = None,
        at: tuple[str, str, str] | None = None,
    ) -> Path:
        doc = copy.deepcopy(base or LORA_MANIFEST)
        for key, value in (changes or {}).items():
            if value is DELETE:
                doc.pop(key, None)
            else:
                doc[key] = value
        folder = (
            tmp_path / "submissions" / str(doc.get("task", "arithmetic")) / str(doc.get("method", "lora"))
        )
        folder = folder / str(doc.get("name", "tiny"))
        if raw is not None or at is not None:
            folder = tmp_path.joinpath("submissions", *(at or ("arithmetic", "lora", "tiny")))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "manifest.json"
        path.write_bytes(raw if raw is not None else json.dumps(doc).encode())
        return path

    return write


DELETE = object()


# ---- the real `arithmetic` task (pinned SmolLM2 GGUF, real data) --------------------------------

REPO = Path(__file__).parent.parent


def real_lora_folder(root: Path) -> Path:
    """The committed lora/default manifest, cut to 4 steps, at its proper path under `root`."""
    folder = root / "submissions" / "arithmetic" / "lora" / "default"
    folder.mkdir(parents=True)
    doc = json.loads((REPO / "submissions/arithmetic/lora/default/manifest.json").read_text())
    doc["training"] = {"max_steps": 4, "eval_steps": 2, "batch_size": 4}
    (folder / "manifest.json").write_text(json.dumps(doc))
    return folder


@dataclass(frozen=True)
class RealRun:
    cache: Path
    folder: Path
    path: Path
    record: RunRecord


@pytest.fixture(scope="session")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> RealRun:
    """One real 4-step run of lora/default, seed 0, as `peftrepro run` does it (a fresh process).
    Its cache is shared by every test of the real task, so the model is dequantized (~20 s) and the
    base model measured (~30 s) once per session, not once per test."""
    from peftrepro.executors.batch import run_in_child
    from peftrepro.manifest import resolve
    from peftrepro.tasks.arithmetic import ArithmeticTask

    cache = tmp_path_factory.mktemp("real-cache")
    folder = real_lora_folder(tmp_path_factory.mktemp("real-run"))
    saved = (dict(tasks._FACTORIES), dict(tasks._INSTANCES))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PEFTREPRO_CACHE", str(cache))
        tasks.register("arithmetic", ArithmeticTask)
        try:
            first, path = run_in_child(resolve(folder / "manifest.json"), seed=0)
        finally:
            tasks._FACTORIES.clear(), tasks._FACTORIES.update(saved[0])
            tasks._INSTANCES.clear(), tasks._INSTANCES.update(saved[1])
    assert first.status == "success", first.record.error
    return RealRun(cache, folder, path, first.record)


@pytest.fixture
def real_task(real_run: RealRun, monkeypatch: pytest.MonkeyPatch) -> RealRun:
    """This test runs the real `arithmetic` task on the session's shared cache."""
    from peftrepro.tasks.arithmetic import ArithmeticTask

    monkeypatch.setenv("PEFTREPRO_CACHE", str(real_run.cache))
    tasks.register("arithmetic", ArithmeticTask)
    return real_run
