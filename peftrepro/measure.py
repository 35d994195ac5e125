"""Timers, memory samplers (CUDA reserved memory or CPU process RSS), and adapter size/hash."""

from __future__ import annotations

import math
import os
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from peftrepro.jsonio import sha256_file

ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_WEIGHTS = (
    "model.safetensors",
    "diffusion_pytorch_model.safetensors",
)  # full fine-tuning: transformers, diffusers

# glibc malloc settings every run's process starts with (read at process start, so they are set
# for the spawned run process and the container, never changed in a running one). With glibc's
# default, the mmap threshold grows with the largest block freed so far, and how much freed memory
# stays resident depended on allocation order: the same LoRA run measured 1.65 or 1.90 GB average
# RSS in fresh processes (two clusters, +16%). A fixed 1 MiB threshold and trim point, one arena:
# 0.5% spread over fresh processes for +5% step time (benchmarks/memory_spread.py measures both).
ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "1048576",
    "MALLOC_TRIM_THRESHOLD_": "1048576",
    "MALLOC_ARENA_MAX": "1",
}


def device_for_run() -> torch.device:
    """Where a run trains: the GPU when one is visible, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def allocator_settings() -> dict[str, str | None]:
    """The allocator variables this process was started with (None: glibc's default)."""
    return {k: os.environ.get(k) for k in ALLOCATOR_ENV}


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc), else the peak so far (other Unixes)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS before training starts, so that the CPU tracks' RSS
    figures do not depend on what ran before in the process (a cold cache dequantizes the model
    and measures the base model first; glibc would otherwise keep those pages resident)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass  # not glibc: nothing to trim


def percentile(values: list[int], q: float) -> int:
    """Nearest-rank percentile: always one of the samples, so it is reproducible to the byte."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class MemoryStats:
    peak_bytes: int
    avg_bytes: int
    p99_bytes: int
    samples: int


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where that is not possible
    (not Linux, or /proc not writable)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """The kernel's peak RSS since the last reset (VmHWM), or None where /proc has no such line."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class MemorySampler:
    """Samples memory once per training step (`step()`) for the average and p99, and keeps the
    exact peak.

    CUDA: torch's reserved memory (what the allocator holds, i.e. what another process could not
    use) and its peak. CPU: the process RSS; the peak is the kernel's high-water mark (VmHWM), reset
    when sampling starts, so a peak inside a step is never missed and nothing polls. Where the mark
    cannot be reset (not Linux), a background thread polls RSS every `interval` seconds instead.
    (A 20 ms polling thread cost a 15 ms/step loop 9 ms/step, and far more on a busy machine.)
    """

    def __init__(self, device: torch.device, interval: float = 0.02) -> None:
        self.device, self.interval = device, interval
        self.per_step: list[int] = []
        self._peak = 0
        self._hwm = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _now(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.memory_reserved(self.device))
        return rss_bytes()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, rss_bytes())

    def __enter__(self) -> MemorySampler:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._hwm = reset_peak_rss() and peak_rss_bytes() is not None
            if not self._hwm:
                self._thread = threading.Thread(target=self._poll, name="peftrepro-memory", daemon=True)
                self._thread.start()
        self._peak = self._now()
        return self

    def step(self) -> None:
        value = self._now()
        self.per_step.append(value)
        self._peak = max(self._peak, value)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.device.type == "cuda":
            self._peak = max(self._peak, int(torch.cuda.max_memory_reserved(self.device)))
        elif self._hwm:
            self._peak = max(self._peak, peak_rss_bytes() or 0)

    def stats(self) -> MemoryStats:
        samples = self.per_step or [self._peak]
        return MemoryStats(
            peak_bytes=max(self._peak, *samples),
            avg_bytes=round(sum(samples) / len(samples)),
            p99_bytes=percentile(samples, 99),
            samples=len(self.per_step),
        )


class StepTimer:
    """Adds up the wall time of the timed blocks only (training steps, not evaluation)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._start = 0.0

    def __enter__(self) -> StepTimer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.perf_counter() - self._start


def adapter_files(folder: Path) -> tuple[int, str]:
    """(bytes, sha256) of the saved adapter weights in `folder` (the whole model's, for full
    fine-tuning)."""
    path = folder / ADAPTER_WEIGHTS
    for name in MODEL_WEIGHTS:
        if not path.exists() and (folder / name).exists():
            path = folder / name
    return path.stat().st_size, sha256_file(path)
