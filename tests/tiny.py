"""A tiny random-weights stand-in for the arithmetic task's model, built in well under a second.

Same loading path as the real task (a folder `from_pretrained` reads); only the GGUF conversion
is skipped. Llama-style `nn.Linear` layers so every PEFT method applies (OFT rejects Conv1D).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from pathlib import Path

import torch

from peftrepro.tasks import Prepared, digits, register
from peftrepro.tasks.arithmetic import ArithmeticTask, GGUFSource, LocalDirSource, all_problems, general_texts


def build_tiny_model(folder: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (folder / "model.safetensors").exists():
        return folder
    texts = [f"{p.prompt} {p.answer}" for p in all_problems()[::7]] + general_texts()
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def register_tiny(folder: Path) -> None:
    """Make `arithmetic` load the tiny model (policy still sees the real task's base model id)."""
    build_tiny_model(folder)
    # A partial, not a lambda: runs in child processes (runners.local.run_isolated) unpickle it.
    register("arithmetic", functools.partial(ArithmeticTask, LocalDirSource(folder, GGUFSource.model_id)))


# The digits task's recipe, shrunk to build in seconds: two resolutions, a few dozen steps.
TINY_DIGITS_BASE = {
    **digits.BASE_RECIPE,
    "unet": {
        **digits.BASE_RECIPE["unet"],
        "block_out_channels": [32, 32],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
    },
    "steps": 40,
    "warmup_steps": 5,
}
TINY_DIGITS_EVALUATOR = {**digits.EVALUATOR_RECIPE, "epochs": 2}


def build_tiny_digits(folder: Path) -> Path:
    if not (folder / "build.json").exists():
        digits.build(folder, base=TINY_DIGITS_BASE, evaluator_recipe=TINY_DIGITS_EVALUATOR)
    return folder


def register_tiny_digits(folder: Path) -> None:
    """Make `digits` load the tiny stand-in (same code path; only the recipe is smaller)."""
    build_tiny_digits(folder)
    register("digits", functools.partial(digits.DigitsTask, folder))


class ExplodingTask(ArithmeticTask):
    """The tiny task whose test evaluation raises: a run that breaks after training. A class, so
    that a child process can unpickle its registration."""

    def prepare(self) -> Prepared:
        prepared = super().prepare()
        evaluate = prepared.evaluate

        def exploding(model: torch.nn.Module, split: str, batch_size: int) -> float:
            if split == "test" and hasattr(model, "peft_config"):  # the trained model, not the base
                raise RuntimeError("evaluation exploded\nsecond line")
            return evaluate(model, split, batch_size)

        return dataclasses.replace(prepared, evaluate=exploding)


def interrupt_during_training(args: list[str], tiny_model_dir: Path, sig: int) -> tuple[int, str, str]:
    """Run `peftrepro ARGS` (tiny task) in a subprocess, send `sig` once training has started
    (the base measurements are cached by then) and a few steps ran; (exit code, stdout, stderr)."""
    import subprocess
    import time

    env = {**os.environ, "TINY_MODEL_DIR": str(tiny_model_dir)}
    proc = subprocess.Popen(
        [sys.executable, "tests/tiny.py", *args],
        cwd=Path(__file__).parent.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cache = Path(env["PEFTREPRO_CACHE"])
    deadline = time.monotonic() + 120
    while not list(cache.glob("base-measurements/*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


if __name__ == "__main__":
    # `python tests/tiny.py ARGS...`: the peftrepro CLI with the tiny stand-in (for subprocess tests).
    register_tiny(Path(os.environ["TINY_MODEL_DIR"]))
    from peftrepro.cli import main

    sys.argv[0] = "peftrepro"
    main()
