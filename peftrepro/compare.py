"""Judge a re-run against a claimed record: metric by metric under the task's tolerance policy,
plus the environment fields that differ. Pure functions of two records; no files, no runs.

The leaderboard calls `judge` too, on the re-run a verification carries, so a verdict typed by
hand into a verification file does not count unless it follows from the numbers.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

import scipy.special

from peftrepro.environment import job_start
from peftrepro.metrics import METRICS, Metric, VerificationPolicy
from peftrepro.records import RunRecord
from peftrepro.schemas import show

REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE = "reproduced", "not_reproduced", "not_comparable"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, NOT_COMPARABLE)
FLOAT_SLACK = 1e-12  # a band edge must not depend on how 0.5 - 0.48 rounds


@dataclass(frozen=True)
class Comparison:
    metric: str
    tolerance: str  # the class applied: exact | score | relative | informational
    claimed: Any
    measured: Any
    outcome: str  # match | mismatch | not_comparable | informational
    detail: str  # the difference, in words people can check ("-0.0333, band 0")


@dataclass(frozen=True)
class Judgement:
    verdict: str
    comparisons: list[Comparison]
    environment_diff: list[dict[str, str]]
    reasons: list[str]

    def as_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "comparisons": [asdict(c) for c in self.comparisons],
            "environment_diff": self.environment_diff,
            "reasons": self.reasons,
        }


def accelerator_class(environment: dict[str, Any]) -> str:
    """What memory figures are comparable across: the CPU (with how the process started: RSS
    depends on it, environment.job_start), or one GPU model."""
    acc = environment.get("accelerator")
    acc = acc if isinstance(acc, dict) else {}
    if acc.get("kind") == "cpu":
        return f"cpu ({job_start(environment)} process)"
    return f"{acc.get('kind')}:{acc.get('name')}"


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _delta(claimed: Any, measured: Any) -> str:
    if _number(claimed) and _number(measured):
        return f"{measured - claimed:+.6g}"
    return "differs"


def compare_metric(
    metric: Metric, claimed: Any, measured: Any, policy: VerificationPolicy, same_class: bool
) -> Comparison:
    tol = policy.tolerance(metric)

    def result(outcome: str, detail: str) -> Comparison:
        return Comparison(metric.key, tol, claimed, measured, outcome, detail)

    if claimed is None or measured is None:
        missing = "claim" if claimed is None else "re-run"
        return result("informational" if tol == "informational" else "mismatch", f"missing in the {missing}")
    if tol == "informational":
        ratio = measured / claimed if _number(claimed) and _number(measured) and claimed else None
        return result("informational", f"ratio {ratio:.3f}" if ratio is not None else "")
    if tol == "exact" or (tol == "score" and policy.bit_exact):
        return (
            result("match", "identical")
            if claimed == measured
            else result("mismatch", _delta(claimed, measured))
        )
    if tol == "score":
        band = policy.score_band
        if _number(claimed) and _number(measured):
            d = measured - claimed
            return result("match" if abs(d) <= band + FLOAT_SLACK else "mismatch", f"{d:+.6g}, band {band:g}")
        return result("mismatch", "not a number")
    # relative: memory, only on the same accelerator class
    if not same_class:
        return result("not_comparable", "different accelerator class")
    if not (_number(claimed) and _number(measured)):
        return result("mismatch", "not a number")
    rel = (measured - claimed) / claimed if claimed else (0.0 if measured == 0 else math.inf)
    outcome = "match" if abs(rel) <= policy.relative_band else "mismatch"
    return result(outcome, f"{rel:+.1%}, band ±{policy.relative_band:.0%}")


def environment_diff(claimed: dict[str, Any], measured: dict[str, Any]) -> list[dict[str, str]]:
    """The fingerprint fields that differ, one level deep; installed distributions one by one."""
    out: list[dict[str, str]] = []
    for key in sorted(set(claimed) | set(measured)):
        a, b = claimed.get(key), measured.get(key)
        if a == b or key in ("distributions_sha256", "environment_sha256", "seeds"):
            continue
        if key == "distributions" and isinstance(a, list) and isinstance(b, list):
            out.extend(_distribution_diff(a, b))
        elif isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub) != b.get(sub):
                    out.append(
                        {"field": f"{key}.{sub}", "claimed": show(a.get(sub)), "measured": show(b.get(sub))}
                    )
        else:
            out.append({"field": key, "claimed": show(a), "measured": show(b)})
    return out


def _distribution_diff(claimed: list[Any], measured: list[Any]) -> list[dict[str, str]]:
    def versions(items: list[Any]) -> dict[str, str]:
        pairs = (str(s).partition("==") for s in items)
        return {name: version for name, _, version in pairs}

    a, b = versions(claimed), versions(measured)
    return [
        {
            "field": f"distributions.{name}",
            "claimed": a.get(name, "absent"),
            "measured": b.get(name, "absent"),
        }
        for name in sorted(set(a) | set(b))
        if a.get(name) != b.get(name)
    ]


def checks_comparison(claim: RunRecord, rerun: RunRecord) -> Comparison:
    """The structural checks' outcomes, exact: a claim cannot show checks its re-run fails."""

    def statuses(record: RunRecord) -> dict[str, Any]:
        found = record.checks or {}
        return {k: v.get("status") for k, v in sorted(found.items()) if isinstance(v, dict)}

    claimed, measured = statuses(claim), statuses(rerun)
    if not claimed:
        return Comparison(
            "checks", "informational", None, measured, "informational", "the claim predates the checks"
        )
    if claimed == measured:
        return Comparison("checks", "exact", claimed, measured, "match", "identical")
    differ = [k for k in sorted(set(claimed) | set(measured)) if claimed.get(k) != measured.get(k)]
    return Comparison("checks", "exact", claimed, measured, "mismatch", "differ: " + ", ".join(differ))


