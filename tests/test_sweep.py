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
    in_process = run_sweep(resolve(path), [1e-3, 3e-2], seed=0)  # the CLI runs it in a child process
    assert splits and set(splits) == {"valid"}
    monkeypatch.undo()

    result = CliRunner().invoke(main, ["sweep", str(path), "--lrs", "1e-3,3e-2", "--extend", "0", "--apply"])
    assert result.exit_code == 0, result.output
    record = json.loads((path.parent / SWEEP_FILE).read_text())

    def measured(points: list[dict]) -> list[dict]:
        return [{k: v for k, v in p.items() if k != "train_seconds"} for p in points]

    assert measured(record["points"]) == measured(in_process["points"])  # bit-exact, in either process
    schemas.check(record, schemas.SWEEP, SWEEP_FILE)
    assert [p["lr"] for p in record["points"]] == [1e-3, 3e-2] and record["grid"] == [1e-3, 3e-2]
    assert record["chosen_lr"] == choose(record["points"]) and record["at_grid_edge"] is True
    assert all(p["status"] == "success" and len(p["valid_curve"]) == 2 for p in record["points"])
    applied = resolve(path)
    assert applied.training.optimizer_kwargs["lr"] == record["chosen_lr"]
    assert swept_config_sha256(applied.resolved_config()) == record["swept_config_sha256"]
    assert f"chosen lr {record['chosen_lr']:g}" in result.output


def test_choice_rule_final_score_then_mean_then_smaller_rate() -> None:
    def p(lr: float, final: float, mean: float) -> dict:
        return {"lr": lr, "status": "success", "valid_final": final, "valid_mean": mean}

    assert choose([p(1e-3, 0.5, 0.3), p(3e-3, 0.6, 0.2)]) == 3e-3
    assert choose([p(1e-3, 0.6, 0.3), p(3e-3, 0.6, 0.4)]) == 3e-3
    assert choose([p(1e-3, 0.6, 0.4), p(3e-3, 0.6, 0.4)]) == 1e-3
    assert choose([{"lr": 1e-3, "status": "failed", "error": "nan"}]) is None


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


def test_extend_widens_an_edge_choice_and_reuses_the_points_already_measured(write_manifest) -> None:
    path = write_manifest()
    first = CliRunner().invoke(main, ["sweep", str(path), "--lrs", "1e-3,3e-2", "--extend", "0"])
    assert first.exit_code == 0, first.output
    before = json.loads((path.parent / SWEEP_FILE).read_text())
    assert before["extend"] == 0 and before["reused_lrs"] == [] and before["at_grid_edge"] is True

    second = CliRunner().invoke(main, ["sweep", str(path), "--lrs", "1e-3,3e-2", "--extend", "1"])
    assert second.exit_code == 0, second.output
    after = json.loads((path.parent / SWEEP_FILE).read_text())
    schemas.check(after, schemas.SWEEP, SWEEP_FILE)
    past = 0.1 if before["chosen_lr"] == 3e-2 else 3e-4  # the next rung of the 1-3-10 ladder
    assert after["reused_lrs"] == [1e-3, 3e-2] and "reused from the previous sweep.json" in second.output
    assert [p["lr"] for p in after["points"]] == sorted([1e-3, 3e-2, past])
    # The reused points are the earlier ones verbatim (a re-run would have its own train_seconds).
    assert [p for p in after["points"] if p["lr"] != past] == before["points"]
    assert after["chosen_lr"] == choose(after["points"])
