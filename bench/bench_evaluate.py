"""Benchmark: batched grounding evaluation against a one-query-at-a-time loop, on the same model and features.

    python bench/bench_evaluate.py [--out bench/results/evaluate.json]

Both sides answer the same queries (several per video) with the same locally built tiny VTimeLLM (hidden 256,
4 layers, 768-d frame features as CLIP ViT-L/14 gives) and the same precomputed `{id}.npy` features, greedily:

* ours: [`vtimellm_hf.evaluation_runs.evaluate_grounding`], which loads each video's features once and answers its
  queries in batches of 16, the prompt start they share (system prompt and video rows) run once per video;
* baseline: the loop a script would write, for every query: load the features from disk, run the processor,
  `generate`, decode.

The answers must be identical (the benchmark fails otherwise). Repetitions alternate (order swapped every
repetition); figures come from the median times. It prints and writes one JSON entry,
`{"name": "evaluate", "ours", "baseline", "ratio", "target", "unit": "queries/s", ...}`, with the peak resident
memory of the process and whether the shared prompt start was reused (`shared_prompt_cache`, which needs a model
whose `forward` names `cache`). The exit status is 0 when the ratio reaches the target.

Other sizes and devices (`run_gpu.py`: a 7B-shaped LLaMA by `--hidden-size 4096 --layers 32 --heads 32
--intermediate-size 11008 --vocab-size 32000`, `--device cuda --dtype bfloat16`): the model is created on the device
in that dtype, saved and loaded back in it. In reduced precision the kernels, hence the rounding, depend on the
batch's shape, and a random model's greedy answers turn on tiny differences of its nearly flat logits: with
`--min-agreement` below 1 the answers that differ are counted (`identical_answers`) rather than fatal.
"""

import argparse
import inspect
import json
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vtimellm_hf import VTimeProcessor
from vtimellm_hf.checkpoints import load_model_and_processor
from vtimellm_hf.data.features import open_feature_store
from vtimellm_hf.evaluation_runs import evaluate_grounding, feature_store_loader
from vtimellm_hf.inference import grounding_question, user_turn
from vtimellm_hf.tiny_models import build_tiny_tokenizer

from common import build_vtime_model, peak_gpu_mib

TARGET = 4.0
FEATURE_SIZE = 768
SUBJECTS = ["a person", "the man", "a woman", "someone", "the girl", "a young boy"]
ACTIONS = [
    "opens the door", "turns the light on", "takes a cup of coffee from the table", "sits down on the sofa",
    "puts a book on the shelf", "laughs while holding a phone", "closes the window", "eats a sandwich",
    "walks through the doorway into the kitchen", "pours water into a glass", "throws a pillow", "sneezes",
]  # fmt: skip


def make_queries(num_videos: int, queries_per_video: int, seed: int) -> list[dict]:
    """Charades-STA-like queries, `queries_per_video` for each video, of varied lengths."""
    rng = random.Random(seed)
    queries = []
    for video_index in range(num_videos):
        video_id = f"video{video_index:03d}"
        for _ in range(queries_per_video):
            start = rng.uniform(0, 20)
            queries.append({
                "video_id": video_id, "query": f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)}",
                "start": start, "end": start + rng.uniform(2, 10), "duration": 30.0,
            })  # fmt: skip
    return queries


def build_inputs(workdir: Path, queries: list[dict], args) -> tuple[Path, Path]:
    """A saved random model with its processor, and one random float16 `(100, 768)` feature file per video."""
    model_dir, feature_dir = workdir / "model", workdir / "features"
    corpus = [grounding_question(query["query"]) for query in queries]
    tokenizer = build_tiny_tokenizer(model_dir, corpus, vocab_size=1000)
    model = build_vtime_model(
        tokenizer, args.device, args.dtype, vocab_size=args.vocab_size, mm_hidden_size=FEATURE_SIZE, seed=args.seed,
        hidden_size=args.hidden_size, intermediate_size=args.intermediate_size or 4 * args.hidden_size,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
    )  # fmt: skip
    model.save_pretrained(model_dir)
    VTimeProcessor(tokenizer=tokenizer).save_pretrained(model_dir)
    feature_dir.mkdir()
    rng = np.random.default_rng(args.seed)
    for video_id in sorted({query["video_id"] for query in queries}):
        np.save(feature_dir / f"{video_id}.npy", rng.standard_normal((100, FEATURE_SIZE)).astype(np.float16))
    return model_dir, feature_dir