def judge(claim: RunRecord, rerun: RunRecord, policy: VerificationPolicy) -> Judgement:
    """The verdict on `claim` given a re-run of the same manifest and seed."""
    env_c, env_m = claim.environment, rerun.environment
    env_diff = environment_diff(env_c, env_m)
    if rerun.status != "success":
        message = rerun.error.message if rerun.error else ""
        return Judgement(NOT_REPRODUCED, [], env_diff, [f"the re-run {rerun.status}: {message}"])
    same_class = accelerator_class(env_c) == accelerator_class(env_m)
    comparisons = [
        Comparison(
            "resolved_config",
            "exact",
            None,
            None,
            *(
                ("match", "identical")
                if claim.resolved_config == rerun.resolved_config
                else ("mismatch", "the record's resolved config is not what its manifest resolves to")
            ),
        ),
        checks_comparison(claim, rerun),
    ]
    cm, mm = claim.metrics, rerun.metrics
    for metric in METRICS:
        if metric.key in cm or metric.key in mm:
            comparisons.append(
                compare_metric(metric, cm.get(metric.key), mm.get(metric.key), policy, same_class)
            )
    mismatched = [c for c in comparisons if c.outcome == "mismatch"]
    if mismatched:
        names = ", ".join(c.metric for c in mismatched)
        same_env = env_c.get("environment_sha256") == env_m.get("environment_sha256")
        if policy.bit_exact and not same_env:
            fields = sorted({d["field"].split(".")[0] for d in env_diff} - {"git", "os"}) or [
                "environment_sha256"
            ]
            reason = (
                f"{names} differ, but this bit-exact track was re-run in a different environment "
                f"({', '.join(fields)} differ): re-run in the claim's environment to judge it"
            )
            return Judgement(NOT_COMPARABLE, comparisons, env_diff, [reason])
        reasons = [
            f"{c.metric}: claimed {show(c.claimed)}, measured {show(c.measured)} ({c.detail})"
            for c in mismatched
        ]
        return Judgement(NOT_REPRODUCED, comparisons, env_diff, reasons)
    uncomparable = [c.metric for c in comparisons if c.outcome == "not_comparable"]
    if uncomparable:
        reason = (
            f"{', '.join(uncomparable)} measured on {accelerator_class(env_m)}, "
            f"claimed on {accelerator_class(env_c)}"
        )
        return Judgement(NOT_COMPARABLE, comparisons, env_diff, [reason])
    return Judgement(REPRODUCED, comparisons, env_diff, [])


# ---- a published claim against re-runs here ------------------------------------------------------

# Judged against a published claim with a band from the re-runs' own spread (one more run, ours or
# theirs, should land inside it); the task's stated band is the floor.
PUBLISHED_SCORES = ("test_accuracy", "test_concept_score", "forgetting_same_position", "drift")
# Figures another toolkit writes its own way: shown, never judged (file headers differ by peft
# version; their final loss is their loop's average).
PUBLISHED_INFORMATIONAL = ("adapter_bytes", "train_loss_final")


