"""The leaderboard's golden input: a submissions tree with every row status and tamper case.

`python -m tests.golden_tree` rewrites tests/golden/leaderboard/submissions from this file;
`PEFTREPRO_UPDATE_GOLDEN=1 pytest tests/test_leaderboard.py` rewrites the expected pages.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from peftrepro.jsonio import pretty_bytes
from peftrepro.manifest import ResolvedManifest
from peftrepro.tasks import get_task
from tests.synthetic import (
    PASSED_CHECKS,
    manifest_doc,
    outcomes,
    record,
    run_id,
    save,
    sign_file,
    trust,
    verification,
    write_manifest,
)

GOLDEN = Path(__file__).parent / "golden" / "leaderboard"
LORA = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
IA3 = {
    "peft_type": "IA3",
    "target_modules": ["k_proj", "v_proj", "down_proj"],
    "feedforward_modules": ["down_proj"],
}
GiB = 2**30


def build(root: Path) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    trust(root)  # tests/keys/tester is this tree's one verifier

    # verified, on the front: three seeds, seed 0 reproduced; a newer truncated record of seed 0 (an
    # interrupted write) is reported and hides nothing
    m = write_manifest(root, manifest_doc("lora", "r8", LORA, title="LoRA r=8, all linear layers"))
    for seed, acc in ((0, 0.62), (1, 0.34), (2, 0.55)):
        path = save(
            m.folder,
            "runs",
            record(
                m,
                seed,
                run_id(3, seed, seed),
                test_accuracy=acc,
                test_outcomes=outcomes(acc, f"r8-{seed}"),
                peak_memory_bytes=int(1.73 * GiB),
            ),
        )
        if seed == 0:  # signed by the tree's verifier: it counts
            sign_file(save(m.folder, "verifications", verification(path, read(path), run_id(4, 0, 1))))
        if seed == 1:  # a verification whose verdict was edited by hand: ignored, and listed
            v = verification(path, read(path), run_id(4, 1, 2), test_accuracy=0.30)
            v["verdict"] = "reproduced"
            save(m.folder, "verifications", v)
    (m.folder / "runs" / f"{run_id(5, 0, 9)}.json").write_text('{"schema_version": 1, "run_id": "2026')

    # claimed, on the front (cheaper); and an exact twin of it, which must share the front. Each has
    # a verification that says "reproduced" and counts for nothing: small's is unsigned (a copy of
    # the claim, as a forger would write it), twin's is signed by a key the tree does not list.
    for name in ("small", "twin"):
        m = write_manifest(root, manifest_doc("ia3", name, IA3))
        for seed in (0, 1):
            path = save(
                m.folder,
                "runs",
                record(
                    m,
                    seed,
                    run_id(3, seed, 10 + seed),
                    test_accuracy=0.2,
                    test_outcomes=outcomes(0.2, f"{name}-{seed}"),
                    peak_memory_bytes=int(1.5 * GiB),
                    adapter_bytes=230_496,
                    trainable_params=57_600,
                ),
            )
            if seed == 0:
                forged = save(m.folder, "verifications", verification(path, read(path), run_id(4, 0, 11)))
                if name == "twin":
                    sign_file(forged, "stranger")

    # claimed, dominated: worse score and more memory than lora/r8. Its verification was signed by
    # the tree's verifier, then edited (one byte appended): the signature no longer matches.
    m = write_manifest(
        root,
        manifest_doc("loha", "r8", {"peft_type": "LOHA", "r": 8, "target_modules": ["q_proj", "v_proj"]}),
    )
    path = save(
        m.folder,
        "runs",
        record(
            m,
            0,
            run_id(3, 0, 20),
            test_accuracy=0.30,
            test_outcomes=outcomes(0.30, "loha"),
            peak_memory_bytes=int(1.9 * GiB),
        ),
    )
    edited = save(m.folder, "verifications", verification(path, read(path), run_id(4, 0, 21)))
    sign_file(edited)
    edited.write_bytes(edited.read_bytes() + b"\n")

    # flagged: no better than the base model; its title and description try to inject markup
    m = write_manifest(
        root,
        manifest_doc(
            "vera",
            "broken",
            {"peft_type": "VERA", "r": 256, "target_modules": ["q_proj", "v_proj"]},
            title="<script>alert(1)</script> | **bold** [x](javascript:alert(1))",
            description="<img src=x onerror=alert(1)> ![pixel](http://example.invalid/p.png) "
            "`code` _em_ ~strike~ & |pipe|",
        ),
    )
    save(  # made before the structural checks existed: its checks cell is "–"
        m.folder,
        "runs",
        record(m, 0, run_id(3, 0, 30), test_accuracy=0.02, peak_memory_bytes=int(1.2 * GiB), checks={}),
    )

    # flagged: its mean is above the base model's (0.023), but by less than one seed std
    m = write_manifest(
        root,
        manifest_doc("fourierft", "noisy", {"peft_type": "FOURIERFT", "n_frequency": 1000, "scaling": 300.0}),
    )
    for seed, acc in ((0, 0.06), (1, 0.0), (2, 0.02)):
        save(m.folder, "runs", record(m, seed, run_id(3, seed, 80 + seed), test_accuracy=acc))

    # claimed, an identity at init only up to float rounding (I≈)
    m = write_manifest(
        root, manifest_doc("hra", "r8", {"peft_type": "HRA", "r": 8, "target_modules": ["q_proj"]})
    )
    approximate = {
        **PASSED_CHECKS,
        "identity_at_init": {
            "status": "approximate",
            "detail": "max |diff| 5.5e-05",
            "max_abs_diff": 5.5e-05,
        },
    }
    save(m.folder, "runs", record(m, 0, run_id(3, 0, 35), test_accuracy=0.25, checks=approximate))

    # failed a structural check before training: a fresh OFT adapter on 3x3 convolutions is no identity
    m = write_manifest(
        root,
        manifest_doc("oft", "conv", {"peft_type": "OFT", "oft_block_size": 8, "target_modules": ["q_proj"]}),
    )
    failed_identity = {
        **PASSED_CHECKS,
        "identity_at_init": {
            "status": "failed",
            "detail": "a fresh adapter changes the output by up to 1.59 (allowed 0)",
            "max_abs_diff": 1.59,
        },
    }
    message = (
        "structural check of oft: identity_at_init failed: a fresh adapter changes the output by up to 1.59"
    )
    save(
        m.folder,
        "runs",
        record(
            m,
            0,
            run_id(3, 0, 36),
            status="failed",
            error=message,
            error_type="CheckFailed",
            checks=failed_identity,
        ),
    )

    # not reproduced: a verification measured a different score
    m = write_manifest(
        root,
        manifest_doc(
            "oft",
            "disputed",
            {"peft_type": "OFT", "oft_block_size": 32, "target_modules": ["q_proj", "v_proj"]},
        ),
    )
    path = save(
        m.folder, "runs", record(m, 0, run_id(3, 0, 40), test_accuracy=0.9, peak_memory_bytes=int(1.0 * GiB))
    )
    sign_file(
        save(m.folder, "verifications", verification(path, read(path), run_id(4, 0, 41), test_accuracy=0.31))
    )

    # failed, with an error message that tries to inject markup
    m = write_manifest(
        root,
        manifest_doc(
            "boft",
            "crashed",
            {"peft_type": "BOFT", "boft_block_size": 4, "target_modules": ["q_proj", "v_proj"]},
        ),
    )
    save(
        m.folder,
        "runs",
        record(m, 0, run_id(3, 0, 50), status="failed", error="CUDA error | <b>x</b> [y](z)\nsecond line"),
    )

    # stale: the only record was made for an earlier manifest
    m = write_manifest(
        root, manifest_doc("hra", "old", {"peft_type": "HRA", "r": 8, "target_modules": ["q_proj", "v_proj"]})
    )
    save(m.folder, "runs", record(m, 0, run_id(2, 0, 60), manifest_sha256="b" * 64, test_accuracy=0.4))

    # stale: its only record is in a record format this toolkit does not read (a future v2)
    m = write_manifest(
        root,
        manifest_doc("lokr", "v2", {"peft_type": "LOKR", "r": 8, "target_modules": ["q_proj", "v_proj"]}),
    )
    future = record(m, 0, run_id(2, 0, 61), test_accuracy=0.45)
    future["schema_version"] = 2
    save(m.folder, "runs", future)

    # superseded: lokr/r4 names lokr/old in `supersedes`; the old row moves to History
    old_cfg = {"peft_type": "LOKR", "r": 4, "target_modules": ["q_proj", "v_proj"]}
    m = write_manifest(root, manifest_doc("lokr", "old", old_cfg))
    save(m.folder, "runs", record(m, 0, run_id(2, 0, 62), test_accuracy=0.5))
    m = write_manifest(
        root,
        manifest_doc(
            "lokr", "r4", {**old_cfg, "rank_dropout": 0.0}, supersedes="lokr/old", title="LoKr r=4, again"
        ),
    )
    save(
        m.folder, "runs", record(m, 0, run_id(3, 0, 63), test_accuracy=0.48, peak_memory_bytes=int(2.5 * GiB))
    )

    # never run
    write_manifest(
        root,
        manifest_doc(
            "miss", "pending", {"peft_type": "MISS", "r": 8, "target_modules": ["q_proj", "v_proj"]}
        ),
    )

    # cancelled (over a time budget, say): no figures, awaiting a run, the record linked and its end said
    m = write_manifest(
        root,
        manifest_doc("miss", "slow", {"peft_type": "MISS", "r": 64, "target_modules": ["q_proj", "v_proj"]}),
    )
    save(
        m.folder,
        "runs",
        record(
            m, 0, run_id(3, 0, 71), status="cancelled", error="stopped by SIGINT", error_type="RunCancelled"
        ),
    )

    # a record whose manifest was deleted
    orphan = write_manifest(root, manifest_doc("dora", "gone", {**LORA, "use_dora": True}))
    save(orphan.folder, "runs", record(orphan, 0, run_id(3, 0, 70)))
    (orphan.folder / "manifest.json").unlink()

    # the GPU track this one stands in for: three published results (claims), one per method, never run
    # here; the arithmetic page's comparison reads them
    for method, name, peft, score in (
        ("lora", "r32", {"peft_type": "LORA", "r": 32, "target_modules": ["q_proj", "v_proj"]}, 0.478),
        ("ia3", "default", {"peft_type": "IA3"}, 0.398),
        ("hra", "r32", {"peft_type": "HRA", "r": 32}, 0.41),
    ):
        m = write_manifest(root, {**manifest_doc(method, name, peft), "task": "metamathqa"})
        claim = published_claim(m, f"{method}--llama-3.2-3B-{name}", test_accuracy=score)
        path = m.folder / "claims" / f"{claim['claim_id']}.json"
        path.parent.mkdir()
        path.write_bytes(pretty_bytes(claim))


def published_claim(m: ResolvedManifest, stem: str, **metrics: float) -> dict[str, Any]:
    """A claim as `peftrepro import` writes one for a result file named `stem`.json (its sha256 made up)."""
    sha = hashlib.sha256(stem.encode()).hexdigest()
    return {
        "schema_version": 1,
        "claim_id": f"{stem.lower()}-{sha[:12]}",
        "submission": {
            "task": m.task,
            "task_version": get_task(m.task).version,
            "method": m.method,
            "name": m.name,
            "manifest_sha256": m.sha256,
        },
        "source": {
            "repository": "huggingface/peft",
            "commit": "5d602fdbff04c33c1c4de55cda9d4ae1d7cb7e40",
            "path": f"method_comparison/MetaMathQA/results/{stem}.json",
            "sha256": sha,
        },
        "experiment": stem.replace("--", "/"),
        "metrics": {"peak_memory_bytes": 20 * GiB, "forgetting_same_position": 0.05, **metrics},
        "environment": {"accelerator": "NVIDIA L40S"},
    }


def read(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


if __name__ == "__main__":
    build(GOLDEN / "submissions")
    print(f"wrote {GOLDEN / 'submissions'}")
