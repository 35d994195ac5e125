"""Executors: the local one with N processes, and Ray (a real local cluster started here, 2 CPUs).

The same manifests and seeds give the same records whatever executed them; a worker killed
mid-job is retried; past the retries the record says the worker was lost; Ctrl-C on the driver
leaves `cancelled` records for the jobs that were running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from peftrepro.cli import main
from peftrepro.executors import Job, JobResult
from peftrepro.executors.ray_fleet import RayExecutor, unniced
from peftrepro.manifest import resolve
from peftrepro.metrics import METRICS
from peftrepro.records import list_records, read_record
from tests.conftest import LORA_MANIFEST
from tests.ray_cluster import private_cluster

REPO = Path(__file__).parent.parent


def measured(record: dict) -> dict:
    """What a run measured, less what depends on the machine's load (times, throughput, memory)."""
    judged = {m.key for m in METRICS if m.tolerance != "informational"} - {
        "peak_memory_bytes",
        "memory_avg_bytes",
        "memory_p99_bytes",
    }
    metrics = {k: v for k, v in record["metrics"].items() if k in judged}
    return {"status": record["status"], "config": record["resolved_config"], "metrics": metrics}


def two_submissions(write_manifest) -> list[Path]:
    lora = write_manifest()
    ia3 = write_manifest(
        {
            "method": "ia3",
            "name": "tiny",
            "peft_config": {"peft_type": "IA3", "target_modules": ["v_proj"], "feedforward_modules": []},
        }
    )
    return [lora.parent, ia3.parent]


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def records_by_key(folders: list[Path]) -> dict[tuple[str, int], dict]:
    out = {}
    for folder in folders:
        for path in list_records(folder):
            record = read_record(path).to_json()
            out[(record["submission"]["method"], record["seed"])] = record
    return out


def test_local_executor_two_at_a_time_gives_the_records_of_one_at_a_time(write_manifest, tmp_path) -> None:
    folders = two_submissions(write_manifest)
    code, out = cli("run", *map(str, folders), "--runs-dir", str(tmp_path / "one"))
    assert code == 0, out
    code, out = cli("run", *map(str, folders), "--jobs", "2", "--runs-dir", str(tmp_path / "two"))
    assert code == 0, out
    assert "2 of 2 runs recorded" in out
    one = {
        (r["submission"]["method"], r["seed"]): r
        for r in map(lambda p: read_record(p).to_json(), (tmp_path / "one").glob("*.json"))
    }
    two = {
        (r["submission"]["method"], r["seed"]): r
        for r in map(lambda p: read_record(p).to_json(), (tmp_path / "two").glob("*.json"))
    }
    assert sorted(one) == sorted(two) == [("ia3", 0), ("lora", 0)]
    for key in one:
        assert measured(one[key]) == measured(two[key]), key


