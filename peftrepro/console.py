"""Where a command's lines go: results to stdout, progress and errors to stderr.

The library functions behind the commands print through an `Echo` the CLI hands them, so that a
command stays: parse, call one function, exit with what it returns.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Echo:
    out: Callable[[str], None]  # results: stdout
    err: Callable[[str], None]  # progress and errors: stderr


def quiet_unless_terminal() -> None:
    """Library progress bars (tqdm: model loading, peft's initialisations, the hub) only on a
    terminal: in a log they are hundreds of carriage-return updates per run. Set in the
    environment, so the job processes started from here inherit it."""
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@contextmanager
def stage(name: str, prefix: str = "") -> Iterator[None]:
    """One line on stderr once `name` is done: `<prefix>stage <name>: 12.3 s`."""
    started = time.perf_counter()
    yield
    print(f"{prefix}stage {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
