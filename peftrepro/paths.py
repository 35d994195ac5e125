"""Where peftrepro keeps things outside the repository (model caches, saved adapters)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$PEFTREPRO_CACHE`, default `~/.cache/peftrepro`: derived artifacts only, safe to delete."""
    return Path(os.environ.get("PEFTREPRO_CACHE", Path.home() / ".cache" / "peftrepro"))


def adapter_dir(task: str, method: str, name: str, run_id: str) -> Path:
    return cache_root() / "adapters" / task / method / name / run_id
