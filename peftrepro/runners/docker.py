"""The docker runner: the same job as `local`, inside a pinned container image.

Flow: find the engine -> make sure the image exists (pull by digest, or build from the Dockerfile)
-> fetch the task's assets into the mounted cache (network allowed) -> run the job entry point
(`python -m peftrepro.runners.entry`, runners/entry.py) in a container with the submission mounted
read-only, an output folder writable and **no network** -> stream its logs -> read back the
record it handed out, checked (schema, manifest, seed), and return it: the driver writes it.

The record is made inside the container, fingerprint included; the host only adds what the
container cannot see about itself (image id, repo digest, engine version), passed in as an
environment variable. SIGINT/SIGTERM stop the container (it hands out its own `cancelled` record)
and remove it; a container that fails to start is removed too, and a `failed` record says why.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftrepro.environment import CONTAINER_ENV, git_state
from peftrepro.errors import RecordError, RunCancelled, UsageError, safe_text
from peftrepro.manifest import MANIFEST_FILE, ResolvedManifest
from peftrepro.measure import ALLOCATOR_ENV
from peftrepro.paths import cache_root
from peftrepro.records import RunError, RunOutput, utc_now
from peftrepro.runners.entry import ENTRY, OUTPUT_FILE, read_output
from peftrepro.runners.local import Cancellation, trapped_signals, unwritten_record

DEFAULT_IMAGE = "peftrepro:local"
STOP_TIMEOUT_S = 60  # time the job gets to write its `cancelled` record before it is killed


@dataclass(frozen=True)
class DockerOptions:
    image: str = DEFAULT_IMAGE
    gpus: str = "auto"  # auto: when the engine has the NVIDIA runtime; all: required; none
    memory: str | None = None  # e.g. "8g"
    cpus: float | None = None

    @staticmethod
    def from_env() -> DockerOptions:
        return DockerOptions(image=os.environ.get("PEFTREPRO_IMAGE", DEFAULT_IMAGE))


def engine_address() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def connect() -> Any:
    """A client for the engine at DOCKER_HOST, or one clear line saying there is none."""
    import docker
    import requests

    try:
        client = docker.from_env(timeout=300)
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        raise UsageError(f"no Docker engine at {engine_address()}; start one or use --runner local") from None
    return client


def ensure_image(client: Any, ref: str) -> Any:
    """The image `ref`: already here, pulled when it is pinned by digest, or built from the
    repository's Dockerfile when it is a plain tag and we run from a source checkout."""
    import docker

    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as e:
        raise UsageError(f"image {ref}: {safe_text(str(e.explanation or e))}") from None
    if "@sha256:" in ref:
        try:
            print(f"pulling {ref}", file=sys.stderr)
            return client.images.pull(ref)
        except docker.errors.APIError as e:
            raise UsageError(
                f"image {ref} is not here and cannot be pulled: {safe_text(str(e.explanation))}"
            ) from None
    dockerfile = Path(__file__).resolve().parents[2] / "Dockerfile"
    if not dockerfile.is_file():
        raise UsageError(
            f"image {ref} not found on the engine; build it (docker build -t {ref} .) or pass --image"
        )
    return build_image(client, dockerfile.parent, ref)


def build_image(client: Any, context: Path, tag: str, buildargs: dict[str, str] | None = None) -> Any:
    """Build `context`/Dockerfile as `tag`, printing the build log as it goes."""
    import docker

    args = {"GIT_COMMIT": git_state(context).get("commit") or "unknown", **(buildargs or {})}
    print(f"building {tag} from {context / 'Dockerfile'}", file=sys.stderr)
    try:
        for chunk in client.api.build(path=str(context), tag=tag, buildargs=args, rm=True, decode=True):
            if "stream" in chunk:
                sys.stderr.write(chunk["stream"])
            if "error" in chunk:
                raise UsageError(f"building {tag} failed: {safe_text(chunk['error'].strip())}")
    except docker.errors.APIError as e:
        raise UsageError(f"building {tag} failed: {safe_text(str(e.explanation))}") from None
    return client.images.get(tag)


def image_facts(client: Any, image: Any, ref: str) -> dict[str, Any]:
    digests = image.attrs.get("RepoDigests") or []
    return {
        "image": ref,
        "image_id": image.id,
        "repo_digest": digests[0] if digests else "unpinned",
        "engine_version": client.version().get("Version"),
    }


def device_requests(client: Any, gpus: str) -> list[Any]:
    import docker

    if gpus == "none":
        return []
    has_nvidia = "nvidia" in (client.info().get("Runtimes") or {})
    if not has_nvidia:
        if gpus == "all":
            raise UsageError(
                f"GPUs were asked for (--gpus all) but the engine at {engine_address()} has no NVIDIA runtime"
            )
        return []
    return [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]


