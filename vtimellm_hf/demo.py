"""`make demo`: the whole VTimeLLM pipeline on the embedded synthetic data, on a CPU, without network.

Synthetic videos -> a tiny tokenizer, LLaMA and CLIP built locally -> features -> stages 1, 2, 3 through the
recipes (`recipes/stage*.py` with `recipes/configs/tiny/*.yaml`) -> grounding of held-out queries, scored against
query-blind baselines, a query swap (a model that reads the query must fail it) and a control in which each video's
frames are shuffled (a model that reads the video must fail it) -> `metrics.json` and a timeline PNG.

    python -m vtimellm_hf.demo --output runs/demo
"""

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .cli import configure_logging
from .data.dialogues import GROUNDING_QUESTIONS
from .files import read_json, read_json_records

# By name: run as `python -m vtimellm_hf.demo`, `__name__` is "__main__", outside the package logger the
# command line configures, and the progress would be lost
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
    command += extra
    logger.info("%s: %s ...", name, " ".join(command[1:3]))
    started = time.time()
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    logger.info("%s done in %.0f s", name, time.time() - started)


def evaluate(output: Path, seed: int = 0, num_plotted: int = 6) -> dict:
    """Grounds the held-out queries with the final model, again with shuffled frames, and the multi-event ones with
    another event's sentence (query swap); scores them against the query-blind baselines, with bootstrap intervals
    seeded with `seed`; plots."""
    from .checkpoints import load_model_and_processor
    from .data.features import open_feature_store
    from .data.raw_annotations import GroundingQuery
    from .evaluation_runs import evaluate_grounding, feature_store_loader
    from .metrics import read_grounding_predictions
    from .metrics.grounding_report import grounding_report, multi_event_queries, swapped_queries
    from .plotting import TimelineRow, plot_timeline

    model, processor = load_model_and_processor(str(output / "stage3"), device="cpu", dtype="float32")
    references = [GroundingQuery(**query) for _, query in read_json_records(output / "data" / "grounding_val.jsonl")]
    store = open_feature_store(output / "features")
    predictions = {}
    runs = (("grounding", references, None), ("control", references, 0))
    for name, queries, shuffle_seed in (*runs, ("query_swap", swapped_queries(references), None)):
        predictions_file = output / f"{name}_predictions.jsonl"
        predictions_file.unlink(missing_ok=True)
        if not queries:  # no video with several queries: nothing to swap
            predictions[name] = []
            continue
        evaluate_grounding(
            model, processor, queries, predictions_file, feature_store_loader(
                store, shuffle_seed=shuffle_seed, num_frames=model.config.num_frames,
                mm_hidden_size=model.config.mm_hidden_size,
            ),
            question=DEMO_QUESTION, batch_size=16, max_new_tokens=16,
        )
        predictions[name] = read_grounding_predictions(predictions_file)
    metrics = grounding_report(
        references, predictions["grounding"], predictions["control"], predictions["query_swap"], seed=seed
    )
    multi = set(multi_event_queries(references))
    # Multi-event queries first: they show whether the answer follows the query
    answered = sorted(zip(references, predictions["grounding"]), key=lambda pair: pair[0] not in multi)
    rows = [
        TimelineRow(
            f"{reference.video_id}: {reference.query}  ->  {prediction.get('answer', '')}",
            reference.duration,
            [tuple(prediction["timestamp"])] if prediction["timestamp"] else [],
            [(reference.start, reference.end)],
        )
        for reference, prediction in answered[:num_plotted]
    ]
    title = f"held-out grounding: mIoU {metrics['miou']:.2f}, shuffled frames {metrics['control_miou']:.2f}"
    if metrics["multi_event_miou"] is not None:
        title += (
            f"\nmulti-event {metrics['multi_event_miou']:.2f} vs query-blind {metrics['query_blind_miou']:.2f}, "
            f"query swap {metrics['query_swap_miou']:.2f}"
        )
    plot_timeline(rows, output / "timeline.png", title=title)
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vtimellm_hf.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("runs/demo"))
    # Many videos seen about three times each: with a few hundred seen many times, the tiny model memorises them
    parser.add_argument("--num-videos", type=int, default=1130)
    # Held out: over 200 queries on videos with several events (212 to 217 for seeds 0 to 2), for narrow intervals
    parser.add_argument("--num-val-videos", type=int, default=130)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", choices=list(BACKBONES), default="vicuna",
                        help="the tiny base LLM: LLaMA with Vicuna's template, or Qwen3 with its own")  # fmt: skip
    # The family's demo (vtimellm_hf/family_demo.py) shares the command line
    parser.add_argument("--family", choices=["longvale"], default=None,
                        help="the LongVALE demo instead (vtimellm_hf/family_demo.py): videos that sound")  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help="the same path on little data and few steps (CI): checks it runs, not that it learns",
    )
    # As `vtimellm-hf -v/-q`, except that the demo's own progress shows by default: it is what the demo is for
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument(
        "-v", "--verbose", dest="verbosity", action="count", default=0,
        help="also the progress messages of the package and of transformers (-vv: debug messages too)",
    )  # fmt: skip
    loudness.add_argument(
        "-q", "--quiet", dest="verbosity", action="store_const", const=-1, help="errors only, the demo's progress too"
    )
    if parser.parse_known_args(argv)[0].family is not None:
        from .family_demo import FAMILY_DEFAULTS

        parser.set_defaults(**FAMILY_DEFAULTS)
    args = parser.parse_args(argv)
    if args.family is not None and args.backbone != "vicuna":
        parser.error(f"--family {args.family} trains a Vicuna v1.5 model: --backbone {args.backbone} does not apply")
    earlier_level = logger.level
    with configure_logging(args.verbosity):
        logger.setLevel(logging.INFO if args.verbosity >= 0 else logging.ERROR)
        try:
            if args.family is not None:
                from .family_demo import run_family_demo

                return run_family_demo(args)
            return run_demo(args)
        finally:
            logger.setLevel(earlier_level)


def run_demo(args: argparse.Namespace) -> int:
    started = time.time()
    output = args.output.resolve()
    # Everything is rebuilt: features or stages of an earlier run with other settings must not be reused
    for derived in ("data", "base", "clip", "features", "stage1", "stage2", "stage3"):
        shutil.rmtree(output / derived, ignore_errors=True)
    num_videos, num_val = (16, 4) if args.quick else (args.num_videos, args.num_val_videos)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    build_inputs(output, num_videos, num_val, args.seed, **sizes, backbone=args.backbone)
    extra = ["--max_steps", "3"] if args.quick else []
    for stage in (1, 2, 3):
        run_stage(stage, output, extra, args.backbone)
    metrics = evaluate(output, seed=args.seed)
    logger.info("finished in %.0f s", time.time() - started)
    print(json.dumps(metrics, indent=2))
    print(f"metrics: {output / 'metrics.json'}\ntimeline: {output / 'timeline.png'}\nmodel: {output / 'stage3'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
