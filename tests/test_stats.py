"""stats.py: per-item outcomes in records, row intervals, paired tests, Holm, tiers; what the
pages say with them; a record whose outcomes do not add up to its score is refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from peftrepro import stats
from peftrepro.errors import RecordError
from peftrepro.records import parse_record
from tests.synthetic import manifest_doc, outcomes, record, run_id, save, write_manifest

LORA = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": "all-linear"}


def test_outcomes_round_trip_and_bind_their_sha256() -> None:
    items = [True, False, True, True, False, False, False, True, True]  # 9 bits: a ragged last digit
    field = stats.encode(items)
    assert field["kind"] == "binary" and field["n"] == 9 and len(field["bits"]) == 3
    assert stats.decode(field).tolist() == [int(x) for x in items]
    values = stats.encode([0.25, 0.5, 0.125])
    assert stats.decode(values).tolist() == [0.25, 0.5, 0.125]
    for broken, why in (
        ({**field, "bits": "f18"}, "sha256"),  # one item flipped, hash left as it was
        ({**field, "bits": "b1"}, "does not hold"),
        ({**field, "bits": "b1f"}, "past `n`"),
        ({**values, "values": [0.25, 0.5, 0.25]}, "sha256"),
    ):
        with pytest.raises(ValueError, match=why):
            stats.decode(broken)


def test_a_record_whose_outcomes_do_not_give_its_score_is_refused(tmp_path: Path) -> None:
    m = write_manifest(tmp_path, manifest_doc("lora", "r8", LORA))
    good = record(m, 0, run_id(3, 0), test_accuracy=0.5, test_outcomes=outcomes(0.5))
    assert parse_record(good, "good.json").metrics["test_outcomes"]["n"] == 300
    inflated = copy.deepcopy(good)
    inflated["metrics"]["test_accuracy"] = 0.6  # the score raised, the outcomes left alone
    with pytest.raises(RecordError, match=r"their mean 0\.500000 is not the record's score 0\.6"):
        parse_record(inflated, "inflated.json")
    forged = copy.deepcopy(good)
    kept = good["metrics"]["test_outcomes"]["sha256"]
    forged["metrics"]["test_outcomes"] = {**outcomes(0.6), "sha256": kept}
    forged["metrics"]["test_accuracy"] = 0.6
    with pytest.raises(RecordError, match="does not match the outcomes"):
        parse_record(forged, "forged.json")


def _row(rng: np.random.Generator, easy: np.ndarray, skill: float, seeds: int, spread: float) -> dict:
    """Seeds of one method: items get easier with skill, each seed shifted by its own luck."""
    return {
        s: (rng.random(easy.size) < np.clip(easy + skill + rng.normal(0, spread), 0, 1)).astype(np.int64)
        for s in range(seeds)
    }


def test_the_paired_test_holds_its_level_and_finds_a_real_difference() -> None:
    """Two methods of equal skill: p < 0.05 in at most about 5% of 300 simulated comparisons, with
    seed luck small or as large as the arithmetic corpus shows (std 0.1); a 0.15 gap on 300 items
    and 5 seeds is found at least 9 times in 10."""
    rng = np.random.default_rng(7)
    false, found = 0, 0
    for i in range(300):
        easy, spread = rng.uniform(-0.4, 0.6, 300), (0.03, 0.1)[i % 2]
        a, b = _row(rng, easy, 0.0, 5, spread), _row(rng, easy, 0.0, 5, spread)
        false += stats.paired(a, b).p < stats.ALPHA  # type: ignore[union-attr]
    for _ in range(50):
        easy = rng.uniform(-0.4, 0.6, 300)
        a, b = _row(rng, easy, 0.15, 5, 0.03), _row(rng, easy, 0.0, 5, 0.03)
        test = stats.paired(a, b)
        assert test is not None and test.interval.low <= test.effect <= test.interval.high
        found += test.p < stats.ALPHA and test.effect > 0
    assert false / 300 <= 0.07, f"{false} of 300 equal pairs called different"
    assert found >= 45, f"a 0.15 gap found in {found} of 50"


def test_intervals_cover_seed_spread_and_are_deterministic() -> None:
    rng = np.random.default_rng(1)
    easy = rng.uniform(-0.4, 0.6, 300)
    steady, noisy = _row(rng, easy, 0.0, 5, 0.0), _row(rng, easy, 0.0, 5, 0.15)
    i_steady, i_noisy = stats.row_interval(steady), stats.row_interval(noisy)
    assert i_noisy.high - i_noisy.low > i_steady.high - i_steady.low  # seed luck widens it
    mean = np.mean([v.mean() for v in steady.values()])
    assert i_steady.low <= mean <= i_steady.high
    assert stats.row_interval(steady) == i_steady
    assert stats.paired(steady, noisy) == stats.paired(steady, noisy)
    same = stats.paired(steady, steady)
    assert same is not None and same.effect == 0 and same.p == 1.0
    assert stats.paired(steady, {9: steady[0]}) is None  # no common seed: no paired test


def test_holm_matches_hand_worked_values() -> None:
    assert stats.holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert stats.holm([0.5]) == [0.5] and stats.holm([]) == []


def _graded_rows() -> dict[str, dict]:
    """Four methods on 5 seeds: a and b equal, c 0.3 below them and d 0.3 below c."""
    rng = np.random.default_rng(3)
    easy = rng.uniform(-0.4, 0.6, 300)
    return {
        k: _row(rng, easy, skill, 5, 0.01) for k, skill in zip("abcd", (0.3, 0.3, 0.0, -0.3), strict=True)
    }


def test_tiers_group_ties_and_separate_real_gaps() -> None:
    rows = _graded_rows()
    tiers = stats.tiers(rows)
    assert tiers["a"] == tiers["b"] == 1 and tiers["c"] == 2 and tiers["d"] == 3


def test_rank_ranges_allow_for_ties_without_a_scattered_row_stretching_everyones() -> None:
    """Two equal rows share places 1-2; clear gaps below pin c and d; a row whose two seeds scatter
    widely (e) may stand anywhere, yet does not widen the others' ranges as it widens a tier's."""
    rows = _graded_rows()
    assert stats.rank_ranges(rows) == {"a": (1, 2), "b": (1, 2), "c": (3, 3), "d": (4, 4)}
    rows["e"] = {0: np.full(300, 0.9), 1: np.full(300, -0.9)}  # two seeds far apart
    ranges = stats.rank_ranges(rows)
    assert ranges["e"] == (1, 5)
    assert ranges["c"] == (3, 4) and ranges["d"] == (4, 5)  # e adds one place either way, no more
    # their ranks against these ranges: inside is 0; outside, the distance to the nearer end
    gaps = stats.gaps_beyond_ties([2, 1, 5, 1, 3], [ranges[k] for k in "abcde"])
    assert gaps == [0.0, 0.0, -1.0, 3.0, 0.0]
    assert stats.gaps_beyond_ties([1.5], [None])[0] != stats.gaps_beyond_ties([1.5], [None])[0]  # nan


def test_pages_show_intervals_tiers_and_say_tie(tmp_path: Path) -> None:
    """Two rows one item apart on 300 items: one tier, "no significant difference" against the
    reference row; a row far below: its own tier, "worse"; a row without outcomes: no interval."""
    from peftrepro.pages import render

    root = tmp_path / "submissions"
    for name, accs, out in (
        ("default", (0.62, 0.60, 0.61), True),
        ("wide", (0.62, 0.61, 0.61), True),
        ("small", (0.20, 0.21, 0.22), True),
        ("old", (0.5, 0.5, 0.5), False),
    ):
        m = write_manifest(root, manifest_doc("lora", name, {**LORA, "r": 8 + len(name)}))
        for seed, acc in enumerate(accs):
            extra = {"test_outcomes": outcomes(acc, f"{name}{seed}")} if out else {}
            save(m.folder, "runs", record(m, seed, run_id(3, seed, seed), test_accuracy=acc, **extra))
    files, problems = render(root, tmp_path / "leaderboard")
    assert problems == []
    page = files["arithmetic.md"].decode()
    lines = {line.split("|")[2].strip(): line for line in page.splitlines() if line.startswith("| ")}
    cells = {k.split("]")[0].lstrip("["): [c.strip() for c in v.split("|")] for k, v in lines.items()}
    assert cells["lora/default"][5].startswith("[0.") and cells["lora/default"][6] == "1"
    assert cells["lora/wide"][6] == "1" and cells["lora/small"][6] == "2"
    assert cells["lora/old"][5] == "–" and cells["lora/old"][6] == "–"
    assert "1 of these rows have records made before per-item outcomes" in page
    versus = [line for line in page.splitlines() if line.startswith("| [lora/")]
    assert any("lora/wide" in v and "no significant difference" in v for v in versus)
    assert any("lora/small" in v and "| worse |" in v for v in versus)
    assert "tier 1 (no significant difference among them)" in page
    again, _ = render(root, tmp_path / "leaderboard")
    assert again == files  # same records, same bytes
    json.dumps(problems)


def test_paired_matches_a_hand_worked_case_and_scipy() -> None:
    """Hand-worked: differences [[1, 0], [1, 1]] (2 seeds x 2 items): effect 0.75, seed term
    var([0.5, 1]) / 2 = 0.0625, item term var([1, 0.5]) / 2 = 0.0625, se sqrt(0.125), df
    0.125^2 / (0.0625^2 + 0.0625^2) = 2. With one item per seed the item term vanishes and the test
    is scipy's one-sample t-test on the per-seed differences."""
    import scipy.stats

    a = {0: np.array([1, 0]), 1: np.array([1, 1])}
    b = {0: np.array([0, 0]), 1: np.array([0, 0])}
    test = stats.paired(a, b)
    assert test is not None and test.effect == 0.75 and test.seeds == 2
    t = 0.75 / 0.125**0.5
    assert test.p == pytest.approx(2 * scipy.stats.t.sf(t, 2))
    half = scipy.stats.t.ppf(0.975, 2) * 0.125**0.5
    assert (test.interval.low, test.interval.high) == pytest.approx((0.75 - half, 0.75 + half))

    rng = np.random.default_rng(5)
    x, y = rng.normal(0.5, 0.1, 5), rng.normal(0.45, 0.1, 5)
    one = stats.paired({s: x[s : s + 1] for s in range(5)}, {s: y[s : s + 1] for s in range(5)})
    assert one is not None
    assert one.p == pytest.approx(scipy.stats.ttest_1samp(x - y, 0.0).pvalue)
    assert one.p == pytest.approx(scipy.stats.ttest_rel(x, y).pvalue)


