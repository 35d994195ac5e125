"""`peftrepro new` and `peftrepro list`: start a submission, and see what exists.

A new manifest names every field of its PEFT type's config with the installed peft's default, so
that a contributor edits values instead of looking up names; fields the manifest policy refuses
(paths, hub revisions, remote code) and those the task fills (task_type) are left out.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
from pathlib import Path
from typing import Any

from tabulate import tabulate

from peftrepro.collect import load_tree
from peftrepro.errors import ManifestError, UsageError
from peftrepro.jsonio import write_new_file
from peftrepro.leaderboard import task_rows
from peftrepro.manifest import FORBIDDEN_FIELDS, MANIFEST_FILE, NAME_RE, load_raw, resolve
from peftrepro.methods import FAMILIES, UNSUPPORTED_TYPES, UNSUPPORTED_VARIANTS, starter
from peftrepro.metrics import METRICS_BY_KEY
from peftrepro.peftconfig import MODEL_FIELDS
from peftrepro.tasks import get_task, task_names
from peftrepro.validate import validate_one

# Filled by the task or by peft itself; never something a submission chooses.
NOT_CHOSEN = {"peft_type", "task_type", "base_model_name_or_path", "inference_mode", "peft_version"}
PLACEHOLDER = "(replace this)"
# Fields that peft leaves unset (None) but that a config of the type needs: a starting value,
# which the contributor is expected to tune. total_step follows the task's max_steps.
STARTERS: dict[str, dict[str, Any]] = {
    "PROMPT_TUNING": {"num_virtual_tokens": 20},
    "PREFIX_TUNING": {"num_virtual_tokens": 20},
    "P_TUNING": {"num_virtual_tokens": 20},
    "CARTRIDGE": {"num_virtual_tokens": 20},
}
NOT_NULL = {"r", "lora_alpha", "alpha", "num_virtual_tokens"}  # the schema types them: None is left out
SCHEMA_REF = "../../../../schemas/manifest.schema.json"


def peft_defaults(peft_type: str) -> dict[str, Any]:
    """`{"peft_type": ..., field: default, ...}` for every field of the installed peft's config class
    that has a JSON default and that a manifest may set."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    out: dict[str, Any] = {"peft_type": peft_type}
    config_class: Any = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]  # type: ignore[index]
    for f in dataclasses.fields(config_class):
        if f.name in NOT_CHOSEN or f.name in FORBIDDEN_FIELDS or f.name.startswith("_") or not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        value = value.value if isinstance(value, enum.Enum) else value
        if value is None and f.name in NOT_NULL:
            continue  # peft derives it (from r, say)
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue  # not expressible in a manifest (a class, a callable): peft's default applies
        out[f.name] = value
    return out


# Training settings a transplant keeps as the public experiment wrote them: what the method is
# (its optimizer and that optimizer's own arguments), not the budget of the GPU run.
TRANSPLANT_KEEPS = {"optimizer_type", "init_kv_cache_prefix"}
# AdaLoRA's schedule is counted in steps: it is scaled with the track's max_steps.
STEP_FIELDS = ("total_step", "tinit", "tfinal", "deltaT")


