"""Every failure a user can act on is one of these types.

The CLI turns them into one line on stderr and an exit code; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130  # 128 + SIGINT, the shell's convention for an interrupted command


def safe_text(text: str) -> str:
    """ASCII-only, single-line form of a stranger's text (a file name from a pull request, say):
    no control characters, no bidirectional overrides, no newlines reach the terminal."""
    return text.encode("ascii", "backslashreplace").decode().replace("\n", "\\n").replace("\r", "\\r")


class PeftreproError(Exception):
    """Base class: a message meant for people, and the exit code the CLI uses."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(PeftreproError):
    """Bad input in a file: names the file, the field as a JSON pointer, and what was expected."""

    def __init__(self, file: str, pointer: str, expected: str) -> None:
        self.file, self.pointer, self.expected = file, pointer, expected
        where = f"{safe_text(file)}: {pointer}" if pointer else safe_text(file)
        super().__init__(f"{where}: {expected}")


class ManifestError(InputError):
    """A manifest that fails its schema or the submission policy."""


class RecordError(InputError):
    """A run record that cannot be read or fails its schema."""


class UsageError(PeftreproError):
    """A command used in a way that cannot work (missing package, missing path, ...)."""


class RunFailed(PeftreproError):
    """The run started and failed; a `failed` record was written."""

    exit_code = EXIT_RUN_FAILED


class CheckFailed(PeftreproError):
    """A structural check (checks.py) failed: the run must not start. The manifest's fault whatever
    the seed, so a batch skips its other seeds and the command exits 2."""

    def __init__(self, file: str, method: str, failed: list[tuple[str, str]]) -> None:
        self.failed = failed  # (check name, detail) of each failed check
        text = "; ".join(f"{name} failed: {detail}" for name, detail in failed)
        super().__init__(f"{file}: structural check of {method}: {text}")


class NotConvertible(PeftreproError):
    """A public PEFT method comparison experiment that cannot become a manifest (importer.py)."""


class RunCancelled(BaseException):
    """Raised in the main thread by the SIGINT/SIGTERM handler while a run is in flight.

    A BaseException, like KeyboardInterrupt, so that `except Exception` in libraries cannot swallow it.
    """

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