@torch.no_grad()
def one_at_a_time(model, processor, queries: list[dict], feature_dir: Path, max_new_tokens: int) -> list[str]:
    """The naive loop: per query, features from disk, processor, `generate`, decode."""
    answers = []
    for query in queries:
        features = np.load(feature_dir / f"{query['video_id']}.npy")
        prompt = processor.apply_chat_template(
            [user_turn(grounding_question(query["query"]))], add_generation_prompt=True
        )
        inputs = processor(text=prompt, video_features=[features], return_tensors="pt").to(model.device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answers.append(processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    return answers


def batched(model, processor, queries: list[dict], feature_dir: Path, results: Path, batch_size: int,
            max_new_tokens: int) -> list[str]:  # fmt: skip
    """`evaluate_grounding` from scratch; the answers in query order."""
    results.unlink(missing_ok=True)
    evaluate_grounding(
        model, processor, queries, results, feature_store_loader(
            open_feature_store(feature_dir), num_frames=model.config.num_frames,
            mm_hidden_size=model.config.mm_hidden_size,
        ),
        batch_size=batch_size, max_new_tokens=max_new_tokens,
    )  # fmt: skip
    by_key = {}
    for line in results.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        by_key.setdefault((record["video_id"], record["query"]), []).append(record["answer"])
    return [by_key[query["video_id"], query["query"]].pop(0) for query in queries]


def shape_details(args) -> str:
    """The model's shape beyond hidden size and layers, where it is not the default one."""
    if (args.heads, args.intermediate_size, args.vocab_size) == (4, None, None):
        return ""
    intermediate = args.intermediate_size or 4 * args.hidden_size
    return f", {args.heads} heads, MLP {intermediate}, vocab {args.vocab_size or 'of the tokenizer'}, {args.dtype}"


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "evaluate.json")
    parser.add_argument("--videos", type=int, default=6, help="videos (default: %(default)s)")
    parser.add_argument("--queries-per-video", type=int, default=8, help="queries per video (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size of ours (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="tokens per answer (default: %(default)s)")
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate-size", type=int, default=None, help="MLP width (default: 4 x hidden size)")
    parser.add_argument("--vocab-size", type=int, default=None, help="embedding rows (default: the tokenizer's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument(
        "--min-agreement", type=float, default=1.0,
        help="share of answers that both sides must give identically (default: %(default)s, all)",
    )  # fmt: skip
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads, 0 for torch's choice (default: %(default)s: the tiny model's operations are too small "
        "to gain from more, and on a shared machine waiting threads swamp the timings)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    queries = make_queries(args.videos, args.queries_per_video, args.seed)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        model_dir, feature_dir = build_inputs(workdir, queries, args)
        model, processor = load_model_and_processor(str(model_dir), device=args.device, dtype=args.dtype)
        # Warm-up of both paths (allocator, kernels), not timed
        one_at_a_time(model, processor, queries[:1], feature_dir, args.max_new_tokens)
        batched(model, processor, queries[:2], feature_dir, workdir / "warmup.jsonl", 2, args.max_new_tokens)

        sides = {
            "baseline": lambda: one_at_a_time(model, processor, queries, feature_dir, args.max_new_tokens),
            "ours": lambda: batched(
                model, processor, queries, feature_dir, workdir / "results.jsonl", args.batch_size, args.max_new_tokens
            ),
        }
        seconds = {name: [] for name in sides}
        answers = {}
        for repetition in range(args.repeats):
            for name in sorted(sides, reverse=bool(repetition % 2)):
                answers[name], elapsed = timed(sides[name])
                seconds[name].append(elapsed)
    baseline_answers, our_answers = answers["baseline"], answers["ours"]
    baseline_seconds, our_seconds = (statistics.median(seconds[name]) for name in ("baseline", "ours"))
    pairs = enumerate(zip(our_answers, baseline_answers, strict=True))
    mismatches = [index for index, (ours, theirs) in pairs if ours != theirs]
    agreement = 1 - len(mismatches) / len(queries)
    if agreement < args.min_agreement:
        index = mismatches[0]
        print(
            f"{len(mismatches)} of {len(queries)} answers differ between the batched and the one-at-a-time runs; "
            f"query {index}: {our_answers[index]!r} vs {baseline_answers[index]!r}",
            file=sys.stderr,
        )
        return 1

    ours, baseline = len(queries) / our_seconds, len(queries) / baseline_seconds
    entry = {
        "name": "evaluate",
        "ours": round(ours, 3),
        "baseline": round(baseline, 3),
        "ratio": round(ours / baseline, 3),
        "target": TARGET,
        "unit": "queries/s",
        "queries": len(queries),
        "videos": args.videos,
        "batch_size": args.batch_size,
        "shared_prompt_cache": "cache" in inspect.signature(model.forward).parameters,
        "max_new_tokens": args.max_new_tokens,
        "model": f"hidden {args.hidden_size}, {args.layers} layers" + shape_details(args),
        "device": args.device,
        "threads": torch.get_num_threads(),
        # ru_maxrss is in KiB on Linux
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "platform": platform.platform(),
    }
    if (args.device, args.dtype, args.min_agreement) != ("cpu", "float32", 1.0):
        entry.update({
            "dtype": args.dtype, "identical_answers": round(agreement, 3), "peak_gpu_mib": peak_gpu_mib(args.device),
        })  # fmt: skip
    print(json.dumps(entry))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")
    return 0 if entry["ratio"] >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
