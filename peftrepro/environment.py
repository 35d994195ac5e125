"""The fingerprint: everything about the environment that can change a run's numbers.

Computed where the run happens (inside the container for the docker runner, never on the host).
`environment_sha256` covers the fields that must match for a bit-exact re-run; the rest (git
commit, host names of things, timestamps) is reported but does not count.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import site
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from peftrepro.jsonio import canonical_sha256
from peftrepro.measure import allocator_settings

# Fields of the fingerprint that must be equal for two runs to be expected bit-identical.
EXACT_FIELDS = (
    "runner",
    "container",
    "python",
    "distributions_sha256",
    "torch",
    "accelerator",
    "determinism",
    "cpu_capability",
    "artifacts",
)


def _installation_paths() -> list[str]:
    """sys.path without the folders a package keeps inside site-packages and puts on the path when
    imported (Ray's vendored `ray/thirdparty_files`, colorama and psutil): those are copies private
    to that package, not installed distributions. Without this, a process that had imported Ray
    (a Ray driver or worker, and every job forked after it) fingerprinted an extra colorama."""
    sites = [Path(p).resolve() for p in [*site.getsitepackages(), site.getusersitepackages()]]
    return [
        entry
        for entry in sys.path
        if not any(site_dir in Path(entry or ".").resolve().parents for site_dir in sites)
    ]


def distributions() -> list[str]:
    """Every installed distribution as `name==version`, normalised and sorted."""
    seen = {}
    for dist in importlib.metadata.distributions(path=_installation_paths()):
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name:
            seen[name] = f"{name}=={dist.version}"
    return sorted(seen.values())


def git_state(start: Path) -> dict[str, Any]:
    """Commit and dirty flag (tracked changes or untracked files) of the repository holding `start`."""
    try:
        import git

        repo = git.Repo(start, search_parent_directories=True)
        return {"commit": repo.head.commit.hexsha, "dirty": repo.is_dirty(untracked_files=True)}
    except Exception:  # not a repository, no git binary, no commit yet: all mean "unknown"
        return {"commit": os.environ.get("PEFTREPRO_GIT_COMMIT"), "dirty": None}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def _interfaces() -> list[str]:
    import socket

    try:
        return sorted(name for _, name in socket.if_nameindex())
    except OSError:
        return []


def accelerator() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"kind": "cpu", "name": None, "count": 0, "memory_bytes": None, "driver": None}
    props = torch.cuda.get_device_properties(0)
    return {
        "kind": "cuda",
        "name": props.name,
        "count": torch.cuda.device_count(),
        "memory_bytes": int(props.total_memory),
        "driver": _driver_version(),
    }


CONTAINER_ENV = "PEFTREPRO_CONTAINER"


def container_facts() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(image facts, engine facts) that the docker runner hands to the job inside its container.

    The image id and repo digest can only be seen from the engine's side; everything else in the
    fingerprint is computed here, inside the container."""
    raw = os.environ.get(CONTAINER_ENV)
    if not raw:
        return None, None
    facts = json.loads(raw)
    image = {k: facts.get(k) for k in ("image", "image_id", "repo_digest")}
    return image, {"version": facts.get("engine_version")}


JOB_START_ENV = "PEFTREPRO_JOB_START"  # set by the local executor for a job forked from the template


def job_start(environment: dict[str, Any] | None = None) -> str:
    """How a run's process started: "template" (forked from the warm template) or "fresh" (a new
    interpreter: a spawned job, a container, or a record made before this was recorded). A process
    forked from the template does not count the library pages a fresh one touches while importing
    (fork leaves unmodified file-backed pages unmapped), so its RSS is ~100 MiB lower for the same run."""
    if environment is None:
        return "template" if os.environ.get(JOB_START_ENV) == "template" else "fresh"
    return "template" if environment.get("job_start") == "template" else "fresh"


def fingerprint(
    *, runner: str, seed: int, manifest_sha256: str, artifacts: dict[str, Any], repo_hint: Path | None = None
) -> dict[str, Any]:
    dists = distributions()
    container, engine = container_facts()
    env: dict[str, Any] = {
        "runner": "docker" if container else runner,
        "container": container,
        "engine": engine,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "distributions": dists,
        "distributions_sha256": canonical_sha256(dists),
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        },
        "accelerator": accelerator(),
        "determinism": {
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "num_threads": torch.get_num_threads(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        },
        # Reported, not in environment_sha256: they change no number a run computes, only the CPU
        # memory figures (which the verifier compares within a band anyway).
        "allocator": allocator_settings(),
        "job_start": job_start(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "seeds": {"seed": seed},
        "git": git_state(repo_hint or Path(__file__).resolve().parent),
        "manifest_sha256": manifest_sha256,
        "artifacts": artifacts,
        "os": {
            "system": platform.system(),
            "kernel": platform.release(),
            "machine": platform.machine(),
            "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(),
            # Inside a container run without network this is just ["lo"]: the record shows it.
            "network_interfaces": _interfaces(),
        },
    }
    return with_artifacts(env, artifacts)


def with_artifacts(env: dict[str, Any], artifacts: dict[str, Any]) -> dict[str, Any]:
    """The fingerprint with the loaded artifacts' hashes filled in and `environment_sha256` updated."""
    env = {**env, "artifacts": artifacts}
    env["environment_sha256"] = canonical_sha256({k: env[k] for k in EXACT_FIELDS})
    return env
