"""Signed verifications (signing.py): only a key listed in verifiers/allowed_signers makes a re-run
count; an edited file, an unlisted key, a pattern principal or a missing tool never does."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from peftrepro.ci import draw_seed
from peftrepro.cli import main
from peftrepro.errors import UsageError
from peftrepro.signing import allowed_principals, check, sign, signature_path
from tests.golden_tree import GOLDEN
from tests.synthetic import TESTER, throwaway_key, trust

LORA_R8 = GOLDEN / "submissions/arithmetic/lora/r8/verifications"


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, Path]:
    """A file signed by the test key, and an allowed_signers that lists that key."""
    data = tmp_path / "v.json"
    data.write_bytes(b'{"verdict": "reproduced"}\n')
    sign(data, throwaway_key())
    return data, trust(tmp_path / "submissions")


def test_a_listed_key_vouches_for_exactly_these_bytes(signed: tuple[Path, Path]) -> None:
    data, allowed = signed
    sig = signature_path(data).read_bytes()
    assert check(data.read_bytes(), sig, allowed).signer == TESTER
    edited = check(data.read_bytes().replace(b"reproduced", b"reproduceD"), sig, allowed)
    assert edited.signer is None and "does not match its bytes" in edited.why


def test_an_unlisted_key_or_no_list_vouches_for_nothing(signed: tuple[Path, Path], tmp_path: Path) -> None:
    data, allowed = signed
    other = tmp_path / "other.json"
    other.write_bytes(data.read_bytes())
    sign(other, throwaway_key("stranger"))
    found = check(other.read_bytes(), signature_path(other).read_bytes(), allowed)
    assert found.signer is None and "not listed" in found.why
    missing = check(data.read_bytes(), signature_path(data).read_bytes(), tmp_path / "nowhere")
    assert missing.signer is None and "missing" in missing.why
    garbage = check(data.read_bytes(), b"not a signature", allowed)
    assert garbage.signer is None and "not an SSH signature" in garbage.why


def test_a_signature_is_never_overwritten(signed: tuple[Path, Path]) -> None:
    data, _ = signed
    with pytest.raises(FileExistsError):
        sign(data, throwaway_key("stranger"))


@pytest.mark.parametrize("principal", ["*@example.com", "a,b", '"quoted"', "-flag"])
def test_allowed_signers_names_people_not_patterns(principal: str) -> None:
    assert allowed_principals("# a comment\n\nok@example.com ssh-ed25519 AAAA\n") == ["ok@example.com"]
    with pytest.raises(UsageError, match="plain name"):
        allowed_principals(f"{principal} ssh-ed25519 AAAA\n")


def test_without_ssh_keygen_a_signature_is_one_clear_line(
    signed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, allowed = signed
    monkeypatch.setattr(shutil, "which", lambda _: None)
    with pytest.raises(UsageError, match="apt-get install openssh-client"):
        check(data.read_bytes(), signature_path(data).read_bytes(), allowed)


def test_sign_command_signs_verifications_only_and_once(tmp_path: Path) -> None:
    [original] = sorted(LORA_R8.glob("*-s0-*.json"))
    copy = tmp_path / original.name
    shutil.copyfile(original, copy)
    not_one = tmp_path / "x.json"
    not_one.write_text('{"verdict": "reproduced"}')
    runner = CliRunner()
    result = runner.invoke(main, ["sign", str(not_one), str(copy), "--key", str(throwaway_key())])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not signature_path(copy).exists()  # all are checked before any is signed
    result = runner.invoke(main, ["sign", str(copy), "--key", str(throwaway_key())])
    assert (
        result.exit_code == 0 and signature_path(copy).read_bytes() == signature_path(original).read_bytes()
    )
    again = runner.invoke(main, ["sign", str(copy), "--key", str(throwaway_key())])
    assert again.exit_code == 2 and "already exists" in again.stderr
    linked = tmp_path / "linked.json"
    linked.symlink_to(original)
    assert runner.invoke(main, ["sign", str(linked), "--key", str(throwaway_key())]).exit_code == 2


def test_a_linked_signature_is_not_read(tmp_path: Path) -> None:
    from peftrepro.collect import load_tree

    shutil.copytree(GOLDEN, tmp_path / "tree", ignore=shutil.ignore_patterns("expected"))
    root = tmp_path / "tree/submissions"
    [sig] = (root / "arithmetic/lora/r8/verifications").glob("*.sig")
    sig.unlink()
    sig.symlink_to(signature_path(next(LORA_R8.glob("*-s0-*.json"))))
    subs, _ = load_tree(root)
    [sub] = [s for s in subs if s.label == "arithmetic/lora/r8"]
    [v] = sub.verifications.values()
    assert v.signer is None and "symbolic link" in v.signature.why


def test_ci_draws_every_seed_and_the_draw_can_be_recomputed() -> None:
    seeds = [0, 1, 2]
    draws = [draw_seed(seeds, "arithmetic/lora/default", f"{n:040x}") for n in range(300)]
    assert set(draws) == set(seeds) and min(draws.count(s) for s in seeds) > 60  # about 100 each
    assert draws == [draw_seed([2, 0, 1], "arithmetic/lora/default", f"{n:040x}") for n in range(300)]
    assert draw_seed(seeds, "arithmetic/lora/default", "a" * 40) == draw_seed(
        seeds, "arithmetic/lora/default", "a" * 40
    )
