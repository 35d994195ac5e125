"""The structural checks (peftrepro/checks.py) on every PEFT method of the installed peft.

For each method family, a small config on the `arithmetic` task's model (SmolLM2-135M-Instruct,
attention projections) goes through the four checks; prints, per method, whether a fresh adapter
is an exact identity, an approximate one (with the measured max |diff| of the logits), or not an
identity by design, the other three checks, and the seconds they took. This is where the table of
INIT_BEHAVIOUR in checks.py comes from.

    .venv/bin/python benchmarks/structural_checks.py [--methods lora,hra,...] [--tiny]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.tiny

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from tabulate import tabulate

from peftrepro import checks
from peftrepro.methods import FAMILIES, starter
from peftrepro.tasks import get_task
from peftrepro.training import configure_determinism

ATTENTION = ["q_proj", "v_proj"]
# The smallest sensible config per PEFT type; anything not listed gets {"target_modules": ATTENTION}.
CONFIGS: dict[str, dict[str, Any]] = {
    "ADALORA": {"target_modules": ATTENTION, "total_step": 100},
    "ADAPTION_PROMPT": {"adapter_len": 4, "adapter_layers": 1},
    "BOFT": {"target_modules": ATTENTION, "boft_block_size": 4},
    "C3A": {"target_modules": ATTENTION, "block_size": 16},
    "CARTRIDGE": {"num_virtual_tokens": 4},
    "FOURIERFT": {"target_modules": ATTENTION, "n_frequency": 32},
    "HRA": {"target_modules": ATTENTION, "r": 4},
    "IA3": {"target_modules": [*ATTENTION, "down_proj"], "feedforward_modules": ["down_proj"]},
    "LN_TUNING": {},
    "OFT": {"target_modules": ATTENTION, "r": 0, "oft_block_size": 16},
    "P_TUNING": {"num_virtual_tokens": 4, "encoder_hidden_size": 32},
    "PREFIX_TUNING": {"num_virtual_tokens": 4},
    "PROMPT_TUNING": {"num_virtual_tokens": 4},
    "RANDLORA": {"target_modules": ATTENTION, "r": 4},
    "SHIRA": {"target_modules": ATTENTION, "r": 4},
    "TRAINABLE_TOKENS": {"token_indices": [5, 6]},
    "VBLORA": {"target_modules": ATTENTION, "vector_length": 32, "num_vectors": 64},
    "VERA": {"target_modules": ATTENTION, "r": 4},
}


def config_for(family: str) -> Any:
    f = FAMILIES[family]
    fields = {"task_type": "CAUSAL_LM", **CONFIGS.get(f.peft_type, {"target_modules": ATTENTION})}
    fields.update({k: v for k, v in starter(f).items() if v or v == {}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PEFT_TYPE_TO_CONFIG_MAPPING[f.peft_type](**fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", help="comma-separated method families (default: all)")
    parser.add_argument("--tiny", action="store_true", help="the tests' tiny stand-in instead of SmolLM2")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.tiny:
        import tempfile

        from tests.tiny import register_tiny

        register_tiny(Path(tempfile.mkdtemp(prefix="peftrepro-tiny-")))
    task = get_task("arithmetic")
    configure_determinism(task.num_threads)
    prepared = task.prepare()
    families = args.methods.split(",") if args.methods else sorted(FAMILIES)
    rows: list[list[str]] = []
    by_kind: dict[str, list[str]] = {}
    failures: list[str] = []
    for family in families:
        t0 = time.perf_counter()
        try:
            results = checks.run_checks(prepared.model, config_for(family), prepared.probe)
        except Exception as e:  # a config peft refuses: report it, go on
            rows.append([family, f"config refused: {type(e).__name__}", "", "", "", "", ""])
            continue
        identity = results[0]
        failures += [f"{family} {r.name}: {r.detail}" for r in results if not r.ok]
        by_kind.setdefault(identity.status, []).append(family)
        rows.append(
            [
                family,
                identity.status,
                "–" if identity.max_abs_diff is None else f"{identity.max_abs_diff:.3g}",
                *(r.status for r in results[1:]),
                f"{time.perf_counter() - t0:.1f}",
            ]
        )
    print(
        tabulate(
            rows,
            headers=["method", "identity at init", "max |diff|", "disable", "declared", "round trip", "s"],
            disable_numparse=True,
        )
    )
    print()
    for kind, names in sorted(by_kind.items()):
        print(f"{kind} ({len(names)}): {', '.join(names)}")
    for line in failures:
        print(f"failed: {line}")


if __name__ == "__main__":
    main()
