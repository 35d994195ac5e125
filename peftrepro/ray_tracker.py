"""The Ray executor's progress actor (executors/ray_fleet.py), in a module that imports nothing.

Ray starts the actor in a worker process of its own, which imports the module that defines it:
defined beside the executor, it imported torch, transformers and peft (7 s, and 90 s on a loaded
machine) before it could answer, and the driver's loop waited on its first answer.
"""

from __future__ import annotations


class Tracker:
    """Hears each job start (key, where): progress lines and the attempt count of a lost job."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def started(self, key: str, where: str) -> None:
        self.events.append((key, where))

    def since(self, n: int) -> list[tuple[str, str]]:
        return self.events[n:]
