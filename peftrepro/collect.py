"""Read a submissions tree the way the verifier and the leaderboard see it.

For each submission folder: its manifest (resolved, or why it cannot be), the records that claim
results for the *current* manifest (newest `success` per seed), the newest record of an earlier
manifest or task version (`stale`), and the verifications that still apply to the claims.
Nothing is trusted: every record or verification used is schema-checked and bound to its folder,
its file name and its manifest; every file that cannot be used is listed with the reason.

Records that a newer record of the same seed supersedes are not read at all: a run id names its
seed (a record whose `seed` differs from its run id's is refused), so the file name alone says that a
newer claim of that seed exists. They reach no output, and reading them would make the leaderboard
grow with history, not content.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftrepro import forked, schemas
from peftrepro.compare import judge, judge_published
from peftrepro.errors import InputError, PeftreproError, safe_text
from peftrepro.jsonio import JSONReadError, parse_json, read_capped
from peftrepro.manifest import MANIFEST_FILE, ResolvedManifest, resolve
from peftrepro.metrics import VerificationPolicy
from peftrepro.records import (
    CLAIMS_DIR,
    PUBLISHED_VERIFICATIONS_DIR,
    RECORD_SCHEMA_VERSION,
    RUNS_DIR,
    VERIFICATIONS_DIR,
    PublishedVerificationRecord,
    RunRecord,
    VerificationRecord,
    parse_published_verification,
    parse_record,
    parse_verification,
)
from peftrepro.signing import MAX_SIG_BYTES, Signature, check, signature_path, signers_file
from peftrepro.sweep import SWEEP_FILE
from peftrepro.tasks import get_task, task_names

RUN_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z-s([0-9]{1,10})-[0-9a-f]{6}")


@dataclass(frozen=True)
class Stored:
    """A run record as read from disk; `sha256` is over the file's exact bytes. A record of another
    toolkit's format (shown as stale only) is read leniently: see RunRecord.foreign."""

    path: Path
    record: RunRecord
    sha256: str

    @property
    def run_id(self) -> str:
        return self.record.run_id


@dataclass(frozen=True)
class StoredVerification:
    path: Path
    verification: VerificationRecord
    sha256: str
    signature: Signature  # who vouches that the re-run happened (signing.py); unsigned counts for nothing

    @property
    def signer(self) -> str | None:
        return self.signature.signer


@dataclass(frozen=True)
class StoredPublishedVerification:
    """verifications/published/<id>.json: re-runs here judged against one published claim."""

    path: Path
    verification: PublishedVerificationRecord
    signature: Signature

    @property
    def signer(self) -> str | None:
        return self.signature.signer


@dataclass(frozen=True)
class StoredSweep:
    """sweep.json as read from disk (sweep records stay JSON objects: sweep.py reads and writes them)."""

    path: Path
    data: dict[str, Any]
    sha256: str


@dataclass(frozen=True)
class StoredClaim:
    """A published claim (claims/<id>.json, published.py), schema-checked and bound to its folder
    and to the current manifest; its fields stay a JSON object."""

    path: Path
    data: dict[str, Any]
    sha256: str

    @property
    def metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = self.data["metrics"]
        return metrics

    @property
    def accelerator(self) -> str:
        return str(self.data["environment"]["accelerator"])


@dataclass
class Submission:
    folder: Path
    key: tuple[str, str, str]  # (task, method, name), from the folder's place in the tree
    manifest: ResolvedManifest | None = None
    problem: str | None = None  # why the manifest cannot be used
    claims: dict[int, Stored] = field(default_factory=dict)  # seed -> newest success, current manifest
    latest: Stored | None = None  # newest record of the current manifest, any status
    stale: Stored | None = None  # newest success of an earlier manifest or task version
    stale_reason: str | None = None
    verifications: dict[str, StoredVerification] = field(default_factory=dict)  # claim run_id -> newest
    sweep: StoredSweep | None = None  # sweep.json, schema-valid and for this folder
    published: list[StoredClaim] = field(default_factory=list)  # claims of the current manifest, by id
    # claim_id -> the newest verification of that claim that reads, binds and re-judges the same
    published_verifications: dict[str, StoredPublishedVerification] = field(default_factory=dict)
    ignored: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "/".join(self.key)

    @property
    def name_in_task(self) -> str:
        """method/name: unique within its task (a row's label, and what `supersedes` names)."""
        return "/".join(self.key[1:])


