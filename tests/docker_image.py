"""Build the test image offline: a Debian base made by debootstrap, torch 2.13.0+cpu in a venv on
top (standing in for the CUDA PyTorch base), then this repository's Dockerfile with the locked
wheels, pushed through the local registry so that it has a real repo digest.

    python -m tests.docker_image WORK_DIR    # with DOCKER_HOST set; prints the digest reference

Each step is skipped when its image is already on the engine (a fresh engine builds everything).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE = "local/py311-base:bookworm"
TORCH_BASE = "local/py311-torch:2.13.0"
REGISTRY = "127.0.0.1:5000"
TAG = f"{REGISTRY}/peftrepro:test"
MIRROR = "http://deb.debian.org/debian"
PLATFORM = [
    "--only-binary=:all:",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
    "--abi",
    "abi3",
    "--abi",
    "none",
]


def log(message: str) -> None:
    print(f"[test image] {message}", file=sys.stderr, flush=True)


def has_image(client, ref: str) -> bool:
    import docker

    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def base_image(client, work: Path) -> None:
    if has_image(client, BASE):
        return
    rootfs = work / "rootfs"
    log("debootstrap (minbase + python3)")
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv",
            "bookworm",
            str(rootfs),
            MIRROR,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    tarball = work / "rootfs.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
    repository, tag = BASE.split(":")
    client.api.import_image(src=str(tarball), repository=repository, tag=tag)
    tarball.unlink()
    subprocess.run(["rm", "-rf", str(rootfs)], check=True)


def torch_image(client, work: Path) -> None:
    if has_image(client, TORCH_BASE):
        return
    wheels = work / "torch-wheels"
    log("downloading torch 2.13.0+cpu and its dependencies")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            *PLATFORM,
            "-d",
            str(wheels),
            "torch==2.13.0+cpu",
        ],
        check=True,
    )
    log("installing torch into /opt/venv (network off)")
    container = client.containers.run(
        BASE,
        [
            "sh",
            "-c",
            "python3 -m venv /opt/venv && /opt/venv/bin/pip install --quiet --no-index "
            "--find-links /wheels torch==2.13.0+cpu",
        ],
        volumes={str(wheels): {"bind": "/wheels", "mode": "ro"}},
        network_mode="none",
        detach=True,
    )
    code = container.wait()["StatusCode"]
    if code != 0:
        raise RuntimeError(container.logs().decode()[-2000:])
    container.commit(
        repository=TORCH_BASE.split(":")[0],
        tag=TORCH_BASE.split(":")[1],
        changes=["ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    )
    container.remove()
    shutil.rmtree(wheels)


def project_image(client, work: Path) -> str:
    """Build the Dockerfile offline, push it, pull it back by digest; returns `repo@sha256:...`."""
    from peftrepro.runners.docker import build_image

    ctx = work / "context"
    shutil.rmtree(ctx, ignore_errors=True)
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (ctx / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, ctx / name)
    log("downloading the locked wheels")
    subprocess.run(
        [sys.executable, str(REPO / "scripts/lock.py"), "--download", str(ctx / "wheels")], check=True
    )
    build_image(
        client, ctx, TAG, {"BASE_IMAGE": TORCH_BASE, "PIP_ARGS": "--no-index --find-links /src/wheels"}
    )
    log("pushing to the local registry and pulling back by digest")
    for line in client.images.push(TAG, stream=True, decode=True):
        if "error" in line:
            raise RuntimeError(line["error"])
    digest = client.images.get_registry_data(TAG).id
    ref = f"{REGISTRY}/peftrepro@{digest}"
    client.images.remove(TAG)
    client.images.pull(ref)
    shutil.rmtree(ctx)
    return ref


def wait_for_background_build() -> str | None:
    """The reference of the image scripts/test builds in the background ($PEFTREPRO_TEST_IMAGE_PID
    writing to $PEFTREPRO_TEST_IMAGE_REF), once that build has finished; None when there is none."""
    import os
    import time

    pid, ref_file = os.environ.get("PEFTREPRO_TEST_IMAGE_PID"), os.environ.get("PEFTREPRO_TEST_IMAGE_REF")
    if not pid or not ref_file:
        return None
    while Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower():
        time.sleep(1)
    ref = Path(ref_file).read_text().strip()
    if not ref:
        log_file = Path(ref_file).with_name("image.log")
        tail = log_file.read_text()[-3000:] if log_file.exists() else "(no log)"
        raise RuntimeError(f"the background build of the test image failed:\n{tail}")
    return ref


def build_all(work: Path, host: str | None = None) -> str:
    import docker

    client = docker.DockerClient(base_url=host, timeout=600) if host else docker.from_env(timeout=600)
    work.mkdir(parents=True, exist_ok=True)
    base_image(client, work)
    torch_image(client, work)
    return project_image(client, work)


if __name__ == "__main__":
    print(build_all(Path(sys.argv[1])))
