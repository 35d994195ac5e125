"""Hostile manifests: each is refused with exit code 2 and one line naming the field; no traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from peftrepro.cli import main
from peftrepro.errors import safe_text
from tests.conftest import DELETE, LORA_MANIFEST

PC = LORA_MANIFEST["peft_config"]


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = {"k": value}
    return value


# (id, changes to the tiny LoRA manifest or raw bytes, expected pointer in the message)
HOSTILE: list[tuple[str, dict | bytes, str]] = [
    ("trust-remote-code-top", {"trust_remote_code": True}, "/trust_remote_code"),
    (
        "trust-remote-code-peft",
        {"peft_config": {**PC, "trust_remote_code": True}},
        "/peft_config/trust_remote_code",
    ),
    (
        "trust-remote-code-deep",
        {"peft_config": {**PC, "runtime_config": {"x": {"trust_remote_code": True}}}},
        "/peft_config/runtime_config/x/trust_remote_code",
    ),
    (
        "trust-remote-code-in-list",
        {"peft_config": {**PC, "layers_to_transform": [{"trust_remote_code": 1}]}},
        "/peft_config/layers_to_transform/0/trust_remote_code",
    ),
    ("trust-remote-code-training", {"training": {"trust_remote_code": True}}, "/training/trust_remote_code"),
    ("name-traversal", {"name": "../../etc"}, "/name"),
    ("name-slash", {"name": "a/b"}, "/name"),
    ("name-uppercase", {"name": "LoRA"}, "/name"),
    ("name-trailing-newline", {"name": "tiny\n"}, "/name"),
    ("name-rtl-override", {"name": "tiny\u202egpj"}, "/name"),
    ("name-homoglyph", {"name": "tіny"}, "/name"),  # Cyrillic i
    ("name-too-long", {"name": "a" * 65}, "/name"),
    ("name-empty", {"name": ""}, "/name"),
    ("task-traversal", {"task": "../arithmetic"}, "/task"),
    (
        "auto-mapping-module",
        {"peft_config": {**PC, "auto_mapping": {"base_model_class": "os.system"}}},
        "/peft_config/auto_mapping",
    ),
    ("megatron-core-module", {"peft_config": {**PC, "megatron_core": "os"}}, "/peft_config/megatron_core"),
    (
        "tokenizer-path",
        {"peft_config": {**PC, "tokenizer_name_or_path": "/etc/passwd"}},
        "/peft_config/tokenizer_name_or_path",
    ),
    (
        "other-base-model",
        {"peft_config": {**PC, "base_model_name_or_path": "meta-llama/Llama-3.2-3B"}},
        "/peft_config/base_model_name_or_path",
    ),
    ("path-in-field", {"peft_config": {**PC, "bias": "~/.ssh/id_rsa"}}, "/peft_config/bias"),
    (
        "path-in-target-modules",
        {"peft_config": {**PC, "target_modules": ["/etc/passwd"]}},
        "/peft_config/target_modules/0",
    ),
    ("huge-rank", {"peft_config": {**PC, "r": 10**12}}, "/peft_config/r"),
    ("negative-rank", {"peft_config": {**PC, "r": -4}}, "/peft_config/r"),
    (
        "huge-unknown-number",
        {"peft_config": {**PC, "layers_to_transform": [1e300]}},
        "/peft_config/layers_to_transform/0",
    ),
    ("huge-steps", {"training": {"max_steps": 10**9}}, "/training/max_steps"),
    ("negative-lr", {"training": {"optimizer_kwargs": {"lr": -1}}}, "/training/optimizer_kwargs/lr"),
    ("zero-batch", {"training": {"batch_size": 0}}, "/training/batch_size"),
    ("float-steps", {"training": {"max_steps": 10.5}}, "/training/max_steps"),
    ("string-rank", {"peft_config": {**PC, "r": "8"}}, "/peft_config/r"),
    ("bool-as-number", {"training": {"batch_size": True}}, "/training/batch_size"),
    ("list-as-config", {"peft_config": [1, 2]}, "/peft_config"),
    ("unknown-peft-type", {"peft_config": {**PC, "peft_type": "EVIL"}}, "/peft_config/peft_type"),
    ("lowercase-peft-type", {"peft_config": {**PC, "peft_type": "lora"}}, "/peft_config/peft_type"),
    ("missing-peft-type", {"peft_config": {"r": 4}}, "/peft_config/peft_type"),
    ("unknown-top-key", {"command": "rm -rf /"}, "/command"),
    ("unknown-training-key", {"training": {"num_threads": 64}}, "/training/num_threads"),
    ("unknown-optimizer", {"training": {"optimizer_type": "os.system"}}, "/training/optimizer_type"),
    ("inference-mode", {"peft_config": {**PC, "inference_mode": True}}, "/peft_config/inference_mode"),
    ("schema-version", {"schema_version": 99}, "/schema_version"),
    ("missing-task", {"task": DELETE}, "/task"),
    ("long-description", {"description": "x" * 5000}, "/description"),
    ("too-many-authors", {"authors": ["a"] * 50}, "/authors"),
    ("odd-field-name", {"peft_config": {**PC, "a b\n": 1}}, "/peft_config"),
    (
        "deeply-nested-value",
        {"peft_config": {**PC, "runtime_config": nested(25)}},
        "/peft_config/runtime_config",
    ),
    ("not-json", b"{'task': 'arithmetic'}", ""),
    ("empty-file", b"", ""),
    ("whitespace-file", b"   \n", ""),
    ("top-level-list", b"[1, 2, 3]", ""),
    ("not-utf8", b'{"task": "\xff\xfe"}', ""),
    ("nan", json.dumps(LORA_MANIFEST).replace('"r": 4', '"r": NaN').encode(), ""),
    ("infinity", json.dumps(LORA_MANIFEST).replace('"r": 4', '"r": Infinity').encode(), ""),
    ("duplicate-key", json.dumps(LORA_MANIFEST).replace('"r": 4', '"r": 4, "r": 400').encode(), ""),
    ("ten-megabytes", b'{"description": "' + b"x" * 10_000_000 + b'"}', ""),
    ("deeply-nested-file", b"[" * 100_000 + b"]" * 100_000, ""),
    ("truncated", json.dumps(LORA_MANIFEST).encode()[:-20], ""),
    # A lone UTF-16 surrogate, which no UTF-8 page or terminal can print: it once crashed every reader.
    ("lone-surrogate-title", json.dumps({**LORA_MANIFEST, "title": "\ud800"}).encode(), ""),
    ("lone-surrogate-key", json.dumps({**LORA_MANIFEST, "peft_config": {**PC, "\udfff": 1}}).encode(), ""),
    # Patterns that make Python's regex engine backtrack for minutes on every non-matching module name.
    (
        "regex-nested-repeat",
        {"peft_config": {**PC, "target_modules": "(.*)*Z"}},
        "/peft_config/target_modules",
    ),
    (
        "regex-alternation-repeat",
        {"peft_config": {**PC, "exclude_modules": "(a|a)*b"}},
        "/peft_config/exclude_modules",
    ),
    (
        "regex-backreference",
        {"peft_config": {**PC, "target_modules": "(\\w+)\\1"}},
        "/peft_config/target_modules",
    ),
    (
        "regex-many-repeats",
        {"peft_config": {**PC, "target_modules": ".*.*.*.*x"}},
        "/peft_config/target_modules",
    ),
    ("regex-invalid", {"peft_config": {**PC, "target_modules": "(q_proj"}}, "/peft_config/target_modules"),
    (
        "huge-rank-pattern",
        {"peft_config": {**PC, "rank_pattern": {"q_proj": 300_000}}},
        "/peft_config/rank_pattern/q_proj",
    ),
    (
        "huge-alpha-pattern",
        {"peft_config": {**PC, "alpha_pattern": {"q_proj": 1e9}}},
        "/peft_config/alpha_pattern/q_proj",
    ),
]


@pytest.mark.parametrize(
    ("changes", "pointer"), [(c, p) for _, c, p in HOSTILE], ids=[i for i, _, _ in HOSTILE]
)
def test_hostile_manifest_is_refused_with_one_line(write_manifest, changes, pointer) -> None:
    path = write_manifest(raw=changes) if isinstance(changes, bytes) else write_manifest(changes)
    result = CliRunner().invoke(main, ["validate", str(path.parent)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {safe_text(str(path))}"), lines[0]
    assert f": {pointer}:" in lines[0] if pointer else lines[0].startswith(f"error: {safe_text(str(path))}: ")
    assert "Traceback" not in result.output
    assert lines[0].isascii()  # hostile characters are escaped
    assert path.exists()  # refusing never deletes or rewrites the input


def test_at_least_thirty_hostile_cases() -> None:
    assert len(HOSTILE) >= 30


def test_symlinked_manifest_is_refused(write_manifest, tmp_path: Path) -> None:
    path = write_manifest()
    secret = tmp_path / "secret.json"
    secret.write_text(path.read_text())
    path.unlink()
    path.symlink_to(secret)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert "symbolic link" in result.stderr


def run_tiny_cli(args: list[str], tiny_model_dir: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """`peftrepro ARGS` on the tiny stand-in, in a process of its own."""
    return subprocess.run(
        [sys.executable, "tests/tiny.py", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TINY_MODEL_DIR": str(tiny_model_dir)},
        cwd=Path(__file__).parent.parent,
        timeout=timeout,
    )


def test_hostile_manifest_in_a_real_process_prints_no_traceback(write_manifest, tiny_model_dir: Path) -> None:
    path = write_manifest({"peft_config": {**PC, "trust_remote_code": True}})
    proc = run_tiny_cli(["run", str(path)], tiny_model_dir)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}: /peft_config/trust_remote_code: remote code is never run; remove this field"
    ]
    assert not (path.parent / "runs").exists()  # refused before anything ran


def test_a_lone_surrogate_never_crashes_a_reader(write_manifest, tmp_path: Path) -> None:
    """One manifest and one record spelling a lone surrogate: the commands that read the whole tree
    list them as refused, in one ASCII line each, and still do their job."""
    from tests.synthetic import manifest_doc, record, run_id
    from tests.synthetic import write_manifest as write_doc

    root = tmp_path / "tree"
    good = write_doc(root, manifest_doc("ia3", "fine", {"peft_type": "IA3"}))
    bad_record = record(good, 0, run_id(0, 0))
    bad_record["environment"]["cpu_capability"] = "\ud800"  # a field the schema does not type
    runs = good.folder / "runs"
    runs.mkdir()
    (runs / f"{run_id(0, 0)}.json").write_text(json.dumps(bad_record))  # ASCII: the escape spells it
    hostile = root / "arithmetic" / "lora" / "tiny"
    hostile.mkdir(parents=True)
    (hostile / "manifest.json").write_text(json.dumps({**LORA_MANIFEST, "title": "\ud800"}))
    runner = CliRunner()
    out = tmp_path / "board"
    result = runner.invoke(main, ["leaderboard", "--submissions", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "lone surrogate" in result.stderr and (out / "arithmetic.md").exists()
    assert "lone surrogate" in (out / "arithmetic.md").read_text()  # the refusal is shown, not the text
    listed = runner.invoke(main, ["list", "submissions", "--submissions", str(root)])
    assert listed.exit_code == 0 and "lone surrogate" in listed.output, listed.output
    checked = runner.invoke(main, ["validate", "--no-attach", str(hostile)])
    assert checked.exit_code == 2 and checked.stderr.count("\n") == 1 and "lone surrogate" in checked.stderr
    assert "Traceback" not in listed.output + checked.output


@pytest.mark.parametrize("folder", ["runs", "verifications"])
@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlinked_records_folder_is_refused_before_anything_runs(
    write_manifest, tmp_path: Path, folder: str, dangling: bool
) -> None:
    """A pull request whose runs/ (or verifications/) is a link could make `run` or `verify` write
    anywhere on the verifier's machine: refused in one line, exit 2, before any job starts."""
    path = write_manifest()
    outside = tmp_path / "outside"
    if not dangling:
        outside.mkdir()
    if folder == "verifications":  # a claim to verify, written while runs/ is still a plain folder
        assert CliRunner().invoke(main, ["run", str(path)]).exit_code == 0
    (path.parent / folder).symlink_to(outside, target_is_directory=True)
    command = ["run", str(path)] if folder == "runs" else ["verify", str(path.parent), "--seed", "0"]
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 2, result.output
    assert (
        result.stderr
        == f"error: {path.parent / folder} is a symbolic link; records are written only into plain folders\n"
    )
    assert not outside.exists() or not list(outside.iterdir())
    assert "running " not in result.stderr and "re-running" not in result.stderr


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        found += [int(c) for c in text.split()]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_a_job_process_dies_with_its_driver_killed_the_moment_it_starts(
    write_manifest, tmp_path: Path
) -> None:
    """`peftrepro run` killed (SIGKILL) the moment its job process exists (forked from the warm
    template, a child of the template, not of the driver): the job process and the template exit
    too, instead of training on as orphans."""
    path = write_manifest({"training": {**LORA_MANIFEST["training"], "max_steps": 100000}})
    env = {**os.environ, "PEFTREPRO_CACHE": str(tmp_path / "cache")}
    script = Path(sys.executable).parent / "peftrepro"
    proc = subprocess.Popen([str(script), "run", str(path)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    templates: list[int] = []
    jobs: list[int] = []
    while not jobs and time.monotonic() < deadline:
        templates = [c for c in _children(proc.pid) if "forkserver" in Path(f"/proc/{c}/cmdline").read_text()]
        jobs = [j for t in templates for j in _children(t)]
        time.sleep(0.01)
    assert jobs, "the job process never started"
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in jobs + templates) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(j) for j in jobs), "the job process outlived its driver"
    assert not any(_alive(t) for t in templates), "the template outlived its driver"


