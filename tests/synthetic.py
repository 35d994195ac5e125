"""Schema-valid synthetic manifests, run records and verifications, for golden files and benchmarks.

Deterministic: the same arguments give the same bytes. Records are built by the package's own
`build_record`, so they follow the real format; only the numbers are made up.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from peftrepro import stats
from peftrepro.compare import judge
from peftrepro.jsonio import canonical_sha256, pretty_bytes
from peftrepro.manifest import ResolvedManifest, resolve
from peftrepro.records import RunError, RunRecord, build_record, submission_of
from peftrepro.tasks import get_task

DISTRIBUTIONS = ["peft==0.21.2", "torch==2.13.0+cpu", "transformers==5.23.0"]

METRICS: dict[str, Any] = {
    "test_accuracy": 0.5,
    "base_test_accuracy": 0.023,
    "valid_curve": [{"step": 40, "valid_accuracy": 0.1}, {"step": 80, "valid_accuracy": 0.4}],
    "forgetting": 1.0,
    "general_ce_before": 2.195,
    "general_ce_after": 3.195,
    "train_loss_final": 0.3,
    "trainable_params": 2_442_240,
    "total_params": 136_957_248,
    "adapter_bytes": 9_823_296,
    "adapter_sha256": "a" * 64,
    "peak_memory_bytes": 1_800_000_000,
    "memory_avg_bytes": 1_700_000_000,
    "memory_p99_bytes": 1_790_000_000,
    "train_seconds": 100.0,
    "total_seconds": 160.0,
    "tokens_per_second": 250.0,
    "steps_completed": 120,
}


def outcomes(accuracy: float, salt: str = "", n: int = 300) -> dict[str, Any]:
    """A record's `test_outcomes` whose mean is `accuracy` (a multiple of 1/n): the easiest items of
    a difficulty order all rows share (so rows are correlated, as real methods are), with `salt`
    swapping a few neighbours at the boundary (seeds of one row differ in which items they get)."""
    k = round(accuracy * n)
    assert abs(k - accuracy * n) < 1e-9, f"{accuracy} is not a multiple of 1/{n}"
    order = sorted(range(n), key=lambda i: canonical_sha256([i]))
    if salt and 0 < k < n:
        shift = int(canonical_sha256([salt])[:2], 16) % min(5, k, n - k)
        order[k - 1 - shift], order[k + shift] = order[k + shift], order[k - 1 - shift]
    easy = set(order[:k])
    return stats.encode([i in easy for i in range(n)])


PASSED_CHECKS: dict[str, dict[str, Any]] = {
    "identity_at_init": {
        "status": "exact",
        "detail": "outputs equal the base model's bit for bit",
        "max_abs_diff": 0.0,
    },
    "disable_restores_base": {
        "status": "passed",
        "detail": "disabled adapter gives the base outputs",
        "max_abs_diff": 0.0,
    },
    "only_declared_change": {
        "status": "passed",
        "detail": "14 adapter tensors changed",
        "max_abs_diff": None,
    },
    "round_trip": {"status": "passed", "detail": "reloaded outputs identical", "max_abs_diff": 0.0},
}


def environment(seed: int, manifest_sha256: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "runner": "local",
        "python": "3.11.7",
        "python_implementation": "CPython",
        "distributions": DISTRIBUTIONS,
        "distributions_sha256": canonical_sha256(DISTRIBUTIONS),
        "torch": {"version": "2.13.0+cpu", "cuda": None, "cudnn": None},
        "accelerator": {"kind": "cpu", "name": None, "count": 0, "memory_bytes": None, "driver": None},
        "determinism": {"deterministic_algorithms": True, "num_threads": 2},
        "cpu_capability": "AVX2",
        "seeds": {"seed": seed},
        "git": {"commit": "0" * 40, "dirty": False},
        "manifest_sha256": manifest_sha256,
        "artifacts": {"model": {"id": "synthetic"}},
        "os": {"system": "Linux", "machine": "x86_64"},
    }
    env["environment_sha256"] = canonical_sha256(
        {k: env[k] for k in ("runner", "python", "torch", "artifacts")}
    )
    return env


def manifest_doc(method: str, name: str, peft_config: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "task": "arithmetic",
        "method": method,
        "name": name,
        "title": fields.pop("title", f"{method} {name}"),
        "authors": ["synthetic"],
        "description": fields.pop("description", "A synthetic submission for golden files and benchmarks."),
        "peft_config": peft_config,
        **fields,
    }


def write_manifest(root: Path, doc: dict[str, Any]) -> ResolvedManifest:
    folder = root / doc["task"] / doc["method"] / doc["name"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
    return resolve(folder / "manifest.json")


def run_id(day: int, seed: int, n: int = 0) -> str:
    """A valid run id: `day` from 2026-01-01, `n` gives the time of day and the suffix."""
    clock = f"{n // 3600 % 24:02d}{n // 60 % 60:02d}{n % 60:02d}"
    return f"2026{1 + day // 28:02d}{1 + day % 28:02d}T{clock}Z-s{seed}-{n % 0xFFFFFF:06x}"


def record(
    manifest: ResolvedManifest,
    seed: int,
    rid: str,
    status: str = "success",
    error: str | None = None,
    manifest_sha256: str | None = None,
    checks: dict[str, dict[str, Any]] | None = None,
    error_type: str = "RuntimeError",
    **metrics: Any,
) -> dict[str, Any]:
    sha = manifest_sha256 or manifest.sha256
    values = {**METRICS, **metrics} if status == "success" else {"steps_completed": 7}
    started = datetime.strptime(rid[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    rec = build_record(
        submission_of(manifest, get_task(manifest.task).version),
        manifest.resolved_config(),
        run_id=rid,
        seed=seed,
        started=started,
        finished=started,
        status=status,
        metrics=values,
        environment=environment(seed, sha),
        error=RunError(error_type, error) if error else None,
        checks=PASSED_CHECKS if checks is None else checks,
    ).to_json()
    rec["submission"]["manifest_sha256"] = sha
    rec["toolkit"]["version"] = "0.1.0"  # golden files must not change with the package version
    return rec


def save(folder: Path, sub: str, doc: dict[str, Any]) -> Path:
    name = doc.get("run_id") or doc["verification_id"]
    path = folder / sub / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pretty_bytes(doc))
    return path


def verification(claim_path: Path, claim: dict[str, Any], vid: str, **rerun_metrics: Any) -> dict[str, Any]:
    """A verification of `claim` whose re-run measured the claim's metrics, with `rerun_metrics` changed."""
    import hashlib

    from peftrepro.verify import build_verification

    rerun = copy.deepcopy(claim)
    rerun["run_id"] = vid
    rerun["metrics"].update(rerun_metrics)
    policy = get_task(claim["submission"]["task"]).verification
    sha = hashlib.sha256(claim_path.read_bytes()).hexdigest()
    typed_claim, typed_rerun = RunRecord.from_json(claim), RunRecord.from_json(rerun)
    judgement = judge(typed_claim, typed_rerun, policy)
    doc = build_verification(typed_claim, sha, typed_rerun, judgement, policy, datetime.now(UTC)).to_json()
    # Golden files must not change with the clock or the package version.
    doc.update(
        verification_id=vid,
        toolkit={"name": "peftrepro", "version": "0.1.0"},
        started_at=claim["started_at"],
        finished_at=claim["finished_at"],
    )
    return doc


