"""Where peftrepro keeps things outside the repository (model caches, saved adapters)."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path


def cache_root() -> Path:
    """`$PEFTREPRO_CACHE`, default `~/.cache/peftrepro`: derived artifacts only, safe to delete."""
    return Path(os.environ.get("PEFTREPRO_CACHE", Path.home() / ".cache" / "peftrepro"))


def adapter_dir(task: str, method: str, name: str, run_id: str) -> Path:
    return cache_root() / "adapters" / task / method / name / run_id


WORK = "work"  # transient folders of running processes, inside the cache: <label>-<where>-<pid>-<random>
_WORK_NAME = re.compile(r"[a-z]+-([0-9a-f]{8})-([0-9]{1,10})-[A-Za-z0-9_]+")


def _where() -> str:
    """This process's pid namespace, as 8 hex digits: host, boot and pid namespace. A container
    sharing the cache (the docker runner mounts it) sees other pids: it must never judge, by pid,
    whether a folder of the host's processes is orphaned."""
    parts = [socket.gethostname()]
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(os.readlink(path) if path.endswith("/pid") else Path(path).read_text().strip())
        except OSError:
            parts.append("")
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:8]


def work_dir(label: str) -> Path:
    """A fresh folder for this process's transient files (a job's hand-off, an adapter being saved),
    named after the process: once that process is gone, sweep_orphans removes what it left."""
    root = cache_root() / WORK
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{label}-{_where()}-{os.getpid()}-", dir=root))


def sweep_orphans() -> list[Path]:
    """Remove the work folders of processes that no longer exist (killed with SIGKILL, say), among
    those made in this pid namespace: a killed run leaves nothing in the cache beyond the next start."""
    removed = []
    root = cache_root() / WORK
    here = _where()
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        found = _WORK_NAME.fullmatch(folder.name)
        if found and found.group(1) == here and not folder.is_symlink() and not _alive(int(found.group(2))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
