"""The docker runner: error paths against a fake engine; one real run in a real engine.

The real-engine test needs PEFTREPRO_TEST_DOCKER_HOST (scripts/test starts an engine and a local
registry and sets it); without it the test is skipped, unless PEFTREPRO_REQUIRE_DOCKER=1 (CI).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import peftrepro.tasks as tasks
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
    record = read_record(record_file)
    assert record["status"] == "failed" and "could not select device driver" in record["error"]["message"]
    assert record["environment"]["container"]["repo_digest"] == "unpinned"
    assert "DELETE /containers/c1" in fake.calls
    assert not [p for p in path.parent.joinpath("runs").iterdir() if p.name.startswith(".docker-out")]


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
    deadline = time.monotonic() + 60
    while "GET /containers/c2/logs" not in fake.calls and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cancelled" in out
    assert "log line from c2" in err and "Traceback" not in err
    assert "POST /containers/c2/stop" in fake.calls and "DELETE /containers/c2" in fake.calls
    [record_file] = list_records(path.parent)
    record = read_record(record_file)
    assert record["status"] == "cancelled" and record["error"]["message"] == "stopped by SIGINT"
    assert record["environment"]["container"]["repo_digest"].endswith("2" * 64)


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
    from tests.docker_image import build_all

    return build_all(tmp_path_factory.mktemp("image-work"), REAL_HOST)


def test_real_container_run_matches_a_local_run(test_image: str, tmp_path: Path, monkeypatch) -> None:
    from peftrepro.tasks.arithmetic import ArithmeticTask

    monkeypatch.setenv("DOCKER_HOST", REAL_HOST or "")
    monkeypatch.setenv("PEFTREPRO_CACHE", str(tmp_path / "cache"))
    tasks.register("arithmetic", ArithmeticTask)
    folder = tmp_path / "submissions" / "arithmetic" / "lora" / "default"
    folder.mkdir(parents=True)
    doc = json.loads((REPO / "submissions/arithmetic/lora/default/manifest.json").read_text())
    doc["training"] = {"max_steps": 4, "eval_steps": 2, "batch_size": 4}
    (folder / "manifest.json").write_text(json.dumps(doc))

    def timed(*args: str) -> float:
        t0 = time.perf_counter()
        code, out = cli("run", str(folder), *args)
        assert code == 0, out
        return time.perf_counter() - t0

    # The first container run fills the shared cache (model, base measurements); the next two
    # are comparable: same work, warm cache, one in the container and one local.
    timed("--runner", "docker", "--image", test_image)
    t_local = timed("--runner", "local")
    t_docker = timed("--runner", "docker", "--image", test_image)
    first, local, second = (read_record(p) for p in list_records(folder))  # in the order they ran
    assert local["environment"]["runner"] == "local"
    env = second["environment"]
    assert env["runner"] == "docker" and env["container"]["repo_digest"] == test_image
    assert env["container"]["image_id"].startswith("sha256:") and env["engine"]["version"]
    assert env["os"]["network_interfaces"] == ["lo"]  # computed inside: the run had no network
    assert env["environment_sha256"] != local["environment"]["environment_sha256"]
    for record in (first, second):
        for key in ("test_accuracy", "forgetting", "train_loss_final", "valid_curve", "adapter_sha256"):
            assert record["metrics"][key] == local["metrics"][key], key
    ratio = t_docker / t_local
    print(f"\nwarm cache: container run {t_docker:.1f} s, local run {t_local:.1f} s: ratio {ratio:.2f}")