def test_a_config_that_does_not_attach_is_refused_in_one_line_before_a_record(
    write_manifest, tiny_model_dir: Path
) -> None:
    path = write_manifest({"peft_config": {**PC, "target_modules": ["nope"]}})
    proc = run_tiny_cli(["run", str(path)], tiny_model_dir, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert (
        f"{path}: /peft_config: does not attach to the task's model: Target modules {{'nope'}} not found"
        in (proc.stdout + proc.stderr)
    )
    assert not list(path.parent.glob("runs/*.json"))  # bad input: no record


def test_an_adapter_larger_than_the_model_is_refused_before_it_is_allocated(write_manifest) -> None:
    """r = 4096 on every linear layer: ~8x the tiny model's parameters. Counted on a weightless
    copy (meta device), so the refusal costs no memory; validate and run both refuse it."""
    path = write_manifest({"peft_config": {**PC, "r": 4096, "target_modules": "all-linear"}})
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert "more than the task's whole base model" in result.stderr
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 2 and "more than the task's whole base model" in result.output
    assert not list(path.parent.glob("runs/*.json"))


def test_a_config_that_trains_nothing_is_refused(write_manifest) -> None:
    """OSF keeps `effective_rank` singular directions frozen and trains the rest: a rank at least the
    layers' width (a public config sized for a 3B model) leaves nothing to train."""
    path = write_manifest(
        {
            "method": "osf",
            "peft_config": {"peft_type": "OSF", "target_modules": "all-linear", "effective_rank": 100000},
        }
    )
    result = CliRunner().invoke(main, ["validate", "--deep", str(path)])
    assert result.exit_code == 2, result.output
    assert "/peft_config: trains no parameter of the task's model" in result.stderr
    assert not list(path.parent.glob("runs/*.json"))


def test_attach_and_checks_run_under_a_wall_clock_limit(
    write_manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config that keeps peft busy (a slow module match, say) is stopped and refused in one line."""
    from peftrepro import peftconfig
    from peftrepro.errors import ManifestError

    with pytest.raises(peftconfig.TimeLimitExceeded), peftconfig.time_limit(0.2):
        time.sleep(5)
    with pytest.raises(ManifestError, match="attaching the adapter took more than 0 s"):
        peftconfig.within(0.2, "attaching the adapter", "m.json", lambda: time.sleep(5))
    monkeypatch.setattr(peftconfig, "ATTACH_LIMIT_S", 0.3)
    real_attach = peftconfig.attach

    def slow_attach(*args, **kwargs):
        time.sleep(5)
        return real_attach(*args, **kwargs)

    monkeypatch.setattr(peftconfig, "attach", slow_attach)
    path = write_manifest()
    started = time.monotonic()
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and "attaching the adapter took more than 0 s" in result.stderr
    assert time.monotonic() - started < 4


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_before_any_job_is_one_line_and_exit_130(sig: int) -> None:
    code = (
        "import sys, time\n"
        "import peftrepro.validate as v\n"
        "def slow(*a, **k):\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "v.validate_command = slow\n"
        "from peftrepro.cli import main\n"
        "sys.argv[0] = 'peftrepro'\n"
        "main()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "validate", "anything"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        # A suite started in the background (`cmd &`) inherits SIGINT ignored, and Python then keeps
        # ignoring it: give the command the default disposition a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines() == [
        f"interrupted by {signal.Signals(sig).name}: stopped; what was written before stays"
    ]


def test_a_killed_runs_leftovers_are_swept_from_the_cache(tmp_path: Path) -> None:
    from peftrepro.paths import cache_root, sweep_orphans, work_dir

    mine = work_dir("adapter")  # this process is alive: kept
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    where = mine.name.split("-")[1]  # this pid namespace
    orphan = cache_root() / "work" / f"adapter-{where}-{dead.pid}-abc123"
    (orphan / "nested").mkdir(parents=True)
    (orphan / "nested" / "adapter_model.safetensors").write_bytes(b"half")
    # A folder made in another pid namespace (a container sharing the cache): its pids mean nothing here.
    elsewhere = cache_root() / "work" / f"job-{'0' * 8 if where != '0' * 8 else '1' * 8}-{dead.pid}-abc123"
    elsewhere.mkdir()
    assert sweep_orphans() == [orphan]
    assert mine.is_dir() and not orphan.exists() and elsewhere.is_dir()


def test_the_tasks_own_model_id_is_accepted_and_any_other_refused_for_that_reason(write_manifest) -> None:
    from peftrepro.tasks import get_task

    own = get_task("arithmetic").base_model_id
    path = write_manifest({"peft_config": {**PC, "base_model_name_or_path": own}})
    assert CliRunner().invoke(main, ["validate", "--no-attach", str(path)]).exit_code == 0
    for other in ("meta-llama/Llama-3.2-3B", "../../etc/passwd", "/abs/path"):
        path = write_manifest({"peft_config": {**PC, "base_model_name_or_path": other}})
        result = CliRunner().invoke(main, ["validate", "--no-attach", str(path)])
        assert result.exit_code == 2
        assert f"the task's base model is {own!r}; remove this field" in result.stderr