def prediction_band(values: list[float], floor: float) -> tuple[float, str]:
    """Half-width of a 95% prediction interval for one more run, t(0.975, n-1) * s * sqrt(1 + 1/n)
    from n re-runs' sample std s, and never below the task's stated band `floor`."""
    n = len(values)
    if n < 2:
        return floor, f"band {floor:g} (the task's: one re-run has no spread)"
    s = statistics.stdev(values)
    half = float(scipy.special.stdtrit(n - 1, 0.975)) * s * math.sqrt(1 + 1 / n)
    band = max(floor, half)
    return band, f"band {band:.4g} = max({floor:g}, t*s*sqrt(1+1/n) = {half:.4g}; s {s:.4g}, n {n})"


def rerun_accelerator(rerun: RunRecord) -> str:
    acc = rerun.environment.get("accelerator")
    acc = acc if isinstance(acc, dict) else {}
    return str(acc.get("name") if acc.get("kind") == "cuda" else acc.get("kind", "unknown"))


def _published_metric(
    metric: Metric, c: Any, values: list[Any], policy: VerificationPolicy, here: list[str], accelerator: str
) -> Comparison:
    key = metric.key
    numbers = [float(v) for v in values if _number(v)]
    mean = statistics.fmean(numbers) if numbers and len(numbers) == len(values) else None
    if key in PUBLISHED_INFORMATIONAL or metric.tolerance == "informational":
        ratio = mean / c if mean is not None and _number(c) and c else None
        return Comparison(
            key, "informational", c, mean, "informational", f"ratio {ratio:.3f}" if ratio else ""
        )
    if mean is None or not _number(c):
        detail = "missing in a re-run" if mean is None else "not a number"
        return Comparison(key, metric.tolerance, c, mean, "mismatch", detail)
    if key in PUBLISHED_SCORES:
        band, how = prediction_band(numbers, policy.score_band)
        ok = abs(mean - c) <= band + FLOAT_SLACK
        return Comparison(key, "score", c, mean, "match" if ok else "mismatch", f"{mean - c:+.4g}; {how}")
    if metric.tolerance == "relative":
        if here != [accelerator]:
            where = f"claimed on {accelerator}, measured on {', '.join(here)}"
            return Comparison(key, "relative", c, mean, "not_comparable", where)
        rel = (mean - c) / c if c else (0.0 if mean == 0 else math.inf)
        ok = abs(rel) <= policy.relative_band
        detail = f"{rel:+.1%}, band ±{policy.relative_band:.0%}"
        return Comparison(key, "relative", c, mean, "match" if ok else "mismatch", detail)
    if metric.tolerance == "exact":
        ok = all(v == c for v in values)
        detail = "identical in every re-run" if ok else _delta(c, mean)
        return Comparison(key, "exact", c, mean, "match" if ok else "mismatch", detail)
    # a score this comparison has no band for (the base model's own): shown
    return Comparison(key, "informational", c, mean, "informational", _delta(c, mean))


def judge_published(
    claimed: dict[str, Any], accelerator: str, reruns: list[RunRecord], policy: VerificationPolicy
) -> Judgement:
    """The verdict on a published claim (its metrics, measured on `accelerator`) given re-runs of
    its manifest on several seeds. Scores: the re-runs' mean within `prediction_band`. Parameter
    counts and steps: equal in every re-run. Memory: within the relative band of the re-runs' mean
    on the same accelerator, else not comparable; time: a ratio, shown. The verdict rests on what
    can be compared here: memory measured on another GPU does not make the claim `not_comparable`
    (on this hardware it never could be); the verification lists it as not compared."""
    failed = [r for r in reruns if r.status != "success"]
    if failed or not reruns:
        why = "; ".join(f"seed {r.seed} {r.status}: {r.error.message if r.error else ''}" for r in failed)
        return Judgement(NOT_REPRODUCED, [], [], [f"a re-run did not succeed: {why or 'none ran'}"])
    here = sorted({rerun_accelerator(r) for r in reruns})
    comparisons = [
        _published_metric(
            m, claimed[m.key], [r.metrics.get(m.key) for r in reruns], policy, here, accelerator
        )
        for m in METRICS
        if m.key in claimed
    ]
    mismatched = [c for c in comparisons if c.outcome == "mismatch"]
    if mismatched:
        reasons = [
            f"{c.metric}: claimed {show(c.claimed)}, measured {show(c.measured)} ({c.detail})"
            for c in mismatched
        ]
        return Judgement(NOT_REPRODUCED, comparisons, [], reasons)
    if not any(c.tolerance == "score" for c in comparisons):
        return Judgement(NOT_COMPARABLE, comparisons, [], ["the claim has no score measured here"])
    reasons = []
    if here != [accelerator]:
        reasons.append(f"memory not compared: claimed on {accelerator}, measured on {', '.join(here)}")
    return Judgement(REPRODUCED, comparisons, [], reasons)
