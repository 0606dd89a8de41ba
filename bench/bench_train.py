"""Benchmark: stage-2 training throughput and padding with length-grouped batches against random batches.

    python bench/bench_train.py [--out bench/results/train.json]

Stage 2 on the path of `vtimellm_hf.training.stages.run_stage`: its `VTimeSFTTrainer` (TRL's `SFTTrainer`) with
[`VTimeDataCollator`], a LoRA (r 64, alpha 128, dropout 0.05) on every linear layer of the LLM, records loaded by
`load_stage2` from a stage-2 JSON file. The model is a random `build_tiny_vtime_model` LLaMA (4 layers, hidden 512,
8 heads) on 32-d frame features, 100 video rows per record; the records are stage-2 dialogues of 1 to 6 turns
(dense captioning, event captioning, grounding), so that lengths vary as in the real data. Batch 8, no gradient
accumulation, float32, no activation checkpointing (the tiny CPU recipe's settings).

* ours: `train_sampling_strategy="group_by_length"` on the `length` column of `add_lengths` (transformers' length
  grouping, its order drawn from seed + epoch), each batch padded to its longest record;
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

Other sizes and devices (`run_gpu.py`: `--device cuda --dtype bfloat16 --activation-checkpointing`, a 7B-shaped
LLaMA by `--hidden-size 4096 --layers 32 --heads 32 --intermediate-size 11008 --vocab-size 32000`, 768-d features
by `--feature-size 768`): the model is created on the device in that dtype and trained with bf16 mixed precision,
as the 7B recipe (`recipes/configs/vicuna-7b/stage2.yaml`) trains. `--flops` adds the model FLOP/s of each arm and,
given the device's peak (`--peak-tflops`), the model FLOPs utilisation (MFU); see [`model_flops`].
`--model-type qwen3` (with `--kv-heads`, `--head-dim`) trains the VTimeLLM class of another decoder of `BACKBONES`
(`run_gpu.py`'s Qwen3-8B-shaped case); its entries are named `train_qwen3` and `padding_waste_qwen3`. The records are
tokenized by the same tiny tokenizer and template whatever the decoder: what is measured is the decoder's shape.
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
from trl import SFTConfig

from vtimellm_hf import BACKBONES, VTimeProcessor
from vtimellm_hf.data.features import open_feature_store
from vtimellm_hf.data.loaders import load_stage2
from vtimellm_hf.tiny_models import build_tiny_tokenizer
from vtimellm_hf.training.collator import VTimeDataCollator, add_lengths
from vtimellm_hf.training.stages import VTimeModelArguments, lora_config
from vtimellm_hf.training.trainer import VTimeSFTTrainer

from common import build_vtime_model, peak_gpu_mib, release_memory, synchronize

THROUGHPUT_TARGET = 1.3
WASTE_TARGET = 0.05
FEATURE_SIZE = 32
DECODER_NAMES = {"llama": "LLaMA", "qwen3": "Qwen3", "qwen2": "Qwen2", "mistral": "Mistral"}
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


class CountingCollator(VTimeDataCollator):
    """The collator, also summing the squared real lengths of the records it collates (their attention FLOPs)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.squared_lengths = 0

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = super().__call__(examples)
        self.squared_lengths += int((batch["attention_mask"].sum(dim=1) ** 2).sum())
        return batch


def model_shape(args) -> dict:
    """The decoder's shape from the command line: `build_tiny_vtime_model` keyword arguments."""
    shape = dict(
        hidden_size=args.hidden_size, intermediate_size=args.intermediate_size, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads or args.heads,
    )  # fmt: skip
    if args.head_dim is not None:
        shape["head_dim"] = args.head_dim
    return shape


def model_flops(model, real_tokens: int, squared_lengths: int, layers: int, hidden_size: int) -> float:
    """
    Model FLOPs of LoRA training steps over `real_tokens` tokens (padding excluded), from records whose real
    lengths `s` have squares summing to `squared_lengths`:

        (4 N + 6 N_lora) * real_tokens + 12 * layers * hidden_size * squared_lengths

    * N: the frozen weights of the linear layers a token passes (attention and MLP projections, LM head; not the
      embedding table, a lookup, nor the frame projector, which only video rows pass and which gets no gradient):
      2 N forward (a multiply and an add per weight) and 2 N backward for the activations' gradients; none for the
      weights' gradients, the base being frozen.
    * N_lora: the LoRA weights, trained: 2 forward, 2 + 2 backward (activations' and weights' gradients).
    * Attention: per token and layer, `Q K^T` and `A V` cost 2 * hidden_size * s each forward and twice that
      backward: 12 * hidden_size * s per token, s tokens per record, so 12 * layers * hidden_size * s^2 per record.
      Over the whole record as PaLM counts it (Chowdhery et al. 2022, appendix B), not the causal half.

    Activation checkpointing's recomputed forward (2 N more) is not counted: these are the model's FLOPs, not the
    hardware's.
    """
    frozen = lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "mm_projector" not in name:
            if "lora_" in name:
                lora += module.weight.numel()
            else:
                frozen += module.weight.numel()
    return (4 * frozen + 6 * lora) * real_tokens + 12 * layers * hidden_size * squared_lengths


