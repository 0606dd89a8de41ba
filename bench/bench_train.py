"""Benchmark: stage-2 training throughput and padding with length-grouped batches against random batches.

    python bench/bench_train.py [--out bench/results/train.json]

Stage 2 on the path of `vtimellm_hf.training.stages.run_stage`: TRL's `SFTTrainer` with
[`VTimeDataCollator`], a LoRA (r 64, alpha 128, dropout 0.05) on every linear layer of the LLM, records loaded by
`load_stage2` from a stage-2 JSON file. The model is a random `build_tiny_vtime_model` LLaMA (4 layers, hidden 512,
8 heads) on 32-d frame features, 100 video rows per record; the records are stage-2 dialogues of 1 to 6 turns
(dense captioning, event captioning, grounding), so that lengths vary as in the real data. Batch 8, no gradient
accumulation, float32, no activation checkpointing (the tiny CPU recipe's settings).

* ours: `train_sampling_strategy="group_by_length"` on the `length` column of `add_lengths` (transformers'
  `LengthGroupedSampler`), each batch padded to its longest record;
* baseline: `train_sampling_strategy="random"`, each batch padded to its longest record.

Padding waste: the share of padding over one whole epoch of each arm's training dataloader (collated, not trained),
counted by the collator. The sampler sorts "megabatches" of `min(records // (4 * batch), 50)` batches: 8 batches
here (256 records of batch 8), 50 on a real dataset, whose batches are therefore more even than here.

Throughput: real (non-padding) tokens per second of `trainer.train()` over `--steps` optimizer steps (8: one
megabatch, a random sample of 64 records sorted by length, for ours; 8 random batches for the baseline), each run
on a freshly built model. `add_lengths` runs once per dataset and is reported apart (`add_lengths_s`). Runs of the
two arms alternate (order swapped every repetition); the figure is the ratio of the median tokens/s. The peak resident
memory of the process, which ran every training run, is `peak_rss_mib`.

It writes two entries, `train` (tokens/s) and `padding_waste` (share of padded tokens), as a JSON list.
"""

import argparse
import json
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from trl import SFTConfig, SFTTrainer

from vtimellm_hf import VTimeProcessor
from vtimellm_hf.data.features import open_feature_store
from vtimellm_hf.data.loaders import load_stage2
from vtimellm_hf.tiny_models import build_tiny_tokenizer, build_tiny_vtime_model
from vtimellm_hf.training.collator import VTimeDataCollator, add_lengths
from vtimellm_hf.training.stages import VTimeModelArguments, lora_config

THROUGHPUT_TARGET = 1.3
WASTE_TARGET = 0.05
FEATURE_SIZE = 32
MODEL = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8)
SHAPES = ["circle", "square", "triangle", "star", "ring", "cross", "heart", "diamond"]
COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
PLACES = ["on the left", "on the right", "in the middle", "near the top", "at the bottom"]
DENSE_QUESTIONS = [
    "Could you please detail the events that took place during different time segments in the video?",
    "Describe the events and when they happen.",
    "What happens in the video, and when?",
]
CAPTION_QUESTIONS = ["What is happening from {s} to {e}?", "Can you describe what occurs between {s} and {e}?"]
GROUNDING_QUESTIONS = ["When does {event} happen in the video?", "During which frames can we see {event}?"]


def make_records(num_records: int, num_videos: int, seed: int) -> list[dict]:
    """Stage-2 records in the original JSON format: single-turn dense captioning or 1 to 6 event turns."""
    rng = random.Random(seed)
    records = []
    for index in range(num_records):
        duration = rng.choice([20.0, 40.0, 60.0, 90.0])
        tokens, turns = {}, []

        def moment(turn: int) -> tuple[str, str]:
            start = rng.uniform(0, duration * 0.7)
            tokens[f"<s{turn}>"], tokens[f"<e{turn}>"] = round(start, 1), round(rng.uniform(start + 1, duration), 1)
            return f"<s{turn}>", f"<e{turn}>"

        def event() -> str:
            return f"a {rng.choice(COLOURS)} {rng.choice(SHAPES)} moves {rng.choice(PLACES)}"

        if rng.random() < 0.2:
            events = [f"From {s} to {e}, {event()}." for s, e in (moment(turn) for turn in range(rng.randint(1, 6)))]
            turns.append((rng.choice(DENSE_QUESTIONS), " ".join(events)))
        else:
            for turn in range(rng.randint(1, 6)):
                start, end = moment(turn)
                if rng.random() < 0.5:
                    turns.append((rng.choice(CAPTION_QUESTIONS).format(s=start, e=end), f"{event().capitalize()}."))
                else:
                    turns.append((rng.choice(GROUNDING_QUESTIONS).format(event=event()), f"From {start} to {end}."))
        conversations = []
        for turn, (question, answer) in enumerate(turns):
            conversations.append({"from": "human", "value": ("<video>\n" if turn == 0 else "") + question})
            conversations.append({"from": "gpt", "value": answer})
        records.append({
            "source": "internvid", "id": f"video{index % num_videos:03d}", "conversations": conversations,
            "meta": {"duration": duration, "token": tokens},
        })  # fmt: skip
    return records


