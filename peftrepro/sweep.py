"""`peftrepro sweep`: the learning-rate sweep every method gets, judged on the validation split only.

Same budget for every method: the task's training settings and one seed, once per learning rate
of the grid. The chosen rate has the highest final validation score (ties: the higher mean over
the validation curve, then the smaller rate). The test split is never evaluated here, so a sweep
cannot tune on the numbers the leaderboard ranks by. The result goes to `<submission>/sweep.json`,
bound to the manifest by the sha256 of its resolved config without the learning rate.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftrepro import __version__, schemas
from peftrepro.errors import PeftreproError, RecordError
from peftrepro.jsonio import canonical_sha256, pretty_bytes, replace_file
from peftrepro.manifest import ResolvedManifest
from peftrepro.records import timestamp, utc_now

SWEEP_FILE = "sweep.json"
SWEEP_SCHEMA_VERSION = 1
SELECTION = (
    "highest final validation score; ties: higher mean over the validation curve, then the smaller rate"
)


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


def choose(points: list[dict[str, Any]]) -> float | None:
    ok = [p for p in points if p["status"] == "success"]
    if not ok:
        return None
    best = max(ok, key=lambda p: (p["valid_final"], p["valid_mean"], -p["lr"]))
    return float(best["lr"])


def run_sweep(
    manifest: ResolvedManifest,
    lrs: list[float],
    *,
    seed: int,
    progress: bool | None = None,
    on_point: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train once per learning rate (validation only); return the sweep record (not written)."""
    from peftrepro.job import train_adapter
    from peftrepro.tasks import get_task

    started = utc_now()
    points: list[dict[str, Any]] = []
    environment: dict[str, Any] = {}
    for lr in lrs:
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
                "status": "failed",
                "error": " ".join(str(e).split())[:500] or type(e).__name__,
            }
        else:
            curve = t.result.valid_curve
            scores = [c[t.task.valid_key] for c in curve]
            point = {
                "lr": lr,
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
        points.append(point)
        if on_point is not None:
            on_point(point)
    chosen = choose(points)
    config = manifest.resolved_config()
    return {
        "schema_version": SWEEP_SCHEMA_VERSION,
        "toolkit": {"name": "peftrepro", "version": __version__},
        "submission": {
            "task": manifest.task,
            "task_version": get_task(manifest.task).version,
            "method": manifest.method,
            "name": manifest.name,
        },
        "swept_config_sha256": swept_config_sha256(config),
        "seed": seed,
        "grid": sorted(lrs),
        "selection": SELECTION,
        "points": sorted(points, key=lambda p: p["lr"]),
        "chosen_lr": chosen,
        "at_grid_edge": chosen is not None and chosen in (min(lrs), max(lrs)),
        "environment": environment,
        "started_at": timestamp(started),
        "finished_at": timestamp(utc_now()),
    }


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
