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
from typing import Any

import numpy as np
import torch

from peftrepro.tasks import Prepared, digits, flux_digits, register
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


class OneThreadArithmeticTask(ArithmeticTask):
    """The tiny stand-in at one thread per run: two runs share two cores (benchmarks/fleet.py)."""

    num_threads = 1


def register_tiny(folder: Path) -> None:
    """Make `arithmetic` load the tiny model (policy still sees the real task's base model id)."""
    build_tiny_model(folder)
    # A partial, not a lambda: job processes (executors/local.py) unpickle it.
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


TINY_FLUX_DIGITS_BASE = {
    **flux_digits.BASE_RECIPE,
    "transformer": {
        **flux_digits.BASE_RECIPE["transformer"],
        "num_single_layers": 1,
        "num_attention_heads": 2,
        "attention_head_dim": 32,
        "axes_dims_rope": [8, 8, 8, 8],
    },
    "steps": 30,
    "batch_size": 16,
    "warmup_steps": 5,
}


def register_tiny_flux_digits(folder: Path) -> None:
    """Make `flux-digits` load a tiny stand-in (same code path; only the recipe is smaller)."""
    if not (folder / "build.json").exists():
        flux_digits.build(folder, base=TINY_FLUX_DIGITS_BASE, evaluator_recipe=TINY_DIGITS_EVALUATOR)
    register("flux-digits", functools.partial(flux_digits.FluxDigitsTask, folder))


class ExplodingTask(ArithmeticTask):
    """The tiny task whose test evaluation raises: a run that breaks after training. A class, so
    that a child process can unpickle its registration."""

    def prepare(self, training: Any = None) -> Prepared:
        prepared = super().prepare(training)
        evaluate = prepared.evaluate

        def exploding(model: torch.nn.Module, split: str, batch_size: int) -> float:
            if split == "test" and hasattr(model, "peft_config"):  # the trained model, not the base
                raise RuntimeError("evaluation exploded\nsecond line")
            return evaluate(model, split, batch_size)

        return dataclasses.replace(prepared, evaluate=exploding, outcomes=None)  # the test split: evaluate


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
    time.sleep(4.0)  # the structural checks, then a few steps (1.5 s was too short on a loaded machine)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


if __name__ == "__main__":
    # `python tests/tiny.py ARGS...`: the peftrepro CLI with the tiny stand-in (for subprocess tests).
    register_tiny(Path(os.environ["TINY_MODEL_DIR"]))
    from peftrepro.cli import main

    sys.argv[0] = "peftrepro"
    main()


def build_tiny_metamathqa(folder: Path) -> Path:
    """Local stand-ins for the metamathqa task's four hub repositories, in the layouts the hub
    loaders read (a model folder; jsonl files named by split): the task runs its real code on them."""
    import json

    from transformers import AutoTokenizer, LlamaForCausalLM

    model = folder / "model"
    if not (model / "model.safetensors").exists():
        build_tiny_model(folder / "arith")
        tok = AutoTokenizer.from_pretrained(folder / "arith")
        tiny = LlamaForCausalLM.from_pretrained(folder / "arith")
        tiny.config.max_position_embeddings = 1024  # generation runs to 800 tokens, as the real task
        tiny.save_pretrained(model)
        tok.save_pretrained(model)

    def jsonl(path: Path, rows: list[dict]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    problems = all_problems()
    jsonl(
        folder / "metamath" / "train.jsonl",
        [
            {
                "type": "GSM_Rephrased" if i % 2 else "MATH_AnsAug",
                "query": p.prompt.replace(" equals", "?"),
                "original_question": p.prompt,
                "response": f"We add them. The answer is: {p.answer}",
            }
            for i, p in enumerate(problems[:64])
        ]
        + [{"type": "MATH_AnsAug", "query": "x" * 1400, "original_question": "", "response": "too long"}],
    )
    gsm = [
        {"question": p.prompt.replace(" equals", "?"), "answer": f"{p.a}+{p.b}\n#### {p.answer}"}
        for p in problems[100:112]
    ]
    jsonl(folder / "gsm8k" / "train.jsonl", gsm[:8])
    jsonl(folder / "gsm8k" / "test.jsonl", gsm[8:])
    jsonl(folder / "finewiki" / "train.jsonl", [{"text": t} for t in general_texts()[:6]])
    return folder


def register_tiny_metamathqa(folder: Path) -> None:
    from peftrepro.tasks.hub import Pinned
    from peftrepro.tasks.metamathqa import MetaMathQATask, Sources

    build_tiny_metamathqa(folder)
    sources = Sources(
        model=Pinned(str(folder / "model"), None),
        metamath=Pinned(str(folder / "metamath"), None),
        gsm8k=Pinned(str(folder / "gsm8k"), None),
        general=Pinned(str(folder / "finewiki"), None),
    )
    register("metamathqa", functools.partial(MetaMathQATask, sources, valid_size=2))


TINY_IMAGEGEN_PROMPTS = tuple(f"sks cat photo {i}" for i in range(8))


def build_tiny_imagegen(folder: Path) -> Path:
    """A tiny FLUX.2-klein pipeline (random weights), a tiny DINOv2 and 8 generated "photos" in the
    layouts the hub loaders read: the image-gen task runs its real code on them."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from PIL import Image
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        BitImageProcessor,
        Dinov2Config,
        Dinov2Model,
        Qwen2TokenizerFast,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    if (folder / "done").exists():
        return folder
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([*TINY_IMAGEGEN_PROMPTS, "a photo of cat", "user assistant"], trainer)
    qwen_tok = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    qwen_tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=48,  # 16 hidden x 3 text-encoder layers
        timestep_guidance_channels=256,
        axes_dims_rope=[4, 4, 4, 4],
        guidance_embeds=False,
    )
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            intermediate_size=16,
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            vocab_size=len(qwen_tok),
            max_position_embeddings=1024,
        )
    )
    vae = AutoencoderKLFlux2(
        sample_size=32,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text_encoder,
        tokenizer=qwen_tok,
        transformer=transformer,
        vae=vae,
    ).save_pretrained(folder / "model")
    Dinov2Model(
        Dinov2Config(
            hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, image_size=28
        )
    ).save_pretrained(folder / "dino")
    BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}).save_pretrained(
        folder / "dino"
    )
    photos = folder / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(len(TINY_IMAGEGEN_PROMPTS)):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(photos / f"{i:02d}.png")
    (folder / "done").touch()
    return folder


def register_tiny_imagegen(folder: Path) -> None:
    from peftrepro.tasks.hub import Pinned
    from peftrepro.tasks.imagegen import ImageGenTask, Settings, Sources

    build_tiny_imagegen(folder)
    sources = Sources(
        model=Pinned(str(folder / "model"), None),
        dataset=Pinned(str(folder / "photos"), None),
        dino=Pinned(str(folder / "dino"), None),
    )
    settings = Settings(
        resolution=32,
        repeats=10,
        valid_size=2,
        test_size=2,
        num_inference_steps=2,
        text_encoder_out_layers=(1, 2, 3),
        dino_image_size=28,
        instance_prompts=TINY_IMAGEGEN_PROMPTS,
        sample_prompts=("a photo of sks cat", "a photo of cat"),
        drift_prompts=("a photo of cat", "a dog"),
    )
    register("image-gen", functools.partial(ImageGenTask, sources, settings=settings))
