"""Verifying a published claim: re-runs of its manifest here, judged against the figures a result
file published, with a score band from the re-runs' own seed spread (compare.judge_published)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import scipy.stats
from click.testing import CliRunner

from peftrepro.cli import main
from peftrepro.collect import load_submission
from peftrepro.compare import NOT_COMPARABLE, NOT_REPRODUCED, REPRODUCED, judge_published, prediction_band
from peftrepro.jsonio import pretty_bytes
from peftrepro.manifest import resolve
from peftrepro.metrics import VerificationPolicy
from peftrepro.records import RunRecord, parse_record
from tests.golden_tree import published_claim
from tests.synthetic import TESTER, manifest_doc, record, run_id, sign_file, trust, write_manifest
from tests.test_metamathqa import MANIFEST
from tests.tiny import register_tiny_metamathqa

POLICY = VerificationPolicy(bit_exact=False, score_band=0.02, nondeterministic=("adapter_sha256",))


def reruns(
    tmp_path: Path, scores: list[float], accelerator: str | None = None, **metrics: Any
) -> list[RunRecord]:
    m = write_manifest(tmp_path / "submissions", manifest_doc("lora", "r8", {"peft_type": "LORA"}))
    out = []
    for seed, score in enumerate(scores):
        doc = record(m, seed, run_id(1, seed), test_accuracy=score, **metrics)
        if accelerator is not None:
            doc["environment"]["accelerator"] = {"kind": "cuda", "name": accelerator, "count": 1}
        out.append(parse_record(doc, "synthetic"))
    return out


def test_the_band_is_a_prediction_interval_for_one_more_run_with_the_task_band_as_floor() -> None:
    scores = [0.40, 0.46, 0.52]
    band, how = prediction_band(scores, 0.02)
    s = 0.06  # sample std of the three
    assert band == pytest.approx(scipy.stats.t.ppf(0.975, 2) * s * math.sqrt(1 + 1 / 3))  # 0.297
    assert "n 3" in how
    assert prediction_band([0.5, 0.5, 0.5], 0.02)[0] == 0.02  # no spread: the task's stated band
    assert prediction_band([0.5], 0.02) == (0.02, "band 0.02 (the task's: one re-run has no spread)")


def test_scores_inside_the_band_reproduce_and_memory_on_another_gpu_is_not_compared(tmp_path: Path) -> None:
    runs = reruns(tmp_path, [0.47, 0.48, 0.49], accelerator="NVIDIA H200")
    claim = {"test_accuracy": 0.478, "trainable_params": 2_442_240, "peak_memory_bytes": 20 * 2**30}
    j = judge_published(claim, "NVIDIA L40S", runs, POLICY)
    assert j.verdict == REPRODUCED
    by = {c.metric: c for c in j.comparisons}
    assert by["test_accuracy"].outcome == "match" and by["trainable_params"].outcome == "match"
    assert by["peak_memory_bytes"].outcome == "not_comparable"
    assert j.reasons == ["memory not compared: claimed on NVIDIA L40S, measured on NVIDIA H200"]
    # the same GPU: memory is compared, here 20 GiB claimed against 1.8 GB measured
    j = judge_published(claim, "NVIDIA H200", runs, POLICY)
    assert j.verdict == NOT_REPRODUCED and j.reasons[0].startswith("peak_memory_bytes: claimed")


def test_a_score_outside_the_band_or_another_parameter_count_is_not_reproduced(tmp_path: Path) -> None:
    runs = reruns(tmp_path, [0.40, 0.41, 0.42])
    j = judge_published({"test_accuracy": 0.478}, "NVIDIA L40S", runs, POLICY)
    assert j.verdict == NOT_REPRODUCED and j.reasons[0].startswith("test_accuracy: claimed 0.478")
    j = judge_published({"test_accuracy": 0.41, "trainable_params": 9_175_040}, "NVIDIA L40S", runs, POLICY)
    assert j.verdict == NOT_REPRODUCED and "trainable_params" in j.reasons[0]
    # a wide seed spread widens the band: the same 0.478 is then inside it
    wide = reruns(tmp_path / "w", [0.30, 0.42, 0.54])
    assert judge_published({"test_accuracy": 0.478}, "NVIDIA L40S", wide, POLICY).verdict == REPRODUCED
    # their file size and loss are another toolkit's: shown, never judged
    j = judge_published(
        {"test_accuracy": 0.41, "adapter_bytes": 1, "train_loss_final": 9.0}, "x", runs, POLICY
    )
    assert j.verdict == REPRODUCED
    assert {c.metric: c.outcome for c in j.comparisons}["adapter_bytes"] == "informational"
    # nothing to score against: not comparable; a failed re-run: not reproduced
    assert judge_published({"peak_memory_bytes": 1}, "x", runs, POLICY).verdict == NOT_COMPARABLE
    failed = reruns(tmp_path / "f", [0.4])
    failed[0] = parse_record(
        record(
            resolve(tmp_path / "f/submissions/arithmetic/lora/r8/manifest.json"),
            0,
            run_id(2, 0),
            "failed",
            "boom",
        ),
        "synthetic",
    )
    assert judge_published({"test_accuracy": 0.4}, "x", failed, POLICY).verdict == NOT_REPRODUCED


@pytest.fixture
def tiny_claimed(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    """The metamathqa stand-in manifest with a published claim that it cannot meet (accuracy 1.0)."""
    register_tiny_metamathqa(tmp_path_factory.getbasetemp() / "tiny-metamathqa")
    path = tmp_path / "submissions" / "metamathqa" / "lora" / "tiny" / "manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(MANIFEST))
    claim = published_claim(resolve(path), "lora--tiny", test_accuracy=1.0)
    del claim["metrics"]["forgetting_same_position"]
    claims = path.parent / "claims"
    claims.mkdir()
    (claims / f"{claim['claim_id']}.json").write_bytes(pretty_bytes(claim))
    return path.parent


def test_verify_on_a_published_claim_needs_a_gpu_and_says_so_in_one_line(
    tiny_claimed: Path, monkeypatch
) -> None:
    monkeypatch.delenv("PEFTREPRO_ALLOW_CPU", raising=False)
    result = CliRunner().invoke(main, ["verify", str(tiny_claimed)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "needs a CUDA GPU" in result.output
    assert not (tiny_claimed / "runs").exists() and not (tiny_claimed / "verifications").exists()


def test_verify_re_runs_the_manifest_and_judges_the_claim_the_page_shows_it(
    tiny_claimed: Path, monkeypatch
) -> None:
    monkeypatch.setenv("PEFTREPRO_ALLOW_CPU", "1")
    result = CliRunner().invoke(main, ["verify", str(tiny_claimed), "--seed", "0"])
    assert result.exit_code == 1, result.output  # their 1.0 is not what the stand-in scores
    (record_path,) = (tiny_claimed / "runs").glob("*.json")  # the re-run is an ordinary record too
    (path,) = (tiny_claimed / "verifications" / "published").glob("*.json")
    v = json.loads(path.read_text())
    assert v["verdict"] == "not_reproduced" and v["published"]["accelerator"] == "NVIDIA L40S"
    assert v["reruns"][0]["run_id"] == record_path.stem
    assert "test_accuracy: claimed 1.0" in v["reasons"][0]
    assert "verdict: NOT_REPRODUCED" in result.output

    sub = load_submission(tiny_claimed)
    [claim] = sub.published
    assert v["published"]["sha256"] == claim.sha256  # bound to the claim file's bytes
    found = sub.published_verifications[claim.data["claim_id"]]
    assert found.signer is None  # unsigned: shown, not counted
    root = tiny_claimed.parents[2]
    result = CliRunner().invoke(
        main, ["leaderboard", "--submissions", str(root), "--out", str(root.parent / "lb")]
    )
    assert result.exit_code == 0, result.output
    page = (root.parent / "lb" / "metamathqa.md").read_text()
    assert (
        "re-run here on cpu (1 seed): not reproduced" in page
        and "not counted until a listed verifier" in page
    )

    # signed by a listed verifier: it counts
    trust(root)
    sign_file(path)
    assert load_submission(tiny_claimed).published_verifications[claim.data["claim_id"]].signer == TESTER

    # a verdict typed over the numbers is caught: the page re-judges from the re-runs it carries
    v["verdict"] = "reproduced"
    forged = path.with_name(path.stem[:-6] + "ffffff.json")
    v["verification_id"] = forged.stem
    forged.write_bytes(pretty_bytes(v))
    sub = load_submission(tiny_claimed)
    assert sub.published_verifications[claim.data["claim_id"]].path == path
    assert any("says reproduced but its own re-runs give not_reproduced" in why for _, why in sub.ignored), (
        sub.ignored
    )
