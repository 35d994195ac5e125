from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peftrepro.jsonio import (
    JSONReadError,
    canonical_bytes,
    parse_json,
    pretty_bytes,
    read_json,
    replace_file,
    write_new_file,
)


def test_write_new_file_refuses_to_clobber(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_new_file(path, b"first")
    with pytest.raises(FileExistsError):
        write_new_file(path, b"second")
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # the temp file is gone


def test_replace_file_replaces_atomically(tmp_path: Path) -> None:
    path = tmp_path / "page.md"
    replace_file(path, b"one")
    replace_file(path, b"two")
    assert path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["page.md"]


def test_canonical_and_pretty_forms_are_stable() -> None:
    assert canonical_bytes({"b": [1, 2.5], "a": "é"}) == '{"a":"é","b":[1,2.5]}'.encode()
    assert pretty_bytes({"b": 1, "a": 2}) == b'{\n  "a": 2,\n  "b": 1\n}\n'
    with pytest.raises(ValueError):
        canonical_bytes({"x": float("nan")})


def test_read_json_refusals(tmp_path: Path) -> None:
    cases = {
        b"": "empty",
        b'{"a": 1, "a": 2}': "duplicate key",
        b"[" * 40 + b"]" * 40: "nested deeper",
        b'{"a": NaN}': "not valid JSON",
        b"\xff": "not UTF-8",
        b"{": "not valid JSON",
        b'{"a": 1e999}': "out of range",
        b'{"a": -1E+400}': "out of range",
        b'{"a": ' + b"9" * 101 + b"}": "at most 100 are accepted",
        b'{"a": 0.' + b"1" * 120 + b"}": "characters; at most 110",
    }
    for raw, fragment in cases.items():
        p = tmp_path / "x.json"
        p.write_bytes(raw)
        with pytest.raises(JSONReadError, match=fragment):
            read_json(p)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 2_000_000)
    with pytest.raises(JSONReadError, match="at most"):
        read_json(big)


def test_numbers_parse_alike_on_the_checked_and_the_unchecked_path() -> None:
    """parse_json checks numbers one by one only when the text holds a long digit run or a 3-digit
    exponent; every shorter number must come out the same as json's own parse."""
    text = '{"i": [0, -7, 123456789012345], "f": [0.5, -1e-05, 3.14159e300, 1.7976931348623157e+308]}'
    assert parse_json(text.encode()) == json.loads(text)
    assert parse_json(b'{"h": "1234567890123456", "x": 1.5}') == {"h": "1234567890123456", "x": 1.5}


WRITER = """
import sys
from pathlib import Path
from peftrepro.jsonio import write_new_file
folder = Path(sys.argv[1])
payload = b'{"x": "' + b"y" * 4_000_000 + b'"}'
i = 0
print("ready", flush=True)
while True:
    write_new_file(folder / f"r{i:06d}.json", payload)
    i += 1
"""


def test_sigkill_mid_write_never_leaves_a_partial_record(tmp_path: Path) -> None:
    """Kill a writer of 4 MB records at arbitrary moments: every final file is whole, or absent."""
    for attempt in range(3):
        folder = tmp_path / f"attempt{attempt}"
        folder.mkdir()
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(0.3 + 0.17 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finals = sorted(folder.glob("r*.json"))
        for f in finals:
            assert len(json.loads(f.read_bytes())["x"]) == 4_000_000
        # Whatever was cut short is a hidden temp file, never a record name.
        assert all(p.name.startswith(".tmp-") for p in folder.iterdir() if p not in finals)
