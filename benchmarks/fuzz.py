"""The long fuzzing run and the JSON-bomb timings: what the test suite checks on a few hundred
examples (tests/test_fuzz.py), here on 10,000 per reader, plus how fast each bomb is refused.

    .venv/bin/python benchmarks/fuzz.py [--examples 10000]

Prints the fuzz run's outcome and wall time, then for each bomb the seconds to refuse it and the
ratio to parsing one valid record (a refusal that costs a thousand parses would be a denial of
service: the leaderboard reads every record of every pull request).
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tabulate import tabulate

from peftrepro.errors import ManifestError
from peftrepro.jsonio import JSONReadError, parse_json
from peftrepro.manifest import resolve
from tests.test_fuzz import BOMBS

REPO = Path(__file__).resolve().parent.parent


def best_of(f: Callable[[], object], n: int = 5) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def refuse(raw: bytes) -> None:
    try:
        parse_json(raw)
    except JSONReadError:
        return
    raise AssertionError("accepted")


def bomb_timings() -> None:
    record = next((REPO / "submissions" / "arithmetic" / "lora" / "default" / "runs").glob("*.json"))
    valid = record.read_bytes()
    parse = best_of(lambda: parse_json(valid))
    rows = []
    for name, raw in BOMBS.items():
        seconds = best_of(functools.partial(refuse, raw))
        rows.append([name, f"{len(raw):,}", f"{seconds * 1e3:.2f}", f"{seconds / parse:.1f}"])
    with tempfile.TemporaryDirectory() as tmp:
        huge = Path(tmp) / "submissions" / "arithmetic" / "lora" / "big" / "manifest.json"
        huge.parent.mkdir(parents=True)
        with open(huge, "wb") as f:  # 100 MB, sparse: refused by its size before a byte is read
            f.truncate(100 * 2**20)

        def refuse_file() -> None:
            try:
                resolve(huge)
            except ManifestError:
                return
            raise AssertionError("accepted")

        seconds = best_of(refuse_file)
        rows.append(["100 MB manifest", f"{100 * 2**20:,}", f"{seconds * 1e3:.2f}", f"{seconds / parse:.1f}"])
    print(f"parsing one valid record ({len(valid):,} bytes): {parse * 1e3:.2f} ms")
    print(tabulate(rows, headers=["bomb", "bytes", "refused in ms", "x one valid parse"]))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=10_000)
    args = parser.parse_args()
    env = {**os.environ, "PEFTREPRO_FUZZ_EXAMPLES": str(args.examples)}
    t0 = time.perf_counter()
    code = subprocess.call(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fuzz.py"],
        cwd=REPO,
        env=env,
    )
    print(f"fuzzing, {args.examples} examples per reader: exit {code}, {time.perf_counter() - t0:.0f} s")
    bomb_timings()
    return code


if __name__ == "__main__":
    sys.exit(main())
