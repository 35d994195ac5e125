"""Published results as claims: `peftrepro import` of the public comparison's result files.

A result file (`<track>/results/<method>--<name>.json`: run_info, train_info, meta_info) is the
outcome of one experiment folder (`<track>/experiments/<method>/<name>/`). For each one:
- the experiment's manifest: the one already in the tree (where `import` put it), or imported now;
- the config it ran (run_info's peft_config and train_config) converted the same way and resolved:
  it must equal the manifest's resolved config, or the claim is refused with the fields that differ;
- a claim, `<submission>/claims/<id>.json` (schemas/published-claim.schema.json): what the file
  says, mapped onto the metric table, bound to the manifest by sha256 and to the file by the
  sha256 of its bytes, with the repository and commit it came from. A field the file lacks is
  absent, never guessed. Claims are written once and never edited (`ci` refuses changes).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftrepro import schemas
from peftrepro.errors import EXIT_BAD_INPUT, InputError, NotConvertible, PeftreproError
from peftrepro.importer import (
    DEFAULTS,
    Imported,
    build,
    check,
    convert,
    find_experiments,
    import_experiments,
    safe_name,
    write,
)
from peftrepro.jsonio import JSONReadError, parse_json, pretty_bytes, read_capped, write_new_file
from peftrepro.manifest import resolve
from peftrepro.records import CLAIMS_DIR
from peftrepro.tasks import get_task

RESULTS = "results"
EXPERIMENTS = "experiments"
COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class Track:
    """How a task's result files name its figures: (their key in the last metrics entry, ours)."""

    test: tuple[str, str]
    prior: tuple[str, str]
    valid: tuple[str, str]  # in each evaluation's metrics entry; ours inside valid_curve
    model_type: str | None = None  # the base model's type in peft's default-target tables


TRACKS = {
    "metamathqa": Track(
        ("test accuracy", "test_accuracy"),
        ("forgetting", "forgetting_same_position"),  # their definition: see the metric table
        ("valid accuracy", "valid_accuracy"),
        "llama",
    ),
    "image-gen": Track(
        ("test dino_similarity", "test_concept_score"),
        ("drift", "drift"),
        ("valid dino_similarity", "valid_concept_score"),
    ),
}
# train_info's figures -> ours (the same quantities: see the metric table's meanings).
TRAIN_INFO = {
    "accelerator_memory_max": "peak_memory_bytes",
    "accelerator_memory_reserved_avg": "memory_avg_bytes",
    "accelerator_memory_reserved_99th": "memory_p99_bytes",
    "train_time": "train_seconds",
    "file_size": "adapter_bytes",
    "num_trainable_params": "trainable_params",
    "num_total_params": "total_params",
}
# Config fields that training fills in (AdaLoRA saves the rank it allocated to each matrix): the run
# config in a result file has them, the experiment's config that started the run does not.
WRITTEN_BY_TRAINING = {"ADALORA": ("rank_pattern",)}
# Fields peft fills in from the model when the config leaves them unset: a result's run config has
# the filled values. Module lists come from peft's per-architecture tables (checked against them);
# these types fill theirs from the model itself (the embedding, the attention block, its shapes).
FILLED_FROM_MODEL = {
    "ADAPTION_PROMPT": ("target_modules",),
    "TRAINABLE_TOKENS": ("target_modules",),
}
PROMPT_LEARNING_SHAPES = ("num_attention_heads", "token_dim", "num_layers", "num_transformer_submodules")
PROMPT_LEARNING = ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "ADAPTION_PROMPT")
# peft stores these as sets: their order in a saved file means nothing.
SET_FIELDS = ("target_modules", "feedforward_modules", "modules_to_save", "exclude_modules")
COUNTS = {"peak_memory_bytes", "adapter_bytes", "trainable_params", "total_params", "steps_completed"}


@dataclass
class Claim:
    path: Path  # where it is (or would be) written
    doc: dict[str, Any]
    manifest: Imported | None  # the experiment's manifest, when it is not in the tree yet


def find_results(path: Path) -> list[Path]:
    """Result files at `path`: the file itself, a results/ folder's files, or every <track>/results/
    under a folder (a track is a folder with default_training_params.json)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise NotConvertible(f"{path}: no such file or folder")
    if path.name == RESULTS:
        return sorted(path.glob("*.json"))
    return sorted(f for f in path.rglob(f"{RESULTS}/*.json") if (f.parent.parent / DEFAULTS).is_file())


def _get(obj: Any, file: str, *keys: str, kind: type | tuple[type, ...]) -> Any:
    """obj[k1][k2]..., refused with the field's path when missing or not of `kind` (numbers: _number)."""
    where = ""
    for key in keys:
        where += f"/{key}"
        if not isinstance(obj, dict) or key not in obj:
            raise NotConvertible(f"{file}: {where}: required field is missing")
        obj = obj[key]
    if not isinstance(obj, kind):
        name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise NotConvertible(f"{file}: {where}: expected {name}, got {type(obj).__name__}")
    return obj