def make_trainer(strategy: str, tokenizer, dataset, feature_store, args, workdir: Path):
    """`run_stage`'s stage-2 set-up on a freshly built model: `(trainer, collator, seconds spent in add_lengths)`."""
    processor = VTimeProcessor(tokenizer=tokenizer)
    collator = VTimeDataCollator(processor, feature_store, max_length=2048)
    started = time.perf_counter()
    if strategy == "group_by_length":
        dataset = add_lengths(dataset, collator)
    lengths_seconds = time.perf_counter() - started
    model = build_tiny_vtime_model(tokenizer, mm_hidden_size=FEATURE_SIZE, seed=args.seed, **MODEL)
    model.config.use_cache = False
    model.requires_grad_(False)
    config = SFTConfig(
        output_dir=str(workdir / strategy), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=1e-4, lr_scheduler_type="cosine", warmup_steps=0.03, weight_decay=0.0, max_length=2048,
        train_sampling_strategy=strategy, bf16=False, use_cpu=True, activation_checkpointing=False,
        dataloader_num_workers=0, logging_steps=10_000, save_strategy="no", report_to="none", seed=args.seed,
        dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False, disable_tqdm=True,
    )  # fmt: skip
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, data_collator=collator, processing_class=processor,
        peft_config=lora_config(VTimeModelArguments()),
    )  # fmt: skip
    return trainer, collator, lengths_seconds


def train_once(strategy: str, tokenizer, dataset, feature_store, args, workdir: Path) -> dict:
    """`args.steps` optimizer steps: the seconds of `trainer.train()` and the tokens the collator saw."""
    trainer, collator, lengths_seconds = make_trainer(strategy, tokenizer, dataset, feature_store, args, workdir)
    started = time.perf_counter()
    trainer.train()
    return {
        "seconds": time.perf_counter() - started,
        "lengths_seconds": lengths_seconds,
        "real_tokens": collator.real_tokens,
        "padded_tokens": collator.padded_tokens,
    }


def epoch_padding(strategy: str, tokenizer, dataset, feature_store, args, workdir: Path) -> float:
    """Share of padding over one whole epoch of the trainer's own dataloader (batches collated, not trained)."""
    trainer, collator, _ = make_trainer(strategy, tokenizer, dataset, feature_store, args, workdir)
    for _ in trainer.get_train_dataloader():
        pass
    return padding_share(collator.padded_tokens, collator.real_tokens)


def padding_share(padded_tokens: int, real_tokens: int) -> float:
    return padded_tokens / (padded_tokens + real_tokens)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train.json")
    parser.add_argument("--records", type=int, default=256, help="records in the dataset (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="per-step batch size (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each arm (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    records = make_records(args.records, num_videos=24, seed=args.seed)
    arms = {"ours": "group_by_length", "baseline": "random"}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        feature_dir = workdir / "features"
        feature_dir.mkdir()
        rng = np.random.default_rng(args.seed)
        for video_id in sorted({record["id"] for record in records}):
            np.save(feature_dir / f"{video_id}.npy", rng.standard_normal((100, FEATURE_SIZE)).astype(np.float16))
        (workdir / "stage2.json").write_text(json.dumps(records), encoding="utf-8")
        corpus = [turn["value"].replace("<video>\n", "") for record in records for turn in record["conversations"]]
        tokenizer = build_tiny_tokenizer(workdir / "tokenizer", corpus, vocab_size=1000)
        feature_store = open_feature_store(feature_dir)
        dataset = load_stage2(
            workdir / "stage2.json", feature_store=feature_store, expected_rows=100, expected_dim=FEATURE_SIZE
        )
        waste = {name: epoch_padding(strategy, tokenizer, dataset, feature_store, args, workdir)
                 for name, strategy in arms.items()}  # fmt: skip
        runs = {name: [] for name in arms}
        for repeat in range(args.repeats):
            for name in sorted(arms, reverse=repeat % 2 == 1):
                runs[name].append(train_once(arms[name], tokenizer, dataset, feature_store, args, workdir))
        collator = VTimeDataCollator(VTimeProcessor(tokenizer=tokenizer), feature_store)
        lengths = [len(collator.encode(example)["input_ids"]) for example in dataset]
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    # Each run's tokens/s, then the median over the runs of each arm; every run of an arm sees the same batches
    tokens_per_second = {name: statistics.median(run["real_tokens"] / run["seconds"] for run in arm_runs)
                         for name, arm_runs in runs.items()}  # fmt: skip
    timed_waste = {name: round(padding_share(arm_runs[0]["padded_tokens"], arm_runs[0]["real_tokens"]), 4)
                   for name, arm_runs in runs.items()}  # fmt: skip
    common = {
        "model": "LLaMA 4 layers, hidden 512, LoRA r 64 on all linear layers, SFTTrainer",
        "records": args.records,
        "record_tokens": f"{min(lengths)}-{max(lengths)} (median {int(statistics.median(lengths))})",
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
    }
    entries = [
        {
            "name": "train",
            "ours": round(tokens_per_second["ours"], 1),
            "baseline": round(tokens_per_second["baseline"], 1),
            "ratio": round(tokens_per_second["ours"] / tokens_per_second["baseline"], 2),
            "target": THROUGHPUT_TARGET,
            "unit": "real tokens/s",
            "steps": args.steps,
            "repeats": args.repeats,
            "padding_waste_of_timed_steps": timed_waste,
            # The ratio if a step's time were proportional to its padded tokens: all that less padding can give
            "padding_bound": round((1 - timed_waste["ours"]) / (1 - timed_waste["baseline"]), 2),
            "add_lengths_s": round(statistics.median(run["lengths_seconds"] for run in runs["ours"]), 3),
            "peak_rss_mib": round(peak_rss_mib, 1),
            **common,
        },
        {
            "name": "padding_waste",
            "ours": round(waste["ours"], 4),
            "baseline": round(waste["baseline"], 4),
            "ratio": round(waste["ours"] / waste["baseline"], 3),
            "target": WASTE_TARGET,
            "target_on": "ours",
            "unit": "share of padded tokens, one epoch (lower is better)",
            **common,
        },
    ]
    print(json.dumps(entries))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    met = entries[0]["ratio"] >= THROUGHPUT_TARGET and entries[1]["ours"] <= WASTE_TARGET
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
