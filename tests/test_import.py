"""`peftrepro import`: every public-comparison experiment in ../shared/reference converts (or says
exactly why not), with their shallow merge reproduced and the differences named."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from peftrepro import schemas
from peftrepro.cli import main
from peftrepro.errors import NotConvertible
from peftrepro.importer import convert, find_experiments
from peftrepro.manifest import resolve

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "peft-method-comparison"
COMMIT = "5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40"  # of huggingface/peft, the reference's (its README)
needs_reference = pytest.mark.skipif(
    not REFERENCE.exists(), reason="../shared/reference is not beside the checkout"
)


@needs_reference
def test_every_reference_experiment_converts_or_says_why(tmp_path: Path) -> None:
    folders = find_experiments(REFERENCE)
    assert len(folders) == 104
    result = CliRunner().invoke(
        main, ["import", str(REFERENCE), "--submissions", str(tmp_path), "--commit", COMMIT]
    )
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
    # and every published result file as a claim beside its manifest
    assert "94 of 94 result files imported as claims" in result.output
    claims = sorted(tmp_path.glob("*/*/*/claims/*.json"))
    assert len(claims) == 94
    assert sum(c.parts[-5] == "metamathqa" for c in claims) == 63
    for path in claims:
        doc = json.loads(path.read_bytes())
        schemas.check(doc, schemas.CLAIM, str(path))
        source = REFERENCE / Path(doc["source"]["path"]).relative_to("method_comparison")
        assert doc["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert doc["submission"]["manifest_sha256"] == resolve(path.parent.parent / "manifest.json").sha256
    again = CliRunner().invoke(
        main, ["import", str(REFERENCE), "--submissions", str(tmp_path), "--commit", COMMIT]
    )
    assert again.exit_code == 0 and again.output.count("already imported") == 104 + 94, again.output[-1000:]


@needs_reference
def test_a_claim_holds_what_the_file_says_and_nothing_else(tmp_path: Path) -> None:
    track = _track(tmp_path)
    out = tmp_path / "submissions"
    result = CliRunner().invoke(
        main, ["import", str(track / "results"), "--submissions", str(out), "--commit", COMMIT]
    )
    assert result.exit_code == 0, result.output
    (claim,) = (out / "metamathqa/lora/llama-3.2-3b-rank32/claims").iterdir()
    doc = json.loads(claim.read_bytes())
    theirs = json.loads((track / "results" / RESULT).read_bytes())
    last = theirs["train_info"]["metrics"][-1]
    m = doc["metrics"]
    assert m["test_accuracy"] == last["test accuracy"] and m["forgetting_same_position"] == last["forgetting"]
    assert m["peak_memory_bytes"] == theirs["train_info"]["accelerator_memory_max"]
    assert m["trainable_params"] == theirs["train_info"]["num_trainable_params"]
    assert "forgetting" not in m and "drift" not in m  # their forgetting is the same-position one
    assert doc["environment"]["accelerator"] == "NVIDIA L40S"
    assert doc["source"] == {
        "repository": "huggingface/peft",
        "commit": COMMIT,
        "path": f"method_comparison/MetaMathQA/results/{RESULT}",
        "sha256": hashlib.sha256((track / "results" / RESULT).read_bytes()).hexdigest(),
    }
    assert "(and its manifest)" in result.output  # the experiment was not in the tree yet


@needs_reference
def test_bad_result_files_are_one_line_refusals_that_write_nothing(tmp_path: Path) -> None:
    track = _track(tmp_path)
    good = json.loads((track / "results" / RESULT).read_bytes())
    failed = json.loads(json.dumps(good))
    failed["train_info"]["status"] = "failed"
    typed = json.loads(json.dumps(good))
    typed["train_info"]["num_trainable_params"] = "many"
    nan = json.loads(json.dumps(good))
    nan["train_info"]["metrics"][-1]["test accuracy"] = float("nan")
    ghost = json.loads(json.dumps(good))
    ghost["run_info"]["experiment_name"] = "lora/no-such-experiment"
    other = json.loads(json.dumps(good))
    other["run_info"]["peft_config"]["r"] = 16
    cases = {
        b'{"run_info": {"experiment_name": "lora/llama': "not valid JSON",
        json.dumps(nan).encode(): "/train_info/metrics/20/test accuracy: not a finite number",
        b'{"pad": "' + b"x" * 100_000_000 + b'"}': "at most 1000000 are accepted",
        json.dumps(typed).encode(): "/train_info/num_trainable_params: expected a number, got str",
        json.dumps(failed).encode(): "/train_info/status: 'failed'; only a successful run claims figures",
        json.dumps(ghost).encode(): "its experiment lora/no-such-experiment does not exist",
        json.dumps(other).encode(): "the config it ran differs from",
    }
    out = tmp_path / "submissions"
    for data, message in cases.items():
        (track / "results" / RESULT).write_bytes(data)
        result = CliRunner().invoke(
            main, ["import", str(track / "results" / RESULT), "--submissions", str(out), "--commit", COMMIT]
        )
        refusals = [line for line in result.output.splitlines() if line.startswith("cannot import: ")]
        assert result.exit_code == 2 and len(refusals) == 1 and message in refusals[0], result.output
        assert "Traceback" not in result.output and not out.exists()
    assert "peft_config.r (ours 32, theirs 16)" in refusals[0]
    (track / "results" / RESULT).write_bytes(json.dumps(good).encode())
    no_commit = CliRunner().invoke(main, ["import", str(track / "results"), "--submissions", str(out)])
    assert no_commit.exit_code == 2 and "needs --commit" in no_commit.output and not out.exists()


RESULT = "lora--llama-3.2-3B-rank32.json"


def _track(tmp_path: Path) -> Path:
    """A MetaMathQA track holding one experiment (LoRA rank 32) and its published result."""
    track = tmp_path / "method_comparison" / "MetaMathQA"
    shutil.copytree(
        REFERENCE / "MetaMathQA" / "experiments" / "lora" / "llama-3.2-3B-rank32",
        track / "experiments" / "lora" / "llama-3.2-3B-rank32",
    )
    shutil.copy(REFERENCE / "MetaMathQA" / "default_training_params.json", track)
    (track / "results").mkdir()
    shutil.copy(REFERENCE / "MetaMathQA" / "results" / RESULT, track / "results")
    return track


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
    assert (
        missing.exit_code == 2
        and "no such file or folder" in missing.output
        and "Traceback" not in missing.output
    )


def test_an_existing_submission_is_never_overwritten(tmp_path: Path) -> None:
    folder = _experiment(tmp_path, json.dumps({"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}))
    out = tmp_path / "submissions"
    first = CliRunner().invoke(main, ["import", str(folder), "--submissions", str(out)])
    assert first.exit_code == 0, first.output
    path = out / "metamathqa" / "lora" / "mine" / "manifest.json"
    before = path.read_bytes()
    again = CliRunner().invoke(main, ["import", str(folder), "--submissions", str(out)])
    assert again.exit_code == 0 and "already imported" in again.output  # the same manifest: nothing to do
    path.write_bytes(before.replace(b'"q_proj"', b'"k_proj"'))
    edited = path.read_bytes()
    again = CliRunner().invoke(main, ["import", str(folder), "--submissions", str(out)])
    assert again.exit_code == 2 and "never overwritten" in again.output
    assert path.read_bytes() == edited


@needs_reference
def test_a_published_claim_is_a_row_of_its_own_kind_on_the_page(tmp_path: Path) -> None:
    """The page shows an imported result as `published (not re-run)`, with its figures, its source and
    accelerator, off the front; a claim edited by hand stops counting and is listed."""
    from peftrepro.pages import render

    track = _track(tmp_path)
    out = tmp_path / "submissions"
    assert (
        CliRunner()
        .invoke(main, ["import", str(track), "--submissions", str(out), "--commit", COMMIT])
        .exit_code
        == 0
    )
    files, problems = render(out, tmp_path / "leaderboard")
    page = files["metamathqa.md"].decode()
    row = next(
        line for line in page.splitlines() if "lora/llama-3.2-3b-rank32]" in line and "| published" in line
    )
    assert "| published (not re-run) | 0.478 |" in row and "★" not in row and problems == []
    assert (
        "published 0.478 on NVIDIA L40S (huggingface/peft@5d602fdbff04, lora--llama-3.2-3B-rank32.json)"
        in page
    )
    (claim,) = (out / "metamathqa/lora/llama-3.2-3b-rank32/claims").iterdir()
    doc = json.loads(claim.read_bytes())
    doc["submission"]["manifest_sha256"] = "0" * 64  # a claim moved onto another manifest
    claim.write_text(json.dumps(doc))
    files, problems = render(out, tmp_path / "leaderboard")
    assert "published (not re-run)" not in files["metamathqa.md"].decode()
    assert problems == [f"{claim}: a claim about an earlier manifest or task version: not shown"]
