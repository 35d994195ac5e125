"""The tolerance policy, case by case, on synthetic records (no runs)."""

from __future__ import annotations

import copy

import pytest

from peftrepro.compare import Judgement
from peftrepro.compare import judge as judge_records
from peftrepro.metrics import VerificationPolicy
from peftrepro.records import RunRecord
from tests.synthetic import manifest_doc, record, run_id, write_manifest


def judge(claim: dict, rerun: dict, policy: VerificationPolicy) -> Judgement:
    """The verdict on two records in their JSON form (as the tests build them)."""
    return judge_records(RunRecord.from_json(claim), RunRecord.from_json(rerun), policy)


BIT_EXACT = VerificationPolicy(bit_exact=True)
BANDED = VerificationPolicy(bit_exact=False, score_band=0.02, nondeterministic=("adapter_sha256",))


@pytest.fixture
def claim(tmp_path) -> dict:
    m = write_manifest(tmp_path, manifest_doc("lora", "x", {"peft_type": "LORA", "r": 8}))
    return record(m, 0, run_id(0, 0))


def rerun_of(claim: dict, metrics: dict | None = None, env: dict | None = None) -> dict:
    r = copy.deepcopy(claim)
    r["metrics"].update(metrics or {})
    r["environment"].update(env or {})
    return r


def test_identical_rerun_is_reproduced(claim) -> None:
    j = judge(claim, rerun_of(claim), BIT_EXACT)
    assert j.verdict == "reproduced" and not j.reasons and not j.environment_diff


@pytest.mark.parametrize(
    ("factor", "verdict"), [(1.09, "reproduced"), (0.91, "reproduced"), (1.11, "not_reproduced")]
)
def test_memory_is_judged_relative_to_the_claim(claim, factor, verdict) -> None:
    mem = int(claim["metrics"]["peak_memory_bytes"] * factor)
    assert judge(claim, rerun_of(claim, {"peak_memory_bytes": mem}), BIT_EXACT).verdict == verdict


def test_memory_on_another_accelerator_class_is_not_comparable(claim) -> None:
    gpu = {
        "accelerator": {
            "kind": "cuda",
            "name": "NVIDIA H100",
            "count": 1,
            "memory_bytes": 8e10,
            "driver": "x",
        }
    }
    j = judge(claim, rerun_of(claim, {"peak_memory_bytes": 1}, gpu), BANDED)
    assert j.verdict == "not_comparable" and "peak_memory_bytes" in j.reasons[0]
    assert {d["field"] for d in j.environment_diff} >= {"accelerator.kind", "accelerator.name"}


def test_bit_exact_track_in_another_environment_is_not_comparable(claim) -> None:
    other = {"torch": {"version": "2.14.1+cpu", "cuda": None, "cudnn": None}, "environment_sha256": "f" * 64}
    j = judge(claim, rerun_of(claim, {"test_accuracy": 0.49}, other), BIT_EXACT)
    assert j.verdict == "not_comparable" and "torch" in j.reasons[0]
    same_env = judge(claim, rerun_of(claim, {"test_accuracy": 0.49}), BIT_EXACT)
    assert same_env.verdict == "not_reproduced" and same_env.reasons[0].startswith(
        "test_accuracy: claimed 0.5"
    )


@pytest.mark.parametrize(
    ("delta", "verdict"), [(0.019, "reproduced"), (-0.02, "reproduced"), (0.03, "not_reproduced")]
)
def test_score_band_on_a_non_bit_exact_track(claim, delta, verdict) -> None:
    rerun = rerun_of(claim, {"test_accuracy": 0.5 + delta, "adapter_sha256": "b" * 64})
    j = judge(claim, rerun, BANDED)
    assert j.verdict == verdict
    outcome = {c.metric: c.outcome for c in j.comparisons}
    assert outcome["adapter_sha256"] == "informational"  # declared nondeterministic on this track


def test_exact_metrics_are_exact_everywhere(claim) -> None:
    j = judge(claim, rerun_of(claim, {"trainable_params": claim["metrics"]["trainable_params"] + 1}), BANDED)
    assert j.verdict == "not_reproduced" and "trainable_params" in j.reasons[0]


def test_failed_rerun_is_not_reproduced(claim) -> None:
    failed = rerun_of(claim)
    failed.update(status="failed", error={"type": "RuntimeError", "message": "out of memory"})
    j = judge(claim, failed, BIT_EXACT)
    assert j.verdict == "not_reproduced" and j.reasons == ["the re-run failed: out of memory"]


def test_times_are_reported_never_judged(claim) -> None:
    j = judge(claim, rerun_of(claim, {"train_seconds": 1000.0, "tokens_per_second": 1.0}), BIT_EXACT)
    assert j.verdict == "reproduced"
    assert {c.metric: c.detail for c in j.comparisons}["train_seconds"] == "ratio 10.000"


def test_a_claim_cannot_show_checks_its_rerun_fails(claim) -> None:
    rerun = rerun_of(claim)
    rerun["checks"]["identity_at_init"] = {
        "status": "failed",
        "detail": "changed by 1.59",
        "max_abs_diff": 1.59,
    }
    j = judge(claim, rerun, BIT_EXACT)
    assert j.verdict == "not_reproduced"
    [c] = [c for c in j.comparisons if c.metric == "checks"]
    assert c.outcome == "mismatch" and c.detail == "differ: identity_at_init"


def test_a_claim_made_before_the_checks_is_judged_on_its_metrics(claim) -> None:
    old = copy.deepcopy(claim)
    del old["checks"]
    j = judge(old, rerun_of(claim), BIT_EXACT)
    assert j.verdict == "reproduced"
    [c] = [c for c in j.comparisons if c.metric == "checks"]
    assert c.outcome == "informational" and c.detail == "the claim predates the checks"
