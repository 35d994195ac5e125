"""The one definition of every metric a run record carries.

The runner writes these keys, the verifier compares them by `tolerance`, and the leaderboard
reads `direction` and `label`. Adding a metric means adding one row here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Direction = Literal["higher", "lower", "none"]
Tolerance = Literal["exact", "score", "relative", "informational"]


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    meaning: str
    direction: Direction
    unit: str
    tolerance: Tolerance


METRICS: tuple[Metric, ...] = (
    Metric(
        "test_accuracy",
        "test acc.",
        "exact-match accuracy on the task's held-out test set",
        "higher",
        "fraction",
        "score",
    ),
    Metric(
        "base_test_accuracy",
        "base acc.",
        "the same test set scored by the base model, no adapter",
        "none",
        "fraction",
        "score",
    ),
    Metric(
        "test_token_accuracy",
        "token acc.",
        "share of each held-out problem's worked-solution tokens that the model predicts (greedy, given "
        "the gold prefix), averaged over problems",
        "higher",
        "fraction",
        "score",
    ),
    Metric(
        "base_test_token_accuracy",
        "base token acc.",
        "the same test set scored by the base model, no adapter",
        "none",
        "fraction",
        "score",
    ),
    Metric(
        "test_concept_score",
        "concept score",
        "share of samples generated for the new concept (fixed seeds) that the evaluator assigns to it",
        "higher",
        "fraction",
        "score",
    ),
    Metric(
        "base_test_concept_score",
        "base score",
        "the same samples drawn from the base model, no adapter",
        "none",
        "fraction",
        "score",
    ),
    Metric(
        "test_outcomes",
        "per-item outcomes",
        "the headline score's outcome on each test item, in the task's fixed order (a bit per item, or a "
        "score per sample), with their sha256: intervals, paired tests and tiers are computed from these",
        "none",
        "outcomes",
        "exact",
    ),
    Metric(
        "valid_curve",
        "valid curve",
        "the validation score every `eval_steps` training steps",
        "none",
        "fraction",
        "informational",
    ),
    Metric(
        "forgetting",
        "forgetting",
        "mean per-token cross-entropy on the task's general-text set, after training minus before",
        "lower",
        "nats/token",
        "score",
    ),
    Metric(
        "general_ce_before",
        "CE before",
        "mean per-token cross-entropy on the general-text set, base model",
        "none",
        "nats/token",
        "score",
    ),
    Metric(
        "general_ce_after",
        "CE after",
        "the same cross-entropy with the trained adapter",
        "none",
        "nats/token",
        "score",
    ),
    Metric(
        "forgetting_same_position",
        "forgetting (public def.)",
        "forgetting as the public MetaMathQA harness computes it: each logit scored against the token "
        "at its own position (no shift); for comparison with its published figures only",
        "lower",
        "nats/token",
        "score",
    ),
    Metric(
        "drift",
        "drift",
        "how far the samples of the known classes move in the evaluator's feature space with the "
        "adapter (mean 1 - cosine, same seeds): 0 unchanged, 1 orthogonal",
        "lower",
        "fraction",
        "score",
    ),
    Metric(
        "samples_sha256",
        "samples sha256",
        "sha256 of the PNG grid of samples saved next to the record (image tasks)",
        "none",
        "hex",
        "exact",
    ),
    Metric(
        "train_loss_final",
        "final loss",
        "mean training loss over the last eval window",
        "lower",
        "loss",
        "score",
    ),
    Metric(
        "trainable_params",
        "trainable",
        "parameters training updates (requires_grad once the optimizer is built)",
        "lower",
        "count",
        "exact",
    ),
    Metric("total_params", "total params", "all parameters of the PEFT model", "none", "count", "exact"),
    Metric(
        "adapter_bytes",
        "adapter size",
        "size of the saved adapter weights (safetensors)",
        "lower",
        "bytes",
        "exact",
    ),
    Metric(
        "adapter_sha256", "adapter sha256", "sha256 of the saved adapter weights file", "none", "hex", "exact"
    ),
    Metric(
        "peak_memory_bytes",
        "peak mem.",
        "peak accelerator reserved memory during training (CPU tracks: process RSS)",
        "lower",
        "bytes",
        "relative",
    ),
    Metric(
        "memory_avg_bytes", "avg mem.", "mean of the per-step memory samples", "lower", "bytes", "relative"
    ),
    Metric(
        "memory_p99_bytes",
        "p99 mem.",
        "99th percentile of the per-step memory samples",
        "lower",
        "bytes",
        "relative",
    ),
    Metric(
        "train_seconds",
        "train time",
        "wall time of the training steps only (no loading, no eval)",
        "lower",
        "seconds",
        "informational",
    ),
    Metric("total_seconds", "total time", "wall time of the whole run", "none", "seconds", "informational"),
    Metric(
        "tokens_per_second",
        "tokens/s",
        "training tokens (padding excluded) per second of train_seconds",
        "higher",
        "tokens/s",
        "informational",
    ),
    Metric(
        "images_per_second",
        "images/s",
        "training images per second of train_seconds (image tasks)",
        "higher",
        "images/s",
        "informational",
    ),
    Metric(
        "steps_completed",
        "steps",
        "optimizer steps completed (failed and cancelled runs too)",
        "none",
        "count",
        "exact",
    ),
)

METRICS_BY_KEY: dict[str, Metric] = {m.key: m for m in METRICS}


@dataclass(frozen=True)
class Check:
    """A structural check a run record carries under `checks` (run by checks.py)."""

    key: str
    label: str
    code: str  # the leaderboard's one-letter mark
    meaning: str


CHECKS: tuple[Check, ...] = (
    Check(
        "identity_at_init",
        "identity at init",
        "I",
        "a fresh adapter leaves the base model's outputs unchanged "
        "(I= bit for bit, I≈ within float rounding, I○ not an identity by design, e.g. prompt learning)",
    ),
    Check(
        "disable_restores_base", "disable restores base", "D", "the disabled adapter gives the base outputs"
    ),
    Check(
        "only_declared_change",
        "only declared parameters change",
        "M",
        "a training burst changes exactly the adapter's parameters; base weights keep their loaded bytes",
    ),
    Check(
        "round_trip",
        "save/load round trip",
        "R",
        "the trained adapter reloads into a fresh base with the same outputs and re-saves to the same bytes "
        "(R≈: outputs within float rounding, where the saved adapter drops AdaLoRA's pruned ranks, which "
        "are checked to be exactly zero)",
    ),
)
# A check's status -> the mark after its code on the pages ("passed" has none).
CHECK_MARKS = {"exact": "=", "approximate": "≈", "not_identity_by_design": "○"}

# The headline scores a record's `test_outcomes` average to (records.parse_record checks it).
HEADLINE_SCORES = ("test_accuracy", "test_token_accuracy", "test_concept_score")

RELATIVE_BAND = 0.10  # memory: a re-run on the same accelerator class may differ by this fraction


@dataclass(frozen=True)
class VerificationPolicy:
    """How a task's re-runs are judged. Each task states its own, from measured run-to-run spread.

    `bit_exact`: in the same exact environment (equal `environment_sha256`) every `score` metric
    must be equal, as `exact` ones are; `score_band` (absolute) is used only when it is False.
    `nondeterministic`: `exact` metrics this task cannot reproduce (adapter bytes on GPUs), judged
    as informational instead.
    """

    bit_exact: bool
    score_band: float = 0.0
    relative_band: float = RELATIVE_BAND
    nondeterministic: tuple[str, ...] = ()

    def tolerance(self, metric: Metric) -> Tolerance:
        if metric.key in self.nondeterministic or (metric.unit == "outcomes" and not self.bit_exact):
            return "informational"  # a score within its band may still flip single items
        return metric.tolerance

    def describe(self) -> str:
        if self.bit_exact:
            scores = "scores and adapter bytes identical (bit-exact) in the same environment"
        else:
            scores = f"scores within ±{self.score_band:g} (absolute)"
        return f"{scores}; memory within ±{self.relative_band:.0%} on the same accelerator class"


def prior_format(key: str, digits: int = 3) -> str:
    """How a cost-elsewhere metric is printed: signed where it can fall below zero (CE
    differences), plain for fractions."""
    return f"{'' if METRICS_BY_KEY[key].unit == 'fraction' else '+'}.{digits}f"
