"""Per-item outcomes and the statistics computed from them, defined once for every page and check.

A run record carries, for its headline score, the outcome of every test item in the task's fixed
item order (`test_outcomes`): exact-match tracks a bit per item, image tracks a score per sample.
From records alone, then:
- `row_interval`: a 95% interval of a row's mean score that counts both sources of chance, the
  seeds (training randomness) and the finite test set (one draw of items, the same for every seed);
- `paired`: a row against another on their common seeds and the same items: the mean difference,
  its 95% interval and a two-sided p-value (the interval excludes 0 exactly when p < 0.05);
- `tiers`: from the top down, the rows not significantly worse than the best row left (Holm-
  corrected over that tier's comparisons) share its tier;
- `rank_ranges`: the places a row may take once ties are allowed for (rows significantly better and
  worse than it), against which `benchmarks/agreement.py` reads a public ranking.
Both use a t-statistic whose standard error adds the seed and item variance terms (`_spread`). A
two-level bootstrap (seeds x items) was tried first: with 5 seeds it understates the seed term
(resampling 5 values has (S-1)/S of their variance, and percentiles ignore the t tails), and in
simulation called 10.7% of equal pairs different at the 5% level; this test called 4.7% (tests/
test_stats.py). scipy has the t distribution; Holm's step-down is written here. No randomness:
the same records give the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.special
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


def outcomes_by_seed(fields: Mapping[int, Any]) -> dict[int, np.ndarray]:
    """seed -> decoded outcomes of each seed's `test_outcomes` field; {} unless every seed has one
    (a row mixing records with and without outcomes would not count its seeds alike)."""
    if not fields or not all(isinstance(f, dict) for f in fields.values()):
        return {}
    return {seed: decode(f) for seed, f in fields.items()}


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _values_text(values: list[float]) -> str:
    return "[" + ",".join(repr(v) for v in values) + "]"


def decode(outcomes: Mapping[str, Any]) -> np.ndarray:
    """The per-item outcomes as an array (read-only uint8 0/1 for bits, float64 for values); ValueError when
    the field is inconsistent (its sha256, its length)."""
    n = outcomes.get("n")
    if not isinstance(n, int) or n < 1:
        raise ValueError("`n` is not a positive count")
    if outcomes.get("kind") == "binary":
        hexed, sha = outcomes.get("bits"), outcomes.get("sha256")
        if not isinstance(hexed, str) or len(hexed) != -(-n // 4):
            raise ValueError(f"`bits` does not hold {n} items")
        return _bits(hexed, n, str(sha))
    values = outcomes.get("values")
    if not isinstance(values, list) or len(values) != n:
        raise ValueError(f"`values` does not hold {n} items")
    floats = [float(v) for v in values]
    if _sha(_values_text(floats)) != outcomes.get("sha256"):
        raise ValueError("`sha256` does not match the outcomes")
    return np.array(floats, dtype=np.float64)


@functools.lru_cache(maxsize=20_000)
def _bits(hexed: str, n: int, sha: str) -> np.ndarray:
    """Decoded once per distinct field (records are read, then shown): a read-only uint8 array."""
    raw = bytes.fromhex(hexed + "0" * (len(hexed) % 2))
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))[: 4 * len(hexed)]
    if bits[n:].any():
        raise ValueError("`bits` has items past `n`")
    if _sha((bits[:n] + ord("0")).tobytes().decode()) != sha:
        raise ValueError("`sha256` does not match the outcomes")
    out = bits[:n].copy()
    out.flags.writeable = False
    return out


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


def _spread(tables: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standard error of the mean of each seeds x items table in `tables` (G x S x N), and its
    degrees of freedom. Two sources: the seeds (variance of the seed means, over S) and the test
    set as one draw of items (variance of the item means, over N); Welch-Satterthwaite degrees of
    freedom. The item-level noise within a seed is in both terms, so the error is slightly
    overstated: a close call comes out a tie. One seed: the item term alone."""
    _, s, n = tables.shape
    items = tables.mean(axis=1).var(axis=1, ddof=1) / n if n > 1 else np.zeros(len(tables))
    seeds = tables.mean(axis=2).var(axis=1, ddof=1) / s if s > 1 else np.zeros(len(tables))
    return _combine(seeds, items, s, n)