def _read(path: Path) -> tuple[dict[str, Any], str]:
    obj, raw = _read_bytes(path)
    return obj, hashlib.sha256(raw).hexdigest()


def _read_bytes(path: Path) -> tuple[dict[str, Any], bytes]:
    if path.is_symlink():
        raise JSONReadError("is a symbolic link; records must be plain files")
    raw = read_capped(path)
    obj = parse_json(raw)
    if not isinstance(obj, dict):
        raise JSONReadError("expected a JSON object")
    return obj, raw


def _files(folder: Path, ignored: list[tuple[Path, str]] | None = None) -> list[Path]:
    """JSON files of a records folder, newest first (names start with a UTC timestamp). A folder
    that is a symbolic link is not read (it could point anywhere); it is reported in `ignored`."""
    if folder.is_symlink():
        if ignored is not None:
            ignored.append((folder, "is a symbolic link; records folders must be plain folders"))
        return []
    try:
        names = [e.name for e in os.scandir(folder)]
    except OSError:  # missing, not a folder, or unreadable: no records to show
        return []
    return [folder / n for n in sorted(names, reverse=True) if n.endswith(".json") and not n.startswith(".")]


def _header(data: dict[str, Any]) -> tuple[Any, ...]:
    """(status, seed, manifest sha256, task version) when well-typed, else Nones: enough to tell
    whether a record is superseded before paying for its schema check."""
    status, seed = data.get("status"), data.get("seed")
    sha = field_at(data, "submission", "manifest_sha256")
    version = field_at(data, "submission", "task_version")
    ok = status in ("success", "failed", "cancelled") and type(seed) is int and isinstance(sha, str)
    return (status, seed, sha, version) if ok and isinstance(version, str) else (None, None, None, None)


def field_at(obj: dict[str, Any], *keys: str) -> Any:
    """obj[k1][k2]..., or None where a level is missing or not an object (untrusted JSON)."""
    for k in keys:
        obj = obj.get(k) if isinstance(obj, dict) else None  # type: ignore[assignment]
    return obj


def load_submission(folder: Path, signers: Path | None = None) -> Submission:
    """One submission folder (root/task/method/name); `signers` is the allowed_signers file that
    vouches for its verifications (default: the one beside the tree, signing.signers_file)."""
    sub = Submission(folder, (folder.parent.parent.name, folder.parent.name, folder.name))
    try:
        sub.manifest = resolve(folder / MANIFEST_FILE)
    except PeftreproError as e:
        sub.problem = e.message
    _load_records(sub)
    if sub.claims and sub.manifest is not None:
        _load_verifications(sub, signers or signers_file(folder.resolve().parents[2]))
    _load_sweep(sub)
    if sub.manifest is not None:
        _load_claims(sub)
    if sub.published:
        _load_published_verifications(sub, signers or signers_file(folder.resolve().parents[2]))
    return sub


def _read_owned(sub: Submission, path: Path, schema: str) -> tuple[dict[str, Any], str] | None:
    """A JSON file of this submission (sweep.json, a claim): its object and sha256 when it reads,
    passes `schema` and names this folder's task/method/name; otherwise None, the reason listed."""
    try:
        data, sha = _read(path)
        schemas.check(data, schema, str(path), InputError)
    except (JSONReadError, OSError) as e:
        sub.ignored.append((path, str(e)))
        return None
    except InputError as e:
        sub.ignored.append((path, e.expected if not e.pointer else f"{e.pointer}: {e.expected}"))
        return None
    s = data["submission"]
    if (s["task"], s["method"], s["name"]) != sub.key:
        sub.ignored.append((path, f"belongs to {s['task']}/{s['method']}/{s['name']}, not to this folder"))
        return None
    return data, sha


def _load_claims(sub: Submission) -> None:
    assert sub.manifest is not None
    version = get_task(sub.manifest.task).version if sub.manifest.task in task_names() else None
    for path in reversed(_files(sub.folder / CLAIMS_DIR, sub.ignored)):  # oldest first: by name
        owned = _read_owned(sub, path, schemas.CLAIM)
        if owned is None:
            continue
        data, sha = owned
        if data["claim_id"] != path.stem:
            sub.ignored.append((path, "claim_id does not match the file name"))
        elif (
            data["submission"]["manifest_sha256"] != sub.manifest.sha256
            or data["submission"]["task_version"] != version
        ):
            sub.ignored.append((path, "a claim about an earlier manifest or task version: not shown"))
        else:
            sub.published.append(StoredClaim(path, data, sha))


