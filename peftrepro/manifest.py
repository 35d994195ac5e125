"""Load, validate and resolve a submission manifest.

`resolve()` is the only way from a file on disk to a `ResolvedManifest`: JSON read defensively,
then the schema, then the submission policy, then the task defaults deep-merged under the
training overrides. Validation that needs the task's model (does the config attach?) lives in
`validate.py`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftrepro import peftconfig, schemas
from peftrepro.errors import ManifestError, UsageError
from peftrepro.jsonio import JSONReadError, canonical_sha256, parse_json, read_capped
from peftrepro.methods import (
    FAMILIES,
    FULL_FINETUNING,
    LORA_VARIANTS,
    METHOD_OPTIMIZERS,
    UNSUPPORTED_TYPES,
    UNSUPPORTED_VARIANTS,
    MethodFamily,
    active_variants,
    family_for,
)
from peftrepro.runconfig import TrainingConfig, check_optimizer_kwargs
from peftrepro.tasks import get_task, task_names

MANIFEST_FILE = "manifest.json"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")

# PEFT config fields that would load files, import modules or run data-dependent init code.
FORBIDDEN_FIELDS: dict[str, str] = {
    "trust_remote_code": "remote code is never run",
    "auto_mapping": "it names Python classes to import",
    "revision": "it selects hub files; the task pins its base model",
    "tokenizer_name_or_path": "it loads a tokenizer from a path or the hub",
    "tokenizer_kwargs": "it is passed to a tokenizer loaded from a path or the hub",
    "megatron_config": "it imports and configures an external module",
    "megatron_core": "it names a module to import",
    "loftq_config": "LoftQ initialisation is not supported by the shared loop",
    "eva_config": "EVA initialisation needs a data pass the shared loop does not make",
    "corda_config": "CorDA initialisation needs a data pass the shared loop does not make",
    "lora_ga_config": "LoRA-GA initialisation needs a data pass the shared loop does not make",
    "arrow_config": "Arrow routing loads other adapters",
}
UNSUPPORTED_INIT = {"loftq", "eva", "corda", "lora_ga"}
# Fields whose strings are regular expressions over module names; elsewhere a backslash or `..`
# in a string can only be a path.
MAX_VALUE_DEPTH = 4  # rank_pattern-style maps are 1 deep; nothing in peft's configs nests beyond 3
REGEX_FIELDS = {"target_modules", "exclude_modules", "modules_to_save", "layers_pattern"}


@dataclass(frozen=True)
class ResolvedManifest:
    """A validated manifest plus everything needed to run it; what every later stage receives."""

    path: Path
    raw: dict[str, Any]
    sha256: str  # canonical sha256 of `raw`: the submission's identity
    task: str
    method: str
    name: str
    peft_config: dict[str, Any] | None  # None: full fine-tuning
    training: TrainingConfig
    source: bytes = field(default=b"", repr=False)  # the file's exact bytes (what a job carries)
    # peft's config object built from `peft_config` (None: full fine-tuning). peft may mutate a
    # config it attaches, so attach a copy: `peft_config_object()`.
    peft: Any = field(default=None, repr=False, compare=False)

    @property
    def folder(self) -> Path:
        return self.path.parent

    def peft_config_object(self) -> Any:
        """A fresh copy of the PEFT config built at resolve time (None for full fine-tuning)."""
        return copy.deepcopy(self.peft)

    def resolved_config(self) -> dict[str, Any]:
        """What ran, as recorded: the PEFT config and the merged training settings."""
        return {"peft_config": copy.deepcopy(self.peft_config), "training": self.training.as_dict()}


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge `override` into a copy of `base`; nested dicts are merged key by key, never replaced.

    (A shallow merge drops every default under a nested key the override mentions, e.g. an
    `optimizer_kwargs: {lr}` override silently losing the default weight decay.)
    """
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def manifest_sha256(raw: Mapping[str, Any]) -> str:
    return canonical_sha256(raw)


def load_raw(path: Path) -> dict[str, Any]:
    """Read the manifest file and check it against the schema; errors name the file and field."""
    return _load(path)[0]