def transplant(source: dict[str, Any], task: str) -> tuple[dict[str, Any] | None, dict[str, Any], str]:
    """A public experiment's manifest (`source`, of the task that `task` stands in for) carried to
    the CPU track `task` under the track's conditions: the same PEFT config, its learning rate
    relative to its own task's default kept (theirs x track default / their default), the track's
    budget. Returns (peft_config, training overrides, what was changed, for the description)."""
    ours, theirs = get_task(task).training_defaults, get_task(source["task"]).training_defaults
    given = source.get("training") or {}
    factor = ours["optimizer_kwargs"]["lr"] / theirs["optimizer_kwargs"]["lr"]
    kwargs = {**(given.get("optimizer_kwargs") or {})}
    their_lr = kwargs.get("lr", theirs["optimizer_kwargs"]["lr"])
    kwargs["lr"] = float(f"{their_lr * factor:.6g}")
    training = {k: v for k, v in given.items() if k in TRANSPLANT_KEEPS}
    training["optimizer_kwargs"] = kwargs
    dropped = sorted(k for k in given if k not in TRANSPLANT_KEEPS and k != "optimizer_kwargs")
    peft_config = copy.deepcopy(source["peft_config"])
    derived = sorted(k for k in MODEL_FIELDS if peft_config is not None and k in peft_config)
    for k in derived:  # their model's width, depth and heads: peft fills ours
        del peft_config[k]
    steps = ours["max_steps"] / theirs["max_steps"]
    if peft_config is not None and peft_config.get("peft_type") == "ADALORA":
        for k in STEP_FIELDS:
            if isinstance(peft_config.get(k), int):
                peft_config[k] = max(1, round(peft_config[k] * steps))
        peft_config.setdefault("total_step", ours["max_steps"])
    default, their_default = ours["optimizer_kwargs"]["lr"], theirs["optimizer_kwargs"]["lr"]
    note = (
        f"learning rate {their_lr:g} x {factor:g} (this track's default {default:g} over theirs "
        f"{their_default:g}) = {kwargs['lr']:g}"
    )
    if dropped:
        note += f"; their {', '.join(dropped)} left out (this track's own apply)"
    if derived:
        note += f"; their model's {', '.join(derived)} left out (peft takes them from this model)"
    return peft_config, training, note


