"""What the GPU tracks load from the Hugging Face hub: repositories pinned to a revision.

The same loaders read a local folder in the hub's layout (tests, air-gapped mirrors): only the
download differs, so the code that runs on a GPU is the code the tests exercise on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from peftrepro.errors import UsageError


@dataclass(frozen=True)
class Pinned:
    """A hub repository at a fixed revision, or (tests) a local folder: same loaders either way."""

    id: str
    revision: str | None
    config: str | None = None  # a datasets configuration name (GSM8K: "main")

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "revision": self.revision, **({"config": self.config} if self.config else {})}


def load_pinned_dataset(p: Pinned, split: str, **kwargs: Any) -> Any:
    import datasets

    datasets.disable_progress_bars()
    return datasets.load_dataset(p.id, p.config, revision=p.revision, split=split, **kwargs)


@contextmanager
def hub_load_errors(task: str, gated: str) -> Iterator[None]:
    """A hub that cannot be reached, a revision missing from the cache or a gated repository (all
    OSError from huggingface_hub) become one line that says what to do."""
    try:
        yield
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(
            f"the {task} task cannot load its pinned model or data: {first} (run `peftrepro fetch "
            f"{task}` where the hub is reachable; {gated} is gated: log in first)"
        ) from None