def _load(path: Path) -> tuple[dict[str, Any], bytes]:
    """The schema-checked manifest and the file's exact bytes (read once)."""
    file = str(path)
    if path.is_symlink():
        raise ManifestError(file, "", "manifests may not be symbolic links")
    if not path.is_file():
        raise ManifestError(file, "", "no such manifest file")
    try:
        source = read_capped(path)
        raw = parse_json(source)
    except JSONReadError as e:
        raise ManifestError(file, "", str(e)) from None
    except OSError as e:
        raise ManifestError(file, "", f"cannot be read ({e.strerror})") from None
    if not isinstance(raw, dict):
        raise ManifestError(file, "", "expected a JSON object at the top level")
    schemas.check(raw, schemas.MANIFEST, file, ManifestError)
    return raw, source


def _walk(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    yield path, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _walk(v, (*path, i))


def check_policy(
    raw: dict[str, Any], path: Path, task_names: Iterable[str], base_model_id: str | None
) -> None:
    """The rules the schema cannot express. Raises ManifestError on the first violation."""
    file = str(path)

    def fail(ptr: tuple[Any, ...], expected: str) -> None:
        raise ManifestError(file, schemas.pointer(ptr), expected)

    for key in ("task", "method", "name"):
        # fullmatch: the schema's `$` also accepts a trailing newline in Python's regex engine.
        if not NAME_RE.fullmatch(raw[key]):
            fail(
                (key,),
                f"expected a name matching ^[a-z0-9][a-z0-9._-]{{0,63}}$, got {schemas.show(raw[key])}",
            )
    # Any depth, anywhere in the file: the one key that would let a config run a stranger's code.
    for ptr, _ in _walk(raw):
        if ptr and ptr[-1] == "trust_remote_code":
            fail(ptr, "remote code is never run; remove this field")

    parts = path.resolve().parts
    expected_parts = (raw["task"], raw["method"], raw["name"], MANIFEST_FILE)
    if tuple(parts[-4:]) != expected_parts:
        fail(
            (),
            f"must be at <submissions>/{'/'.join(expected_parts)} (task/method/name must match the folders)",
        )

    if raw.get("supersedes") == f"{raw['method']}/{raw['name']}":
        fail(("supersedes",), "names this submission itself; name the earlier one (method/name)")
    tasks = sorted(task_names)
    if raw["task"] not in tasks:
        fail(("task",), f"unknown task {schemas.show(raw['task'])}; known: {', '.join(tasks)}")

    peft_config = raw["peft_config"]
    if peft_config is None or raw["method"] == FULL_FINETUNING:
        if peft_config is not None or raw["method"] != FULL_FINETUNING:
            fail(
                ("peft_config",) if peft_config is None else ("method",),
                f'full fine-tuning is `"peft_config": null` in the method family {FULL_FINETUNING!r}; '
                "every other family needs a PEFT config",
            )
        return
    peft_type = peft_config["peft_type"]
    if peft_type in UNSUPPORTED_TYPES:
        fail(("peft_config", "peft_type"), f"{peft_type} is not supported: {UNSUPPORTED_TYPES[peft_type]}")
    family = FAMILIES.get(raw["method"])
    if family is None:
        fail(
            ("method",),
            f"unknown method family {schemas.show(raw['method'])}; for {peft_type} use one of: "
            f"{', '.join(family_for(peft_type)) or 'none'}",
        )
        return
    if family.peft_type != peft_type:
        fail(
            ("peft_config", "peft_type"),
            f"method family {family.name!r} runs {family.peft_type}, got {peft_type}",
        )
    for flag, value in family.flags.items():
        if peft_config.get(flag, False) != value:
            fail(
                ("peft_config", flag),
                f"method family {family.name!r} requires {flag} = {schemas.show(value)}",
            )
    if peft_type == "LORA":
        problem = variant_problem(family, peft_config)
        if problem is not None:
            fail(("peft_config", problem[0]), problem[1])

    optimizer = raw.get("training", {}).get("optimizer_type")
    if family.optimizer is not None and optimizer != family.optimizer:
        fail(
            ("training", "optimizer_type"),
            f"method family {family.name!r} requires optimizer_type = {schemas.show(family.optimizer)}",
        )
    if family.optimizer is None and optimizer in METHOD_OPTIMIZERS:
        fail(
            ("training", "optimizer_type"), f"{optimizer} is the method family {optimizer!r}; use that folder"
        )
    kwargs = raw.get("training", {}).get("optimizer_kwargs", {})
    for key, default in (("r", 8), ("lora_alpha", 8)):  # LoraConfig's defaults
        if family.optimizer == "lora-fa" and key in kwargs and kwargs[key] != peft_config.get(key, default):
            fail(
                ("training", "optimizer_kwargs", key),
                f"must equal peft_config.{key} ({peft_config.get(key, default)}), or be left out",
            )
    for key, why in FORBIDDEN_FIELDS.items():
        if peft_config.get(key) not in (None, {}, [], "megatron.core" if key == "megatron_core" else None):
            fail(("peft_config", key), f"not accepted: {why}; remove it")
    base = peft_config.get("base_model_name_or_path")
    if base is not None and base != base_model_id:
        fail(
            ("peft_config", "base_model_name_or_path"),
            f"the task's base model is {base_model_id!r}; remove this field",
        )
    init = peft_config.get("init_lora_weights")
    if isinstance(init, str) and init.lower() in UNSUPPORTED_INIT:
        fail(
            ("peft_config", "init_lora_weights"),
            f"{init!r} initialisation is not supported by the shared loop",
        )
    for key, value in peft_config.items():
        if _depth(value) > MAX_VALUE_DEPTH:
            fail(
                ("peft_config", key), f"nested deeper than {MAX_VALUE_DEPTH} levels; no PEFT field needs that"
            )
    for ptr, value in _walk(peft_config, ("peft_config",)):
        if ptr == ("peft_config", "base_model_name_or_path"):
            continue  # a hub id ("org/name"), checked above: equal to the task's or refused
        if isinstance(value, str) and _looks_like_path(value, regex=len(ptr) > 1 and ptr[1] in REGEX_FIELDS):
            fail(ptr, f"file paths are not accepted in a manifest, got {schemas.show(value)}")
    for key in sorted(REGEX_FIELDS & set(peft_config)):
        value = peft_config[key]  # a string is a regular expression; a list holds plain names
        if isinstance(value, str) and (risk := backtracking_risk(value)):
            fail(
                ("peft_config", key),
                f"{risk} can make matching module names take minutes; use a list of names",
            )


MAX_UNBOUNDED_REPEATS = 3  # `.*` per pattern: module names are short, so n^3 steps stay cheap


def backtracking_risk(pattern: str) -> str | None:
    """Why peft's `re.fullmatch` of this pattern against module names could run for minutes, or None.

    Python's regex engine backtracks: an unbounded repeat inside another (`(.*)*Z`), an alternation
    under an unbounded repeat (`(a|a)*`) or a back-reference can take exponential time on a
    non-match, and a non-match is what almost every module name is. Module patterns need none of
    them (the public comparison's are names, `all-linear` or `.*\\.(q_proj|v_proj)`), so they are
    refused before peft ever compiles the pattern.
    """
    import re._constants as sre
    import re._parser as sre_parse

    try:
        tree = sre_parse.parse(pattern)
    except re.error as e:
        return f"not a valid regular expression ({e.msg})"
    unbounded = 0

    def walk(items: Any, under_repeat: bool) -> str | None:
        nonlocal unbounded
        for op, av in items:
            if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
                _, high, sub = av
                endless = high == sre.MAXREPEAT
                unbounded += endless
                if endless and under_repeat:
                    return "an unbounded repeat inside another"
                found = walk(sub, under_repeat or endless)
            elif op == sre.SUBPATTERN or op == sre.ATOMIC_GROUP:
                found = walk(av[-1] if op == sre.SUBPATTERN else av, under_repeat)
            elif op == sre.BRANCH:
                if under_repeat:
                    return "an alternation under an unbounded repeat"
                found = next((w for b in av[1] if (w := walk(b, under_repeat))), None)
            elif op in (sre.GROUPREF, sre.GROUPREF_EXISTS):
                return "a back-reference"
            elif op in (sre.ASSERT, sre.ASSERT_NOT):
                found = walk(av[1], under_repeat)
            else:
                found = None
            if found:
                return found
        return None

    found = walk(tree, False)
    if found is None and unbounded > MAX_UNBOUNDED_REPEATS:
        found = f"{unbounded} unbounded repeats (at most {MAX_UNBOUNDED_REPEATS})"
    return found


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _looks_like_path(value: str, regex: bool) -> bool:
    if "/" in value or value.startswith("~") or "\x00" in value:
        return True
    return not regex and ("\\" in value or ".." in value)


def variant_problem(family: MethodFamily, peft_config: Mapping[str, Any]) -> tuple[str, str] | None:
    """(field, what is expected) where a LORA config's peft variants are not its family's own."""
    on = active_variants(dict(peft_config))
    for name in on:
        if name in UNSUPPORTED_VARIANTS:
            why = UNSUPPORTED_VARIANTS[name]
            return LORA_VARIANTS[name][0], f"the LoRA variant {name} is not supported: {why}"
    if family.variant is not None and family.variant not in on:
        key, start = LORA_VARIANTS[family.variant]
        return key, f"method family {family.name!r} requires {key} = {schemas.show(start)} (its peft variant)"
    extra = [name for name in on if name != family.variant]
    if extra:
        key = LORA_VARIANTS[extra[0]][0]
        where = f"the method family {extra[0]!r}" if len(on) == 1 else "no family (one variant per config)"
        return key, f"this config is the LoRA variant {'+'.join(on)}: it belongs in {where}"
    return None


def find_manifests(paths: Iterable[Path]) -> list[Path]:
    """Expand each path: a manifest file, a submission folder, or a tree searched for manifests."""
    found: list[Path] = []
    for p in paths:
        if p.is_file() or p.is_symlink():
            found.append(p)
        elif (p / MANIFEST_FILE).exists() or (p / MANIFEST_FILE).is_symlink():
            found.append(p / MANIFEST_FILE)
        elif p.is_dir():
            found.extend(sorted(q for q in p.rglob(MANIFEST_FILE) if "runs" not in q.relative_to(p).parts))
        else:
            raise UsageError(f"{p}: no such file or folder")
    return found


def resolve(path: Path) -> ResolvedManifest:
    """Load, check and resolve one manifest against its task's defaults (the file is read once;
    the PEFT config is built once, here, and every later stage uses that one)."""
    raw, source = _load(path)
    task = get_task(raw["task"]) if raw["task"] in task_names() else None
    check_policy(raw, path, task_names(), task.base_model_id if task else None)
    assert task is not None  # check_policy refused unknown tasks
    overrides = raw.get("training", {})
    merged = deep_merge(task.training_defaults, overrides)
    problem = check_optimizer_kwargs(merged["optimizer_type"], merged["optimizer_kwargs"])
    if problem:
        raise ManifestError(str(path), problem[0], problem[1])
    dtype = merged.get("dtype")
    if dtype is not None and dtype not in task.dtypes:
        raise ManifestError(
            str(path), "/training/dtype", f"task {task.name!r} runs {', '.join(task.dtypes)}, got {dtype!r}"
        )
    prefix = merged.get("init_kv_cache_prefix")
    if prefix is not None and (raw["peft_config"] or {}).get("peft_type") != "PREFIX_TUNING":
        raise ManifestError(str(path), "/training/init_kv_cache_prefix", "applies to PREFIX_TUNING only")
    peft_config = copy.deepcopy(raw["peft_config"])
    built = None
    if peft_config is not None:
        peft_config.setdefault("task_type", task.peft_task_type)
        if peft_config["task_type"] != task.peft_task_type:
            need = task.peft_task_type or "none (its model is not a transformers model; omit task_type)"
            raise ManifestError(str(path), "/peft_config/task_type", f"task {task.name!r} needs {need}")
        built = peftconfig.build(peft_config, str(path))  # the installed peft must accept every field
    return ResolvedManifest(
        path=path,
        raw=raw,
        sha256=manifest_sha256(raw),
        task=raw["task"],
        method=raw["method"],
        name=raw["name"],
        peft_config=peft_config,
        training=TrainingConfig(**merged),
        source=source,
        peft=built,
    )
