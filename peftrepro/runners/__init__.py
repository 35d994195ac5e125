"""Runners: where a run happens. Each takes (manifest, seed=) and returns a RunOutput (the record
and its sample grid) without writing anything: the driver writes it (executors/batch.py).
`verify` re-runs a claim through the same kind of runner."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from peftrepro.errors import UsageError
from peftrepro.runners.docker import DockerOptions, run_docker
from peftrepro.runners.local import run_local

RUNNER_KINDS = ("local", "docker")


def default_kind() -> str:
    """`local` unless the PEFTREPRO_RUNNER environment variable (the config default) says otherwise."""
    return os.environ.get("PEFTREPRO_RUNNER", "local")


def get_runner(kind: str, **options: Any) -> Callable[..., Any]:
    """The runner in this process: `run_local` here, or `run_docker`. The CLI runs each job in a
    fresh process first (executors/), so a local run never shares one with another run."""
    if kind == "local":
        return run_local
    if kind == "docker":
        base = DockerOptions.from_env()
        opts = DockerOptions(**{**base.__dict__, **{k: v for k, v in options.items() if v is not None}})
        return functools.partial(run_docker, options=opts)
    raise UsageError(f"runner {kind!r} is not available; available: {', '.join(RUNNER_KINDS)}")
