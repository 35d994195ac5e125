"""Runners: where a run happens. Each takes (manifest, seed=, runs_dir=) and returns a RunOutcome
after writing exactly one record; `verify` re-runs a claim through the same kind of runner."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from peftrepro.errors import UsageError

RUNNER_KINDS = ("local",)


def get_runner(kind: str) -> Callable[..., Any]:
    if kind == "local":
        from peftrepro.runners.local import run_local

        return run_local
    raise UsageError(f"runner {kind!r} is not available here; available: {', '.join(RUNNER_KINDS)}")
