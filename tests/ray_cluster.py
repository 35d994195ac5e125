"""A Ray cluster of this machine's own for the tests and benchmarks, stopped without touching others.

`ray start --head --block` stays in the foreground and, on SIGTERM, stops the processes it started;
`ray stop --force` (what this used before) kills every Ray process of the machine, another user's
cluster included. Workers run at niceness 0 (RAY_worker_niceness; Ray's default is 15: see
peftrepro/executors/ray_fleet.py).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"
READY = b"block forever"  # what `ray start --block` prints once the node is up


@contextlib.contextmanager
def private_cluster(port: int, cpus: int, temp: Path, env: dict[str, str]) -> Iterator[str]:
    """A head node on 127.0.0.1:`port` with `cpus` CPUs; its session files under `temp`."""
    log = temp / "ray-start.log"
    env = {**env, "RAY_worker_niceness": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    command = [str(RAY), "start", "--head", f"--port={port}", f"--num-cpus={cpus}", "--num-gpus=0"]
    command += [f"--temp-dir={temp}", "--include-dashboard=false", "--disable-usage-stats", "--block"]
    with open(log, "wb") as out:
        head = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 180
        while READY not in log.read_bytes():
            if head.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()
        try:
            head.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, 9)
            head.wait()
