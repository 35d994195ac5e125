"""The job entry point inside a container: `python -m peftrepro.runners.entry MANIFEST --seed N --out DIR`.

It resolves the manifest (once), runs it with the local runner and hands the output to the host
through DIR: `output.json` (the record and whether the manifest itself is at fault) and, for
image tasks, `samples.png`. Handing out is not recording: the host checks the output and its
driver writes the record, once, where it belongs. Exit 0 with an output (whatever the record's
status), 2 when the manifest is refused before any record exists (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from peftrepro.console import quiet_unless_terminal
from peftrepro.errors import EXIT_BAD_INPUT, PeftreproError, RecordError
from peftrepro.jsonio import JSONReadError, pretty_bytes, read_json, write_new_file
from peftrepro.manifest import resolve
from peftrepro.records import RunOutput, parse_record
from peftrepro.runners.local import run_local

ENTRY = ["python", "-m", "peftrepro.runners.entry"]
OUTPUT_FILE = "output.json"
SAMPLES_FILE = "samples.png"


def hand_out(output: RunOutput, out: Path) -> None:
    """Write the output into `out` for the host: the grid first, the JSON last (its presence says
    the output is complete)."""
    if output.samples is not None:
        write_new_file(out / SAMPLES_FILE, output.samples)
    data = {"record": output.record.to_json(), "manifest_fault": output.manifest_fault}
    write_new_file(out / OUTPUT_FILE, pretty_bytes(data))


def read_output(out: Path) -> RunOutput | None:
    """What a job handed out in `out`, schema-checked; None when it handed out nothing."""
    path = out / OUTPUT_FILE
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (JSONReadError, OSError) as e:
        raise RecordError(str(path), "", f"unreadable output of the job: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("manifest_fault"), bool):
        raise RecordError(str(path), "", "expected {record, manifest_fault}")
    record = parse_record(data.get("record"), str(path))
    grid = out / SAMPLES_FILE
    samples = grid.read_bytes() if grid.is_file() else None
    return RunOutput(record, samples, data["manifest_fault"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m peftrepro.runners.entry")
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fresh-base", action="store_true", help="measure the base model again")
    args = parser.parse_args(argv)
    quiet_unless_terminal()
    try:
        output = run_local(resolve(args.manifest), seed=args.seed, fresh_base=args.fresh_base)
    except PeftreproError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # The record exists: a late SIGTERM (the host stopping the container) must not lose it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    hand_out(output, args.out)
    print(json.dumps({"status": output.status, "run_id": output.record.run_id}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
