"""`peftrepro sweep`: the learning-rate sweep every method gets, judged on the validation split only.

Same budget for every method: the task's training settings, once per learning rate of the grid and
seed (two seeds by default). The chosen rate maximises the mean final validation score over seeds
minus one standard error, and a rate where any seed diverged (the run failed, its loss is not
finite, or it scored at or below the untuned base model) cannot be chosen: the largest rate before
divergence, picked on one lucky seed, diverged on the next seed too often (the earlier rule, the
highest score of one seed, chose dora 0.003 with 0.01 scoring 0.00). The test split is never
evaluated here, so a sweep cannot tune on the numbers the leaderboard ranks by. The result goes
to `<submission>/sweep.json`, bound to the manifest by the sha256 of its resolved config without
the learning rate.

A best rate at the edge of the grid is a truncated optimum, so by default the sweep trains one more
rate a grid step past that edge, up to four times (`--extend`); points already in sweep.json for the
same config and seed are reused, since a run is bit-exact on the CPU tracks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftrepro import __version__, schemas
from peftrepro.errors import PeftreproError, RecordError
from peftrepro.job import preflight, train_adapter
from peftrepro.jsonio import JSONReadError, canonical_sha256, pretty_bytes, read_json, replace_file
from peftrepro.manifest import ResolvedManifest
from peftrepro.records import timestamp, utc_now
from peftrepro.tasks import get_task

SWEEP_FILE = "sweep.json"
SWEEP_SCHEMA_VERSION = 1
SWEEP_SEEDS = (0, 1)
SELECTION = (
    "highest mean final validation score over seeds minus one standard error; a rate where any seed "
    "failed, ended with a non-finite loss or scored at or below the base model cannot be chosen; "
    "ties: the smaller rate"
)


def point_line(label: str, point: dict[str, Any]) -> str:
    """One progress line per trained rate and seed."""
    seed = f" seed {point['seed']}" if "seed" in point else ""
    if point["status"] == "success":
        valid, mean = point["valid_final"], point["valid_mean"]
        return f"{label} lr {point['lr']:g}{seed}: valid {valid:.3f}, mean {mean:.3f}"
    return f"{label} lr {point['lr']:g}{seed}: failed ({point['error']})"


def rate_summary(points: list[dict[str, Any]], base_valid: float | None) -> list[dict[str, Any]]:
    """Per rate: seeds, mean final validation score, its standard error (None with one seed), the
    selection score (mean - SE), and why the rate cannot be chosen ("" when it can)."""
    out = []
    for lr in sorted({float(p["lr"]) for p in points}):
        mine = [p for p in points if float(p["lr"]) == lr]
        ok = [p for p in mine if p["status"] == "success"]
        scores = [float(p["valid_final"]) for p in ok]
        why = ""
        if len(ok) < len(mine):
            why = "a seed failed"
        elif any(not math.isfinite(p.get("train_loss_final", 0.0)) for p in ok):
            why = "a seed's loss is not finite"
        elif base_valid is not None and any(s <= base_valid for s in scores):
            why = "a seed scored at or below the base model"
        mean = statistics.fmean(scores) if scores else math.nan
        se = statistics.stdev(scores) / math.sqrt(len(scores)) if len(scores) > 1 else None
        out.append(
            {"lr": lr, "seeds": len(mine), "mean": mean, "se": se, "score": mean - (se or 0.0), "why": why}
        )
    return out


def choose(points: list[dict[str, Any]], base_valid: float | None = None) -> float | None:
    eligible = [r for r in rate_summary(points, base_valid) if not r["why"]]
    if not eligible:
        return None
    return float(max(eligible, key=lambda r: (r["score"], -r["lr"]))["lr"])


def swept_config_sha256(config: dict[str, Any]) -> str:
    """The resolved config's identity with the learning rate taken out: what the sweep varied."""
    stripped = json.loads(json.dumps(config))
    stripped["training"]["optimizer_kwargs"].pop("lr", None)
    return canonical_sha256(stripped)