KEYS = Path(__file__).parent / "keys"  # throw-away keys, trusted only by test trees (keys/README.md)
TESTER = "tester@peftrepro.test"


def throwaway_key(name: str = "tester") -> Path:
    """A 0600 copy of a committed test key: ssh-keygen refuses a private key others can read, and
    git does not keep file modes."""
    import os
    import shutil
    import tempfile

    copy_path = Path(tempfile.gettempdir()) / f"peftrepro-test-key-{name}-{os.getuid()}"
    if not copy_path.exists() or copy_path.read_bytes() != (KEYS / name).read_bytes():
        # Written aside and renamed: two test workers may make it at once; neither sees it half-written.
        part = copy_path.with_name(f"{copy_path.name}.{os.getpid()}")
        shutil.copyfile(KEYS / name, part)
        part.chmod(0o600)
        os.replace(part, copy_path)
    return copy_path


def trust(root: Path, principal: str = TESTER, key: str = "tester") -> Path:
    """List a test key in the allowed_signers beside the submissions tree `root`."""
    from peftrepro.signing import signers_file

    path = signers_file(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    kind, blob = (KEYS / f"{key}.pub").read_text().split()[:2]
    path.write_text(f"# verifiers of this test tree\n{principal} {kind} {blob}\n")
    return path


def sign_file(path: Path, key: str = "tester") -> Path:
    from peftrepro.signing import sign

    return sign(path, throwaway_key(key))
