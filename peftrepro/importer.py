"""`peftrepro import`: a public PEFT method comparison experiment folder -> a peftrepro manifest.

An experiment there is `experiments/<method>/<name>/adapter_config.json` (none for full
fine-tuning) plus an optional `training_params.json`, merged over the track's
`default_training_params.json` with a *shallow* merge: a nested dict in the experiment replaces
the default's whole dict. The visible case is `optimizer_kwargs: {"lr": 1e-3}`, which drops the
default weight decay (0.1) and leaves the optimizer's own default (AdamW: 0.01). peftrepro merges
training overrides key by key, so the importer writes such a dropped value out explicitly: the
manifest then trains exactly as the public experiment did, and the importer says what it did.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftrepro.errors import EXIT_BAD_INPUT, NotConvertible, PeftreproError
from peftrepro.jsonio import JSONReadError, read_json, replace_file
from peftrepro.manifest import ResolvedManifest, resolve
from peftrepro.methods import family_of
from peftrepro.tasks import get_task, task_names

ADAPTER_CONFIG = "adapter_config.json"
TRAINING_PARAMS = "training_params.json"
DEFAULTS = "default_training_params.json"
SOURCE = "huggingface/peft method_comparison"

# What each optimizer takes for a weight decay it is not given: the value their run trained with.
OWN_WEIGHT_DECAY = {"AdamW": 0.01, "Adam": 0.0, "SGD": 0.0, "lora-fa": 0.0, "lora+": 0.01, "riemannian": 0.01}
# Their training keys that a peftrepro manifest may set (the task fixes every other one).
MANIFEST_TRAINING = {
    "max_steps",
    "batch_size",
    "batch_size_eval",
    "eval_steps",
    "max_seq_length",
    "seed",
    "grad_norm_clip",
    "optimizer_type",
    "optimizer_kwargs",
    "lr_scheduler",
    "dtype",
    "autocast_adapter_dtype",
    "init_kv_cache_prefix",
}
# Fields of their adapter_config.json that describe where it was saved, not what it trains.
SAVED_ONLY = (
    "auto_mapping",
    "base_model_name_or_path",
    "revision",
    "peft_version",
    "inference_mode",
    "task_type",
)


@dataclass
class Imported:
    experiment: str  # "<track>/<method>/<name>"
    task: str
    manifest: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def relpath(self) -> str:
        m = self.manifest
        return f"{m['task']}/{m['method']}/{m['name']}/manifest.json"


def find_experiments(path: Path) -> list[Path]:
    """Experiment folders at or under `path`: folders holding adapter_config.json or training_params.json
    whose grandparent is `experiments`."""
    path = path.resolve()
    if not path.exists():
        raise NotConvertible(f"{path}: no such folder")
    found = {
        f.parent
        for name in (ADAPTER_CONFIG, TRAINING_PARAMS)
        for f in ([path / name] if (path / name).exists() else path.rglob(name))
        if f.parent.parent.parent.name == "experiments"
    }
    return sorted(found)


def task_for(defaults: dict[str, Any]) -> str:
    model_id = defaults.get("model_id")
    for name in task_names():
        task = get_task(name)
        if model_id == task.base_model_id:
            return name
    raise NotConvertible(f"no peftrepro task runs their base model {model_id!r}")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path)
    except (OSError, JSONReadError) as e:
        raise NotConvertible(f"{path}: unreadable JSON ({e})") from None
    if not isinstance(data, dict):
        raise NotConvertible(f"{path}: expected a JSON object")
    return data


def safe_name(name: str) -> str:
    """Their folder name as a peftrepro name: lower case, runs of other characters as '-'."""
    out = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")[:64]
    return out or "imported"


def convert(folder: Path) -> Imported:
    """One experiment folder -> a manifest (not written) and the notes on what the merge changed."""
    method_dir, track_dir = folder.parent, folder.parent.parent.parent
    experiment = f"{track_dir.name}/{method_dir.name}/{folder.name}"
    params = _read(folder / TRAINING_PARAMS) if (folder / TRAINING_PARAMS).exists() else {}
    adapter = _read(folder / ADAPTER_CONFIG) if (folder / ADAPTER_CONFIG).exists() else None
    return build(experiment, track_dir, method_dir.name, folder.name, params, adapter)


def build(
    experiment: str,
    track_dir: Path,
    method_name: str,
    folder_name: str,
    params: dict[str, Any],
    adapter: dict[str, Any] | None,
) -> Imported:
    """The manifest of an experiment whose training_params.json says `params` and whose adapter
    config is `adapter` (None: full fine-tuning), over its track's defaults. A published result's
    run_info (its whole train_config, its peft_config) goes through here too (published.py)."""
    defaults_path = track_dir / DEFAULTS
    if not defaults_path.exists():
        raise NotConvertible(f"{experiment}: no {DEFAULTS} beside its experiments/ folder")
    defaults = _read(defaults_path)
    try:
        task_name = task_for(defaults)
    except NotConvertible as e:
        raise NotConvertible(f"{experiment}: {e}") from None
    task = get_task(task_name)
    ours = task.training_defaults
    theirs = {**defaults, **params}  # their shallow merge, exactly
    notes: list[str] = []
    training: dict[str, Any] = {}

    for key in sorted(params):
        value = theirs[key]
        if key == "optimizer_kwargs":
            continue  # below
        if key in MANIFEST_TRAINING:
            # Unset in theirs and in their defaults (a result's run_info lists every key): their
            # harness's default, which the task's own default stands for.
            if value is None and defaults.get(key) is None:
                notes.append(f"{key} unset, as in their defaults: the task's {ours.get(key)!r}")
            elif value != ours.get(key, defaults.get(key)):
                training[key] = value
                if key in task.fixed_training:
                    notes.append(
                        f"{key} {value!r} differs from the task's {ours[key]!r}: kept as theirs, but "
                        "`peftrepro ci` refuses a changed training budget in a pull request"
                    )
            else:
                notes.append(f"{key} {value!r} equals the default: left out")
        elif value == defaults.get(key):
            notes.append(f"{key} {value!r} equals the default: left out")
        else:
            raise NotConvertible(
                f"{experiment}: {key} = {json.dumps(value)[:80]} differs from the track's default, and "
                f"the {task_name} task fixes {key} for every submission"
            )

    optimizer = theirs.get("optimizer_type", "AdamW")
    kwargs_theirs = dict(theirs.get("optimizer_kwargs") or {})
    kwargs_ours = dict(ours.get("optimizer_kwargs") or {})
    kwargs: dict[str, Any] = {k: v for k, v in kwargs_theirs.items() if kwargs_ours.get(k) != v}
    for key, default in kwargs_ours.items():
        if key not in kwargs_theirs and key == "weight_decay":
            own = OWN_WEIGHT_DECAY.get(optimizer, 0.0)
            kwargs[key] = own
            notes.append(
                f"their shallow merge drops the default optimizer_kwargs.weight_decay {default!r}, so "
                f"{optimizer} ran with its own {own!r}; written out as weight_decay {own!r} (a key-by-key "
                f"merge would have kept {default!r})"
            )
    if kwargs:
        training["optimizer_kwargs"] = kwargs
    if "max_steps" in training and theirs.get("lr_scheduler") == "cosine":
        training["warmup_steps"] = int(0.1 * training["max_steps"])  # their warmup: 10% of the steps
        notes.append(f"warmup_steps {training['warmup_steps']}: their 10% of max_steps")

    if adapter is None:
        method, peft_config = "full-finetuning", None
    else:
        peft_type = adapter.get("peft_type")
        if not isinstance(peft_type, str):
            raise NotConvertible(f"{experiment}: {ADAPTER_CONFIG} has no peft_type")
        peft_config = _config_fields(experiment, adapter, notes)
        method = family_of(peft_type, peft_config, optimizer)

    name = safe_name(folder_name)
    manifest = {
        "$schema": "../../../../schemas/manifest.schema.json",
        "schema_version": 1,
        "task": task_name,
        "method": method,
        "name": name,
        "title": f"{method_name}/{folder_name} from the public PEFT method comparison",
        "authors": [f"{SOURCE} (imported by peftrepro import)"],
        "description": (
            f"Imported by `peftrepro import` from {SOURCE}/{track_dir.name}/experiments/{method_name}/"
            f"{folder_name}: its adapter_config.json and training_params.json as they are, merged the "
            f"way the public harness merges them. Hyperparameters: chosen by that experiment's authors"
            f" and not re-tuned here." + (f" Import notes: {'; '.join(notes)}." if notes else "")
        )[:4000],
        "peft_config": peft_config,
        **({"training": training} if training else {}),
    }
    return Imported(experiment, task_name, manifest, notes)


def _config_fields(experiment: str, adapter: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """Their saved config without its save-time fields and without the fields at the installed
    peft's defaults (the same config, shorter). A field the installed peft does not have is dropped
    when it is empty (null, {}, []): it cannot change what trains; otherwise the experiment cannot run."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(adapter["peft_type"])
    if cls is None:
        raise NotConvertible(f"{experiment}: the installed peft has no PEFT type {adapter['peft_type']!r}")
    defaults: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
    config: dict[str, Any] = {"peft_type": adapter["peft_type"]}
    at_default = 0
    for key, value in adapter.items():
        if key in SAVED_ONLY or key == "peft_type":
            continue
        if key not in defaults:
            if value in (None, False, {}, []):  # off or empty: a feature this peft does not have anyway
                notes.append(
                    f"peft_config.{key} is {json.dumps(value)} and the installed peft's {cls.__name__} has "
                    "no such field: dropped"
                )
                continue
            raise NotConvertible(
                f"{experiment}: peft_config.{key} = {json.dumps(value)[:80]}, but the installed peft's "
                f"{cls.__name__} has no field {key!r}"
            )
        if _same(value, defaults[key]):
            at_default += 1
            continue
        config[key] = value
    if at_default:
        notes.append(f"{at_default} peft_config fields at the installed peft's defaults left out")
    return config