def test_rank_agreement_matches_scipy_and_its_interval_is_deterministic() -> None:
    import scipy.stats

    rng = np.random.default_rng(3)
    theirs = np.round(rng.random(20), 1)  # rounded: ties, as published scores have
    ours = np.round(theirs + rng.normal(0, 0.3, 20), 1)
    a = stats.rank_agreement(theirs, ours)
    assert a.n == 20
    assert a.spearman == pytest.approx(scipy.stats.spearmanr(theirs, ours).statistic)
    assert a.kendall == pytest.approx(scipy.stats.kendalltau(theirs, ours).statistic)
    assert a.spearman_interval.low < a.spearman < a.spearman_interval.high
    assert a.kendall_interval.low < a.kendall < a.kendall_interval.high
    assert stats.rank_agreement(theirs, ours) == a  # seeded: same lists, same interval
    # The vectorised resample statistics are scipy's, row by row, duplicated items included.
    idx = rng.integers(0, 20, size=(50, 20))
    tau = stats._rowwise_kendall(theirs[idx], ours[idx])
    expected = [scipy.stats.kendalltau(theirs[i], ours[i]).statistic for i in idx]
    assert np.allclose(tau, expected, equal_nan=True)
    # A perfect ranking is 1 with a degenerate interval; a reversed one -1.
    assert stats.rank_agreement([1, 2, 3, 4], [10, 20, 30, 40]).spearman_interval == stats.Interval(1.0, 1.0)
    assert stats.rank_agreement([1, 2, 3, 4], [4, 3, 2, 1]).kendall == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="at least 3"):
        stats.rank_agreement([1, 2], [1, 2])