def _load_published_verifications(sub: Submission, signers: Path) -> None:
    """Newest first (ids sort by time): the first that binds to a shown claim is that claim's."""
    assert sub.manifest is not None
    claims = {c.data["claim_id"]: c for c in sub.published}
    policy = get_task(sub.manifest.task).verification
    folder = sub.folder / VERIFICATIONS_DIR / PUBLISHED_VERIFICATIONS_DIR
    for path in _files(folder, sub.ignored):
        try:
            data, raw = _read_bytes(path)
            v = parse_published_verification(data, str(path))
        except (JSONReadError, OSError) as e:
            sub.ignored.append((path, str(e)))
            continue
        except InputError as e:
            sub.ignored.append((path, f"{e.pointer}: {e.expected}" if e.pointer else e.expected))
            continue
        claim = claims.get(v.published.claim_id)
        if claim is None or v.published.claim_id in sub.published_verifications:
            continue  # a claim not shown (earlier manifest), or an older verification of a shown one
        problem = _published_problem(v, path, claim, sub.manifest.sha256, policy)
        if problem:
            sub.ignored.append((path, problem))
        else:
            signature = _signature(path, raw, signers)
            sub.published_verifications[claim.data["claim_id"]] = StoredPublishedVerification(
                path, v, signature
            )


def _published_problem(
    v: PublishedVerificationRecord,
    path: Path,
    claim: StoredClaim,
    manifest_sha256: str,
    policy: VerificationPolicy,
) -> str | None:
    if v.verification_id != path.stem:
        return "verification_id does not match the file name"
    if v.published.sha256 != claim.sha256:
        return f"the claim it judged ({claim.path.name}) has changed since: it no longer counts"
    if any(r.submission.manifest_sha256 != manifest_sha256 for r in v.reruns):
        return "a re-run it carries ran a different manifest"
    if len({r.seed for r in v.reruns}) != len(v.reruns):
        return "it carries two re-runs of one seed"
    verdict = judge_published(claim.metrics, claim.accelerator, v.reruns, policy).verdict
    if verdict != v.verdict:
        return f"says {v.verdict} but its own re-runs give {verdict}"
    return None


def _load_sweep(sub: Submission) -> None:
    path = sub.folder / SWEEP_FILE
    if not path.exists() and not path.is_symlink():
        return
    owned = _read_owned(sub, path, schemas.SWEEP)
    if owned is not None:
        sub.sweep = StoredSweep(path, *owned)


def _load_records(sub: Submission) -> None:
    m = sub.manifest
    version = get_task(m.task).version if m else None
    for path in _files(sub.folder / RUNS_DIR, sub.ignored):
        try:
            name = RUN_ID.fullmatch(path.stem)
            if name is None:
                raise JSONReadError("file name is not a run id (YYYYmmddTHHMMSSZ-sSEED-xxxxxx.json)")
            if sub.latest is not None and int(name.group(1)) in sub.claims:
                continue  # superseded: a newer claim of its seed was found (see the module's docstring)
            data, sha = _read(path)
        except (JSONReadError, OSError) as e:
            sub.ignored.append((path, str(e)))
            continue
        header = _header(data)
        fmt = data.get("schema_version")
        if type(fmt) is int and fmt != RECORD_SCHEMA_VERSION:  # another toolkit's record format
            why = f"record format v{fmt} (this toolkit reads v{RECORD_SCHEMA_VERSION})"
            foreign = Stored(path, RunRecord.foreign(data), sha)
            if header[0] == "success" and sub.stale is None and sub.latest is None and _bound(sub, foreign):
                sub.stale, sub.stale_reason = foreign, why + "; re-run it"
            elif header[0] is None:
                sub.ignored.append((path, why))
            continue
        current = m is not None and header[2:] == (m.sha256, version)
        success = header[0] == "success"
        if header[0] is None:
            wanted = True  # a header we cannot read: the schema check below says why
        elif current:
            wanted = sub.latest is None or (success and header[1] not in sub.claims)
        else:
            wanted = sub.stale is None and success and sub.latest is None
        if not wanted:
            continue
        record = _usable(sub, path, data, sha)
        if record is None:
            continue
        if current:
            sub.latest = sub.latest or record
            if success:
                sub.claims[record.record.seed] = record
        else:
            sub.stale = record
            sub.stale_reason = _stale_reason(record.record, m, version)


