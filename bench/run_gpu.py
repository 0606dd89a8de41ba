"""Runs the GPU variants of the benchmarks, writes `bench/results_gpu.json` and the GPU section of `BENCHMARKS.md`.

    python bench/run_gpu.py [--cases extract train evaluate] [--peak-tflops 989]   # or: make bench-gpu
    python bench/run_gpu.py --smoke [--out-dir DIR]   # the same path on a CPU, tiny sizes, BENCHMARKS.md untouched

The scripts of `run_all.py`, at the sizes of the real models with random weights, in bfloat16 on CUDA, each in a
child process (`run_all.run_script`, which also reads its peak resident memory):

* extract (`bench_extract.py`): a CLIP ViT-L/14 vision tower (hidden 1024, 24 layers, 16 heads, MLP 4096, patch
  14, 224 px, 768-d projection): `extract_features` (8 decoding workers, batches of 128 frames across videos) vs
  the sequential decode-preprocess-encode-save loop, videos/s; features within 5% (relative) of the loop's.
* train (`bench_train.py`): stage 2, SFTTrainer + LoRA r 64 on a 7B-shaped LLaMA (hidden 4096, 32 layers, 32
  heads, MLP 11008, vocab 32000, 768-d frame features), bf16 mixed precision and activation checkpointing as the 7B
  recipe: real tokens/s with length-grouped vs random batches, and each arm's model FLOPs utilisation, MFU = model
  FLOP/s / the device's dense bf16 peak. Model FLOPs per step (`bench_train.model_flops`): (4 N + 6 N_lora) per
  real token + 12 * layers * hidden * s^2 per record of s tokens: the frozen base costs 2 N forward and 2 N for the
  activations' gradients (its weights get none), the LoRA weights 6 as in full training, attention as PaLM counts
  it; the recomputation of activation checkpointing is not counted.
* train_qwen3 (`bench_train.py --model-type qwen3`, only with `--cases train_qwen3`): the train case on a
  Qwen3-8B-shaped decoder (hidden 4096, 36 layers, 32 query and 8 key-value heads of width 128, MLP 12288, vocab
  151936), its entries `train_qwen3` and `padding_waste_qwen3`; about 3 minutes more (an estimate, not measured).
* evaluate (`bench_evaluate.py`): batched `evaluate_grounding` vs one query at a time on the 7B-shaped model,
  queries/s; in bfloat16 the two sides' greedy answers may part ways, so their agreement is reported, not checked.

The extract case makes its videos with the ffmpeg of `imageio-ffmpeg` (a 68 MB wheel); where the GPU machine has none,
make them elsewhere with `bench_extract.py --make-videos DIR --videos 64 --real-copies 16` and pass `--video-dir DIR`.

The cases share a time budget (`--time-budget`, 540 s): a case still running when it is spent is stopped, and the
results and the section are rewritten after every case, so a run cut short keeps what it measured. The sizes are
meant to take about 2, 3 and 2.5 minutes on one H100 (estimates from the FLOPs, not yet measured).

`--smoke` runs the same scripts on the CPU at tiny sizes and counts in well under a minute, into `--out-dir`
(default: a new temporary folder), its section into `DIR/BENCHMARKS.md`: it never touches the repository's
`BENCHMARKS.md` nor `bench/results_gpu.json`. Its figures only show that the path runs.

Exit status: 1 when a case failed to run or failed its check, 2 when there is no GPU (and no `--smoke`).
"""

import argparse
import datetime
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from run_all import (
    BENCH_DIR,
    GPU_SECTION_END,
    GPU_SECTION_START,
    ROOT,
    details,
    exit_status,
    machine,
    run_script,
    split_gpu_section,
)

CASES = ["extract", "train", "evaluate"]
# Cases run only when `--cases` names them (the default cases fill the time budget), and each case's script
OPTIONAL_CASES = ["train_qwen3"]
SCRIPTS = {"train_qwen3": "train"}
# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's data sheets. The first name found in
# `torch.cuda.get_device_name()` wins, so the specific ones come first ("NVIDIA H100 80GB HBM3" is the SXM part).
PEAK_BF16_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0)]
# Vicuna-7B v1.5's shape (LLaMA-2 7B); a tiny one for --smoke
LLAMA_7B = "--hidden-size 4096 --layers 32 --heads 32 --intermediate-size 11008 --vocab-size 32000"
TINY_LLAMA = "--hidden-size 64 --layers 2 --heads 4 --intermediate-size 128 --vocab-size 2048"
# Qwen3-8B's shape; a tiny one for --smoke
QWEN3_8B = ("--model-type qwen3 --hidden-size 4096 --layers 36 --heads 32 --kv-heads 8 --head-dim 128 "
            "--intermediate-size 12288 --vocab-size 151936")