def test_the_page_gives_in_sample_and_out_of_sample_agreement_apart() -> None:
    from peftrepro.sections import agreement_lines

    # In sample the two rankings agree; out of sample they are reversed: the overall figure alone
    # would hide that the design does not carry over.
    figures = {f"in{i}": (i / 10, i / 10) for i in range(5)} | {
        f"out{i}": (i / 10, -i / 10) for i in range(4)
    }
    text = "\n".join(agreement_lines(figures, frozenset(f"in{i}" for i in range(5))))
    assert "in sample (the families the design was chosen on) over these 5 families: 1.00" in text
    assert "out of sample (added after it was frozen) over these 4 families: -1.00" in text
    assert "Spearman rank correlation over these 9 families:" in text
    # Too few on one side is said, not ranked; a track without a calibration set gives one figure.
    text = "\n".join(
        agreement_lines(
            {k: figures[k] for k in ("in0", "in1", "in2", "out0")}, frozenset({"in0", "in1", "in2"})
        )
    )
    assert "out of sample (added after it was frozen): 1 families, too few to rank." in text
    assert agreement_lines(figures, frozenset())[1].startswith(
        "Spearman rank correlation over these 9 families"
    )
    assert agreement_lines({"a": (1.0, 1.0)}, frozenset()) == []


