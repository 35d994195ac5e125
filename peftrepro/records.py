"""Run records: build, write atomically (never clobbering), read and validate.

A record is the only thing the verifier and the leaderboard read. It names its manifest by
canonical sha256 and carries the resolved config it ran, the measured metrics and the fingerprint.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from peftrepro import __version__, schemas
from peftrepro.errors import RecordError
from peftrepro.jsonio import JSONReadError, pretty_bytes, read_json, write_new_file
from peftrepro.manifest import ResolvedManifest

RUNS_DIR = "runs"
RECORD_SCHEMA_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(UTC)


def timestamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def new_run_id(seed: int, started: datetime) -> str:
    """Sortable by start time; the random suffix keeps two runs started in the same second apart."""
    return f"{started.strftime('%Y%m%dT%H%M%SZ')}-s{seed}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class RunResult:
    status: str  # success | failed | cancelled
    metrics: dict[str, Any]
    environment: dict[str, Any]
    error: dict[str, str] | None
    checks: dict[str, dict[str, Any]] | None = None  # structural checks (checks.py), as far as they ran


def build_record(
    manifest: ResolvedManifest,
    *,
    task_version: str,
    run_id: str,
    seed: int,
    started: datetime,
    finished: datetime,
    result: RunResult,
) -> dict[str, Any]:
    return {
        "schema_version": RECORD_SCHEMA_VERSION,
        "run_id": run_id,
        "status": result.status,
        "toolkit": {"name": "peftrepro", "version": __version__},
        "submission": {
            "task": manifest.task,
            "task_version": task_version,
            "method": manifest.method,
            "name": manifest.name,
            "manifest_sha256": manifest.sha256,
        },
        "seed": seed,
        "started_at": timestamp(started),
        "finished_at": timestamp(finished),
        "resolved_config": manifest.resolved_config(),
        "metrics": result.metrics,
        "checks": result.checks or {},
        "environment": result.environment,
        "error": result.error,
    }


def record_path(runs_dir: Path, run_id: str) -> Path:
    return runs_dir / f"{run_id}.json"


def write_record(runs_dir: Path, record: dict[str, Any]) -> Path:
    """Validate against the schema (a record we cannot read back is a bug: fail loudly), then write
    it atomically under a new name."""
    path = record_path(runs_dir, record["run_id"])
    schemas.check(record, schemas.RUN_RECORD, str(path), RecordError)
    write_new_file(path, pretty_bytes(record))
    return path


def read_record(path: Path) -> dict[str, Any]:
    """Read and schema-check one record; RecordError (one line, file and field) if it is unusable."""
    try:
        obj = read_json(path)
    except JSONReadError as e:
        raise RecordError(str(path), "", str(e)) from None
    except OSError as e:
        raise RecordError(str(path), "", f"cannot be read ({e.strerror})") from None
    schemas.check(obj, schemas.RUN_RECORD, str(path), RecordError)
    return obj


def list_records(submission_folder: Path) -> list[Path]:
    """Record files of a submission, oldest first (run ids sort by start time); temp files ignored."""
    runs = submission_folder / RUNS_DIR
    return sorted(p for p in runs.glob("*.json") if not p.name.startswith(".")) if runs.is_dir() else []
