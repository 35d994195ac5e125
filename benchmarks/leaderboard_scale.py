"""How leaderboard regeneration grows with the number of records.

Builds synthetic trees of 1k, 10k and 100k schema-valid records (one submission per 10 records:
3 seeds x 3 runs of the current manifest + 1 record of an earlier manifest, i.e. a history of
re-runs; every record with per-item outcomes, so intervals, paired tests and tiers are computed)
and times `render` (read, check, aggregate, write Markdown and SVG) in this process.
Each tree is rendered twice in this run: with the compiled schemas (what `peftrepro leaderboard`
does) and with the interpreter alone (the validator before it), and the ratio is printed.
Goal: linear growth, and < 2 s at 10k records on a 2-core machine.

    .venv/bin/python benchmarks/leaderboard_scale.py [--sizes 1000,10000,100000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.synthetic

from peftrepro import schemas
from peftrepro.jsonio import pretty_bytes
from peftrepro.manifest import manifest_sha256
from peftrepro.pages import render
from tests.synthetic import manifest_doc, outcomes, record, run_id, write_manifest

METHODS = ["lora", "loha", "lokr", "ia3", "vera", "boft", "hra", "fourierft"]
RECORDS_PER_SUBMISSION = 10


def build(root: Path, n_records: int) -> int:
    """Write the tree; returns the number of record files written."""
    template_manifest = write_manifest(root, manifest_doc("lora", "template", {"peft_type": "LORA", "r": 8}))
    template = record(template_manifest, 0, run_id(0, 0))
    (template_manifest.folder / "manifest.json").unlink()
    template_manifest.folder.rmdir()
    written = 0
    for i in range(n_records // RECORDS_PER_SUBMISSION):
        method = METHODS[i % len(METHODS)]
        doc = manifest_doc("lora", f"n{i}", {"peft_type": "LORA", "r": 1 + i % 64, "lora_alpha": 1 + i})
        doc["method"] = "lora"
        folder = root / "arithmetic" / "lora" / f"{method}-{i}"
        doc["name"] = folder.name
        runs = folder / "runs"
        runs.mkdir(parents=True)
        (folder / "manifest.json").write_bytes(pretty_bytes(doc))
        sha = manifest_sha256(doc)
        for k in range(RECORDS_PER_SUBMISSION):
            rec = copy.deepcopy(template)
            seed = k % 3
            rec["run_id"] = run_id(k, seed, i % 86_400)
            rec["seed"] = seed
            rec["submission"].update(method="lora", name=folder.name, manifest_sha256=sha if k else "c" * 64)
            correct = (i * 7919 + k) % 301  # of 300 test items, with per-item outcomes as runs write them
            rec["metrics"]["test_accuracy"] = correct / 300
            rec["metrics"]["test_outcomes"] = outcomes(correct / 300, f"{i}-{k}")
            rec["metrics"]["peak_memory_bytes"] = 1_000_000_000 + (i * 104_729 + k) % 900_000_000
            (runs / f"{rec['run_id']}.json").write_bytes(pretty_bytes(rec))
            written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--keep", type=Path, help="build the trees here and keep them")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: imports (matplotlib, peft) are not per-record costs
        t0 = time.perf_counter()
        build(Path(tmp) / "submissions", RECORDS_PER_SUBMISSION)
        render(Path(tmp) / "submissions", Path(tmp) / "leaderboard")
        print(f"warm-up (imports, first plot): {time.perf_counter() - t0:.2f} s")
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            base = (args.keep or Path(tmp)) / f"tree-{n}"
            t0 = time.perf_counter()
            written = build(base / "submissions", n)
            t_build = time.perf_counter() - t0
            t0 = time.perf_counter()
            files, problems = render(base / "submissions", base / "leaderboard")
            t_render = time.perf_counter() - t0
            assert not problems, problems[:3]
            compiled = schemas.compiled
            schemas.compiled = lambda name: None  # type: ignore[assignment]  # the interpreter alone
            try:
                t0 = time.perf_counter()
                same, _ = render(base / "submissions", base / "leaderboard")
                t_interpreted = time.perf_counter() - t0
            finally:
                schemas.compiled = compiled
            assert same == files
            rows.append((written, t_render))
            print(
                f"{written:>7} records: render {t_render:6.2f} s "
                f"({t_render / written * 1e6:5.0f} us/record); interpreted schemas {t_interpreted:6.2f} s "
                f"(compiled/interpreted {t_render / t_interpreted:.2f}); "
                f"built in {t_build:.1f} s; {sum(map(len, files.values())) / 1e6:.1f} MB of pages",
                flush=True,
            )
    if len(rows) > 1:
        (n0, t0_), (n1, t1) = rows[0], rows[-1]
        print(
            f"growth: {n1 / n0:.0f}x records -> {t1 / t0_:.1f}x time "
            f"(linear would be {n1 / n0:.0f}x; per-record cost ratio {(t1 / n1) / (t0_ / n0):.2f})"
        )


if __name__ == "__main__":
    main()