def test_the_page_ranks_drift_of_the_same_best_experiments_lower_first() -> None:
    from types import SimpleNamespace

    from peftrepro.sections import _prior_agreement, prior_figures
    from peftrepro.tasks import get_task

    class Ours:
        def __init__(self, drift: float) -> None:
            self.drift = drift

        def value(self, key: str) -> float:
            return self.drift if key == "drift" else float("nan")

    task = get_task("flux-digits")
    families = ["boft", "lora", "c3a", "lily"]  # three in sample, one out
    theirs = {
        f: (0.5, SimpleNamespace(), {"drift": d}) for f, d in zip(families, (0.2, 0.3, 0.4, 0.1), strict=True)
    }
    same = {f: Ours(d) for f, d in zip(families, (0.01, 0.05, 0.08, 0.001), strict=True)}
    text = "\n".join(_prior_agreement(task, theirs, same, families, task.calibration_families))  # type: ignore[arg-type]
    assert "| lily | 0.100 | 0.001 |\n| boft | 0.200 | 0.010 |" in text  # lowest published drift first
    assert "Spearman rank correlation of drift over these 4 families: 1.00" in text
    assert "of drift in sample (the families the design was chosen on) over these 3 families: 1.00" in text
    reversed_ = {f: Ours(-d) for f, d in zip(families, (0.01, 0.05, 0.08, 0.001), strict=True)}
    text = "\n".join(_prior_agreement(task, theirs, reversed_, families, frozenset()))  # type: ignore[arg-type]
    assert "Spearman rank correlation of drift over these 4 families: -1.00" in text
    # published claims without the axis (the text benchmarks measure no forgetting): no section
    bare = {f: (0.5, SimpleNamespace(), {}) for f in families}
    assert _prior_agreement(task, bare, same, families, frozenset()) == []  # type: ignore[arg-type]
    # the overview's figure reads the same pairs; a row without the measure here is left out too
    same["lily"] = Ours(float("nan"))
    assert prior_figures(task, theirs, same, families) == {  # type: ignore[arg-type]
        "boft": (0.2, 0.01),
        "lora": (0.3, 0.05),
        "c3a": (0.4, 0.08),
    }