def _combine(seeds: np.ndarray, items: np.ndarray, s: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The standard error from its seed and item variance terms, and Welch-Satterthwaite's df."""
    if s == 1:
        return np.sqrt(items), np.full(len(items), float(max(n - 1, 1)))
    total = seeds + items
    parts = seeds**2 / (s - 1) + (items**2 / (n - 1) if n > 1 else 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(parts > 0, total**2 / np.where(parts > 0, parts, 1.0), np.inf)
    return np.sqrt(total), df


def _p(effect: np.ndarray, se: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Two-sided p-values of t = effect / se (se 0: 1 when the effect is 0, else 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, np.abs(effect) / np.where(se > 0, se, 1.0), np.where(effect == 0, 0.0, np.inf))
    # = 2 * scipy.stats.t.sf(t, df), bit for bit, without its 0.2 ms a call
    return 2 * scipy.special.stdtr(df, -t)


def _intervals(mean: np.ndarray, se: np.ndarray, df: np.ndarray) -> list[Interval]:
    half = np.where(se > 0, scipy.special.stdtrit(df, 1 - ALPHA / 2) * se, 0.0)  # = scipy.stats.t.ppf
    return [Interval(float(m - h), float(m + h)) for m, h in zip(mean, half, strict=True)]


def row_interval(by_seed: Mapping[int, np.ndarray]) -> Interval | None:
    """95% interval of the mean score over seeds and test items (t, see _spread). One seed: the
    test items only (seed-to-seed spread unknown: too narrow, and pages say so). None: see
    row_intervals."""
    return row_intervals({"": by_seed}).get("")


def row_intervals(rows: Mapping[str, Mapping[int, np.ndarray]]) -> dict[str, Interval]:
    """row_interval of every row, a block of alike rows at a time (see _Block); a row whose seeds
    scored different numbers of items has none (its seeds did not run the same test)."""
    out: dict[str, Interval] = {}
    for b in _blocks(rows):
        if b.table is not None:
            se, df = _spread(b.table)
            out.update(zip(b.keys, _intervals(b.table.mean(axis=(1, 2)), se, df), strict=True))
    return out


def _table(by_seed: Mapping[int, np.ndarray], seeds: tuple[int, ...]) -> np.ndarray:
    """The seeds x items table of these seeds, as float64 (never subtract the stored uint8 bits)."""
    return np.stack([by_seed[s] for s in seeds]).astype(np.float64)


def paired(a: Mapping[int, np.ndarray], b: Mapping[int, np.ndarray]) -> Paired | None:
    """`a` against `b` on their common seeds and the same items: per-item differences, seed by
    seed; their mean, its 95% interval and the two-sided p-value of a t-test on it (see _spread).
    None when they cannot be paired: fewer than MIN_SEEDS common seeds (one seed cannot tell a
    method from a lucky seed: the arithmetic corpus's seed std reached 0.25), or item sets of
    different sizes."""
    return paired_all({"": a}, b).get("")


def paired_all(
    rows: Mapping[str, Mapping[int, np.ndarray]], b: Mapping[int, np.ndarray]
) -> dict[str, Paired]:
    """`paired(row, b)` for every row that can be paired with `b`, a block at a time."""
    out: dict[str, Paired] = {}
    for block in _blocks(rows):
        found = block.versus(b, set(block.keys))
        if found is not None:
            keys, effect, se, df, n = found
            p = _p(effect, se, df)
            out.update(
                (k, Paired(float(e), i, float(pv), n))
                for k, e, i, pv in zip(keys, effect, _intervals(effect, se, df), p, strict=True)
            )
    return out


@dataclass(frozen=True)
class _Block:
    """Rows with the same seeds and item counts, as one float64 array (rows x seeds x items), built
    once per page: the tiers of a 1000-row page test each tier's leader against every row left,
    and one array operation per block costs what one row's did."""

    seeds: tuple[int, ...]
    lengths: tuple[int, ...]  # items per seed
    keys: tuple[str, ...]
    rows: Mapping[str, Mapping[int, np.ndarray]]
    table: np.ndarray | None  # None when a row's seeds hold different numbers of items

    def versus(
        self, other: Mapping[int, np.ndarray], left: set[str]
    ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, int] | None:
        """For this block's rows in `left` against `other`, on their common seeds: (keys, mean
        difference, its standard error, degrees of freedom, common seeds); None when they cannot
        be paired (see `paired`)."""
        mine = [i for i, k in enumerate(self.keys) if k in left]
        common = tuple(s for s in self.seeds if s in other)
        at = [self.seeds.index(s) for s in common]
        lengths = {self.lengths[i] for i in at} | {len(other[s]) for s in common}
        if not mine or len(common) < MIN_SEEDS or len(lengths) != 1:
            return None
        if self.table is not None and common == self.seeds:
            return self._versus_all_seeds(mine, _table(other, common))
        if self.table is not None:
            picked = self.table[np.ix_(mine, at)]
        else:
            picked = np.stack([_table(self.rows[self.keys[i]], common) for i in mine])
        diff = picked - _table(other, common)
        se, df = _spread(diff)
        return [self.keys[i] for i in mine], diff.mean(axis=(1, 2)), se, df, len(common)

    @functools.cached_property
    def _moments(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row, once: its seed means (G x S), its item means over seeds centred (G x N), and
        their sum of squares (G): what every comparison with a leader needs from this block."""
        assert self.table is not None
        item_means = self.table.mean(axis=1)
        centred = item_means - item_means.mean(axis=1, keepdims=True)
        return self.table.mean(axis=2), centred, np.einsum("gn,gn->g", centred, centred)

    def _versus_all_seeds(
        self, mine: list[int], other: np.ndarray
    ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, int]:
        """`versus` on all of this block's seeds without forming the row-minus-leader tables: the
        seed means of a difference are differences of seed means, and the variance of its item
        means is var(a) + var(b) - 2 cov(a, b), one matrix-vector product for the block."""
        seed_means, centred, squares = self._moments
        s, n = other.shape
        d_seeds = seed_means[mine] - other.mean(axis=1)
        effect = d_seeds.mean(axis=1)
        if n > 1:
            b = other.mean(axis=0)
            b = b - b.mean()
            var_items = (squares[mine] + b @ b - 2 * (centred[mine] @ b)) / (n - 1)
            items = np.maximum(var_items, 0.0) / n
        else:
            items = np.zeros(len(mine))
        seeds = d_seeds.var(axis=1, ddof=1) / s if s > 1 else np.zeros(len(mine))
        se, df = _combine(seeds, items, s, n)
        return [self.keys[i] for i in mine], effect, se, df, s


def _blocks(rows: Mapping[str, Mapping[int, np.ndarray]]) -> list[_Block]:
    groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[str]] = {}
    for k, by_seed in rows.items():
        seeds = tuple(sorted(by_seed))
        groups.setdefault((seeds, tuple(len(by_seed[s]) for s in seeds)), []).append(k)
    return [
        _Block(
            seeds,
            lengths,
            tuple(keys),
            rows,
            np.stack([_table(rows[k], seeds) for k in keys]) if len(set(lengths)) == 1 else None,
        )
        for (seeds, lengths), keys in groups.items()
    ]


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation of two paired lists (ties get average ranks; scipy's)."""
    return float(scipy.stats.spearmanr(a, b).statistic)


@dataclass(frozen=True)
class RankAgreement:
    """How alike two rankings of the same items are, with 95% bootstrap intervals over the items."""

    n: int
    spearman: float
    spearman_interval: Interval
    kendall: float
    kendall_interval: Interval


AGREEMENT_BOOT = 2000
AGREEMENT_SEED = 0  # fixed: the same two lists give the same interval, on every page render


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((x * y).sum(axis=1) / np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1)))


def _rowwise_kendall(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair (scipy's definition; ties, duplicated items included, count
    as ties). O(rows x n^2) memory: fine for the tens of methods a track compares."""
    sx = np.sign(x[:, :, None] - x[:, None, :])
    sy = np.sign(y[:, :, None] - y[:, None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(
            (sx * sy).sum(axis=(1, 2)) / np.sqrt((sx * sx).sum(axis=(1, 2)) * (sy * sy).sum(axis=(1, 2)))
        )


def rank_agreement(a: Sequence[float], b: Sequence[float], n_boot: int = AGREEMENT_BOOT) -> RankAgreement:
    """Spearman and Kendall between paired lists, and percentile intervals from resampling the
    items (methods) with replacement: the interval says how much the figure depends on which
    methods happen to be compared. Resamples where one side is constant are left out."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 3:
        raise ValueError("rank agreement needs two paired lists of at least 3 values")
    idx = np.random.default_rng(AGREEMENT_SEED).integers(0, len(x), size=(n_boot, len(x)))
    xs, ys = x[idx], y[idx]
    rho = _rowwise_pearson(scipy.stats.rankdata(xs, axis=1), scipy.stats.rankdata(ys, axis=1))
    tau = _rowwise_kendall(xs, ys)

    def interval(values: np.ndarray) -> Interval:
        low, high = np.nanpercentile(values, [2.5, 97.5])
        return Interval(float(low), float(high))

    return RankAgreement(
        len(x),
        spearman(x, y),
        interval(rho),
        float(scipy.stats.kendalltau(x, y).statistic),
        interval(tau),
    )


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
    blocks = _blocks(rows)
    found: dict[str, int] = {}
    tier = 0
    while left:
        tier += 1
        leader, rest = left[0], left[1:]
        pvalues: dict[str, float] = {}
        for b in blocks:
            tested = b.versus(rows[leader], set(rest))
            if tested is not None:
                keys, effect, se, df, _ = tested
                pvalues.update(zip(keys, map(float, _p(effect, se, df)), strict=True))
        testable = [k for k in rest if k in pvalues]
        adjusted = dict(zip(testable, holm([pvalues[k] for k in testable]), strict=True))
        members = {leader} | {k for k in testable if adjusted[k] >= ALPHA}
        for k in members:
            found[k] = tier
        left = [k for k in rest if k not in members]
    return found


def rank_ranges(rows: Mapping[str, Mapping[int, np.ndarray]]) -> dict[str, tuple[int, int]]:
    """Each row's place among `rows` once ties are allowed for (1 is the best): from 1 + the rows
    significantly better than it to n - the rows significantly worse (paired tests against every
    other row, Holm-corrected over that row's comparisons; a pair that cannot be paired is a tie).
    Tiers cannot say this: a row whose few seeds scatter ties with rows far above and below it and
    would stretch its tier's span over everyone's."""
    keys = sorted(rows)
    found: dict[str, tuple[int, int]] = {}
    for key in keys:
        tested = paired_all({k: rows[k] for k in keys if k != key}, rows[key])
        names = sorted(tested)
        adjusted = dict(zip(names, holm([tested[k].p for k in names]), strict=True))
        better = sum(1 for k in names if adjusted[k] < ALPHA and tested[k].effect > 0)
        worse = sum(1 for k in names if adjusted[k] < ALPHA and tested[k].effect < 0)
        found[key] = (1 + better, len(keys) - worse)
    return found


def ranks_descending(values: Sequence[float]) -> list[float]:
    """Ranks with 1 for the highest value; ties share their average rank (scipy's)."""
    return [float(r) for r in scipy.stats.rankdata([-v for v in values])]


def gaps_beyond_ties(
    their_ranks: Sequence[float], our_ranges: Sequence[tuple[int, int] | None]
) -> list[float]:
    """How far each item's rank on their side lies outside the range of places it may take on ours
    (`rank_ranges`): 0 inside, else the distance to the nearer end, signed like a rank difference
    (ours - theirs). An item with no range (None) gives nan."""
    gaps = []
    for theirs, span in zip(their_ranks, our_ranges, strict=True):
        if span is None:
            gaps.append(float("nan"))
            continue
        low, high = span
        gaps.append(low - theirs if theirs < low else high - theirs if theirs > high else 0.0)
    return gaps
