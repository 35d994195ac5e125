"""Where a command's lines go: results to stdout, progress and errors to stderr.

The library functions behind the commands print through an `Echo` the CLI hands them, so that a
command stays: parse, call one function, exit with what it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Echo:
    out: Callable[[str], None]  # results: stdout
    err: Callable[[str], None]  # progress and errors: stderr
