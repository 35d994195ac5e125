"""`peftrepro validate`: schema, policy, and does the PEFT config attach to the task's model."""

from __future__ import annotations

import copy
import gc
from dataclasses import dataclass
from pathlib import Path

from peftrepro import checks, peftconfig
from peftrepro.console import Echo
from peftrepro.errors import EXIT_BAD_INPUT, PeftreproError, UsageError
from peftrepro.manifest import ResolvedManifest, find_manifests, resolve
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
        # GPU tracks: the architecture without weights (meta device); otherwise the loaded model,
        # once per task and command, each manifest getting a fresh copy of the base weights.
        skeleton = None if deep else task.skeleton()
        base = None
        if skeleton is None:
            base = prepared.get(manifest.task) if prepared is not None else None
            if base is None:
                base = task.prepare()
                if prepared is not None:
                    prepared[manifest.task] = base
        source = skeleton if base is None else base.model
        assert source is not None
        if config is None:  # full fine-tuning: every parameter trains; its round trip runs after training
            _, total = peftconfig.count_params(source)
            return Validated(path, manifest, total, total)
        auto = manifest.training.autocast_adapter_dtype
        # Attached to a weightless copy (meta device): refused before any adapter memory exists, and
        # counted there. Only an initialisation that reads the weights needs the real attach.
        model = peftconfig.check_attach(source, config, str(path), auto)
        if model is None:
            if base is None:
                return Validated(
                    path,
                    manifest,
                    note="attachment not checked: its initialisation reads the base "
                    "weights (`validate --deep` loads them)",
                )
            model = peftconfig.attach_checked(copy.deepcopy(source), config, str(path), auto)
            base_total = peftconfig.count_params(source)[1]
            peftconfig.check_trainable(peftconfig.count_params(model)[0], base_total, str(path))
        make_optimizer(model, manifest.training)  # what it trains: LoRA-FA's freezes lora_A
        trainable, total = peftconfig.count_params(model)
        del model
        if base is None:
            return Validated(path, manifest, trainable, total)
        found = None
        if deep:
            found = peftconfig.within(
                peftconfig.CHECKS_LIMIT_S,
                "the structural checks",
                str(path),
                lambda: checks.run_checks(base.model, config, base.probe),
            )
            if not all(r.ok for r in found):
                raise checks.failed(str(path), manifest.method, found)
        gc.collect()
        return Validated(path, manifest, trainable, total, found)
    except PeftreproError as e:
        return Validated(path, None, error=e)


def validate_paths(paths: list[Path], attach: bool = True, deep: bool = False) -> list[Validated]:
    cache: dict[str, Prepared] = {}
    return [validate_one(p, attach, cache, deep) for p in find_manifests(paths)]


def validate_command(paths: list[Path], *, attach: bool, deep: bool, echo: Echo) -> int:
    """`peftrepro validate`: one line per manifest; exit 2 if any is refused."""
    if deep and not attach:
        raise UsageError("--deep needs the task's model; drop --no-attach")
    results = validate_paths(paths, attach=attach, deep=deep)
    if not results:
        raise UsageError("no manifest.json found under " + ", ".join(map(str, paths)))
    for r in results:
        if r.error is not None:
            echo.err(f"error: {r.error.message}")
        elif r.trainable_params is not None:
            found = f"; {checks.summary(r.checks)}" if r.checks else ""
            echo.out(f"ok {r.path}: {r.trainable_params:,} trainable of {r.total_params:,} parameters{found}")
        else:
            echo.out(f"ok {r.path}" + (f": {r.note}" if r.note else ""))
    return 0 if all(r.ok for r in results) else EXIT_BAD_INPUT
