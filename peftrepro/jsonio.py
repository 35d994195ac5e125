"""Canonical JSON, hashing, safe reading and atomic, no-clobber writing.

Canonical form (sorted keys, compact separators, UTF-8) is what a manifest's sha256 is taken
over; the pretty form (sorted keys, 2-space indent, trailing newline) is what records are written
in, so identical content gives identical bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

MAX_JSON_BYTES = 1_000_000  # manifests and records are small; anything bigger is refused unread
MAX_JSON_DEPTH = 32


def canonical_bytes(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def canonical_sha256(obj: Any) -> str:
    return hashlib.sha256(canonical_bytes(obj)).hexdigest()


def pretty_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class JSONReadError(ValueError):
    """Why a file is not acceptable JSON; the caller wraps it with the file name."""


def _reject_constant(name: str) -> Any:
    raise JSONReadError(f"{name} is not valid JSON")


MAX_NUMBER_DIGITS = 100  # more is no measurement; Python refuses > 4300 digits with a ValueError


_LONG_NUMBER = re.compile(r"[0-9]{16}|[eE][-+]?[0-9]{3}")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise JSONReadError(f"a number with {len(text)} digits; at most {MAX_NUMBER_DIGITS} are accepted")
    return int(text)


def _finite_float(text: str) -> float:
    if len(text) > MAX_NUMBER_DIGITS + 10:
        raise JSONReadError(f"a number written with {len(text)} characters; at most {MAX_NUMBER_DIGITS + 10}")
    value = float(text)
    if not math.isfinite(value):
        raise JSONReadError(f"number {text[:20]} is out of range (overflows to infinity)")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JSONReadError(f"duplicate key {key!r}")
        out[key] = value
    return out


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Read a JSON file defensively: size cap, UTF-8, no NaN/Infinity, no duplicate keys, depth cap."""
    return parse_json(read_capped(path, max_bytes))


def read_capped(path: Path, max_bytes: int = MAX_JSON_BYTES) -> bytes:
    """A file's bytes, refused unread when it is larger than `max_bytes`."""
    size = path.stat().st_size
    if size > max_bytes:
        raise JSONReadError(f"file is {size} bytes; at most {max_bytes} are accepted")
    return path.read_bytes()


def parse_json(raw: bytes, *, nan: bool = False) -> Any:
    """Parse bytes read from an untrusted file (the checks of `read_json`, minus the size cap).
    `nan`: NaN and Infinity parse as floats (Python's json writes them; the caller decides)."""
    if not raw.strip():
        raise JSONReadError("file is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JSONReadError(f"not UTF-8 text (byte {e.start})") from None
    # Reject deep nesting before the parser recurses into it. Depth is at most the number of opening
    # brackets, a count made in C: a record's ~30 never need the exact (slower) measure.
    brackets = text.count("{") + text.count("[")
    if brackets > MAX_JSON_DEPTH and _bracket_depth(text) > MAX_JSON_DEPTH:
        raise JSONReadError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    # Numbers are checked one by one only where one could be out of bounds: a run of 16 digits or a
    # 3-digit exponent. Shorter ones parse to the same value either way, and finite.
    checked = _LONG_NUMBER.search(text) is not None
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=float if nan else _reject_constant,
            parse_int=_bounded_int if checked else None,
            parse_float=_finite_float if checked else None,
        )
    except json.JSONDecodeError as e:
        raise JSONReadError(f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if "\\u" in text:  # strict UTF-8 has no surrogates; only a \u escape can spell one
        _no_lone_surrogates(obj, "")
    return obj


# JSON's \uD800 escapes decode to lone UTF-16 surrogates, which no UTF-8 writer (a page, a terminal)
# can encode: one such character in a title crashed every reader. They are refused where read.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_lone_surrogates(obj: Any, where: str) -> None:
    if isinstance(obj, str):
        found = _SURROGATE.search(obj)
        if found is not None:
            code = f"\\u{ord(found.group()):04x}"
            raise JSONReadError(
                f"text at {where or '/'} holds a lone surrogate ({code}); expected valid Unicode"
            )
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _no_lone_surrogates(key, where)
            _no_lone_surrogates(value, f"{where}/{_SURROGATE.sub('?', key)}")
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            _no_lone_surrogates(value, f"{where}/{i}")


# A JSON string literal (unrolled loop: fast on long strings), and the brackets outside strings.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_BRACKET = re.compile(r"[\[\]{}]")


_EMPTY_PAIR = re.compile(r"\[\]|\{\}")


def _bracket_depth(text: str, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of JSON text, ignoring brackets inside strings, counted up to `limit + 1`
    (exact for any text that parses). Each pass removes the innermost empty pairs of the brackets
    alone (`[{}][]` -> `[]` -> ``): as many passes as levels, each one regex scan in C."""
    brackets = "".join(_BRACKET.findall(_STRING.sub("", text)))
    depth = 0
    while brackets and depth <= limit:
        shorter = _EMPTY_PAIR.sub("", brackets)
        if shorter == brackets:  # unbalanced (the parser refuses it): its open brackets bound the depth
            return depth + brackets.count("[") + brackets.count("{")
        brackets, depth = shorter, depth + 1
    return depth


def _default_file_mode() -> int:
    """What open() would give a new file: 0o666 minus the umask (mkstemp's 0o600 would hide records
    from other users of a shared checkout)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _default_file_mode()


def write_new_file(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and refuse to replace an existing file.

    Temp file in the same folder + fsync, then link(2) to the final name: link fails if the name
    exists (no clobbering) and is atomic, so readers see either nothing or the whole file. A
    SIGKILL leaves at most a `.tmp-*` file, which readers ignore.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=path.parent)
    os.fchmod(fd, _FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        os.unlink(tmp)
    _fsync_dir(path.parent)


def replace_file(path: Path, data: bytes) -> None:
    """Atomically write or replace `path` (temp + fsync + rename), for generated files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=path.parent)
    os.fchmod(fd, _FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