def test_ray_missing_is_one_line(write_manifest, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = CliRunner().invoke(main, ["run", str(write_manifest()), "--executor", "ray"])
    assert result.exit_code == 2
    assert (
        result.stderr
        == "error: the ray executor needs Ray, which is not installed: pip install 'peftrepro[ray]'\n"
    )


def test_jobs_is_refused_with_ray(write_manifest) -> None:
    result = CliRunner().invoke(main, ["run", str(write_manifest()), "--executor", "ray", "--jobs", "2"])
    assert result.exit_code == 2 and "--jobs is for --executor local" in result.stderr


# ---- a real Ray cluster --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_address(tmp_path_factory: pytest.TempPathFactory):
    """A local Ray cluster of 2 CPUs (`ray start --head`), stopped after the module. Its workers
    get their own cache folder (a node's cache is its own), and this checkout on their path."""
    port = _free_port()
    env = {
        **os.environ,
        "PEFTREPRO_CACHE": str(tmp_path_factory.mktemp("ray-node-cache")),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    # Its own temp folder: the ctrl-c test reads its workers' log files there (a short path: Ray's
    # socket names must fit in 107 bytes).
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    os.environ["PEFTREPRO_TEST_RAY_TEMP"] = str(temp)
    try:
        with private_cluster(port, 2, temp, env) as address:
            yield address
    finally:
        os.environ.pop("PEFTREPRO_TEST_RAY_TEMP", None)
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_runs_give_the_records_of_local_runs(ray_address, write_manifest, tmp_path) -> None:
    folders = two_submissions(write_manifest)
    code, out = cli("run", *map(str, folders))
    assert code == 0, out
    local = records_by_key(folders)
    code, out = cli(
        "run",
        *map(str, folders),
        "--executor",
        "ray",
        "--address",
        ray_address,
        "--runs-dir",
        str(tmp_path / "ray"),
    )
    assert code == 0, out
    assert "2 of 2 runs recorded" in out
    ray = {
        (r["submission"]["method"], r["seed"]): r
        for r in map(lambda p: read_record(p).to_json(), (tmp_path / "ray").glob("*.json"))
    }
    assert sorted(ray) == sorted(local)
    for key in local:
        assert measured(ray[key]) == measured(local[key]), key
        assert ray[key]["environment"]["runner"] == "local"  # the runner on the worker node

    # verify --all (a seed drawn per submission): the same verdicts through either executor.
    verdicts = {}
    for executor in ("local", "ray"):
        code, out = cli(
            "verify",
            "--all",
            "--submissions",
            str(folders[0].parent.parent.parent),
            "--executor",
            executor,
            "--address",
            ray_address,
        )
        assert code == 0, out
        verdicts[executor] = sorted(re.findall(r"verdict: (\w+)", out))
    assert verdicts["local"] == verdicts["ray"] == ["REPRODUCED"] * 2


def _slow(write_manifest) -> Path:
    return write_manifest({"training": {**LORA_MANIFEST["training"], "max_steps": 400, "eval_steps": 400}})


def test_a_worker_killed_mid_job_is_retried_and_the_record_is_the_same(ray_address, write_manifest) -> None:
    manifest = resolve(_slow(write_manifest))
    killed: list[int] = []

    def kill_first_attempt(job: Job, where: str) -> None:
        if not killed:
            pid = int(re.search(r"worker pid (\d+)", where).group(1))  # type: ignore[union-attr]
            killed.append(pid)
            threading.Timer(3.0, os.kill, (pid, signal.SIGKILL)).start()  # mid-job: after it started

    results: list[JobResult] = []
    RayExecutor(ray_address, retries=1).map(
        [Job.for_manifest(manifest, seed=0)], kill_first_attempt, results.append
    )
    [result] = results
    assert killed and result.status == "success" and result.attempts == 2
    assert f"worker pid {killed[0]}" not in result.where
    local = CliRunner().invoke(main, ["run", str(manifest.path)])
    assert local.exit_code == 0, local.output
    [record] = [read_record(p).to_json() for p in list_records(manifest.folder)]
    assert result.run is not None and measured(result.run.record.to_json()) == measured(record)


def test_a_worker_lost_past_its_retries_leaves_a_failed_record(ray_address, write_manifest) -> None:
    manifest = resolve(_slow(write_manifest))

    def kill(job: Job, where: str) -> None:
        pid = int(re.search(r"worker pid (\d+)", where).group(1))  # type: ignore[union-attr]
        threading.Timer(2.0, os.kill, (pid, signal.SIGKILL)).start()

    [result] = RayExecutor(ray_address, retries=0).map(
        [Job.for_manifest(manifest, seed=0)], kill, lambda r: None
    )
    assert result.status == "failed" and result.attempts == 1
    error = result.run.record.error if result.run is not None else None
    assert error is not None and error.type == "WorkerLost"
    assert error.message.startswith("the Ray worker running it was lost on each of 1 attempt(s)")


def test_ctrl_c_on_the_driver_leaves_a_cancelled_record_for_the_running_job(
    ray_address, write_manifest, tiny_model_dir
) -> None:
    """Three long jobs; the task pins 2 threads, so on 2 CPUs one runs and two wait. SIGINT on
    the driver cancels all three: the running one leaves a `cancelled` record, the queued ones none."""
    path = write_manifest(
        {"training": {**LORA_MANIFEST["training"], "max_steps": 100000, "eval_steps": 100000}}
    )
    env = {**os.environ, "TINY_MODEL_DIR": str(tiny_model_dir)}
    logs = Path(os.environ["PEFTREPRO_TEST_RAY_TEMP"])

    def checks_lines() -> int:
        return sum(p.read_text(errors="replace").count("stage checks") for p in logs.rglob("worker-*.err"))

    before = checks_lines()
    args = ["run", str(path), "--seeds", "0,1,2", "--executor", "ray", "--address", ray_address]
    proc = subprocess.Popen(
        [sys.executable, "tests/tiny.py", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()
    while first and not first.startswith("running "):
        first = proc.stderr.readline()
    assert first.startswith("running arithmetic/lora/tiny seed "), first
    # Wait until it trains: the worker first starts its warm template, loads the tiny model and
    # runs the checks (a fixed 15 s was not always enough on a loaded machine). Its stage lines
    # come through Ray's log forwarding; "stage checks" is the last one before the training steps.
    # The driver does not forward worker output (log_to_driver=False), so the workers' log files
    # are read: one more "stage checks" line than before this run is this job's.
    deadline = time.monotonic() + 240
    while checks_lines() <= before and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert checks_lines() > before, "the job did not reach its training steps in 240 s"
    time.sleep(3.0)  # a few steps
    proc.send_signal(signal.SIGINT)
    out, rest = proc.communicate(timeout=120)
    err = first + rest
    assert proc.returncode == 130, err
    [record] = [read_record(p).to_json() for p in list_records(path.parent)]
    assert record["status"] == "cancelled" and record["error"]["message"] == "stopped by SIGINT"
    assert f"seed {record['seed']} " in first
    assert record["metrics"]["steps_completed"] > 0  # the worker's own record: it knows how far it got
    assert "1 of 3 runs recorded" in out and "Traceback" not in err


def test_a_job_no_node_can_hold_is_refused_before_anything_runs(ray_address, write_manifest) -> None:
    import dataclasses

    from peftrepro.errors import UsageError

    job = dataclasses.replace(Job.for_manifest(resolve(write_manifest()), seed=0), needs_gpu=True)
    with pytest.raises(UsageError, match=r"no node of the Ray cluster has 2 CPU\(s\) and 1 GPU\(s\)"):
        RayExecutor(ray_address).map([job], lambda j, w: None, lambda r: None)


def test_no_cluster_at_the_address_is_one_line(write_manifest) -> None:
    port = _free_port()
    result = CliRunner().invoke(
        main, ["run", str(write_manifest()), "--executor", "ray", "--address", f"127.0.0.1:{port}"]
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: no Ray cluster at --address 127.0.0.1:{port}: ")
    assert result.stderr.count("\n") == 1


def test_sweep_of_two_submissions_two_at_a_time(write_manifest) -> None:
    folders = two_submissions(write_manifest)
    code, out = cli("sweep", *map(str, folders), "--lrs", "1e-3,3e-2", "--extend", "0", "--jobs", "2")
    # The tiny stand-in scores 0 on validation before and after training, so no rate beats the base
    # model and none can be chosen (exit 1): each sweep is still written, whole, by its own job.
    assert code == 1, out
    for folder in folders:
        record = json.loads((folder / "sweep.json").read_text())
        points = [(p["lr"], p["seed"]) for p in record["points"]]
        assert points == [(1e-3, 0), (1e-3, 1), (3e-2, 0), (3e-2, 1)]
        label = "/".join(folder.parts[-3:])
        assert record["chosen_lr"] is None and f"{label}: no rate can be chosen" in out


def test_a_niced_ray_worker_puts_itself_back_at_zero_or_says_why() -> None:
    """Ray starts workers at niceness 15; a job there gets a few percent of a core beside anything."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # a child, so that this process keeps its priority
        code = 1
        try:
            os.nice(5)
            why = unniced()
            os.write(write_end, json.dumps([os.nice(0), why]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        niceness, why = json.loads(f.read())
    os.waitpid(pid, 0)
    if os.geteuid() == 0:  # may lower its niceness
        assert (niceness, why) == (0, None)
    else:
        assert niceness == 5 and "RAY_worker_niceness=0" in why and "\n" not in why


def _niceness() -> int:
    return os.nice(0)


def test_a_throw_away_instance_starts_its_workers_unniced() -> None:
    """--address local: Ray's workers at niceness 0 (not its default 15), the driver's environment
    as it was."""
    import ray

    from peftrepro.executors.ray_fleet import NICENESS_ENV, connect

    before = os.environ.get(NICENESS_ENV)
    connect(ray, "local")
    try:
        assert ray.get(ray.remote(num_cpus=1)(_niceness).remote()) == 0
    finally:
        ray.shutdown()
    assert os.environ.get(NICENESS_ENV) == before