TINY_QWEN3 = f"--model-type qwen3 {TINY_LLAMA} --kv-heads 2"
# Per case: the arguments of both runs, then those of the GPU run, then those of the smoke run
ARGUMENTS = {
    "extract": (
        "--dtype bfloat16 --tolerance 0.05",
        "--encoder vit-l-14 --videos 64 --real-copies 16 --workers 8 --repeats 3",
        "--encoder tiny --videos 3 --real-copies 0 --workers 1 --batch-size 32 --repeats 1",
    ),
    "train": (
        "--dtype bfloat16 --activation-checkpointing --flops --feature-size 768",
        # 24 steps, at an estimated 0.2 s each on an H100: the trainer's own start-up weighs little on the tokens/s
        f"{LLAMA_7B} --records 256 --batch-size 8 --steps 24 --repeats 3",
        f"{TINY_LLAMA} --records 32 --batch-size 4 --steps 2 --repeats 1",
    ),
    "train_qwen3": (
        "--dtype bfloat16 --activation-checkpointing --flops --feature-size 768",
        # 16 steps: its steps cost about 1.3 times the 7B LLaMA's (more layers, a larger LM head)
        f"{QWEN3_8B} --records 256 --batch-size 8 --steps 16 --repeats 3",
        f"{TINY_QWEN3} --records 32 --batch-size 4 --steps 2 --repeats 1",
    ),
    "evaluate": (
        "--dtype bfloat16 --min-agreement 0",
        f"{LLAMA_7B} --videos 4 --queries-per-video 8 --batch-size 16 --max-new-tokens 16 --repeats 3",
        f"{TINY_LLAMA} --videos 2 --queries-per-video 2 --batch-size 4 --max-new-tokens 4 --repeats 1",
    ),
}
DESCRIPTIONS = {
    "extract": "`extract_features` (8 decoding workers, batches of 128 frames across videos) vs the sequential "
    "decode-preprocess-encode-save loop, random CLIP ViT-L/14 vision tower at 224 px, bfloat16",
    "train": "stage-2 SFTTrainer + LoRA r 64 on a random 7B-shaped LLaMA (hidden 4096, 32 layers, MLP 11008, vocab "
    "32000), bf16 mixed precision, activation checkpointing: length-grouped vs random batches; MFU = model FLOP/s "
    "((4 N + 6 N_lora) per real token + 12 x layers x hidden x s^2 per record of s tokens) / the dense bf16 peak",
    "padding_waste": "share of padding over an epoch, length-grouped vs random batches (the records of the CPU case)",
    "train_qwen3": "the train case on a random Qwen3-8B-shaped decoder (hidden 4096, 36 layers, 32 query and 8 "
    "key-value heads of width 128, MLP 12288, vocab 151936), as `VTimeQwen3ForCausalLM`",
    "padding_waste_qwen3": "as padding_waste, the records tokenized alike",
    "evaluate": "batched `evaluate_grounding` vs one query at a time on the random 7B-shaped LLaMA, bfloat16; "
    "`identical_answers`: the share of answers both sides gave alike",
}


def peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a GPU named as `torch.cuda.get_device_name()` names it; None when not in the table."""
    return next((peak for name, peak in PEAK_BF16_TFLOPS if name in device_name), None)


def case_command(case: str, out: Path, args, peak: float | None) -> list[str]:
    common, gpu, tiny = ARGUMENTS[case]
    command = [sys.executable, str(BENCH_DIR / f"bench_{SCRIPTS.get(case, case)}.py"), "--out", str(out),
               *common.split()]  # fmt: skip
    command += [*(tiny if args.smoke else gpu).split(), "--device", "cpu" if args.smoke else "cuda"]
    if SCRIPTS.get(case, case) == "train" and peak is not None:
        command += ["--peak-tflops", str(peak)]
    if case == "extract" and args.video_dir:
        command += ["--video-dir", str(args.video_dir.resolve())]
    return command


def device_info(smoke: bool, peak: float | None, peak_source: str) -> dict:
    if smoke:
        return {"name": "cpu (smoke run)", "summary": "CPU (smoke run: tiny sizes, not figures to report)"}
    name = torch.cuda.get_device_name(0)
    memory_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    peak_text = f"dense bf16 peak {peak:g} TFLOP/s ({peak_source})" if peak else "dense bf16 peak unknown: no MFU"
    return {"name": name, "summary": f"{name}, {memory_gib:.0f} GiB, CUDA {torch.version.cuda}; {peak_text}"}


def percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def gpu_section(entries: list[dict], runs: dict, info: dict) -> str:
    """The `## GPU variants` section of BENCHMARKS.md, markers included."""
    lines = [
        GPU_SECTION_START,
        "## GPU variants",
        "",
        "Generated by `bench/run_gpu.py` (`make bench-gpu`) on a machine with a GPU; `bench/run_all.py` keeps this "
        "section as it is. Random weights at the sizes of VTimeLLM's models: CLIP ViT-L/14's vision tower and a "
        "7B-shaped LLaMA (Vicuna-7B's shape), in bfloat16. Measured as above: ratios of two measurements in one "
        "process, repetitions alternating, medians taken.",
        "",
        f"- Command: `{info['command']}`",
        f"- Date: {info['date']}",
        f"- Device: {info['device']['summary']}",
        f"- Host: {info['machine']['cpu']}, {info['machine']['cores']} cores; torch {info['machine']['torch']}",
        "",
        "| case | ours | baseline | ratio | unit | MFU ours / baseline |",
        "|---|---|---|---|---|---|",
    ]
    for entry in entries:
        mfu = f"{percent(entry['mfu'])} / {percent(entry['baseline_mfu'])}" if entry.get("mfu") is not None else ""
        lines.append(
            f"| {entry['name']} | {entry['ours']} | {entry['baseline']} | {entry['ratio']} | {entry['unit']} | {mfu} |"
        )
    lines += ["", "### What is compared", ""]
    lines += [f"- **{entry['name']}**: {DESCRIPTIONS.get(entry['name'], '')}. {details(entry)}" for entry in entries]
    lines += ["", "### Runs", "", "| case | wall time (s) | peak RSS (MiB) | status |", "|---|---|---|---|"]
    for case, run in runs.items():
        lines.append(f"| {case} | {run['seconds']:.0f} | {run['peak_rss_mib']:.0f} | {run['error'] or 'ok'} |")
    lines.append(GPU_SECTION_END)
    return "\n".join(lines)


def refresh_markdown(path: Path, section: str) -> None:
    """Replaces the GPU section of `path` (appended when there is none), leaving the rest as it is."""
    text = split_gpu_section(path.read_text(encoding="utf-8"))[0].rstrip("\n") if path.is_file() else ""
    path.write_text((text + "\n\n" if text else "") + section + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=CASES + OPTIONAL_CASES, default=CASES,
                        help=f"cases to run (default: {' '.join(CASES)})")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="the same path on the CPU at tiny sizes (a check)")
    parser.add_argument(
        "--out-dir", type=Path, default=None,
        help="where results_gpu.json and results/gpu_CASE.json go (default: bench/; with --smoke a temporary folder)",
    )  # fmt: skip
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for the MFU "
                        f"(default: from a table of {', '.join(name for name, _ in PEAK_BF16_TFLOPS)})")  # fmt: skip
    parser.add_argument("--time-budget", type=float, default=540, help="seconds for all cases (default: %(default)s)")
    parser.add_argument(
        "--video-dir", type=Path, default=None, metavar="DIR",
        help="the extract case's videos, made beforehand by `bench_extract.py --make-videos DIR` (default: made "
        "by the case, with the ffmpeg of imageio-ffmpeg)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        print(
            "run_gpu.py: no CUDA GPU here (torch.cuda.is_available() is False): the GPU variants need one. "
            "`--smoke` runs the same path on the CPU at tiny sizes.",
            file=sys.stderr,
        )
        return 2
    # Absolute: the children run in the repository's root, wherever this was started
    out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="bench-gpu-smoke-")) if args.smoke else BENCH_DIR)
    out_dir = out_dir.resolve()
    markdown = out_dir / "BENCHMARKS.md" if args.smoke else ROOT / "BENCHMARKS.md"
    peak, peak_source = args.peak_tflops, "--peak-tflops"
    if peak is None and not args.smoke:
        peak, peak_source = peak_tflops(torch.cuda.get_device_name(0)), "data sheet"
    info = {
        "command": shlex.join(["python", "bench/run_gpu.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "device": device_info(args.smoke, peak, peak_source),
    }
    # The children import the package from this checkout, installed or not; everything they load is built locally
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Each training run builds a fresh 7B model: expandable segments keep the freed ones' memory reusable
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

    deadline = time.monotonic() + args.time_budget
    entries, runs = [], {}
    for case in args.cases:
        left = deadline - time.monotonic()
        if left > 0:
            out = out_dir / "results" / f"gpu_{case}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            case_entries, seconds, peak_rss_mib, error = run_script(
                case, case_command(case, out, args, peak), out, left
            )
            entries += [{**entry, "device": info["device"]["name"]} for entry in case_entries]
            runs[case] = {"seconds": seconds, "peak_rss_mib": peak_rss_mib, "error": error}
        else:
            runs[case] = {"seconds": 0.0, "peak_rss_mib": 0.0, "error": "not run: the time budget was spent"}
        (out_dir / "results_gpu.json").write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
        refresh_markdown(markdown, gpu_section(entries, runs, info))

    print("\n| case | ours | baseline | ratio | unit | mfu |")
    for entry in entries:
        print(f"| {entry['name']} | {entry['ours']} | {entry['baseline']} | {entry['ratio']} | {entry['unit']} | "
              f"{percent(entry.get('mfu'))} |")  # fmt: skip
    print(f"wrote {out_dir / 'results_gpu.json'} and the GPU section of {markdown}")
    return exit_status(runs)


if __name__ == "__main__":
    sys.exit(main())