def _usable(sub: Submission, path: Path, data: dict[str, Any], sha: str) -> Stored | None:
    """The record if it is schema-valid and bound to this folder and file name; otherwise None,
    and the reason listed as ignored."""
    try:
        record = Stored(path, parse_record(data, str(path)), sha)
    except InputError as e:
        sub.ignored.append((path, e.expected if not e.pointer else f"{e.pointer}: {e.expected}"))
        return None
    missing = _missing_task_metrics(record.record, sub.key[0])
    if missing:
        sub.ignored.append((path, f"/metrics: a {sub.key[0]} record needs {', '.join(missing)}"))
        return None
    other = _other_models(record.record, sub.key[0])
    if other:
        sub.ignored.append((path, other))
        return None
    return record if _bound(sub, record) else None


def _other_models(record: RunRecord, task_name: str) -> str | None:
    """Why a record made with other base models than the task's pinned ones is no claim: a recipe
    built on another CPU gives other weights, so its numbers measure another model."""
    pins = get_task(task_name).model_pins() if task_name in task_names() else None
    artifacts = record.environment.get("artifacts")  # a hostile record may hold anything here
    model = artifacts.get("model") if isinstance(artifacts, dict) else None
    if not pins or not isinstance(model, dict) or "weights_sha256" not in model:
        return None  # a run stopped before its models were loaded names none
    for key, pinned in pins.items():
        if model.get(key) != pinned:
            return (
                f"/environment/artifacts/model/{key}: {safe_text(str(model.get(key)))[:12]}, not the "
                f"task's pinned {pinned[:12]}: made with models built elsewhere (another CPU builds "
                "the recipe to other bytes), so it measures another model"
            )
    return None


def _missing_task_metrics(record: RunRecord, task_name: str) -> list[str]:
    """The task's own metrics a success record lacks (the schema knows only the two kinds of task)."""
    if record.status != "success" or task_name not in task_names():
        return []
    t = get_task(task_name)
    return [k for k in (t.score_key, "base_" + t.score_key, t.prior_key) if k not in record.metrics]


def _bound(sub: Submission, stored: Stored) -> bool:
    """Bound to this folder and file name (checked on a record in any format with a readable header)."""
    owner = stored.record.submission.key
    if owner != sub.key:
        sub.ignored.append((stored.path, f"belongs to {'/'.join(map(str, owner))}, not to this folder"))
        return False
    if stored.record.run_id != stored.path.stem:
        sub.ignored.append(
            (stored.path, f"run_id {safe_text(stored.record.run_id)} does not match the file name")
        )
        return False
    seed, name = stored.record.seed, RUN_ID.fullmatch(stored.path.stem)
    if type(seed) is int and name is not None and int(name.group(1)) != seed:
        sub.ignored.append((stored.path, f"seed {seed} is not the seed its run id names"))
        return False
    return True


def _stale_reason(record: RunRecord, m: ResolvedManifest | None, version: str | None) -> str:
    if m is None:
        return "its manifest no longer resolves"
    if record.submission.task_version != version:
        return f"task version {record.submission.task_version} (now {version})"
    was = record.submission.manifest_sha256[:12]
    return f"manifest changed since the run (sha256 {was}, now {m.sha256[:12]})"


def _load_verifications(sub: Submission, signers: Path) -> None:
    assert sub.manifest is not None
    by_run_id = {r.run_id: r for r in sub.claims.values()}
    policy = get_task(sub.manifest.task).verification
    for path in _files(sub.folder / VERIFICATIONS_DIR, sub.ignored):
        try:
            data, raw = _read_bytes(path)
        except (JSONReadError, OSError) as e:
            sub.ignored.append((path, str(e)))
            continue
        claim_id = field_at(data, "claim", "run_id")
        claim = by_run_id.get(claim_id) if isinstance(claim_id, str) else None  # a list is unhashable
        if claim is None:  # verifies an older record (not shown, so not checked), or is broken
            if not (isinstance(claim_id, str) and RUN_ID.fullmatch(claim_id)):
                sub.ignored.append((path, "claim.run_id: expected the run id of a record in runs/"))
            elif not (sub.folder / RUNS_DIR / f"{claim_id}.json").is_file():
                sub.ignored.append((path, f"verifies {claim_id}, which is not in runs/"))
            continue
        if claim.run_id in sub.verifications:
            continue  # a newer verification of this claim was found
        try:
            v = parse_verification(data, str(path))
        except InputError as e:
            sub.ignored.append((path, f"{e.pointer}: {e.expected}" if e.pointer else e.expected))
            continue
        problem = _verification_problem(v, path, claim, policy)
        if problem:
            sub.ignored.append((path, problem))
        else:
            sha = hashlib.sha256(raw).hexdigest()
            sub.verifications[claim.run_id] = StoredVerification(path, v, sha, _signature(path, raw, signers))