def read_result(path: Path) -> tuple[dict[str, Any], bytes]:
    """The file's JSON and exact bytes; a refusal names the file (size cap, JSON, NaN, object)."""
    try:
        raw = read_capped(path)
        data = parse_json(raw, nan=True)  # a NaN figure is a figure they lack: see _optional
    except (JSONReadError, OSError) as e:
        raise NotConvertible(f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise NotConvertible(f"{path}: expected a JSON object")
    return data, raw


def claim_for(path: Path, root: Path, *, repository: str, commit: str) -> Claim:
    """The claim that the result file at `path` makes about its experiment's manifest under `root`."""
    file = str(path)
    data, raw = read_result(path)
    status = _get(data, file, "train_info", "status", kind=str)
    if status != "success":
        raise NotConvertible(f"{file}: /train_info/status: {status!r}; only a successful run claims figures")
    experiment = _get(data, file, "run_info", "experiment_name", kind=str)
    parts = experiment.split("/")
    if len(parts) != 2 or not all(re.fullmatch(r"[A-Za-z0-9_.+-]{1,100}", p) for p in parts):
        raise NotConvertible(
            f"{file}: /run_info/experiment_name: expected <method>/<name>, got {experiment[:80]!r}"
        )
    track_dir = path.resolve().parent.parent
    folder = track_dir / EXPERIMENTS / parts[0] / parts[1]
    if path.resolve().parent.name != RESULTS or not (track_dir / DEFAULTS).is_file():
        raise NotConvertible(f"{file}: not in a track's {RESULTS}/ folder (beside {DEFAULTS})")
    if not folder.is_dir():
        raise NotConvertible(f"{file}: its experiment {experiment} does not exist ({folder})")

    from_folder = convert(folder)
    target = root / from_folder.relpath
    new_manifest = None if target.exists() else from_folder
    try:
        manifest = resolve(target) if new_manifest is None else check(from_folder, root)
    except PeftreproError as e:
        raise NotConvertible(f"{file}: its manifest {target} does not resolve: {e}") from None
    track = TRACKS.get(manifest.task)
    if track is None:
        raise NotConvertible(f"{file}: the {manifest.task} task has no published results to read")
    ran_config = _get(data, file, "run_info", "peft_config", kind=(dict, type(None)))
    if ran_config is not None:  # what training wrote back into the config is an outcome, not a setting
        ran_config = {
            k: v
            for k, v in ran_config.items()
            if k not in WRITTEN_BY_TRAINING.get(ran_config.get("peft_type"), ())
        }
    ran = build(
        f"{track_dir.name}/{experiment}",
        track_dir,
        parts[0],
        parts[1],
        _get(data, file, "run_info", "train_config", kind=dict),
        ran_config,
    )
    try:
        ran_resolved = check(ran, root)
    except PeftreproError as e:
        raise NotConvertible(f"{file}: the config it ran does not resolve: {e}") from None
    ours_config, theirs_config = manifest.resolved_config(), ran_resolved.resolved_config()
    theirs_config["peft_config"] = _as_configured(
        theirs_config["peft_config"], ours_config["peft_config"], track.model_type
    )
    differing = _differences(_sets_sorted(ours_config), _sets_sorted(theirs_config))
    if differing:
        raise NotConvertible(
            f"{file}: the config it ran differs from {target}'s in {', '.join(differing[:8])}"
            + (f" and {len(differing) - 8} more" if len(differing) > 8 else "")
        )

    task = get_task(manifest.task)
    steps = _get(data, file, "train_info", "metrics", kind=list)
    if not steps or not all(isinstance(s, dict) for s in steps):
        raise NotConvertible(f"{file}: /train_info/metrics: expected a non-empty list of objects")
    where = f"/train_info/metrics/{len(steps) - 1}"
    metrics: dict[str, Any] = {track.test[1]: _number(steps[-1], file, where, track.test[0])}
    found = {
        track.prior[1]: _optional(steps[-1], file, where, track.prior[0]),
        "train_loss_final": _optional(steps[-1], file, where, "train loss"),
        "steps_completed": _optional(steps[-1], file, where, "step"),
        "total_seconds": _optional(data["run_info"], file, "/run_info", "total_time"),
    }
    info = _get(data, file, "train_info", kind=dict)
    found.update({ours: _optional(info, file, "/train_info", theirs) for theirs, ours in TRAIN_INFO.items()})
    for key, value in found.items():
        if value is not None:
            metrics[key] = int(value) if key in COUNTS and float(value).is_integer() else value
    curve = []
    for i, entry in enumerate(steps):
        at = f"/train_info/metrics/{i}"
        step, score = _optional(entry, file, at, "step"), _optional(entry, file, at, track.valid[0])
        if step is not None and score is not None:
            point: dict[str, float | int] = {"step": int(step), track.valid[1]: score}
            loss = _optional(entry, file, at, "train loss")
            if loss is not None:
                point["train_loss"] = loss
            curve.append(point)
    if curve:
        metrics["valid_curve"] = curve

    sha = hashlib.sha256(raw).hexdigest()
    claim_id = f"{safe_name(path.stem)[:100]}-{sha[:12]}"
    doc = {
        "$schema": "../../../../../schemas/published-claim.schema.json",
        "schema_version": 1,
        "claim_id": claim_id,
        "submission": {
            "task": manifest.task,
            "task_version": task.version,
            "method": manifest.method,
            "name": manifest.name,
            "manifest_sha256": manifest.sha256,
        },
        "source": {
            "repository": repository,
            "commit": commit,
            "path": f"method_comparison/{track_dir.name}/{RESULTS}/{path.name}",
            "sha256": sha,
        },
        "experiment": experiment,
        **({"created_at": c} if isinstance(c := data["run_info"].get("created_at"), str) else {}),
        "metrics": metrics,
        "environment": _environment(data, file),
    }
    try:
        schemas.check(doc, schemas.CLAIM, file, InputError)
    except InputError as e:
        raise NotConvertible(f"{file}: {e.pointer or '/'}: {e.expected} (as mapped onto a claim)") from None
    folder_out = target.parent / CLAIMS_DIR
    return Claim(folder_out / f"{claim_id}.json", doc, new_manifest)


def _number(obj: dict[str, Any], file: str, where: str, key: str) -> float | int:
    if key not in obj:
        raise NotConvertible(f"{file}: {where}/{key}: required field is missing")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NotConvertible(f"{file}: {where}/{key}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise NotConvertible(f"{file}: {where}/{key}: not a finite number")
    return value


def _optional(obj: dict[str, Any], file: str, where: str, key: str) -> float | int | None:
    """A figure the file may lack: None when absent or not finite (NaN is how their harness writes a
    figure it could not compute); a value of the wrong type is refused."""
    value = obj.get(key)
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return _number(obj, file, where, key)


def _environment(data: dict[str, Any], file: str) -> dict[str, Any]:
    meta = _get(data, file, "meta_info", kind=dict)
    env: dict[str, Any] = {"accelerator": _get(meta, file, "system_info", "accelerator", kind=str)}
    packages = meta.get("package_info")
    if isinstance(packages, dict):
        env["packages"] = {k: v for k, v in packages.items() if isinstance(v, str | type(None))}
    model = meta.get("model_info")
    if isinstance(model, dict) and isinstance(model.get("sha"), str):
        env["model_revision"] = model["sha"]
    datasets = meta.get("dataset_info")
    if isinstance(datasets, dict):
        if isinstance(datasets.get("sha"), str):  # one dataset (image-gen)
            env["data_revisions"] = {"dataset": datasets["sha"]}
        else:
            env["data_revisions"] = {
                k: v["sha"]
                for k, v in datasets.items()
                if isinstance(v, dict) and isinstance(v.get("sha"), str)
            }
    system = meta.get("system_info", {})
    words = [system.get(k) for k in ("system", "release", "machine")]
    if all(isinstance(w, str) for w in words):
        env["system"] = " ".join(words)[:200]
    return env


def _default_modules(peft_type: str, key: str, model_type: str | None) -> list[str] | None:
    """peft's default `key` ("target_modules", "feedforward_modules") for this type and architecture."""
    if model_type is None:
        return None
    from peft.utils import constants

    kind = "FEEDFORWARD" if key == "feedforward_modules" else "TARGET"
    table = getattr(constants, f"TRANSFORMERS_MODELS_TO_{peft_type}_{kind}_MODULES_MAPPING", None)
    if table is None and kind == "TARGET":
        from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

        tuner = {getattr(k, "value", k): v for k, v in PEFT_TYPE_TO_TUNER_MAPPING.items()}.get(peft_type)
        table = getattr(tuner, "target_module_mapping", None)
    found = table.get(model_type) if isinstance(table, dict) else None
    return list(found) if found is not None else None


def _as_configured(theirs: Any, ours: Any, model_type: str | None) -> Any:
    """Their run config with what peft filled in at run time put back to unset, where ours leaves
    it unset and the filled value is what peft fills in (see FILLED_FROM_MODEL)."""
    if not isinstance(theirs, dict) or not isinstance(ours, dict):
        return theirs
    out, peft_type = dict(theirs), str(theirs.get("peft_type"))
    for key in ("target_modules", "feedforward_modules"):
        if ours.get(key) is None and out.get(key) is not None:
            default = _default_modules(peft_type, key, model_type)
            filled = (
                isinstance(out[key], list) and default is not None and sorted(out[key]) == sorted(default)
            )
            if filled or key in FILLED_FROM_MODEL.get(peft_type, ()):
                out[key] = None
    if peft_type in PROMPT_LEARNING:
        for key in PROMPT_LEARNING_SHAPES:
            if key in out:
                out[key] = ours.get(key)
    return out


def _sets_sorted(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: sorted(set(v))
            if k in SET_FIELDS and isinstance(v, list) and all(isinstance(x, str) for x in v)
            else _sets_sorted(v)
            for k, v in node.items()
        }
    return node


def _differences(ours: Any, theirs: Any, where: str = "") -> list[str]:
    """The paths at which two resolved configs differ (lists compared whole)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return [
            d
            for k in sorted(set(ours) | set(theirs))
            for d in _differences(ours.get(k), theirs.get(k), f"{where}.{k}" if where else k)
        ]
    return (
        []
        if ours == theirs
        else [f"{where} (ours {json.dumps(ours)[:40]}, theirs {json.dumps(theirs)[:40]})"]
    )


def import_path(
    path: Path, root: Path, *, repository: str, commit: str | None, dry_run: bool, echo: Callable[[str], None]
) -> int:
    """`peftrepro import PATH`: the experiment folders at or under PATH as manifests, and the result
    files there as claims (a result file, a results/ folder, or the whole method_comparison/)."""
    if not path.exists():
        raise NotConvertible(f"{path}: no such file or folder")
    experiments = find_experiments(path) if path.is_dir() else []
    results = find_results(path)
    if not experiments and not results:
        raise NotConvertible(
            f"{path}: no experiment folders (experiments/<method>/<name>/adapter_config.json) and no result "
            f"files (<track>/{RESULTS}/*.json)"
        )
    code = import_experiments(path, root, dry_run=dry_run, echo=echo) if experiments else 0
    if not results:
        return code
    return max(
        code,
        import_results(results, path, root, repository=repository, commit=commit, dry_run=dry_run, echo=echo),
    )


def import_results(
    files: list[Path],
    path: Path,
    root: Path,
    *,
    repository: str,
    commit: str | None,
    dry_run: bool,
    echo: Callable[[str], None],
) -> int:
    """`peftrepro import` of the result `files` found at `path`: a claim for each (and the manifest
    it needs). Exit 2 if any file was refused; a refused file writes nothing."""
    if commit is None or not COMMIT.fullmatch(commit):
        raise NotConvertible(
            f"{path}: importing published results needs --commit, the 40-hex commit of {repository} "
            "they come from"
        )
    failed = 0
    for f in files:
        try:
            claim = claim_for(f, root, repository=repository, commit=commit)
            data = pretty_bytes(claim.doc)
            if claim.path.exists():
                if claim.path.read_bytes() == data:
                    echo(f"already imported {f.name} -> {claim.path}")
                    continue
                raise NotConvertible(f"{f}: {claim.path} exists and differs; a claim is never overwritten")
            if not dry_run:
                if claim.manifest is not None:
                    write(claim.manifest, root)
                claim.path.parent.mkdir(parents=True, exist_ok=True)
                write_new_file(claim.path, data)
        except NotConvertible as e:
            failed += 1
            echo(f"cannot import: {e}")
            continue
        made = " (and its manifest)" if claim.manifest is not None else ""
        echo(f"{'would write' if dry_run else 'wrote'} claim {claim.path}{made}")
    echo(f"{len(files) - failed} of {len(files)} result files imported as claims")
    return EXIT_BAD_INPUT if failed else 0
