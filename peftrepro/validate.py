"""`peftrepro validate`: schema, policy, and does the PEFT config attach to the task's model."""

from __future__ import annotations

import copy
import gc
from dataclasses import dataclass
from pathlib import Path

from peftrepro import checks, peftconfig
from peftrepro.errors import ManifestError, PeftreproError
from peftrepro.manifest import ResolvedManifest, resolve
from peftrepro.tasks import Prepared, get_task
from peftrepro.training import make_optimizer


@dataclass(frozen=True)
class Validated:
    path: Path
    manifest: ResolvedManifest | None
    trainable_params: int | None = None
    total_params: int | None = None
    checks: list[checks.CheckResult] | None = None  # with --deep
    error: PeftreproError | None = None
    note: str | None = None  # what was not checked, and why

    @property
    def ok(self) -> bool:
        return self.error is None


def validate_one(
    path: Path, attach: bool = True, prepared: dict[str, Prepared] | None = None, deep: bool = False
) -> Validated:
    """Validate one manifest file; never raises for bad input (the error is in the result).
    `deep` adds the structural checks (checks.py) on the task's probe batch."""
    try:
        manifest = resolve(path)
        if not attach:
            return Validated(path, manifest)
        config = None if manifest.peft_config is None else peftconfig.build(manifest.peft_config, str(path))
        task = get_task(manifest.task)
        skeleton = None if deep else task.skeleton()
        if skeleton is not None:  # a GPU track: attach to the architecture, weights never loaded
            if config is None:
                _, total = peftconfig.count_params(skeleton)
                return Validated(path, manifest, total, total)
            try:
                model = peftconfig.attach(skeleton, config, manifest.training.autocast_adapter_dtype)
            except Exception as e:  # SVD or data-driven initialisations need the real weights
                if "meta" not in str(e):
                    raise ManifestError(
                        str(path),
                        "/peft_config",
                        f"does not attach to the task's model: {peftconfig.one_line(e)}",
                    ) from None
                return Validated(
                    path,
                    manifest,
                    note="attachment not checked: its initialisation reads the base weights "
                    "(`validate --deep` loads them)",
                )
            make_optimizer(model, manifest.training)
            trainable, total = peftconfig.count_params(model)
            return Validated(path, manifest, trainable, total)
        # One model load per task and command; each manifest gets a fresh copy of the base weights.
        if prepared is not None and manifest.task in prepared:
            base = prepared[manifest.task]
        else:
            base = task.prepare()
            if prepared is not None:
                prepared[manifest.task] = base

        if config is None:  # full fine-tuning: every parameter trains; its round trip runs after training
            _, total = peftconfig.count_params(base.model)
            return Validated(path, manifest, total, total)
        model = peftconfig.attach_checked(copy.deepcopy(base.model), config, str(path))
        make_optimizer(model, manifest.training)  # what it trains: LoRA-FA's freezes lora_A
        trainable, total = peftconfig.count_params(model)
        del model
        found = None
        if deep:
            found = checks.run_checks(base.model, config, base.probe)
            if not all(r.ok for r in found):
                raise checks.CheckFailed(str(path), manifest.method, found)
        gc.collect()
        return Validated(path, manifest, trainable, total, found)
    except PeftreproError as e:
        return Validated(path, None, error=e)


def validate_paths(paths: list[Path], attach: bool = True, deep: bool = False) -> list[Validated]:
    from peftrepro.manifest import find_manifests

    cache: dict[str, Prepared] = {}
    return [validate_one(p, attach, cache, deep) for p in find_manifests(paths)]
