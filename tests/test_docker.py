"""The docker runner: error paths against a fake engine; one real run in a real engine.

The real-engine test needs PEFTREPRO_TEST_DOCKER_HOST (scripts/test starts an engine and a local
registry and sets it); without it the test is skipped, unless PEFTREPRO_REQUIRE_DOCKER=1 (CI).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from peftrepro.cli import main
from peftrepro.records import list_records, read_record
from tests.conftest import real_lora_folder
from tests.fake_engine import serve

REPO = Path(__file__).parent.parent


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sock = tmp_path / "fake.sock"
    engine, server = serve(sock)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    yield engine
    server.shutdown()
    server.server_close()


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_no_engine_is_one_line_exit_2(write_manifest, tmp_path: Path, monkeypatch) -> None:
    path = write_manifest()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/nothing.sock")
    code, out = cli("run", str(path), "--runner", "docker")
    assert (
        code == 2
        and f"error: no Docker engine at unix://{tmp_path}/nothing.sock; start one or use --runner local"
        in out
    )
    assert "Traceback" not in out and not list_records(path.parent)


def test_image_that_cannot_be_pulled(write_manifest, fake) -> None:
    path = write_manifest()
    code, out = cli(
        "run", str(path), "--runner", "docker", "--image", "registry.invalid/x@sha256:" + "0" * 64
    )
    assert code == 2 and "is not here and cannot be pulled" in out, out
    assert not list_records(path.parent)


def test_gpus_required_but_missing(write_manifest, fake) -> None:
    fake.add_image("peftrepro:local")
    code, out = cli("run", str(write_manifest()), "--runner", "docker", "--gpus", "all")
    assert code == 2 and "no NVIDIA runtime" in out


def test_container_that_fails_to_start_is_removed_and_recorded(write_manifest, fake) -> None:
    fake.add_image("peftrepro:local")
    fake.fail_start = True
    path = write_manifest()
    code, out = cli("run", str(path), "--runner", "docker")
    assert code == 1, out
    [record_file] = list_records(path.parent)
    record = read_record(record_file).to_json()
    assert record["status"] == "failed" and "could not select device driver" in record["error"]["message"]
    assert record["environment"]["container"]["repo_digest"] == "unpinned"
    assert "DELETE /containers/c1" in fake.calls
    assert [p.name for p in path.parent.joinpath("runs").iterdir()] == [record_file.name]


def test_interrupted_container_run_is_stopped_removed_and_cancelled(
    write_manifest, fake, tiny_model_dir
) -> None:
    fake.add_image("peftrepro:local", "127.0.0.1:5000/peftrepro@sha256:" + "2" * 64)
    fake.block_logs = True
    path = write_manifest()
    env = {**os.environ, "TINY_MODEL_DIR": str(tiny_model_dir)}
    proc = subprocess.Popen(
        [sys.executable, "tests/tiny.py", "run", str(path), "--runner", "docker"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Interrupt once the run's log line has reached the CLI's stderr, not when the fake engine saw
    # the request: on a loaded machine the client may not have printed it yet (a flake once).
    err_lines: list[str] = []
    printed = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err_lines.append(line)
            if "log line from c2" in line:
                printed.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    printed.wait(60)
    proc.send_signal(signal.SIGINT)
    assert proc.stdout is not None
    out = proc.stdout.read()  # until the CLI exits; stderr belongs to the reader thread
    proc.wait(timeout=60)
    reader.join(10)
    err = "".join(err_lines)
    assert proc.returncode == 130, err
    assert "cancelled" in out
    assert "log line from c2" in err and "Traceback" not in err
    assert "POST /containers/c2/stop" in fake.calls and "DELETE /containers/c2" in fake.calls
    [record_file] = list_records(path.parent)
    record = read_record(record_file).to_json()
    assert record["status"] == "cancelled" and record["error"]["message"] == "stopped by SIGINT"
    assert record["environment"]["container"]["repo_digest"].endswith("2" * 64)
    # The assets are fetched by the CLI in a container with a network; the run itself is the job
    # entry point, not a nested `peftrepro run`, in a container without one.
    fetch, job = fake.containers
    assert fetch["Cmd"] == ["fetch", "arithmetic"] and fetch.get("Entrypoint") is None
    assert job["Entrypoint"] == ["python", "-m", "peftrepro.runners.entry"]
    assert job["Cmd"] == ["/submissions/arithmetic/lora/tiny/manifest.json", "--seed", "0", "--out", "/out"]
    assert job["HostConfig"]["NetworkMode"] == "none"


# ---- a real engine ----------------------------------------------------------------------------

REAL_HOST = os.environ.get("PEFTREPRO_TEST_DOCKER_HOST")


@pytest.fixture(scope="session")
def test_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    if not REAL_HOST:
        if os.environ.get("PEFTREPRO_REQUIRE_DOCKER") == "1":
            pytest.fail(
                "PEFTREPRO_REQUIRE_DOCKER=1 but no PEFTREPRO_TEST_DOCKER_HOST: the engine did not start"
            )
        pytest.skip("no test engine (scripts/test starts one)")
    from tests.docker_image import build_all, wait_for_background_build

    built = wait_for_background_build()  # scripts/test builds it while the rest of the suite runs
    return built or build_all(tmp_path_factory.mktemp("image-work"), REAL_HOST)


def test_real_container_run_matches_a_local_run(test_image: str, real_task, tmp_path, monkeypatch) -> None:
    """The same manifest run in the container (on the session's warm cache, mounted) gives what
    the session's local run gave, and records where it ran: image digest, engine, no network."""
    monkeypatch.setenv("DOCKER_HOST", REAL_HOST or "")
    folder = real_lora_folder(tmp_path)
    t0 = time.perf_counter()
    code, out = cli("run", str(folder), "--runner", "docker", "--image", test_image)
    assert code == 0, out
    print(f"\ncontainer run on a warm cache: {time.perf_counter() - t0:.1f} s")
    [record] = (read_record(p).to_json() for p in list_records(folder))
    local = real_task.record.to_json()
    assert local["environment"]["runner"] == "local"
    env = record["environment"]
    assert env["runner"] == "docker" and env["container"]["repo_digest"] == test_image
    assert env["container"]["image_id"].startswith("sha256:") and env["engine"]["version"]
    assert env["os"]["network_interfaces"] == ["lo"]  # computed inside: the run had no network
    assert env["environment_sha256"] != local["environment"]["environment_sha256"]
    for key in ("test_accuracy", "forgetting", "train_loss_final", "valid_curve", "adapter_sha256"):
        assert record["metrics"][key] == local["metrics"][key], key