def skeleton(task: str, method: str, name: str, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """A manifest for task/method/name: from `source` (another manifest) or the method's defaults.
    A source of the published task that `task` stands in for is transplanted (see `transplant`)."""
    family = FAMILIES.get(method)
    if family is None:
        raise UsageError(f"unknown method family {method!r}; `peftrepro list methods` shows them")
    texts: dict[str, Any] = {}  # a transplant's title, authors and description
    if source is not None and source["task"] != task and get_task(task).published_task == source["task"]:
        peft_config, training, note = transplant(source, task)
        origin = f"{source['task']}/{source['method']}/{source['name']}"
        texts = {
            "title": f"{origin} of the public comparison, on the {task} track",
            "authors": source["authors"],
            "description": f"The public experiment {origin} transplanted by `peftrepro new --from`: "
            f"its PEFT config as it is, under this track's conditions; {note}.",
        }
    elif source is not None:
        peft_config = source["peft_config"]
        training = dict(source.get("training", {}))
    else:
        training = {}
        peft_config = None
        if family.peft_type is not None:
            peft_config = {**peft_defaults(family.peft_type), **STARTERS.get(family.peft_type, {})}
            if family.peft_type == "ADALORA":  # its schedule must end where training does
                peft_config["total_step"] = get_task(task).training_defaults["max_steps"]
    if peft_config is not None:
        peft_config = {**peft_config, **starter(family)}
    if family.optimizer is not None:
        training["optimizer_type"] = family.optimizer
    doc: dict[str, Any] = {
        "$schema": SCHEMA_REF,
        "schema_version": 1,
        "task": task,
        "method": method,
        "name": name,
        "title": f"{method} {name} {PLACEHOLDER}",
        "authors": [PLACEHOLDER],
        "description": f"How the hyperparameters were chosen, and on which split {PLACEHOLDER}.",
        "peft_config": peft_config,
    }
    doc.update(texts)
    if training:
        doc["training"] = training
    return doc


def new_submission(root: Path, task: str, method: str, name: str, source: Path | None = None) -> Path:
    """Write <root>/<task>/<method>/<name>/manifest.json (never over an existing file); check that it
    resolves. Returns its path."""
    for what, value in (("task", task), ("method", method), ("name", name)):
        if not NAME_RE.fullmatch(value):
            raise UsageError(f"{what} {value!r} must match ^[a-z0-9][a-z0-9._-]{{0,63}}$")
    if task not in task_names():
        raise UsageError(f"unknown task {task!r}; known: {', '.join(task_names())}")
    raw = None
    if source is not None:
        source_file = source / MANIFEST_FILE if source.is_dir() else source
        raw = load_raw(source_file)  # schema-checked: a broken source is refused here, with its path
    doc = skeleton(task, method, name, raw)
    path = root / task / method / name / MANIFEST_FILE
    if path.exists() or path.is_symlink():
        raise UsageError(f"{path} exists; a submission is never edited in place: pick another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_new_file(path, (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode())
    try:
        resolve(path)
    except ManifestError as e:
        path.unlink()  # leave nothing half-made behind
        raise UsageError(f"the new manifest would not resolve ({e.message}); nothing written") from None
    return path


def next_steps(path: Path) -> list[str]:
    folder = path.parent
    return [
        f"1. edit {path}: title, authors, description (how you chose the settings), peft_config, training",
        f"2. peftrepro validate --deep {folder}",
        f"3. peftrepro sweep {folder} --lrs 1e-3,3e-3,1e-2 --apply   (tunes on the validation split)",
        f"4. peftrepro run {folder} --seeds 0,1,2",
        "5. peftrepro ci --changed-since origin/main   (what the pull-request check will say)",
        f"6. open a pull request with {folder}: manifest.json, sweep.json, runs/",
    ]


def list_tasks() -> list[list[str]]:
    rows = []
    for name in task_names():
        t = get_task(name)
        d = t.training_defaults
        budget = f"{d['max_steps']} steps x batch {d['batch_size']}, lr {d['optimizer_kwargs']['lr']:g}"
        rows.append([name, t.version, t.base_model_id, METRICS_BY_KEY[t.score_key].label, budget])
    return rows


def list_methods() -> list[list[str]]:
    rows = []
    for f in FAMILIES.values():
        if f.peft_type is None:
            what = "peft_config null (full fine-tuning)"
        else:
            what = " ".join([f.peft_type, *(f"{k}={json.dumps(v)}" for k, v in starter(f).items())])
        if f.optimizer:
            what += f", optimizer_type {f.optimizer}"
        rows.append([f.name, what])
    rows += [[t.lower().replace("_", "-"), f"not supported: {why}"] for t, why in UNSUPPORTED_TYPES.items()]
    rows += [[name, f"LORA variant, not supported: {why}"] for name, why in UNSUPPORTED_VARIANTS.items()]
    return rows


def list_submissions(root: Path) -> list[list[str]]:
    subs, _ = load_tree(root)
    rows = []
    tasks = sorted({s.key[0] for s in subs} & set(task_names()))
    by_key = {r.sub.key: r for task in tasks for r in task_rows(subs, task)}
    for s in subs:
        label = "/".join(s.key)
        if s.manifest is None:
            rows.append([label, "invalid", (s.problem or "")[:160]])
            continue
        row = by_key.get(s.key)
        if row is None:
            rows.append([label, "not run", ""])
            continue
        seeds = ",".join(str(r.record.seed) for r in row.records)
        status = row.status.replace("_", " ")
        if row.status == "verified":
            status += f" ({len(row.verified_seeds)}/{len(row.records)}, by {', '.join(row.verifiers)})"
        rows.append([label, status, f"seeds {seeds}" + (f"; {row.note}" if row.note else "")])
    return rows


def new_command(root: Path, task: str, method: str, name: str, source: Path | None) -> list[str]:
    """`peftrepro new`: write the skeleton, try it on the task's model, say what to do next."""
    path = new_submission(root, task, method, name, source)
    lines = [f"wrote {path}"]
    checked = validate_one(path)  # attaches it to the task's model: the defaults may not fit it
    if checked.error is not None:
        lines.append(f"note: {checked.error.message}; edit peft_config before running it")
    else:
        lines.append(
            f"it attaches: {checked.trainable_params:,} trainable of {checked.total_params:,} parameters"
        )
    return lines + ["next:"] + [f"  {line}" for line in next_steps(path)]


def listing(what: str, root: Path) -> str:
    """`peftrepro list tasks|methods|submissions` as a table."""
    if what == "tasks":
        headers, rows = ["task", "version", "base model", "score", "training budget"], list_tasks()
    elif what == "methods":
        headers, rows = ["method family", "runs"], list_methods()
    else:
        if not root.is_dir():
            raise UsageError(f"{root}: no such folder")
        headers, rows = ["submission", "status", "detail"], list_submissions(root)
    return tabulate(rows, headers=headers, tablefmt="simple")