def test_the_page_ranks_each_public_experiment_and_leaves_the_designs_own_out_of_sample() -> None:
    from types import SimpleNamespace

    from peftrepro.sections import experiment_agreement_lines
    from peftrepro.tasks import get_task

    task = get_task("gsm-symbolic")
    inside = sorted(task.calibration_families)[:2]  # two in-sample families, one experiment each
    names = [f"{inside[0]}/best", f"{inside[1]}/best", "lily/a", "lily/b", "hira/a", "peanut/a"]

    rng = np.random.default_rng(0)

    def row(name: str, published: float | None, ours: float) -> SimpleNamespace:
        claims = (
            []
            if published is None
            else [SimpleNamespace(metrics={get_task(task.published_task).score_key: published})]
        )
        sub = SimpleNamespace(name_in_task=name, published=claims)
        items = rng.normal(ours, 0.05, 300)  # per-item outcomes: rows 0.1 apart differ significantly
        return SimpleNamespace(
            sub=sub,
            value=lambda key: ours if key == task.score_key else float("nan"),
            outcomes={0: items, 1: items},
        )

    # Their ranking; ours agrees on the design's two experiments and reverses the four others.
    theirs = [row(n, p, 0) for n, p in zip(names, (0.6, 0.5, 0.4, 0.3, 0.2, 0.1), strict=True)]
    ours = [row(n, None, v) for n, v in zip(names, (0.9, 0.8, 0.1, 0.2, 0.3, 0.4), strict=True)]
    best = {f: (0.6, theirs[i], {}) for i, f in enumerate(inside)}
    text = "\n".join(experiment_agreement_lines(task, ours, theirs, best))  # type: ignore[arg-type]
    assert "per public experiment (the same method/name on both sides) over these 6 experiments: 0.43" in text
    assert "(all but the design's own: each in-sample family's best) over these 4 experiments: -1.00" in text
    # Every pair is a measured difference here, so each place is exact: the four reversed differ.
    assert "4 of the 6 differ from their public rank, the most: lily/a +3 (places 6–6), peanut/a -3" in text
    assert "4 of the 4 differ" in text
    # Two rows alike (lily/a and lily/b) tie: each may take place 5 or 6, so lily/b (4th there) is
    # one place off and lily/a (3rd there) two. A row with one seed: no such sentence.
    ours[3].outcomes = ours[2].outcomes
    text = "\n".join(experiment_agreement_lines(task, ours, theirs, best))  # type: ignore[arg-type]
    assert "lily/a +2 (places 5–6)" in text and "lily/b +1 (places 5–6)" in text
    ours[5].outcomes = {0: ours[5].outcomes[0]}
    assert "ties are allowed" not in "\n".join(experiment_agreement_lines(task, ours, theirs, best))  # type: ignore[arg-type]
    # A row here without the public experiment's name, or without a score, is not paired.
    ours[2].sub.name_in_task = "lily/renamed"
    ours[3].value = lambda key: float("nan")
    assert "over these 4 experiments: 0.80" in "\n".join(experiment_agreement_lines(task, ours, theirs, best))  # type: ignore[arg-type]
    # Fewer than three pairs: no line; a track without calibration families: one figure only.
    assert experiment_agreement_lines(task, ours[:2], theirs, best) == []  # type: ignore[arg-type]
    plain = SimpleNamespace(
        published_task=task.published_task,
        score_key=task.score_key,
        name=task.name,
        calibration_families=frozenset(),
    )
    assert len(experiment_agreement_lines(plain, ours, theirs, best)) == 2  # type: ignore[arg-type]


def test_a_block_of_rows_on_all_its_seeds_gives_what_the_per_item_difference_tables_give() -> None:
    """paired_all/tiers compare a leader with a whole block through moments (seed means, centred
    item means): the same effects, standard errors and df as forming each row-minus-leader
    seeds x items table and taking _spread of it, to rounding."""
    rng = np.random.default_rng(5)
    rows = {
        f"r{i}": {s: (rng.random(300) < 0.3 + 0.02 * i + 0.05 * s).astype(np.uint8) for s in range(3)}
        for i in range(12)
    }
    leader = rows.pop("r11")
    [block] = stats._blocks(rows)
    keys, effect, se, df, n = block.versus(leader, set(rows))
    tables = np.stack([stats._table(rows[k], (0, 1, 2)) for k in keys]) - stats._table(leader, (0, 1, 2))
    want_se, want_df = stats._spread(tables)
    assert n == 3
    assert np.allclose(effect, tables.mean(axis=(1, 2)), rtol=0, atol=1e-15)
    assert np.allclose(se, want_se, rtol=1e-9, atol=0) and np.allclose(df, want_df, rtol=1e-9, atol=0)
    # a leader on other seeds than the block's takes the general path, with the same result shape
    partial = {s: leader[s] for s in (0, 1)}
    assert block.versus(partial, set(rows))[4] == 2


def test_the_overview_leads_with_the_track_whose_score_ranks_most_like_its_public_benchmark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pathlib import Path

    from peftrepro import pages

    agreement = {"gsm-symbolic": 0.76, "flux-digits": 0.40}
    monkeypatch.setattr(pages, "score_agreement", lambda t, rows, published: agreement[t.name])
    monkeypatch.setattr(pages, "_overview_of_task", lambda name, rows, root_rel: [f"## {name}"])
    names = ["arithmetic", "digits", "flux-digits", "gsm-symbolic", "metamathqa"]

    def order() -> list[str]:
        text = pages.overview({name: [] for name in names}, [], Path("."), "..")
        return [line[3:] for line in text.splitlines() if line[3:] in names]

    # Calibrated tracks first, the higher agreement first; then the rest by name.
    assert order() == ["gsm-symbolic", "flux-digits", "arithmetic", "digits", "metamathqa"]
    agreement["flux-digits"] = 0.9
    assert order()[:2] == ["flux-digits", "gsm-symbolic"]
    agreement["flux-digits"] = float("nan")  # no figure (a constant column): after the ones that have one
    assert order()[:2] == ["gsm-symbolic", "flux-digits"]
