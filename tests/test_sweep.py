"""`peftrepro sweep`: validation only, the stated selection rule, a schema-valid record, --apply."""

from __future__ import annotations

import dataclasses
import json

from click.testing import CliRunner

from peftrepro import schemas
from peftrepro.cli import main
from peftrepro.manifest import resolve
from peftrepro.sweep import SWEEP_FILE, choose, run_sweep, swept_config_sha256
from peftrepro.tasks import Prepared, get_task


def test_sweep_never_evaluates_the_test_split_and_applies_the_choice(write_manifest, monkeypatch) -> None:
    path = write_manifest()
    task = get_task("arithmetic")
    splits: list[str] = []
    real_prepare = task.prepare

    def spying_prepare(training=None) -> Prepared:
        prepared = real_prepare(training)
        evaluate = prepared.evaluate
        return dataclasses.replace(
            prepared, evaluate=lambda m, split, b: splits.append(split) or evaluate(m, split, b)
        )

    monkeypatch.setattr(task, "prepare", spying_prepare)
    in_process = run_sweep(resolve(path), [1e-3, 3e-2], seeds=[0, 1])  # the CLI runs it in a child process
    assert splits and set(splits) == {"valid"}
    monkeypatch.undo()

    # The tiny stand-in model scores 0 on validation before and after training: no rate beats the
    # base model, so none can be chosen, and --apply leaves the manifest as it is.
    before = path.read_bytes()
    result = CliRunner().invoke(main, ["sweep", str(path), "--lrs", "1e-3,3e-2", "--extend", "0", "--apply"])
    assert result.exit_code == 1 and "no rate can be chosen" in result.output, result.output
    assert path.read_bytes() == before
    record = json.loads((path.parent / SWEEP_FILE).read_text())

    def measured(points: list[dict]) -> list[dict]:
        return [{k: v for k, v in p.items() if k != "train_seconds"} for p in points]

    assert measured(record["points"]) == measured(in_process["points"])  # bit-exact, in either process
    schemas.check(record, schemas.SWEEP, SWEEP_FILE)
    assert [(p["lr"], p["seed"]) for p in record["points"]] == [(1e-3, 0), (1e-3, 1), (3e-2, 0), (3e-2, 1)]
    assert record["grid"] == [1e-3, 3e-2] and record["seeds"] == [0, 1]
    assert record["chosen_lr"] is None and record["base_valid"] == 0.0  # scored on the validation split
    assert all(p["status"] == "success" and p["valid_curve"] for p in record["points"])
    assert swept_config_sha256(resolve(path).resolved_config()) == record["swept_config_sha256"]
    assert choose(record["points"], None) == 1e-3  # without the base-model rule: the smaller of a tie


def test_choice_rule_mean_minus_one_standard_error_among_rates_where_no_seed_diverged() -> None:
    def p(lr: float, seed: int, final: float, loss: float = 0.5) -> dict:
        return {"lr": lr, "seed": seed, "status": "success", "valid_final": final, "train_loss_final": loss}

    def failed(lr: float, seed: int) -> dict:
        return {"lr": lr, "seed": seed, "status": "failed", "error": "loss is nan"}

    steady, lucky = [p(1e-3, 0, 0.60), p(1e-3, 1, 0.62)], [p(3e-3, 0, 0.90), p(3e-3, 1, 0.40)]
    assert choose(steady + lucky) == 1e-3  # mean 0.65 but SE 0.25: 0.40 < 0.61 - 0.01
    better = [p(3e-3, 0, 0.80), p(3e-3, 1, 0.79)]
    assert choose(steady + better) == 3e-3
    # Three seeds: 0.9, 0.9, 0.55 has mean - SE 0.667, above steady's 0.604, but its third seed is
    # at the base model's score (with two seeds mean - SE is the lower seed: the rule alone decides).
    three = [p(1e-3, 2, 0.61), p(3e-3, 0, 0.9), p(3e-3, 1, 0.9), p(3e-3, 2, 0.55)]
    assert choose([*steady, *three]) == 3e-3
    assert choose([*steady, *three], base_valid=0.55) == 1e-3
    assert choose([*steady, better[0], failed(3e-3, 1)]) == 1e-3  # one seed failed
    assert choose([*steady, better[0], p(3e-3, 1, 0.79, loss=float("inf"))]) == 1e-3
    assert choose([p(1e-3, 0, 0.6), p(1e-3, 1, 0.6), p(3e-3, 0, 0.6), p(3e-3, 1, 0.6)]) == 1e-3  # tie
    assert choose([failed(1e-3, 0), failed(1e-3, 1)]) is None


