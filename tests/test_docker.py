"""The docker runner's error paths, against a fake engine. The real run in a real engine is in
test_e2e.py: it compares with the real task's session run, which that file's worker holds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from peftrepro.cli import main
from peftrepro.records import list_records, read_record
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
