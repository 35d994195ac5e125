"""Signed verifications: who vouches that a re-run really happened.

A verification file is only a claim that someone re-ran a record; a pull request can write one by
hand. It counts (a row becomes `verified`) only when `<id>.json.sig` beside it is an SSH signature
of the file's exact bytes, in the namespace `peftrepro-verification`, by a key listed in the
reviewed `verifiers/allowed_signers` (the format git uses for signed commits: `principal key`).
The check is OpenSSH's own (`ssh-keygen -Y find-principals` / `-Y verify`), the same code path
as `git verify-commit`, so nothing cryptographic is written here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from peftrepro.errors import UsageError

NAMESPACE = "peftrepro-verification"
SIGNERS_FILE = Path("verifiers") / "allowed_signers"  # beside submissions/, at the repository root
SIG_SUFFIX = ".sig"
MAX_SIG_BYTES = 16_384
PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@-]{0,99}")  # plain names: no patterns, no quotes
TIMEOUT_S = 20.0
INSTALL = (
    "ssh-keygen (OpenSSH ≥ 8.2) is needed to sign and check verifications: apt-get install openssh-client"
)


def signature_path(path: Path) -> Path:
    return path.with_name(path.name + SIG_SUFFIX)


def signers_file(root: Path) -> Path:
    """The allowed-signers file that governs the submissions tree `root`."""
    return root.resolve().parent / SIGNERS_FILE


@dataclass(frozen=True)
class Signature:
    signer: str | None  # the principal whose listed key signed the file's bytes; None: not vouched for
    why: str  # "signed by X", or why it does not count


def _keygen() -> str:
    found = shutil.which("ssh-keygen")
    if found is None:
        raise UsageError(INSTALL)
    return found


def allowed_principals(text: str) -> list[str]:
    """The principals of an allowed_signers text; a principal that is a pattern or a list is refused
    (a reviewer must see exactly who is trusted)."""
    names = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        principal = line.split(None, 1)[0]
        if not PRINCIPAL.fullmatch(principal):
            raise UsageError(
                f"{SIGNERS_FILE} line {n}: principal {principal[:40]!r} must be one plain name "
                "(letters, digits, . _ + @ -), not a pattern or a list"
            )
        names.append(principal)
    return names


def check(data: bytes, sig: bytes, allowed: Path) -> Signature:
    """Who signed `data` (the verification file's bytes as read) with `sig`, among `allowed`."""
    if allowed.is_symlink() or not allowed.is_file():
        return Signature(None, f"signed, but {SIGNERS_FILE} is missing here: no verifier is trusted")
    allowed_principals(allowed.read_text(errors="replace"))
    if len(sig) > MAX_SIG_BYTES or not sig.startswith(b"-----BEGIN SSH SIGNATURE-----"):
        return Signature(None, "the .sig file is not an SSH signature")
    keygen = _keygen()
    with tempfile.TemporaryDirectory(prefix="peftrepro-sig-") as tmp:
        sig_file = Path(tmp) / "sig"
        sig_file.write_bytes(sig)
        try:
            found = subprocess.run(
                [keygen, "-Y", "find-principals", "-s", str(sig_file), "-f", str(allowed)],
                capture_output=True,
                timeout=TIMEOUT_S,
                check=False,
            )
            if found.returncode != 0:
                return Signature(None, f"signed by a key not listed in {SIGNERS_FILE}")
            for principal in found.stdout.decode(errors="replace").split():
                command = [keygen, "-Y", "verify", "-f", str(allowed), "-I", principal, "-n", NAMESPACE]
                done = subprocess.run(
                    [*command, "-s", str(sig_file)],
                    input=data,
                    capture_output=True,
                    timeout=TIMEOUT_S,
                    check=False,
                )
                if done.returncode == 0:
                    return Signature(principal, f"signed by {principal}")
        except subprocess.TimeoutExpired:
            return Signature(None, f"checking its signature took more than {TIMEOUT_S:.0f} s")
    return Signature(None, "its signature does not match its bytes: edited after signing")


def sign(path: Path, key: Path) -> Path:
    """Sign the file at `path` with the SSH private key `key` (or the public half of a key held by
    ssh-agent); writes `<path>.sig` (never through a link, never over an existing file)."""
    if not key.is_file():
        raise UsageError(f"--sign-with {key}: no such key file")
    data = path.read_bytes()
    done = subprocess.run(
        [_keygen(), "-Y", "sign", "-f", str(key), "-n", NAMESPACE],
        input=data,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.startswith(b"-----BEGIN SSH SIGNATURE-----"):
        why = done.stderr.decode(errors="replace").strip().splitlines()
        raise UsageError(f"--sign-with {key}: ssh-keygen could not sign: {why[-1] if why else 'no output'}")
    out = signature_path(path)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(done.stdout)
    return out
