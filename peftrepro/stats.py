"""Per-item outcomes and the statistics computed from them, defined once for every page and check.

A run record carries, for its headline score, the outcome of every test item in the task's fixed
item order (`test_outcomes`): exact-match tracks a bit per item, image tracks a score per sample.
From records alone, then:
- `row_interval`: a 95% interval of a row's mean score that counts both sources of chance, the
  seeds (training randomness) and the finite test set (one draw of items, the same for every seed);
- `paired`: a row against another on their common seeds and the same items: the mean difference,
  its 95% interval and a two-sided p-value (the interval excludes 0 exactly when p < 0.05);
- `tiers`: from the top down, the rows not significantly worse than the best row left (Holm-
  corrected over that tier's comparisons) share its tier.
Both use a t-statistic whose standard error adds the seed and item variance terms (`_spread`). A
two-level bootstrap (seeds x items) was tried first: with 5 seeds it understates the seed term
(resampling 5 values has (S-1)/S of their variance, and percentiles ignore the t tails), and in
simulation called 10.7% of equal pairs different at the 5% level; this test called 4.7% (tests/
test_stats.py). scipy has the t distribution; Holm's step-down is written here. No randomness:
the same records give the same bytes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats

ALPHA = 0.05
MIN_SEEDS = 2  # common seeds a paired test needs


# ---- the record field ---------------------------------------------------------------------------


def encode(items: Sequence[bool] | Sequence[float]) -> dict[str, Any]:
    """The record's `test_outcomes` for these per-item outcomes (bools: a bit per item, as hex,
    first item in the highest bit; floats: the values). `sha256` names the outcomes: of the
    "0"/"1" string for bits, of the values' JSON text otherwise."""
    if all(isinstance(x, bool) for x in items):
        bits = "".join("1" if x else "0" for x in items)
        width = -(-len(bits) // 4)
        hexed = format(int(bits.ljust(4 * width, "0"), 2), f"0{width}x") if bits else ""
        return {"kind": "binary", "n": len(bits), "bits": hexed, "sha256": _sha(bits)}
    values = [float(x) for x in items]
    return {"kind": "values", "n": len(values), "values": values, "sha256": _sha(_values_text(values))}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _values_text(values: list[float]) -> str:
    return "[" + ",".join(repr(v) for v in values) + "]"


def decode(outcomes: Mapping[str, Any]) -> np.ndarray:
    """The per-item outcomes as an array (int64 0/1 for bits, float64 for values); ValueError when
    the field is inconsistent (its sha256, its length)."""
    n = outcomes.get("n")
    if not isinstance(n, int) or n < 1:
        raise ValueError("`n` is not a positive count")
    if outcomes.get("kind") == "binary":
        hexed = outcomes.get("bits")
        if not isinstance(hexed, str) or len(hexed) != -(-n // 4):
            raise ValueError(f"`bits` does not hold {n} items")
        bits = format(int(hexed, 16), f"0{4 * len(hexed)}b")
        if set(bits[n:]) - {"0"}:
            raise ValueError("`bits` has items past `n`")
        if _sha(bits[:n]) != outcomes.get("sha256"):
            raise ValueError("`sha256` does not match the outcomes")
        return np.frombuffer(bits[:n].encode(), dtype=np.uint8).astype(np.int64) - ord("0")
    values = outcomes.get("values")
    if not isinstance(values, list) or len(values) != n:
        raise ValueError(f"`values` does not hold {n} items")
    floats = [float(v) for v in values]
    if _sha(_values_text(floats)) != outcomes.get("sha256"):
        raise ValueError("`sha256` does not match the outcomes")
    return np.array(floats, dtype=np.float64)


def consistent(outcomes: Mapping[str, Any], score: Any) -> str | None:
    """Why a record's outcomes and its headline score disagree, or None: the score must be the
    outcomes' mean (to float32 rounding: some tasks average in float32)."""
    try:
        items = decode(outcomes)
    except (ValueError, TypeError) as e:
        return f"test_outcomes: {e}"
    if not isinstance(score, int | float) or not math.isclose(float(items.mean()), score, abs_tol=1e-6):
        return f"test_outcomes: their mean {float(items.mean()):.6f} is not the record's score {score}"
    return None


# ---- intervals and tests ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


@dataclass(frozen=True)
class Paired:
    effect: float  # mean of the row minus mean of the other, on common seeds and items
    interval: Interval
    p: float
    seeds: int  # common seeds compared


def _spread(table: np.ndarray) -> tuple[float, float]:
    """Standard error of a seeds x items table's mean, and its degrees of freedom. Two sources:
    the seeds (variance of the seed means over S) and the test set as one draw of items (variance
    of the item means over N); Welch-Satterthwaite degrees of freedom. The item-level noise within
    a seed is in both terms, so the error is slightly overstated: a close call comes out a tie."""
    s, n = table.shape
    items = float(table.mean(axis=0).var(ddof=1)) / n if n > 1 else 0.0
    if s == 1:
        return math.sqrt(items), float(max(n - 1, 1))
    seeds = float(table.mean(axis=1).var(ddof=1)) / s
    total = seeds + items
    if total == 0:
        return 0.0, math.inf
    parts = seeds**2 / (s - 1) + (items**2 / (n - 1) if n > 1 else 0.0)
    return math.sqrt(total), total**2 / parts


def _interval(mean: float, se: float, df: float) -> Interval:
    half = float(scipy.stats.t.ppf(1 - ALPHA / 2, df)) * se if se > 0 else 0.0
    return Interval(mean - half, mean + half)


def row_interval(by_seed: Mapping[int, np.ndarray]) -> Interval:
    """95% interval of the mean score over seeds and test items (t, see _spread). One seed: the
    test items only (seed-to-seed spread unknown: too narrow, and pages say so)."""
    table = np.stack([by_seed[s] for s in sorted(by_seed)]).astype(np.float64)
    return _interval(float(table.mean()), *_spread(table))


def paired(a: Mapping[int, np.ndarray], b: Mapping[int, np.ndarray]) -> Paired | None:
    """`a` against `b` on their common seeds and the same items: per-item differences, seed by
    seed; their mean, its 95% interval and the two-sided p-value of a t-test on it (see _spread).
    None with fewer than MIN_SEEDS common seeds (one seed cannot tell a method from a lucky seed:
    the arithmetic corpus's seed std reached 0.25) or when the item sets differ in size."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < MIN_SEEDS or len({len(a[s]) for s in seeds} | {len(b[s]) for s in seeds}) != 1:
        return None
    diff = np.stack([a[s] - b[s] for s in seeds]).astype(np.float64)
    effect = float(diff.mean())
    se, df = _spread(diff)
    t = abs(effect) / se if se > 0 else (0.0 if effect == 0 else math.inf)
    p = float(2 * scipy.stats.t.sf(t, df))
    return Paired(effect, _interval(effect, se, df), p, len(seeds))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error), in the input's order."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def tiers(rows: Mapping[str, Mapping[int, np.ndarray]]) -> dict[str, int]:
    """Tier 1 is the best row (highest mean) and every row not significantly worse than it (paired
    t-test, Holm-corrected over the tier's comparisons); tier 2 starts at the best row left, and
    so on. Only rows with MIN_SEEDS seeds are tiered; one that cannot be paired with its tier's
    leader (too few common seeds) waits for a leader it shares seeds with, or leads its own."""
    rows = {k: v for k, v in rows.items() if len(v) >= MIN_SEEDS}
    means = {k: float(np.mean([v.mean() for v in by_seed.values()])) for k, by_seed in rows.items()}
    left = sorted(rows, key=lambda k: (-means[k], k))
    found: dict[str, int] = {}
    tier = 0
    while left:
        tier += 1
        leader, rest = left[0], left[1:]
        tests = {k: paired(rows[k], rows[leader]) for k in rest}
        testable = [k for k in rest if tests[k] is not None]
        adjusted = dict(zip(testable, holm([tests[k].p for k in testable]), strict=True))  # type: ignore[union-attr]
        members = {leader} | {k for k in testable if adjusted[k] >= ALPHA}
        for k in members:
            found[k] = tier
        left = [k for k in rest if k not in members]
    return found