def test_bad_grids_are_one_line_errors(write_manifest) -> None:
    path = write_manifest()
    for grid in ("abc", "0,1e-3", "1e-3,1e-3", ""):
        result = CliRunner().invoke(main, ["sweep", str(path), "--lrs", grid])
        assert result.exit_code == 2 and "Invalid value for '--lrs'" in result.output, grid
    assert not (path.parent / SWEEP_FILE).exists()


def test_apply_leaves_a_manifest_that_already_uses_the_rate_untouched(write_manifest) -> None:
    from peftrepro.sweep import apply_lr

    path = write_manifest()
    before = path.read_bytes()
    manifest = resolve(path)
    assert apply_lr(manifest, manifest.training.optimizer_kwargs["lr"]) is False
    assert path.read_bytes() == before
    assert apply_lr(manifest, 0.0123) is True
    assert resolve(path).training.optimizer_kwargs["lr"] == 0.0123


def test_next_rate_steps_past_the_edge_the_choice_sits_on() -> None:
    from peftrepro.sweep import next_rate

    def p(lr: float, final: float) -> dict:
        return {"lr": lr, "status": "success", "valid_final": final, "valid_mean": final}

    grid = [1e-3, 3e-3, 1e-2]
    assert next_rate([p(1e-3, 0.1), p(3e-3, 0.2), p(1e-2, 0.3)], grid) == 0.03  # not 0.030000000000000002
    assert next_rate([p(1e-3, 0.3), p(3e-3, 0.2), p(1e-2, 0.1)], grid) == 3e-4
    assert next_rate([p(1e-3, 0.1), p(3e-3, 0.3), p(1e-2, 0.1)], grid) is None  # inside: done
    # after one extension the edges are those of the rates tried, not of the grid
    assert next_rate([p(1e-3, 0.1), p(3e-3, 0.2), p(1e-2, 0.3), p(0.03, 0.4)], grid) == 0.1
    assert next_rate([p(3e-4, 0.4), p(1e-3, 0.1), p(3e-3, 0.2), p(1e-2, 0.3)], grid) == 1e-4
    assert next_rate([p(2e-3, 0.1), p(4e-3, 0.3)], [2e-3, 4e-3]) == 8e-3  # off the ladder: its own x2
    assert next_rate([p(1e-3, 0.1), p(3e-3, 0.2), p(1e-2, 0.4), p(0.03, 0.3)], grid) is None
    assert next_rate([{"lr": 1e-3, "status": "failed", "error": "nan"}], grid) is None
    assert next_rate([p(3.0, 0.1), p(10.0, 0.2)], [3.0, 10.0]) is None  # 30 is past the schema's limit


def test_extend_widens_an_edge_choice_and_reuses_the_points_already_measured(
    write_manifest, monkeypatch
) -> None:
    """In process, with the base-model rule off (the tiny stand-in never beats its base model): an
    edge choice gets one more rate past it, and a second sweep reuses every point of the first."""
    import peftrepro.sweep as sweep

    real_choose = sweep.choose
    monkeypatch.setattr(sweep, "choose", lambda points, base_valid=None: real_choose(points, None))
    manifest = resolve(write_manifest())
    before = run_sweep(manifest, [1e-3, 3e-2], seeds=[0, 1])
    assert before["extend"] == 0 and before["reused_lrs"] == [] and before["at_grid_edge"] is True
    after = run_sweep(manifest, [1e-3, 3e-2], seeds=[0, 1], extend=1, previous=before)
    schemas.check(after, schemas.SWEEP, SWEEP_FILE)
    past = 0.1 if before["chosen_lr"] == 3e-2 else 3e-4  # the next rung of the 1-3-10 ladder
    assert after["reused_lrs"] == [1e-3, 3e-2]
    assert [p["lr"] for p in after["points"]] == sorted(2 * [1e-3, 3e-2, past])
    # The reused points are the earlier ones verbatim (a re-run would have its own train_seconds).
    assert [p for p in after["points"] if p["lr"] != past] == before["points"]
    assert after["chosen_lr"] == real_choose(after["points"], None)


def test_a_sweep_needs_two_seeds(write_manifest) -> None:
    path = write_manifest()
    result = CliRunner().invoke(main, ["sweep", str(path), "--lrs", "1e-3,3e-2", "--seeds", "0"])
    assert result.exit_code == 2 and "at least two seeds" in result.output
    assert not (path.parent / SWEEP_FILE).exists()
