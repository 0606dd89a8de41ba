"""The steps `make demo` (`vtimellm_hf.demo`) and the LongVALE demo (`vtimellm_hf.family_demo`) share: the synthetic
data, the tiny tokenizer, base LLM and CLIP built and pre-trained locally, the features, and the recipes run as a
user runs them."""

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from .data.dialogues import GROUNDING_QUESTIONS
from .files import read_json

# The demos' logger: their progress shows by default, the package's only with -v
logger = logging.getLogger("vtimellm_hf.demo")

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# A question the training dialogues ask for grounding (the converters' first grounding template)
DEMO_QUESTION = GROUNDING_QUESTIONS[0].replace("{event}", "{query}")
# Stills written (and the CLIP pre-trained on), and pre-training steps of the base LLM and of the CLIP
FULL_SIZES = dict(num_stills=2000, llm_steps=300, encoder_steps=400)
QUICK_SIZES = dict(num_stills=48, llm_steps=5, encoder_steps=5)
# The demo's base LLMs (`--backbone`): the decoder's model type and the recipes' chat format
BACKBONES = {"vicuna": ("llama", "vicuna_v1"), "qwen3": ("qwen3", "qwen3")}
TINY_BASE = dict(
    hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4
)


def training_texts(dataset) -> list[str]:
    """The text of the training dialogues and captions, times written as the model writes them: the base's
    pre-training corpus (it has no video, so it can learn the language of the answers but not when anything
    happens)."""
    from .data.loaders import load_stage1, load_stage2, load_stage3

    texts = []
    loaded = (load_stage1(dataset.stage1_file), load_stage2(dataset.stage2_file), load_stage3(dataset.stage3_file))
    for records in loaded:
        for messages in records["messages"]:
            texts.append(" ".join(message["content"].replace("<video>\n", "") for message in messages))
    return texts


def stills(dataset) -> tuple[list, list[str]]:
    """The stage-1 stills and their captions: the image-caption pairs the tiny CLIP is pre-trained on."""
    import numpy as np
    from PIL import Image

    records = read_json(dataset.stage1_file)
    images = [np.array(Image.open(dataset.root / record["image"]).convert("RGB")) for record in records]
    return images, [record["conversations"][1]["value"] for record in records]


def build_inputs(
    output: Path, num_videos: int, num_val_videos: int, seed: int, num_stills: int, llm_steps: int, encoder_steps: int,
    backbone: str = "vicuna", synthetic: dict | None = None,
) -> dict:
    """Synthetic data (`SyntheticMomentsConfig` settings `synthetic` beside the stills'), the tiny tokenizer/base LLM
    (of `backbone`)/CLIP, and the features of every video and image."""
    from .data.extract import extract_features
    from .data.synthetic import SyntheticMomentsConfig, generate_synthetic_moments
    from .tiny_models import (
        build_tiny_frame_encoder,
        build_tiny_llama,
        build_tiny_qwen_tokenizer,
        build_tiny_tokenizer,
        pretrain_tiny_frame_encoder,
        pretrain_tiny_llama,
    )

    logger.info("generating %d synthetic videos (%d held out) and %d stills", num_videos, num_val_videos, num_stills)
    dataset = generate_synthetic_moments(
        output / "data",
        num_videos=num_videos,
        num_val_videos=num_val_videos,
        seed=seed,
        config=SyntheticMomentsConfig(num_images=num_stills, **(synthetic or {})),
        overwrite=True,
    )
    logger.info("building the tiny tokenizer, base LLM (%s) and CLIP encoder", backbone)
    texts = training_texts(dataset)
    model_type = BACKBONES[backbone][0]
    build_tokenizer = build_tiny_qwen_tokenizer if model_type == "qwen3" else build_tiny_tokenizer
    tokenizer = build_tokenizer(output / "base", texts, vocab_size=1000)
    build_tiny_llama(output / "base", tokenizer, seed=seed, model_type=model_type, **TINY_BASE)
    losses = pretrain_tiny_llama(output / "base", texts, steps=llm_steps, seed=seed)
    logger.info("pre-trained the base LLM on the dialogue text alone: loss %.2f -> %.2f", losses[0], losses[-1])
    build_tiny_frame_encoder(output / "clip", seed=seed, initializer_factor=1.0)
    losses = pretrain_tiny_frame_encoder(output / "clip", *stills(dataset), steps=encoder_steps, seed=seed)
    logger.info(
        "pre-trained the CLIP encoder on the stills and their captions: loss %.3f -> %.3f", losses[0], losses[-1]
    )
    for source in (dataset.video_dir, dataset.image_dir):
        report = extract_features(source, output / "features", clip=str(output / "clip"), workers=2)
        logger.info(report.summary())
        if not report.ok:
            failed = len(report.failures)
            raise RuntimeError(f"Feature extraction failed for {failed} inputs; see {output / 'features'}")
    return {"dataset": dataset}


def run_stage(stage: int, output: Path, extra: list[str], backbone: str = "vicuna") -> None:
    """One stage through its recipe, as a user runs it; the paths follow `output`, the chat format `backbone`."""
    data = output / "data"
    paths = {
        "model_name_or_path": output / "base",
        "frame_encoder_name_or_path": output / "clip",
        "feature_dir": output / "features",
        "output_dir": output / f"stage{stage}",
    }
    if stage >= 2:
        paths["stage1_projector"] = output / "stage1"
    if stage == 3:
        paths["stage2_adapter"] = output / "stage2"
    paths["train_files"] = data / f"stage{stage}.json"
    recipe = RECIPES / "configs" / "tiny" / f"stage{stage}.yaml"
    run_recipe(f"stage {stage}", RECIPES / f"stage{stage}.py", recipe, paths,
               ["--chat_format", BACKBONES[backbone][1], *extra])  # fmt: skip


def run_recipe(name: str, script: Path, recipe: Path, arguments: dict, extra: list[str]) -> None:
    """A recipe script run as a user runs it, offline: `script --config recipe --key value ... extra`."""
    command = [sys.executable, str(script), "--config", str(recipe)]
    for key, value in arguments.items():
        command += [f"--{key}", str(value)]
    run_command(name, command + extra)


def run_command(name: str, command: list[str], env: dict[str, str] | None = None) -> None:
    """One of the demo's steps run as a user runs it, in its own process and offline, with `env` added to the
    environment; its time is logged, and a failure raises naming the step, its exit status and its command."""
    logger.info("%s: %s ...", name, " ".join(command[1:3]))
    started = time.time()
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    result = subprocess.run(command, env=environment)
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed (exit status {result.returncode}): {' '.join(command)}")
    logger.info("%s done in %.0f s", name, time.time() - started)
