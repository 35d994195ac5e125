"""How well a CPU track's ranking predicts the public benchmark it stands in for.

Our side: each row (method/name) of `--task`, at one task version (`--version`, default the
current one; older versions' records are read too), as the mean over seeds of each seed's newest
success record. Their side: the published claims of the task it stands in for (`peftrepro import`;
`--against`, default the task's `published_task`). Two comparisons:
- per method family: each side's best experiment by headline score (ours: best row mean); on the
  drift axis, the drift of that same best experiment;
- per public experiment: rows whose method/name is the public experiment's own (a track that runs
  the imported configs), when there are at least 3.
Where the task names the families its design was chosen on (`calibration_families`), the
per-family comparison is also given in sample and out of sample. For each: both rankings side by
side, Spearman and Kendall with 95% bootstrap intervals over the compared items
(stats.rank_agreement, the same numbers as the task page), the median seed std of
the rows compared, and the largest rank differences: plain, and beyond our ties (on the score: each
compared row may take any place from 1 + the rows significantly better than it to n - the rows
significantly worse, by paired tests on the per-item outcomes, stats.rank_ranges; a difference
inside that range is a tie on our side, no measured disagreement).

    .venv/bin/python benchmarks/agreement.py --task arithmetic --version 1
    .venv/bin/python benchmarks/agreement.py --task digits --axes score,drift
    .venv/bin/python benchmarks/agreement.py --task arithmetic --submissions benchmarks/designs/b
        (a design candidate's tree, from benchmarks/transplant.py; the claims stay in submissions/)
    .venv/bin/python benchmarks/agreement.py --task arithmetic --submissions benchmarks/designs/b \
        --families-of submissions/gsm-symbolic   # design b over the families gsm-symbolic has run
    .venv/bin/python benchmarks/agreement.py --task flux-digits --their-noise auto --valid-per-test 0.5

`--their-noise` prints a ceiling: the published figures are single runs, themselves noisy, so even a
proxy that ranked the true values perfectly would not reach 1. Taking the published values as the
truth and adding normal noise of the given std to them, it prints the median Spearman (and 5th
percentile) between the two. `auto` estimates the std from the published runs themselves: the
median, over the published experiments, of the std of each run's last three validation figures,
times √(validation items / test items) (`--valid-per-test`: image-gen validates on 2 images and tests
on 4, so 0.5). Taking the noisy values as the truth overstates their spread, so the ceiling is, if
anything, optimistic.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peftrepro import stats
from peftrepro.collect import load_tree
from peftrepro.records import RecordError, newest_per_seed, read_record
from peftrepro.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent
AXES = ("score", "drift")


@dataclass
class Ours:
    key: str  # method/name
    means: dict[str, float]  # axis -> mean over seeds
    std: float  # sample std of the headline score over seeds (nan for one seed)
    seeds: int
    seconds: list[float]  # each seed's total_seconds (train and evaluation)
    outcomes: dict[int, np.ndarray]  # seed -> per-item test outcomes ({} if any seed lacks them)


def our_rows(root: Path, task_name: str, version: str, axes: list[str]) -> list[Ours]:
    task = get_task(task_name)
    keys = {"score": task.score_key, "drift": "drift"}
    rows = []
    for folder in sorted(p for p in (root / task_name).glob("*/*") if p.is_dir()):
        runs = newest_per_seed(folder, task.score_key).get(version, {})
        if not runs:
            continue
        scores = [float(m[task.score_key]) for m in runs.values()]
        means = {
            axis: statistics.fmean(float(m[keys[axis]]) for m in runs.values())
            for axis in axes
            if all(keys[axis] in m for m in runs.values())
        }
        std = statistics.stdev(scores) if len(scores) > 1 else float("nan")
        seconds = [float(m["total_seconds"]) for m in runs.values() if "total_seconds" in m]
        outcomes = stats.outcomes_by_seed({seed: m.get("test_outcomes") for seed, m in runs.items()})
        rows.append(Ours(f"{folder.parent.name}/{folder.name}", means, std, len(scores), seconds, outcomes))
    return rows


def their_claims(root: Path, task_name: str) -> list[tuple[str, dict[str, Any]]]:
    """(method/name, claim metrics) for every published claim of the task's current manifests."""
    subs, _ = load_tree(root)
    return [
        (f"{sub.key[1]}/{sub.key[2]}", claim.metrics)
        for sub in subs
        if sub.key[0] == task_name
        for claim in sub.published
    ]


def their_rows(
    root: Path, task_name: str, claims: list[tuple[str, dict[str, Any]]] | None = None
) -> dict[str, dict[str, float]]:
    """method/name -> axis -> their figure, from the claims of the current manifests."""
    task = get_task(task_name)
    keys = {"score": task.score_key, "drift": "drift"}
    found: dict[str, dict[str, float]] = {}
    for key, m in their_claims(root, task_name) if claims is None else claims:
        # several results for one experiment: the best score stands
        figures = {axis: float(m[k]) for axis, k in keys.items() if isinstance(m.get(k), int | float)}
        if "score" in figures and figures["score"] > found.get(key, {}).get("score", float("-inf")):
            found[key] = figures
    return found