def with_lr(manifest: ResolvedManifest, lr: float) -> ResolvedManifest:
    kwargs = {**manifest.training.optimizer_kwargs, "lr": lr}
    return dataclasses.replace(
        manifest, training=dataclasses.replace(manifest.training, optimizer_kwargs=kwargs)
    )


def _on_ladder(lr: float) -> int | None:
    """lr as 10^e or 3*10^e (the 1-3-10 ladder people write rate grids on): 2e or 2e+1, else None."""
    e = math.floor(math.log10(lr) + 1e-9)
    for mantissa, rung in ((1.0, 2 * e), (3.0, 2 * e + 1), (10.0, 2 * e + 2)):
        if math.isclose(lr, mantissa * 10.0**e, rel_tol=1e-6):
            return rung
    return None


def next_rate(
    points: list[dict[str, Any]], grid: list[float], base_valid: float | None = None
) -> float | None:
    """One grid step past the edge the chosen rate sits on, or None when the choice is inside.

    A grid on the 1-3-10 ladder (1e-3,3e-3,1e-2) goes on along it (3e-2, 1e-1; 3e-4, 1e-4); any
    other grid steps by its own spacing at that edge. Rates keep three significant digits.
    """
    chosen = choose(points, base_valid)
    tried = sorted({p["lr"] for p in points})
    if chosen is None or len(tried) < 2 or len(grid) < 2:
        return None
    if chosen not in (tried[0], tried[-1]):
        return None
    up = chosen == tried[-1]
    rungs = [_on_ladder(x) for x in grid]
    rung = _on_ladder(chosen)
    if rung is not None and None not in rungs:
        nxt = rung + (1 if up else -1)
        lr = (1.0 if nxt % 2 == 0 else 3.0) * 10.0 ** (nxt // 2)
    else:
        lr = chosen * (grid[-1] / grid[-2] if up else grid[0] / grid[1])
    lr = float(f"{lr:.3g}")
    return lr if 0 < lr <= 10 and lr not in tried else None


def reusable_points(
    previous: dict[str, Any] | None, config_sha256: str, task_version: str
) -> dict[tuple[float, int], dict]:
    """The points of an earlier sweep of the same config (rate aside) and task version, by (rate,
    seed): a run is bit-exact on this track, so a point measured once is not trained again."""
    if (
        not previous
        or previous.get("swept_config_sha256") != config_sha256
        or previous.get("submission", {}).get("task_version") != task_version
    ):
        return {}
    return {
        (float(p["lr"]), int(p.get("seed", previous.get("seed", 0)))): p for p in previous.get("points", [])
    }


def run_sweep(
    manifest: ResolvedManifest,
    lrs: list[float],
    *,
    seeds: list[int],
    extend: int = 0,
    previous: dict[str, Any] | None = None,
    progress: bool | None = None,
    on_point: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train once per learning rate and seed (validation only); return the sweep record (not written).

    With `extend` > 0, while the chosen rate is at an edge of the rates tried, one more rate a grid
    step beyond it is trained, up to `extend` times: the same stated rule for every method, so a
    family whose best rate lies outside its usual range is not judged at a truncated optimum.
    Points of `previous` (an earlier sweep.json of this config) are reused, not re-run.
    """
    preflight(manifest)
    started = utc_now()
    config = manifest.resolved_config()
    config_sha = swept_config_sha256(config)
    version = get_task(manifest.task).version
    reuse = reusable_points(previous, config_sha, version)
    points: list[dict[str, Any]] = []
    reused: list[float] = []
    environment: dict[str, Any] = {}
    base_valid: float | None = previous.get("base_valid") if reuse and previous else None

    def measure(lr: float, seed: int) -> dict[str, Any]:
        nonlocal environment, base_valid
        if (lr, seed) in reuse:
            reused.append(lr)
            return {**reuse[(lr, seed)], "seed": seed}
        state: dict[str, Any] = {"environment": {}, "steps_completed": 0}
        try:
            t = train_adapter(
                with_lr(manifest, lr),
                seed=seed,
                runner="local",
                state=state,
                progress=progress,
                measure_base=False,
            )
        except PeftreproError:
            raise  # the manifest's fault (a failed structural check, say): the same at every rate
        except Exception as e:  # this rate broke the run (NaN, say): a failed point, the sweep goes on
            point = {
                "lr": lr,
                "seed": seed,
                "status": "failed",
                "error": " ".join(str(e).split())[:500] or type(e).__name__,
            }
        else:
            if base_valid is None:  # once per sweep: the untuned model on the same split
                base_valid = t.prepared.evaluate(t.prepared.load_base().to(t.device), "valid", cfg_eval)
            curve = t.result.valid_curve
            scores = [c[t.task.valid_key] for c in curve]
            point = {
                "lr": lr,
                "seed": seed,
                "status": "success",
                "valid_final": scores[-1],
                "valid_mean": statistics.fmean(scores),
                "valid_curve": curve,
                "train_loss_final": t.result.train_loss_final,
                "train_seconds": round(t.result.train_seconds, 3),
            }
            del t
        environment = environment or {
            k: state["environment"].get(k) for k in ("environment_sha256", "torch", "git", "cpu_capability")
        }
        return point

    def add(lr: float) -> None:
        for seed in seeds:
            point = measure(lr, seed)
            points.append(point)
            if on_point is not None:
                on_point(point)

    cfg_eval = manifest.training.batch_size_eval
    grid = sorted(lrs)
    for lr in grid:
        add(lr)
    for _ in range(extend):
        past = next_rate(points, grid, base_valid)
        if past is None:
            break
        add(past)
    chosen = choose(points, base_valid)
    tried = [p["lr"] for p in points]
    if not environment and previous:  # every point reused: the environment they were measured in
        environment = previous.get("environment", {})
    return {
        "schema_version": SWEEP_SCHEMA_VERSION,
        "toolkit": {"name": "peftrepro", "version": __version__},
        "submission": {
            "task": manifest.task,
            "task_version": version,
            "method": manifest.method,
            "name": manifest.name,
        },
        "swept_config_sha256": config_sha,
        "seed": seeds[0],
        "seeds": seeds,
        **({"base_valid": base_valid} if base_valid is not None else {}),
        "grid": grid,
        "extend": extend,
        "selection": SELECTION,
        "points": sorted(points, key=lambda p: (p["lr"], p["seed"])),
        "reused_lrs": sorted(set(reused)),
        "chosen_lr": chosen,
        "at_grid_edge": chosen is not None and chosen in (min(tried), max(tried)),
        "environment": environment,
        "started_at": timestamp(started),
        "finished_at": timestamp(utc_now()),
    }


def load_previous(folder: Path) -> dict[str, Any] | None:
    """The submission's sweep.json if it is readable and schema-valid; anything else is not reused."""
    path = folder / SWEEP_FILE
    try:
        record = read_json(path)
        schemas.check(record, schemas.SWEEP, str(path), RecordError)
    except (OSError, JSONReadError, RecordError):
        return None
    return record if isinstance(record, dict) else None


def write_sweep(folder: Path, record: dict[str, Any]) -> Path:
    path = folder / SWEEP_FILE
    schemas.check(record, schemas.SWEEP, str(path), RecordError)
    replace_file(path, pretty_bytes(record))
    return path


def apply_lr(manifest: ResolvedManifest, lr: float) -> bool:
    """Set the manifest's `training.optimizer_kwargs.lr` to the chosen rate; the file is rewritten
    only when the rate it resolves to differs (an unchanged manifest keeps its sha256, its records)."""
    if manifest.training.optimizer_kwargs.get("lr") == lr:
        return False
    raw = json.loads(manifest.path.read_text())
    raw.setdefault("training", {}).setdefault("optimizer_kwargs", {})["lr"] = lr
    replace_file(manifest.path, (json.dumps(raw, indent=2, ensure_ascii=False) + "\n").encode())
    return True
