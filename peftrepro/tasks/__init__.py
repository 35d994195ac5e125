"""Tasks (tracks): what a run trains on and how it is scored. One module per task; the registry here.

A task supplies the base model, the training examples, and the evaluations (`tasks/base.py` says
how); the training loop (`training.py`) is shared by all of them and no task forks it.
"""

from __future__ import annotations

from collections.abc import Callable

from peftrepro.errors import UsageError
from peftrepro.tasks.arithmetic import ArithmeticTask
from peftrepro.tasks.base import Prepared, Probe, Task, quiet_model_loading
from peftrepro.tasks.digits import DigitsTask
from peftrepro.tasks.flux_digits import FluxDigitsTask
from peftrepro.tasks.gsm_symbolic import GSMSymbolicTask
from peftrepro.tasks.imagegen import ImageGenTask
from peftrepro.tasks.metamathqa import MetaMathQATask

__all__ = ["Prepared", "Probe", "Task", "get_task", "quiet_model_loading", "register"]

_FACTORIES: dict[str, Callable[[], Task]] = {}
_INSTANCES: dict[str, Task] = {}


def register(name: str, factory: Callable[[], Task]) -> None:
    _FACTORIES[name] = factory
    _INSTANCES.pop(name, None)


def task_factory(name: str) -> Callable[[], Task]:
    """The registered factory (a class or a functools.partial: picklable for child processes)."""
    return _FACTORIES[name]


def task_names() -> list[str]:
    return sorted(_FACTORIES)


def get_task(name: str) -> Task:
    if name not in _INSTANCES:
        _INSTANCES[name] = _FACTORIES[name]()
    return _INSTANCES[name]


def _register_builtin() -> None:
    register("arithmetic", ArithmeticTask)
    register("digits", DigitsTask)
    register("flux-digits", FluxDigitsTask)
    register("gsm-symbolic", GSMSymbolicTask)
    register("metamathqa", MetaMathQATask)
    register("image-gen", ImageGenTask)


_register_builtin()


def fetch_task(name: str) -> None:
    """Put the task's pinned assets into the cache (`peftrepro fetch`)."""
    if name not in task_names():
        raise UsageError(f"unknown task {name!r}; tasks: {', '.join(task_names())}")
    get_task(name).fetch()