def make_trainer(strategy: str, tokenizer, dataset, feature_store, args, workdir: Path):
    """`run_stage`'s stage-2 set-up on a freshly built model: `(trainer, collator, seconds spent in add_lengths)`."""
    processor = VTimeProcessor(tokenizer=tokenizer)
    collator = CountingCollator(processor, feature_store, max_length=2048)
    started = time.perf_counter()
    if strategy == "group_by_length":
        dataset = add_lengths(dataset, collator)
    lengths_seconds = time.perf_counter() - started
    model = build_vtime_model(
        tokenizer, args.device, args.dtype, vocab_size=args.vocab_size, mm_hidden_size=args.feature_size,
        seed=args.seed, model_type=args.model_type, **model_shape(args),
    )  # fmt: skip
    model.config.use_cache = False
    model.requires_grad_(False)
    config = SFTConfig(
        output_dir=str(workdir / strategy), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=1e-4, lr_scheduler_type="cosine", warmup_steps=0.03, weight_decay=0.0, max_length=2048,
        train_sampling_strategy=strategy, bf16=args.dtype == "bfloat16", use_cpu=args.device == "cpu",
        activation_checkpointing=args.activation_checkpointing, dataloader_num_workers=0, logging_steps=10_000,
        save_strategy="no", report_to="none", seed=args.seed, dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False, disable_tqdm=True,
    )  # fmt: skip
    trainer = VTimeSFTTrainer(
        model=model, args=config, train_dataset=dataset, data_collator=collator, processing_class=processor,
        peft_config=lora_config(VTimeModelArguments(lora_r=64, lora_alpha=128)),  # the recipes' LoRA
    )  # fmt: skip
    return trainer, collator, lengths_seconds


def train_once(strategy: str, tokenizer, dataset, feature_store, args, workdir: Path) -> dict:
    """`args.steps` optimizer steps: the seconds of `trainer.train()` and the tokens the collator saw."""
    trainer, collator, lengths_seconds = make_trainer(strategy, tokenizer, dataset, feature_store, args, workdir)
    started = time.perf_counter()
    trainer.train()
    synchronize(args.device)
    return {
        "seconds": time.perf_counter() - started,
        "lengths_seconds": lengths_seconds,
        "real_tokens": collator.real_tokens,
        "padded_tokens": collator.padded_tokens,
        "flops": model_flops(
            trainer.model, collator.real_tokens, collator.squared_lengths, args.layers, args.hidden_size
        ),
    }


def epoch_padding(strategy: str, tokenizer, dataset, feature_store, args, workdir: Path) -> float:
    """Share of padding over one whole epoch of the trainer's own dataloader (batches collated, not trained)."""
    trainer, collator, _ = make_trainer(strategy, tokenizer, dataset, feature_store, args, workdir)
    for _ in trainer.get_train_dataloader():
        pass
    return padding_share(collator.padded_tokens, collator.real_tokens)


def padding_share(padded_tokens: int, real_tokens: int) -> float:
    return padded_tokens / (padded_tokens + real_tokens)