def _same(value: Any, default: Any) -> bool:
    """A saved JSON value equals a dataclass default (sets and tuples are saved as lists)."""
    if isinstance(default, (set, frozenset)) and isinstance(value, list):
        try:
            default, value = sorted(default), sorted(value)
        except TypeError:
            return False
    elif isinstance(default, tuple):
        default = list(default)
    return type(value) is type(default) and value == default


def check(imported: Imported, submissions: Path) -> ResolvedManifest:
    """The manifest, as if written under `submissions`, must pass the manifest checks (no model load);
    resolved (its `path` is a temporary one, gone on return)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / imported.relpath
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(imported.manifest, indent=2) + "\n")
        try:
            return resolve(path)
        except PeftreproError as e:
            raise NotConvertible(f"{imported.experiment}: {str(e).replace(tmp, str(submissions))}") from None


def manifest_bytes(imported: Imported) -> bytes:
    return (json.dumps(imported.manifest, indent=2, ensure_ascii=False) + "\n").encode()


def already_there(imported: Imported, submissions: Path) -> bool:
    """True when the tree holds exactly this manifest; a different one there is refused."""
    path = submissions / imported.relpath
    if not path.exists():
        return False
    if path.is_file() and not path.is_symlink() and path.read_bytes() == manifest_bytes(imported):
        return True
    raise NotConvertible(
        f"{imported.experiment}: {path} exists and differs; a submission is never overwritten"
    )


def write(imported: Imported, submissions: Path) -> Path:
    path = submissions / imported.relpath
    if path.exists():
        raise NotConvertible(f"{imported.experiment}: {path} exists; a submission is never overwritten")
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, manifest_bytes(imported))
    return path


def import_experiments(path: Path, root: Path, *, dry_run: bool, echo: Callable[[str], None]) -> int:
    """`peftrepro import`: convert every experiment folder at or under `path` into a manifest under
    `root` (or only say what would be written). Exit 2 if any could not be converted."""
    folders = find_experiments(path)
    if not folders:
        raise NotConvertible(
            f"{path}: no experiment folders (experiments/<method>/<name>/adapter_config.json)"
        )
    failed = 0
    for folder in folders:
        try:
            imported = convert(folder)
            check(imported, root)
            there = already_there(imported, root)
            where = root / imported.relpath if dry_run or there else write(imported, root)
        except NotConvertible as e:
            failed += 1
            echo(f"cannot import: {e}")
            continue
        if there:
            echo(f"already imported {imported.experiment} -> {where}")
            continue
        echo(f"{'would import' if dry_run else 'imported'} {imported.experiment} -> {where}")
        for note in imported.notes:
            echo(f"  note: {note}")
    echo(f"{len(folders) - failed} of {len(folders)} experiments converted")
    return EXIT_BAD_INPUT if failed else 0