def _signature(path: Path, raw: bytes, signers: Path) -> Signature:
    """Who vouches for the verification file `path` whose bytes were `raw` (signing.py)."""
    sig = signature_path(path)
    if sig.is_symlink():
        return Signature(None, "its .sig is a symbolic link: not read")
    if not sig.is_file():
        return Signature(None, "unsigned")
    try:
        return check(raw, read_capped(sig, MAX_SIG_BYTES), signers)
    except (JSONReadError, OSError) as e:
        return Signature(None, f"its .sig cannot be read: {e}")


def _verification_problem(
    v: VerificationRecord, path: Path, claim: Stored, policy: VerificationPolicy
) -> str | None:
    if v.verification_id != path.stem:
        return "verification_id does not match the file name"
    if v.claim.record_sha256 != claim.sha256:
        return f"the record it verified ({claim.path.name}) has changed since: it no longer counts"
    if v.rerun.submission.manifest_sha256 != claim.record.submission.manifest_sha256:
        return "its re-run ran a different manifest"
    verdict = judge(claim.record, v.rerun, policy).verdict
    if verdict != v.verdict:
        return f"says {v.verdict} but its own re-run gives {verdict}"
    return None


# A tree of this many submissions or more is read by two processes (a fork of this one reads every
# other folder): reading is per-folder Python work, and the leaderboard of 10k records must take < 2 s.
PARALLEL_FROM = 200


def load_tree(
    root: Path, parallel_from: int = PARALLEL_FROM
) -> tuple[list[Submission], list[tuple[Path, str]]]:
    """Every submission under `root` (task/method/name folders), and files found outside any
    submission (records whose manifest is missing)."""
    inside = root.resolve()
    signers = signers_file(inside)
    folders: list[Path] = []
    orphans: list[tuple[Path, str]] = []
    for folder in sorted(p for p in root.glob("*/*/*") if p.is_dir() or p.is_symlink()):
        if folder.is_symlink() or not folder.resolve().is_relative_to(inside):
            # A linked submission (or task/method folder) could point anywhere: never read.
            orphans.append((folder, "is or lies under a symbolic link; submissions must be plain folders"))
            continue
        if (folder / MANIFEST_FILE).is_file():
            folders.append(folder)
        else:
            orphans.extend((p, "record for a missing manifest") for p in _files(folder / RUNS_DIR))
            orphans.extend(
                (p, "verification for a missing manifest") for p in _files(folder / VERIFICATIONS_DIR)
            )
    with paused_gc():
        return _load_all(folders, signers, parallel_from), orphans


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Reading builds ~100 small acyclic objects per record; the cyclic collector's full passes over
    them (each pass walks everything read so far) cost up to a third of a large tree's load, and as
    much again in the rows and plot built from them (pages.render pauses it throughout)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _load_some(folders: list[Path], signers: Path) -> list[Submission]:
    return [load_submission(f, signers) for f in folders]


def _load_all(folders: list[Path], signers: Path, parallel_from: int) -> list[Submission]:
    """load_submission of each folder, in order. A large tree is read by two processes: a fork of
    this one reads every other folder (forked.py)."""
    if len(folders) < parallel_from:
        return _load_some(folders, signers)
    theirs = forked.start(lambda: _load_some(folders[1::2], signers))
    mine = _load_some(folders[0::2], signers)
    other = theirs()
    merged = [sub for pair in zip(mine, other, strict=False) for sub in pair]
    return merged + mine[len(other) :]


def describe_ignored(path: Path, reason: str) -> str:
    return f"{safe_text(str(path))}: {safe_text(reason)}"