def run_docker(
    manifest: ResolvedManifest,
    *,
    seed: int,
    progress: bool | None = None,
    options: DockerOptions | None = None,
    fresh_base: bool = False,
) -> RunOutput:
    opts = options or DockerOptions.from_env()
    client = connect()
    image = ensure_image(client, opts.image)
    facts = image_facts(client, image, opts.image)
    requests_ = device_requests(client, opts.gpus)
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    inside = f"/submissions/{manifest.task}/{manifest.method}/{manifest.name}"
    common: dict[str, Any] = {
        "user": f"{os.getuid()}:{os.getgid()}",  # files in the mounted folders stay the caller's
        "environment": {
            "PEFTREPRO_CACHE": "/cache",
            "HOME": "/tmp",
            "HF_HUB_OFFLINE": "1",
            CONTAINER_ENV: json.dumps(facts, sort_keys=True),
            "PEFTREPRO_GIT_COMMIT": git_state(manifest.folder).get("commit") or "",
            **ALLOCATOR_ENV,
        },
        "device_requests": requests_,
        "mem_limit": opts.memory,
        "nano_cpus": int(opts.cpus * 1e9) if opts.cpus else None,
    }
    out = Path(tempfile.mkdtemp(prefix="peftrepro-docker-out-"))
    started = utc_now()
    try:
        # Assets first, in their own container that may use the network; the run itself may not.
        fetch_env = {**common["environment"], "HF_HUB_OFFLINE": "0"}
        status, error = _run_container(
            client,
            image,
            ["fetch", manifest.task],
            {str(cache): {"bind": "/cache", "mode": "rw"}},
            network=True,
            common={**common, "environment": fetch_env},
        )
        if status == "exited":
            volumes = {
                str(manifest.folder.resolve()): {"bind": inside, "mode": "ro"},
                str(out): {"bind": "/out", "mode": "rw"},
                str(cache): {"bind": "/cache", "mode": "rw"},
            }
            command = [f"{inside}/{MANIFEST_FILE}", "--seed", str(seed), "--out", "/out"]
            command += ["--fresh-base"] if fresh_base else []
            status, error = _run_container(
                client, image, command, volumes, network=False, common=common, entrypoint=ENTRY
            )
        return _collect(manifest, seed, out, status, error, started, facts)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _run_container(
    client: Any,
    image: Any,
    command: list[str],
    volumes: dict[str, Any],
    *,
    network: bool,
    common: dict[str, Any],
    entrypoint: list[str] | None = None,
) -> tuple[str, str | None]:
    """Run one container to the end; ("exited", None), ("failed", why) or ("cancelled", signal).
    The container is removed in every case."""
    import docker

    container = None
    cancellation = Cancellation()
    with trapped_signals(cancellation):
        try:
            container = client.containers.create(
                image.id,
                command=command,
                entrypoint=entrypoint,
                volumes=volumes,
                network_disabled=not network,
                network_mode=None if network else "none",
                detach=True,
                **common,
            )
            container.start()
            for line in _logs(container):
                sys.stderr.write(line)
            code = container.wait().get("StatusCode", 1)
            if code not in (0, 1, 130):  # 1 and 130: the job handed out a failed/cancelled record itself
                return "failed", f"container exited with status {code}"
            return "exited", None
        except RunCancelled as c:
            cancellation.armed = False
            if container is not None:
                with contextlib.suppress(Exception):  # already gone, or the engine timed out
                    container.stop(timeout=STOP_TIMEOUT_S)
                    container.wait(timeout=STOP_TIMEOUT_S + 10)
            return "cancelled", c.signal_name
        except docker.errors.APIError as e:
            return "failed", f"container could not run: {safe_text(str(e.explanation or e))}"
        finally:
            cancellation.armed = False
            if container is not None:
                with contextlib.suppress(docker.errors.APIError):
                    container.remove(force=True)


def _logs(container: Any) -> Iterator[str]:
    for chunk in container.logs(stream=True, follow=True):
        yield chunk.decode("utf-8", "replace")


def _collect(
    manifest: ResolvedManifest,
    seed: int,
    out: Path,
    status: str,
    error: str | None,
    started: Any,
    facts: dict[str, Any],
) -> RunOutput:
    """The output the job handed out (checked: schema, manifest, seed); if there is none, a record
    made here saying what happened to the container."""
    handed = read_output(out)
    if handed is not None:
        sub = handed.record.submission
        if sub.manifest_sha256 != manifest.sha256 or handed.record.seed != seed:
            raise RecordError(
                str(out / OUTPUT_FILE),
                "/submission",
                "the container's record is for another manifest or seed",
            )
        return handed
    cancelled = status == "cancelled"
    record = unwritten_record(
        manifest,
        seed=seed,
        started=started,
        status="cancelled" if cancelled else "failed",
        metrics={"steps_completed": 0},
        environment={
            "runner": "docker",
            "container": {k: facts[k] for k in ("image", "image_id", "repo_digest")},
        },
        error=RunError(
            "RunCancelled" if cancelled else "ContainerError",
            f"stopped by {error}" if cancelled else error or "the container handed out no record",
        ),
    )
    return RunOutput(record)