def device_details(args, runs: dict[str, list[dict]]) -> dict:
    """What the train entry adds off its CPU defaults: device, dtype, and with `--flops` the model TFLOP/s and MFU."""
    details = {}
    if (args.device, args.dtype, args.activation_checkpointing) != ("cpu", "float32", False):
        details.update({
            "device": args.device, "dtype": args.dtype, "activation_checkpointing": args.activation_checkpointing,
            "peak_gpu_mib": peak_gpu_mib(args.device),
        })  # fmt: skip
    if args.flops:
        tflops = {name: statistics.median(run["flops"] / run["seconds"] for run in arm_runs) / 1e12
                  for name, arm_runs in runs.items()}  # fmt: skip
        mfu = {name: round(value / args.peak_tflops, 4) if args.peak_tflops else None for name, value in tflops.items()}
        details.update({
            "model_tflops_per_s": {name: float(f"{value:.3g}") for name, value in tflops.items()},
            "mfu": mfu["ours"], "baseline_mfu": mfu["baseline"], "peak_tflops": args.peak_tflops,
            "flops_per_token": round(statistics.mean(run["flops"] / run["real_tokens"] for run in runs["ours"])),
        })  # fmt: skip
    return details


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "train.json")
    parser.add_argument("--records", type=int, default=256, help="records in the dataset (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=8, help="per-step batch size (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each arm (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    shape = parser.add_argument_group("model and device")
    shape.add_argument("--hidden-size", type=int, default=MODEL["hidden_size"])
    shape.add_argument("--layers", type=int, default=MODEL["num_hidden_layers"])
    shape.add_argument("--heads", type=int, default=MODEL["num_attention_heads"])
    shape.add_argument("--intermediate-size", type=int, default=MODEL["intermediate_size"])
    shape.add_argument("--kv-heads", type=int, default=None, help="key-value heads (default: --heads)")
    shape.add_argument("--head-dim", type=int, default=None, help="width of a head (default: hidden / heads)")
    shape.add_argument("--model-type", choices=list(BACKBONES), default="llama", help="the decoder (default: llama)")
    shape.add_argument("--vocab-size", type=int, default=None, help="embedding rows (default: the tokenizer's)")
    shape.add_argument("--feature-size", type=int, default=FEATURE_SIZE, help="width of the frame features")
    shape.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    shape.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                       help="weights; bfloat16 also trains with bf16 mixed precision")  # fmt: skip
    shape.add_argument("--activation-checkpointing", action="store_true")
    shape.add_argument("--flops", action="store_true", help="also report model TFLOP/s and MFU")
    shape.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for the MFU")
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
            np.save(feature_dir / f"{video_id}.npy", rng.standard_normal((100, args.feature_size)).astype(np.float16))
        (workdir / "stage2.json").write_text(json.dumps(records), encoding="utf-8")
        corpus = [turn["value"].replace("<video>\n", "") for record in records for turn in record["conversations"]]
        tokenizer = build_tiny_tokenizer(workdir / "tokenizer", corpus, vocab_size=1000)
        feature_store = open_feature_store(feature_dir)
        dataset = load_stage2(
            workdir / "stage2.json", feature_store=feature_store, expected_rows=100, expected_dim=args.feature_size
        )
        waste = {}
        for name, strategy in arms.items():
            waste[name] = epoch_padding(strategy, tokenizer, dataset, feature_store, args, workdir)
            release_memory(args.device)
        runs = {name: [] for name in arms}
        for repeat in range(args.repeats):
            for name in sorted(arms, reverse=repeat % 2 == 1):
                runs[name].append(train_once(arms[name], tokenizer, dataset, feature_store, args, workdir))
                release_memory(args.device)
        collator = VTimeDataCollator(VTimeProcessor(tokenizer=tokenizer), feature_store)
        lengths = [len(collator.encode(example)["input_ids"]) for example in dataset]
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    # Each run's tokens/s, then the median over the runs of each arm; every run of an arm sees the same batches
    tokens_per_second = {name: statistics.median(run["real_tokens"] / run["seconds"] for run in arm_runs)
                         for name, arm_runs in runs.items()}  # fmt: skip
    timed_waste = {name: round(padding_share(arm_runs[0]["padded_tokens"], arm_runs[0]["real_tokens"]), 4)
                   for name, arm_runs in runs.items()}  # fmt: skip
    model = f"{DECODER_NAMES[args.model_type]} {args.layers} layers, hidden {args.hidden_size}"
    if model_shape(args) != MODEL or args.vocab_size is not None:
        model += f", {args.heads} heads, MLP {args.intermediate_size}, vocab {args.vocab_size or len(tokenizer)}"
    if args.kv_heads or args.head_dim:
        head_dim = args.head_dim or args.hidden_size // args.heads
        model += f", {args.kv_heads or args.heads} key-value heads of width {head_dim}"
    common = {
        "model": f"{model}, LoRA r 64 on all linear layers, SFTTrainer",
        "records": args.records,
        "record_tokens": f"{min(lengths)}-{max(lengths)} (median {int(statistics.median(lengths))})",
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
    }
    suffix = "" if args.model_type == "llama" else f"_{args.model_type}"
    entries = [
        {
            "name": f"train{suffix}",
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
            **device_details(args, runs),
        },
        {
            "name": f"padding_waste{suffix}",
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