def their_noise(claims: list[tuple[str, dict[str, Any]]], valid_per_test: float) -> tuple[float, int]:
    """The median std of the last three validation figures of each published run, scaled to the
    test split's size; and how many runs it is over."""
    spreads = []
    for _, m in claims:
        values = [
            v for point in m.get("valid_curve") or [] for k, v in point.items() if k.startswith("valid_")
        ]
        if len(values) >= 3:
            spreads.append(statistics.stdev(values[-3:]))
    if not spreads:
        return float("nan"), 0
    return statistics.median(spreads) * valid_per_test**0.5, len(spreads)


def noise_ceiling(theirs: list[float], sigma: float, draws: int = 2000) -> tuple[float, float]:
    """Median and 5th percentile of Spearman(theirs, theirs + N(0, sigma^2)): a perfect proxy's
    agreement with published figures that carry that noise."""
    rng = random.Random(0)
    rhos = sorted(
        float(scipy.stats.spearmanr(theirs, [v + rng.gauss(0.0, sigma) for v in theirs])[0])
        for _ in range(draws)
    )
    return statistics.median(rhos), rhos[draws // 20]


def best_per_family(rows: dict[str, dict[str, float]]) -> dict[str, tuple[str, dict[str, float]]]:
    best: dict[str, tuple[str, dict[str, float]]] = {}
    for key, figures in sorted(rows.items()):
        family = key.split("/")[0]
        if "score" in figures and (family not in best or figures["score"] > best[family][1]["score"]):
            best[family] = (key, figures)
    return best


def _status(path: Path) -> str | None:
    try:
        return read_record(path).status
    except RecordError:
        return None


def ranks(values: list[float], lower_is_better: bool) -> list[float]:
    return list(scipy.stats.rankdata([v if lower_is_better else -v for v in values]))


def compare(
    title: str,
    pairs: list[tuple[str, str, float, str, float, float]],
    lower_is_better: bool,
    sigma: float | None = None,
    outcomes: dict[str, dict[int, np.ndarray]] | None = None,
) -> None:
    """pairs: (item, their key, their value, our key, our value, our seed std); outcomes (our key
    -> seed -> per-item outcomes, higher is better): our rows' rank ranges and the gaps beyond them."""
    print(f"\n### {title}\n")
    if len(pairs) < 3:
        print(f"{len(pairs)} items on both sides: too few to rank.")
        return
    theirs = [p[2] for p in pairs]
    ours = [p[4] for p in pairs]
    rt, ro = ranks(theirs, lower_is_better), ranks(ours, lower_is_better)
    order = sorted(range(len(pairs)), key=lambda i: (rt[i], pairs[i][0]))
    ranged = {}
    if outcomes is not None and not lower_is_better:
        ranged = stats.rank_ranges({p[3]: outcomes[p[3]] for p in pairs if outcomes.get(p[3])})
    span = [ranged.get(p[3]) for p in pairs]
    beyond = stats.gaps_beyond_ties(rt, span)
    print(
        "| item | published | rank | here (mean over seeds) | seed std | rank | rank difference "
        "| places here, ties allowed | beyond them |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for i in order:
        item, tk, tv, ok, ov, sd = pairs[i]
        spread = "–" if sd != sd else f"{sd:.3f}"  # nan: one seed
        places = "–" if (at := span[i]) is None else f"{at[0]}–{at[1]}"
        print(
            f"| {item} | {tv:.3f} ({tk}) | {rt[i]:g} | {ov:.3f} ({ok}) | {spread} | {ro[i]:g} "
            f"| {ro[i] - rt[i]:+g} | {places} | {beyond[i]:+g} |"
        )
    a = stats.rank_agreement(theirs, ours)
    stds = [p[5] for p in pairs if p[5] == p[5]]
    spread = (
        f"{statistics.median(stds):.3f} over the {len(stds)} with two seeds or more"
        if stds
        else "– (one seed each)"
    )
    print(
        f"\nn {a.n}; Spearman {a.spearman:.2f} (95% bootstrap interval {a.spearman_interval.low:.2f} to "
        f"{a.spearman_interval.high:.2f}); Kendall {a.kendall:.2f} ({a.kendall_interval.low:.2f} to "
        f"{a.kendall_interval.high:.2f}); median seed std here {spread}"
    )
    worst = sorted(range(len(pairs)), key=lambda i: (-abs(ro[i] - rt[i]), pairs[i][0]))[:5]
    print("largest rank differences: " + "; ".join(f"{pairs[i][0]} {ro[i] - rt[i]:+g}" for i in worst))
    if ranged:
        apart = sorted(
            (i for i in range(len(pairs)) if beyond[i] and beyond[i] == beyond[i]),  # nonzero, not nan
            key=lambda i: (-abs(beyond[i]), pairs[i][0]),
        )
        print(
            f"beyond our ties (each row's places by paired tests on the per-item outcomes, over the "
            f"{len(ranged)} with outcomes): {len(apart)} of {len(pairs)} items differ; the largest: "
            + ("; ".join(f"{pairs[i][0]} {beyond[i]:+g}" for i in apart[:5]) or "none")
        )
    if sigma is not None and sigma == sigma:
        median, low = noise_ceiling(theirs, sigma)
        print(
            f"ceiling: a perfect proxy against published figures with noise std {sigma:.3f}: "
            f"Spearman {median:.2f} (5th percentile {low:.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--version", help="task version of our records (default: the current one)")
    parser.add_argument("--against", help="the published task (default: the task's published_task)")
    parser.add_argument("--axes", default="score", help="comma-separated: score, drift")
    parser.add_argument("--submissions", type=Path, default=ROOT / "submissions", help="our records' tree")
    parser.add_argument(
        "--published", type=Path, default=ROOT / "submissions", help="the tree with the published claims"
    )
    parser.add_argument(
        "--families-of",
        type=Path,
        help="rank only the families with success records in this task folder (two designs, same families)",
    )
    parser.add_argument("--their-noise", help="std of the published score (a number, or auto): the ceiling")
    parser.add_argument("--valid-per-test", type=float, default=1.0, help="auto: validation / test items")
    args = parser.parse_args()
    task = get_task(args.task)
    against = args.against or task.published_task
    if against is None:
        parser.error(f"{args.task} names no published task; pass --against")
    axes = args.axes.split(",")
    if unknown := sorted(set(axes) - set(AXES)):
        parser.error(f"unknown axes {unknown}; known: {', '.join(AXES)}")
    version = args.version or task.version
    ours = {r.key: r for r in our_rows(args.submissions, args.task, version, axes)}
    claims = their_claims(args.published, against)
    theirs = their_rows(args.published, against, claims)
    print(
        f"## {args.task} version {version} ({len(ours)} rows) against the published {against} "
        f"({len(theirs)} experiments)"
    )

    sigma = None
    if args.their_noise == "auto":
        sigma, runs = their_noise(claims, args.valid_per_test)
        print(
            f"published score noise: std {sigma:.3f} (median over {runs} runs of their last three "
            f"validation figures' std, x sqrt({args.valid_per_test:g}))"
        )
    elif args.their_noise is not None:
        sigma = float(args.their_noise)
    seconds = [t for r in ours.values() for t in r.seconds]
    if seconds:
        print(
            f"minutes per run here: median {statistics.median(seconds) / 60:.1f} over {len(seconds)} runs; "
            f"corpus wall time {sum(seconds) / 3600:.1f} h (these runs, one after another)"
        )
    our_best = best_per_family({k: r.means for k, r in ours.items()})
    their_best = best_per_family(theirs)
    families = sorted(set(our_best) & set(their_best))
    if args.families_of is not None:
        other = {  # success records only: a cancelled run (over the budget) did not rank its family
            p.parent.parent.parent.name
            for p in args.families_of.glob("*/*/runs/*.json")
            if _status(p) == "success"
        }
        families = [f for f in families if f in other]
        print(f"families: only the {len(families)} with success records under {args.families_of}")
    for axis in axes:
        lower = axis == "drift"
        ceiling = sigma if axis == "score" else None  # the noise estimate is of the published score
        outs = {k: r.outcomes for k, r in ours.items()} if axis == "score" else None  # drift: no tiers
        per_family = [
            (
                f,
                their_best[f][0],
                their_best[f][1][axis],
                our_best[f][0],
                our_best[f][1][axis],
                ours[our_best[f][0]].std,
            )
            for f in families
            if axis in their_best[f][1] and axis in our_best[f][1]
        ]
        compare(
            f"{axis}, per method family (best experiment by score on each side)",
            per_family,
            lower,
            ceiling,
            outs,
        )
        if calibrated := task.calibration_families:  # the design's own families, and the rest
            inside = [p for p in per_family if p[0] in calibrated]
            compare(
                f"{axis}, in sample: the families the design was chosen on",
                inside,
                lower,
                ceiling,
                outs,
            )
            outside = [p for p in per_family if p[0] not in calibrated]
            compare(
                f"{axis}, out of sample: families added after the design was frozen",
                outside,
                lower,
                ceiling,
                outs,
            )
        shared = sorted(k for k in set(ours) & set(theirs) if axis in theirs[k] and axis in ours[k].means)
        per_experiment = [(k, k, theirs[k][axis], k, ours[k].means[axis], ours[k].std) for k in shared]
        compare(
            f"{axis}, per public experiment (the same method/name on both sides)",
            per_experiment,
            lower,
            outcomes=outs,
        )
        if calibrated:  # the design saw only its families' best public experiments; the rest came later
            seen = {their_best[f][0] for f in calibrated if f in their_best}
            compare(
                f"{axis}, per public experiment, out of sample: every experiment but the design's own",
                [p for p in per_experiment if p[0] not in seen],
                lower,
                outcomes=outs,
            )
    print(
        f"\nfamilies only published: {', '.join(sorted(set(their_best) - set(our_best))) or '-'}"
        f"\nfamilies only here: {', '.join(sorted(set(our_best) - set(their_best))) or '-'}"
    )


if __name__ == "__main__":
    main()
