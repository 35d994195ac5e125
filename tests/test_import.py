"""`peftrepro import`: every public-comparison experiment in ../shared/reference converts (or says
exactly why not), with their shallow merge reproduced and the differences named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from peftrepro.cli import main
from peftrepro.errors import NotConvertible
from peftrepro.importer import convert, find_experiments
from peftrepro.manifest import resolve

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "peft-method-comparison"
needs_reference = pytest.mark.skipif(
    not REFERENCE.exists(), reason="../shared/reference is not beside the checkout"
)


@needs_reference
def test_every_reference_experiment_converts_or_says_why(tmp_path: Path) -> None:
    folders = find_experiments(REFERENCE)
    assert len(folders) == 104
    result = CliRunner().invoke(main, ["import", str(REFERENCE), "--submissions", str(tmp_path)])
    lines = result.output.splitlines()
    imported = [line for line in lines if line.startswith("imported ")]
    refused = [line for line in lines if line.startswith("cannot import: ")]
    assert not refused and len(imported) == 104, result.output[-2000:]
    assert sum(" MetaMathQA/" in line for line in imported) == 71
    assert sum(" image-gen/" in line for line in imported) == 33
    written = sorted(tmp_path.glob("*/*/*/manifest.json"))
    assert len(written) == 104
    for path in written:  # each one passes the full manifest checks where it was written
        resolve(path)
    assert result.exit_code == 0 and "104 of 104 experiments converted" in result.output


@needs_reference
def test_their_shallow_merge_is_reproduced_and_named() -> None:
    ia3 = convert(REFERENCE / "MetaMathQA" / "experiments" / "ia3" / "llama-3.2-3B-lr_0.001")
    # {"optimizer_kwargs": {"lr": 1e-3}} replaced the whole default dict there: AdamW's own 0.01 ran
    assert ia3.manifest["training"]["optimizer_kwargs"] == {"lr": 1e-3, "weight_decay": 0.01}
    assert any("drops the default optimizer_kwargs.weight_decay 0.1" in n for n in ia3.notes)
    lora = convert(REFERENCE / "MetaMathQA" / "experiments" / "lora" / "llama-3.2-3B-rank32")
    assert "training" not in lora.manifest  # no training_params.json: the defaults, as theirs
    assert lora.manifest["peft_config"]["r"] == 32 and lora.manifest["method"] == "lora"


@needs_reference
def test_optimizer_methods_get_their_own_families(tmp_path: Path) -> None:
    base = REFERENCE / "MetaMathQA" / "experiments" / "lora"
    fa = convert(base / "llama-3.2-3B-rank32-lorafa")
    assert fa.manifest["method"] == "lora-fa"
    assert fa.manifest["training"]["optimizer_type"] == "lora-fa"
    rie = convert(base / "llama-3.2-3B-rank32-riemannian")
    assert rie.manifest["method"] == "lora-riemannian"
    assert rie.manifest["training"]["optimizer_kwargs"]["reg"] == 0.01
    dora = convert(base / "llama-3.2-3B-rank32-dora")
    assert dora.manifest["method"] == "dora"


def _experiment(root: Path, adapter: str | None, params: dict | None = None) -> Path:
    track = root / "MetaMathQA"
    folder = track / "experiments" / "lora" / "mine"
    folder.mkdir(parents=True)
    (track / "default_training_params.json").write_text(
        json.dumps(
            {"model_id": "meta-llama/Llama-3.2-3B", "optimizer_kwargs": {"lr": 1e-4, "weight_decay": 0.1}}
        )
    )
    if adapter is not None:
        (folder / "adapter_config.json").write_text(adapter)
    if params is not None:
        (folder / "training_params.json").write_text(json.dumps(params))
    return folder


def test_hostile_or_broken_experiments_are_one_line_refusals(tmp_path: Path) -> None:
    broken = _experiment(tmp_path / "a", "{not json")
    result = CliRunner().invoke(main, ["import", str(broken), "--submissions", str(tmp_path / "out")])
    assert result.exit_code == 2 and "cannot import: " in result.output and "unreadable JSON" in result.output
    assert not (tmp_path / "out").exists()

    remote = _experiment(tmp_path / "b", json.dumps({"peft_type": "LORA", "r": 8, "trust_remote_code": True}))
    refused = CliRunner().invoke(main, ["import", str(remote), "--submissions", str(tmp_path / "out")])
    assert refused.exit_code == 2 and "trust_remote_code" in refused.output
    assert not (tmp_path / "out").exists()

    fixed = _experiment(
        tmp_path / "c", json.dumps({"peft_type": "LORA", "r": 8}), {"query_template": "Q: {query}\nA:"}
    )
    with pytest.raises(NotConvertible, match="fixes query_template for every submission"):
        convert(fixed)

    missing = CliRunner().invoke(main, ["import", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "no such folder" in missing.output and "Traceback" not in missing.output


def test_an_existing_submission_is_never_overwritten(tmp_path: Path) -> None:
    folder = _experiment(tmp_path, json.dumps({"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}))
    out = tmp_path / "submissions"
    first = CliRunner().invoke(main, ["import", str(folder), "--submissions", str(out)])
    assert first.exit_code == 0, first.output
    path = out / "metamathqa" / "lora" / "mine" / "manifest.json"
    before = path.read_bytes()
    again = CliRunner().invoke(main, ["import", str(folder), "--submissions", str(out)])
    assert again.exit_code == 2 and "never overwritten" in again.output
    assert path.read_bytes() == before
