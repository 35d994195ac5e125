"""What a task's rows can claim, per task version: seed spread, interval width, differences from
the reference row. The figures of the comparisons issue, before and after, from records alone.

For each task version found in the rows' records (the newest success record per seed):
  seeds, mean, sample std over seeds, the 95% interval's half-width, and the row against the
  reference row (difference, p, verdict). Records with per-item outcomes use stats.py (seeds and
  test items); records without them (made before outcomes were recorded) get what their seed
  scores alone allow: a t interval over seeds and Welch's t-test on seed scores (scipy).
Then the medians: seed std, half-width, and how many rows differ significantly from the reference.

    .venv/bin/python benchmarks/significance.py --task arithmetic \\
        --rows lora/default,ia3/default,dora/r8,boft/b8,prompt-tuning/t20,full-finetuning/all
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import scipy.stats

from peftrepro import stats
from peftrepro.records import newest_per_seed
from peftrepro.tasks import get_task

ROOT = Path(__file__).resolve().parent.parent


def seed_only(scores: list[float]) -> float:
    """Half-width of a t interval over seed scores alone."""
    if len(scores) < 2:
        return float("nan")
    return float(scipy.stats.t.ppf(0.975, len(scores) - 1) * statistics.stdev(scores) / len(scores) ** 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="arithmetic")
    parser.add_argument("--rows", required=True, help="method/name,... the first is the reference")
    parser.add_argument("--submissions", type=Path, default=ROOT / "submissions")
    args = parser.parse_args()
    task = get_task(args.task)
    names = args.rows.split(",")
    data = {n: newest_per_seed(args.submissions / args.task / n, task.score_key) for n in names}
    versions = sorted({v for d in data.values() for v in d})
    for version in versions:
        print(f"\n## {args.task} version {version}\n")
        print("| row | seeds | mean | std | 95% half-width | vs " + names[0] + " | p | finding |")
        print("|---|---|---|---|---|---|---|---|")
        stds, widths, differ = [], [], 0
        ref = data[names[0]].get(version, {})
        for n in names:
            runs = data[n].get(version, {})
            if not runs:
                print(f"| {n} | 0 | – | – | – | – | – | – |")
                continue
            scores = [float(m[task.score_key]) for m in runs.values()]
            std = statistics.stdev(scores) if len(scores) > 1 else float("nan")
            items = {s: stats.decode(m["test_outcomes"]) for s, m in runs.items() if "test_outcomes" in m}
            ref_items = {s: stats.decode(m["test_outcomes"]) for s, m in ref.items() if "test_outcomes" in m}
            if len(items) == len(runs):
                interval = stats.row_interval(items)
                half = (interval.high - interval.low) / 2 if interval else float("nan")
                test = stats.paired(items, ref_items) if n != names[0] else None
                effect, p = (test.effect, test.p) if test else (float("nan"), float("nan"))
                how = "per-item"
            else:
                half = seed_only(scores)
                ref_scores = [float(m[task.score_key]) for m in ref.values()]
                if n != names[0] and len(scores) > 1 and len(ref_scores) > 1:
                    effect = statistics.fmean(scores) - statistics.fmean(ref_scores)
                    p = float(scipy.stats.ttest_ind(scores, ref_scores, equal_var=False).pvalue)
                else:
                    effect, p = float("nan"), float("nan")
                how = "seed scores"
            stds.append(std)
            widths.append(half)
            significant = bool(p < stats.ALPHA)
            differ += significant
            finding = "–" if np.isnan(p) else ("differs" if significant else "no significant difference")
            print(
                f"| {n} | {len(scores)} | {statistics.fmean(scores):.3f} | {std:.3f} | {half:.3f} ({how}) "
                f"| {effect:+.3f} | {p:.3f} | {finding} |"
            )
        finite = [x for x in stds if not np.isnan(x)]
        width = [x for x in widths if not np.isnan(x)]
        print(
            f"\nmedian seed std {statistics.median(finite) if finite else float('nan'):.3f}; "
            f"median 95% half-width {statistics.median(width) if width else float('nan'):.3f}; "
            f"rows differing significantly from {names[0]}: {differ} of {len(names) - 1}"
        )


if __name__ == "__main__":
    main()
