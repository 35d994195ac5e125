"""Run and verification records: the frozen dataclasses in memory, and the one module that turns
them into JSON and back, writes them (validated once, atomically, never clobbering) and reads them.

A record is the only thing the verifier and the leaderboard read. It names its manifest by
canonical sha256 and carries the resolved config it ran, the measured metrics and the fingerprint.
`from_json(obj).to_json() == obj` for every schema-valid record, so what is read is what was written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from peftrepro import __version__, schemas, stats
from peftrepro.errors import RecordError
from peftrepro.jsonio import JSONReadError, pretty_bytes, read_json, write_new_file
from peftrepro.manifest import ResolvedManifest
from peftrepro.metrics import HEADLINE_SCORES

RUNS_DIR = "runs"
VERIFICATIONS_DIR = "verifications"
CLAIMS_DIR = "claims"  # published claims (published.py), written once by `peftrepro import`
RECORD_SCHEMA_VERSION = 1
VERIFICATION_SCHEMA_VERSION = 1
SAMPLES_SUFFIX = ".png"  # an image run's sample grid, next to its record under the record's name


def utc_now() -> datetime:
    return datetime.now(UTC)


def timestamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def new_run_id(seed: int, started: datetime) -> str:
    """Sortable by start time; the random suffix keeps two runs started in the same second apart."""
    return f"{started.strftime('%Y%m%dT%H%M%SZ')}-s{seed}-{secrets.token_hex(3)}"


def _toolkit() -> dict[str, str]:
    return {"name": "peftrepro", "version": __version__}


@dataclass(frozen=True)
class SubmissionRef:
    """Which submission a record belongs to, and the manifest (by sha256) it ran."""

    task: str
    task_version: str
    method: str
    name: str
    manifest_sha256: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.task, self.method, self.name)

    @property
    def label(self) -> str:
        return "/".join(self.key)

    def to_json(self) -> dict[str, str]:
        return {
            "task": self.task,
            "task_version": self.task_version,
            "method": self.method,
            "name": self.name,
            "manifest_sha256": self.manifest_sha256,
        }


@dataclass(frozen=True)
class RunError:
    type: str  # the exception's class name: CheckFailed, RunCancelled, ContainerError, ...
    message: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    status: str  # success | failed | cancelled
    submission: SubmissionRef
    seed: int
    started_at: str
    finished_at: str
    resolved_config: dict[str, Any]
    metrics: dict[str, Any]
    environment: dict[str, Any]
    error: RunError | None
    checks: dict[str, Any] | None = None  # None only in records made before the checks existed
    # {"key": sha256, "reused": bool}: where the base model's figures came from (job.base_measurements);
    # None in records made before it was recorded, and in runs that do not measure the base (sweeps)
    base_measurements: dict[str, Any] | None = None
    toolkit: dict[str, str] = field(default_factory=_toolkit)
    schema_version: int = RECORD_SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        out = {
            "schema_version": self.schema_version,
            "run_id": self.run_id,
            "status": self.status,
            "toolkit": self.toolkit,
            "submission": self.submission.to_json(),
            "seed": self.seed,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "resolved_config": self.resolved_config,
            "metrics": self.metrics,
            "environment": self.environment,
            "error": None if self.error is None else self.error.to_json(),
        }
        if self.checks is not None:
            out["checks"] = self.checks
        if self.base_measurements is not None:
            out["base_measurements"] = self.base_measurements
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RunRecord:
        """From a schema-valid record (check it first: `parse_record`)."""
        error = obj["error"]
        return cls(
            run_id=obj["run_id"],
            status=obj["status"],
            submission=SubmissionRef(**obj["submission"]),
            seed=obj["seed"],
            started_at=obj["started_at"],
            finished_at=obj["finished_at"],
            resolved_config=obj["resolved_config"],
            metrics=obj["metrics"],
            environment=obj["environment"],
            error=None if error is None else RunError(error["type"], error["message"]),
            checks=obj.get("checks"),
            base_measurements=obj.get("base_measurements"),
            toolkit=obj["toolkit"],
            schema_version=obj["schema_version"],
        )

    @classmethod
    def foreign(cls, obj: dict[str, Any]) -> RunRecord:
        """A record in another toolkit's record format, read only for what a stale row shows (its
        metrics and checks) and for binding it to its folder: every field of an unexpected type
        reads as empty. Never written back."""

        def obj_at(key: str, within: dict[str, Any] = obj) -> dict[str, Any]:
            value = within.get(key)
            return value if isinstance(value, dict) else {}

        sub, error, seed = obj_at("submission"), obj.get("error"), obj.get("seed")
        return cls(
            run_id=str(obj.get("run_id")),
            status=str(obj.get("status")),
            submission=SubmissionRef(
                *(str(sub.get(k)) for k in ("task", "task_version", "method", "name", "manifest_sha256"))
            ),
            seed=seed if type(seed) is int else -1,
            started_at=str(obj.get("started_at")),
            finished_at=str(obj.get("finished_at")),
            resolved_config=obj_at("resolved_config"),
            metrics=obj_at("metrics"),
            environment=obj_at("environment"),
            error=RunError(str(error.get("type")), str(error.get("message")))
            if isinstance(error, dict)
            else None,
            checks=obj["checks"] if isinstance(obj.get("checks"), dict) else None,
            toolkit=obj_at("toolkit"),
            schema_version=obj["schema_version"],
        )


@dataclass(frozen=True)
class RunOutput:
    """What a runner hands back: the record (not yet written) and, for image tasks, its sample grid.
    `manifest_fault` is set when the run stopped on an error of the manifest itself (a failed
    structural check), the same whatever the seed: its other seeds need not run."""

    record: RunRecord
    samples: bytes | None = None
    manifest_fault: bool = False

    @property
    def status(self) -> str:
        return self.record.status


def submission_of(manifest: ResolvedManifest, task_version: str) -> SubmissionRef:
    return SubmissionRef(manifest.task, task_version, manifest.method, manifest.name, manifest.sha256)


def build_record(
    submission: SubmissionRef,
    resolved_config: dict[str, Any],
    *,
    run_id: str,
    seed: int,
    started: datetime,
    finished: datetime,
    status: str,
    metrics: dict[str, Any],
    environment: dict[str, Any],
    error: RunError | None,
    checks: dict[str, Any] | None = None,
    base_measurements: dict[str, Any] | None = None,
) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        status=status,
        submission=submission,
        seed=seed,
        started_at=timestamp(started),
        finished_at=timestamp(finished),
        resolved_config=resolved_config,
        metrics=metrics,
        environment=environment,
        error=error,
        checks=checks or {},
        base_measurements=base_measurements,
    )


def record_path(runs_dir: Path, run_id: str) -> Path:
    return runs_dir / f"{run_id}.json"


def folder_problem(folder: Path) -> str | None:
    """Why records may not be written into `folder`, or None. A symbolic link (dangling or not) is
    refused: a pull request could point a submission's runs/ anywhere on the verifier's machine."""
    if folder.is_symlink():
        return f"{folder} is a symbolic link; records are written only into plain folders"
    if folder.exists() and not folder.is_dir():
        return f"{folder} is not a folder"
    return None


def _checked_folder(folder: Path, path: Path) -> None:
    problem = folder_problem(folder)
    if problem is not None:
        raise RecordError(str(path), "", problem)


def write_record(runs_dir: Path, output: RunOutput) -> Path:
    """The one place a run record is written: validated against the schema (a record we could not
    read back is a bug: fail loudly), then written atomically under a new name, its sample grid
    beside it."""
    record = output.record
    path = record_path(runs_dir, record.run_id)
    data = record.to_json()
    schemas.check(data, schemas.RUN_RECORD, str(path), RecordError)
    _checked_folder(runs_dir, path)
    if output.samples is not None:
        if hashlib.sha256(output.samples).hexdigest() != record.metrics.get("samples_sha256"):
            raise RecordError(
                str(path), "/metrics/samples_sha256", "the sample grid does not match this hash"
            )
        write_new_file(path.with_suffix(SAMPLES_SUFFIX), output.samples)
    write_new_file(path, pretty_bytes(data))
    return path


def parse_record(obj: Any, file: str) -> RunRecord:
    """A record from its JSON form; RecordError (one line, file and field) if it fails its schema."""
    schemas.check(obj, schemas.RUN_RECORD, file, RecordError)
    record = RunRecord.from_json(obj)
    outcomes = record.metrics.get("test_outcomes")
    if outcomes is not None:
        score = next((record.metrics[k] for k in HEADLINE_SCORES if k in record.metrics), None)
        problem = stats.consistent(outcomes, score)
        if problem is not None:
            raise RecordError(file, "/metrics/test_outcomes", problem)
    return record


def read_record(path: Path) -> RunRecord:
    """Read and schema-check one record; RecordError (one line, file and field) if it is unusable."""
    try:
        obj = read_json(path)
    except JSONReadError as e:
        raise RecordError(str(path), "", str(e)) from None
    except OSError as e:
        raise RecordError(str(path), "", f"cannot be read ({e.strerror})") from None
    return parse_record(obj, str(path))


def list_records(submission_folder: Path) -> list[Path]:
    """Record files of a submission, oldest first (run ids sort by start time); temp files ignored."""
    runs = submission_folder / RUNS_DIR
    return sorted(p for p in runs.glob("*.json") if not p.name.startswith(".")) if runs.is_dir() else []


def newest_per_seed(folder: Path, score_key: str) -> dict[str, dict[int, dict[str, Any]]]:
    """task version -> seed -> metrics of that seed's newest `success` record with `score_key`, over
    every record of the submission (earlier manifests too): what a benchmark compares across task
    versions. Unreadable records are skipped; the leaderboard reads records through collect.py."""
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for path in list_records(folder):
        try:
            record = read_record(path)
        except RecordError:
            continue
        if record.status == "success" and score_key in record.metrics:
            found.setdefault(record.submission.task_version, {})[record.seed] = record.metrics
    return found


@dataclass(frozen=True)
class ClaimRef:
    run_id: str
    seed: int
    record_sha256: str  # of the claimed record file's exact bytes

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "seed": self.seed, "record_sha256": self.record_sha256}


@dataclass(frozen=True)
class VerificationRecord:
    """A re-run of one claimed record and the verdict on it (compare.py's judgement, as JSON)."""

    verification_id: str
    submission: SubmissionRef
    claim: ClaimRef
    rerun: RunRecord
    policy: dict[str, Any]
    verdict: str
    comparisons: list[dict[str, Any]]
    environment_diff: list[dict[str, str]]
    reasons: list[str]
    started_at: str
    finished_at: str
    toolkit: dict[str, str] = field(default_factory=_toolkit)
    schema_version: int = VERIFICATION_SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> VerificationRecord:
        """From a schema-valid verification (its `rerun` checked as a run record too)."""
        return cls(
            **{
                **obj,
                "submission": SubmissionRef(**obj["submission"]),
                "claim": ClaimRef(**obj["claim"]),
                "rerun": RunRecord.from_json(obj["rerun"]),
            }
        )


def _fields_json(record: Any) -> dict[str, Any]:
    """A verification dataclass as JSON, field by field; nested records by their own `to_json`
    (key order does not matter: pretty_bytes sorts keys)."""

    def one(value: Any) -> Any:
        return value.to_json() if hasattr(value, "to_json") else value

    out = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        out[f.name] = [one(v) for v in value] if isinstance(value, list) else one(value)
    return out


def parse_verification(obj: Any, file: str) -> VerificationRecord:
    schemas.check(obj, schemas.VERIFICATION, file, RecordError)
    schemas.check(obj["rerun"], schemas.RUN_RECORD, file, RecordError)
    return VerificationRecord.from_json(obj)


def write_verification(submission_folder: Path, verification: VerificationRecord) -> Path:
    """The one place a verification is written: validated, then atomically under a new name."""
    path = submission_folder / VERIFICATIONS_DIR / f"{verification.verification_id}.json"
    data = verification.to_json()
    schemas.check(data, schemas.VERIFICATION, str(path), RecordError)
    _checked_folder(path.parent, path)
    write_new_file(path, pretty_bytes(data))
    return path


# verifications/published/<id>.json: re-runs of a manifest judged against one of its published claims.
PUBLISHED_VERIFICATIONS_DIR = "published"


@dataclass(frozen=True)
class PublishedRef:
    claim_id: str
    sha256: str  # of the claim file's exact bytes
    accelerator: str  # where they measured it (the claim's), beside the re-runs' own

    def to_json(self) -> dict[str, Any]:
        return {"claim_id": self.claim_id, "sha256": self.sha256, "accelerator": self.accelerator}


@dataclass(frozen=True)
class PublishedVerificationRecord:
    """Re-runs of a submission's manifest, judged against one published claim (compare.py's
    `judge_published`, as JSON). The re-runs are also written to runs/ as ordinary records."""

    verification_id: str
    submission: SubmissionRef
    published: PublishedRef
    reruns: list[RunRecord]
    policy: dict[str, Any]
    verdict: str
    comparisons: list[dict[str, Any]]
    reasons: list[str]
    started_at: str
    finished_at: str
    toolkit: dict[str, str] = field(default_factory=_toolkit)
    schema_version: int = VERIFICATION_SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return _fields_json(self)


def new_published_verification_id(started: datetime) -> str:
    return f"{started.strftime('%Y%m%dT%H%M%SZ')}-published-{secrets.token_hex(3)}"


def parse_published_verification(obj: Any, file: str) -> PublishedVerificationRecord:
    schemas.check(obj, schemas.PUBLISHED_VERIFICATION, file, RecordError)
    for rerun in obj["reruns"]:
        schemas.check(rerun, schemas.RUN_RECORD, file, RecordError)
    return PublishedVerificationRecord(
        **{
            **obj,
            "submission": SubmissionRef(**obj["submission"]),
            "published": PublishedRef(**obj["published"]),
            "reruns": [RunRecord.from_json(r) for r in obj["reruns"]],
        }
    )


def write_published_verification(submission_folder: Path, verification: PublishedVerificationRecord) -> Path:
    """The one place a published claim's verification is written: validated, then atomically."""
    folder = submission_folder / VERIFICATIONS_DIR / PUBLISHED_VERIFICATIONS_DIR
    path = folder / f"{verification.verification_id}.json"
    data = verification.to_json()
    schemas.check(data, schemas.PUBLISHED_VERIFICATION, str(path), RecordError)
    _checked_folder(folder.parent, path)
    _checked_folder(folder, path)
    write_new_file(path, pretty_bytes(data))
    return path
