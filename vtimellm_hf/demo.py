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
import shutil
import sys
import time
from pathlib import Path

from .cli import configure_logging
from .demo_steps import BACKBONES, DEMO_QUESTION, FULL_SIZES, QUICK_SIZES, build_inputs, run_stage
from .files import read_json_records

# By name: run as `python -m vtimellm_hf.demo`, `__name__` is "__main__", outside the package logger the
# command line configures, and the progress would be lost
logger = logging.getLogger("vtimellm_hf.demo")


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
