"""Golden files for the two record writers (records.py): a runner's measurements in, the exact
bytes of the run records and the verification out, side by side under tests/golden/records/.

`input/` holds the manifest and what the runner measured for each case (`measured.json`);
`expected/` holds what `write_record` and `write_verification` must write, byte for byte.
Regenerate with PEFTREPRO_UPDATE_GOLDEN=1 after a deliberate format change (and say so in the
commit: every committed record of the old form then reads differently).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest

from peftrepro.compare import judge
from peftrepro.errors import RecordError
from peftrepro.manifest import ResolvedManifest, resolve
from peftrepro.records import (
    RunError,
    RunOutput,
    build_record,
    read_record,
    submission_of,
    write_record,
    write_verification,
)
from peftrepro.tasks import get_task
from peftrepro.verify import build_verification

GOLDEN = Path(__file__).parent / "golden" / "records"
INPUT, EXPECTED = GOLDEN / "input", GOLDEN / "expected"
TOOLKIT = {"name": "peftrepro", "version": "0.1.0"}
SAMPLES = b"\x89PNG\r\n\x1a\n a stand-in for a sample grid"


def manifest(tmp_path: Path) -> ResolvedManifest:
    folder = tmp_path / "submissions" / "arithmetic" / "lora" / "golden"
    folder.mkdir(parents=True)
    shutil.copy(INPUT / "manifest.json", folder / "manifest.json")
    return resolve(folder / "manifest.json")


def outputs(m: ResolvedManifest) -> list[RunOutput]:
    """Each case of measured.json as the runner hands it to the driver."""
    cases = json.loads((INPUT / "measured.json").read_text())
    made = []
    for case in cases:
        when = datetime.fromisoformat(case["started"]).replace(tzinfo=UTC)
        error = RunError(**case["error"]) if case["error"] else None
        samples = SAMPLES if case.get("samples") else None
        metrics = dict(case["metrics"])
        if samples is not None:
            metrics["samples_sha256"] = hashlib.sha256(samples).hexdigest()
        environment = {**case["environment"], "manifest_sha256": m.sha256}
        record = build_record(
            submission_of(m, get_task(m.task).version),
            m.resolved_config(),
            run_id=case["run_id"],
            seed=case["seed"],
            started=when,
            finished=when.replace(minute=when.minute + 3),
            status=case["status"],
            metrics=metrics,
            environment=environment,
            error=error,
            checks=case["checks"],
        )
        record = dataclasses.replace(record, toolkit=TOOLKIT)  # not the installed package's version
        fault = error is not None and error.type == "CheckFailed"
        made.append(RunOutput(record, samples, manifest_fault=fault))
    return made


def written(tmp_path: Path) -> dict[str, bytes]:
    m = manifest(tmp_path)
    runs = m.folder / "runs"
    made = outputs(m)
    for output in made:
        write_record(runs, output)
    claim = made[0].record
    rerun = outputs(m)[0].record  # the same measurements: a reproduced verification
    policy = get_task(m.task).verification
    claim_sha = hashlib.sha256((runs / f"{claim.run_id}.json").read_bytes()).hexdigest()
    started = datetime(2026, 1, 5, 12, 0, 0, tzinfo=UTC)
    verification = build_verification(claim, claim_sha, rerun, judge(claim, rerun, policy), policy, started)
    fixed = {"verification_id": "20260105T120000Z-s0-00000a", "finished_at": "2026-01-05T12:09:00.000Z"}
    write_verification(m.folder, dataclasses.replace(verification, **fixed, toolkit=TOOLKIT))
    files = sorted(p for p in m.folder.rglob("*") if p.is_file() and p.name != "manifest.json")
    return {p.relative_to(m.folder).as_posix(): p.read_bytes() for p in files}


def test_the_writers_write_the_golden_bytes(tmp_path: Path) -> None:
    files = written(tmp_path)
    if os.environ.get("PEFTREPRO_UPDATE_GOLDEN"):
        shutil.rmtree(EXPECTED, ignore_errors=True)
        for name, data in files.items():
            (EXPECTED / name).parent.mkdir(parents=True, exist_ok=True)
            (EXPECTED / name).write_bytes(data)
    expected = {p.relative_to(EXPECTED).as_posix(): p.read_bytes() for p in EXPECTED.rglob("*.*")}
    assert sorted(files) == sorted(expected)
    for name, data in files.items():
        assert data == expected[name], f"{name} differs from tests/golden/records/expected/{name}"


def test_a_golden_record_reads_back_to_the_same_bytes() -> None:
    for path in sorted((EXPECTED / "runs").glob("*.json")):
        record = read_record(path)
        assert json.dumps(record.to_json(), sort_keys=True, indent=2) + "\n" == path.read_text(), path


def test_a_record_is_written_once_and_never_over_another(tmp_path: Path) -> None:
    m = manifest(tmp_path)
    first = outputs(m)[0]
    write_record(m.folder / "runs", first)
    with pytest.raises(FileExistsError):
        write_record(m.folder / "runs", first)


def test_a_record_the_schema_refuses_is_not_written(tmp_path: Path) -> None:
    m = manifest(tmp_path)
    good = outputs(m)[0]
    bad = RunOutput(dataclasses.replace(good.record, metrics={"steps_completed": 1}))
    with pytest.raises(RecordError, match="/metrics"):
        write_record(m.folder / "runs", bad)
    assert not (m.folder / "runs").exists() or not list((m.folder / "runs").iterdir())


def test_a_sample_grid_that_does_not_match_its_hash_is_not_written(tmp_path: Path) -> None:
    m = manifest(tmp_path)
    with_grid = next(o for o in outputs(m) if o.samples is not None)
    forged = RunOutput(with_grid.record, with_grid.samples + b"x")
    with pytest.raises(RecordError, match="samples_sha256"):
        write_record(m.folder / "runs", forged)
    assert not (m.folder / "runs").exists() or not list((m.folder / "runs").iterdir())


def test_the_writer_never_follows_a_symlinked_folder(tmp_path: Path) -> None:
    m = manifest(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (m.folder / "runs").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(RecordError, match="symbolic link"):
        write_record(m.folder / "runs", outputs(m)[0])
    assert not list(elsewhere.iterdir())
