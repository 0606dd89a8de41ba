"""Runs every benchmark, writes `bench/results.json` and refreshes `BENCHMARKS.md` at the repository root.

    python bench/run_all.py [--threads 1]      # or: make bench

Each case is its own script (`bench/bench_*.py`), run in a child process that writes its JSON to
`bench/results/{case}.json`; the runner also reads the peak resident memory of each child (`os.wait4`), so that
every case's memory is measured the same way. `results.json` is a list with one entry per figure (`name`, `ours`,
`baseline`, `ratio`, `target`, `unit`, and what the case adds). Exit status: 1 when a case failed to run or failed
its correctness check (a missed target is reported, not an error).

The section that `run_gpu.py` writes into `BENCHMARKS.md` (between `GPU_SECTION_START` and `GPU_SECTION_END`) is
kept when the file is rewritten: the GPU figures come from another machine and are refreshed on their own.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
CASES = ["preprocess", "extract", "audio_streams", "train", "evaluate", "feature_store", "decode"]
CASE_TIMEOUT_S = 420
GPU_SECTION_START = "<!-- gpu-variants: written by bench/run_gpu.py -->"
GPU_SECTION_END = "<!-- /gpu-variants -->"
# Written in the GPU section's place until `run_gpu.py` has run on a GPU: the reader learns the figures are missing
GPU_SECTION_NOT_MEASURED = "\n".join([
    GPU_SECTION_START,
    "## GPU variants",
    "",
    "Not measured yet: no GPU machine has been lent to this project so far. On one, `make bench-gpu` "
    "(`bench/run_gpu.py`) measures CLIP ViT-L/14 extraction videos/s, 7B-shaped bf16 LoRA training tokens/s and MFU, "
    "and 7B-shaped evaluation queries/s, and writes them here in place of this paragraph.",
    GPU_SECTION_END,
])  # fmt: skip
# What each figure compares, for BENCHMARKS.md
DESCRIPTIONS = {
    "preprocess": "`preprocess_frames` (batched tensors) vs transformers' `CLIPImageProcessorPil` (per-frame PIL), "
    "100 frames of 480x270 to 224x224",
    "extract": "`extract_features` (2 decoding workers, frames batched across videos) vs a sequential "
    "decode-preprocess-encode-save loop, 32 short videos, tiny 64 px CLIP",
    "audio_streams": "LongVALE's audio (BEATs) and speech (Whisper) streams by `extract_features`, each track read "
    "once for both, vs one stream after the other, each reading the track (`bench_audio_streams.py`)",
    "train": "stage-2 SFTTrainer + LoRA r 64, 4-layer hidden-512 LLaMA: length-grouped batches vs random batches",
    "padding_waste": "share of padding over an epoch, length-grouped vs random batches (target on ours: <= 5%)",
    "evaluate": "batched `evaluate_grounding` vs one query at a time (`bench_evaluate.py`)",
    "feature_store": "random access to 10k float16 (100, 768) features, page cache warm: the sharded `datasets` "
    "store (`ShardedFeatureStore`) vs the `.npy` folder (`bench_feature_store.py`)",
    "feature_store_vs_safetensors": "the same loads: the sharded store vs the one safetensors file "
    "(`ConsolidatedFeatureStore`, capped near a million ids)",
    "decode_long_gop": "100 sampled frames of a 2-minute 720p H.264 video with a keyframe every 250 frames: "
    "`load_video_frames` (PyAV, forwards, seeking only past a keyframe) vs seeking to each sampled frame "
    "(`bench_decode.py`)",
    "decode_real": "100 sampled frames of each real test video: `load_video_frames` with PyAV (the default) vs "
    "decord (`backend=\"decord\"`)",
}


def machine() -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown",
    )  # fmt: skip
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__}


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_case(case: str, threads: int) -> tuple[list[dict], float, float, str | None]:
    """Runs `bench_{case}.py`: `(entries, seconds, peak RSS in MiB, error or None)`."""
    out = BENCH_DIR / "results" / f"{case}.json"
    command = [sys.executable, str(BENCH_DIR / f"bench_{case}.py"), "--out", str(out)]
    if threads:
        command += ["--threads", str(threads)]
    return run_script(case, command, out, CASE_TIMEOUT_S)


def run_script(
    case: str, command: list[str], out: Path, timeout_s: float
) -> tuple[list[dict], float, float, str | None]:
    """Runs a benchmark script that writes its JSON to `out`: `(entries, seconds, peak RSS in MiB, error or None)`."""
    out.unlink(missing_ok=True)
    print(f"\n== {case}: {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT)
    timer = threading.Timer(timeout_s, process.kill)
    timer.start()
    # wait4 gives the child's own resource usage (peak RSS in KiB on Linux), not that of all children together
    _, status, usage = os.wait4(process.pid, 0)
    timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if not out.is_file():
        killed = os.WIFSIGNALED(status)
        error = f"killed after {timeout_s:.0f} s" if killed else f"exit status {process.returncode}"
        return [], seconds, usage.ru_maxrss / 1024, f"no result ({error})"
    entries = json.loads(out.read_text(encoding="utf-8"))
    entries = entries if isinstance(entries, list) else [entries]
    failed = [entry["check"] for entry in entries if entry.get("check", "ok") != "ok"]
    return entries, seconds, usage.ru_maxrss / 1024, "; ".join(failed) or None


def target_met(entry: dict) -> bool:
    """Throughput targets apply to the ratio; a target marked `target_on: ours` is a ceiling on ours (waste)."""
    if entry.get("target_on") == "ours":
        return entry["ours"] <= entry["target"]
    return entry["ratio"] >= entry["target"]


def details(entry: dict) -> str:
    hidden = ("name", "ours", "baseline", "ratio", "target", "unit", "target_on", "platform")
    shown = {key: value for key, value in entry.items() if key not in hidden}
    return ", ".join(f"{key}: {value}" for key, value in shown.items())


def split_gpu_section(text: str) -> tuple[str, str]:
    """`(text without the GPU section, the section with its markers)`; the section is empty when there is none."""
    start, end = text.find(GPU_SECTION_START), text.find(GPU_SECTION_END)
    if start < 0 or end < start:
        return text, ""
    end += len(GPU_SECTION_END)
    return text[:start].rstrip("\n") + "\n" + text[end:].lstrip("\n"), text[start:end]


def write_markdown(path: Path, entries: list[dict], runs: dict, info: dict) -> None:
    gpu_section = split_gpu_section(path.read_text(encoding="utf-8"))[1] if path.is_file() else ""
    lines = [
        "# Benchmarks",
        "",
        "Generated by `bench/run_all.py` (`make bench`); do not edit by hand.",
        "",
        "Every figure is a ratio of two measurements taken in the same process, repetitions of ours and of the "
        "baseline alternating (order swapped every repetition), medians taken. The absolute numbers are context "
        "for this machine only; it is shared with other jobs, so they move from run to run while the ratios "
        "hold better.",
        "",
        f"- Command: `{info['command']}`",
        f"- Date: {info['date']}",
        f"- Machine: {info['machine']['platform']}; CPU: {info['machine']['cpu']}, {info['machine']['cores']} cores; "
        f"torch {info['machine']['torch']}",
        f"- Load average (1, 5, 15 min) before / after: {info['load_before']} / {info['load_after']}",
        f"- Torch threads per process: {info['threads']}",
        "",
        "| case | ours | baseline | ratio | target | met | unit |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in entries:
        target = f"<= {entry['target']}" if entry.get("target_on") == "ours" else f">= {entry['target']}x"
        met = "yes" if target_met(entry) else "**no**"
        lines.append(
            f"| {entry['name']} | {entry['ours']} | {entry['baseline']} | {entry['ratio']} | {target} | {met} | "
            f"{entry['unit']} |"
        )
    lines += ["", "## What is compared", ""]
    lines += [f"- **{entry['name']}**: {DESCRIPTIONS.get(entry['name'], '')}. {details(entry)}" for entry in entries]
    lines += ["", "## Peak memory (resident set of each case's process)", ""]
    lines += ["| case | peak RSS (MiB) | wall time (s) | status |", "|---|---|---|---|"]
    for case, run in runs.items():
        lines.append(f"| {case} | {run['peak_rss_mib']:.0f} | {run['seconds']:.0f} | {run['error'] or 'ok'} |")
    lines += [
        "",
        "The train case's process ran every training run of both arms; the evaluate case's process holds the "
        "model and answers all queries both ways.",
        "",
    ]
    lines += [gpu_section or GPU_SECTION_NOT_MEASURED, ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads in every case; 0: torch's choice (default: %(default)s: on a CPU shared with other jobs, "
        "two OpenMP threads per op run several times slower than one)",
    )  # fmt: skip
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES, help="cases to run (default: all)")
    args = parser.parse_args(argv)

    info = {
        "command": shlex.join(["python", "bench/run_all.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load_before": load_average(),
        "threads": args.threads or "torch's choice",
    }
    entries, runs = [], {}
    for case in args.cases:
        case_entries, seconds, peak_rss_mib, error = run_case(case, args.threads)
        entries += case_entries
        runs[case] = {"seconds": seconds, "peak_rss_mib": peak_rss_mib, "error": error}
    info["load_after"] = load_average()

    (BENCH_DIR / "results.json").write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    write_markdown(ROOT / "BENCHMARKS.md", entries, runs, info)
    print("\n| case | ours | baseline | ratio | target | met |")
    for entry in entries:
        print(f"| {entry['name']} | {entry['ours']} | {entry['baseline']} | {entry['ratio']} | {entry['target']} | "
              f"{'yes' if target_met(entry) else 'NO'} |")  # fmt: skip
    print(f"wrote {BENCH_DIR / 'results.json'} and {ROOT / 'BENCHMARKS.md'}")
    return exit_status(runs)


def exit_status(runs: dict) -> int:
    """1 when a case failed to run or failed its correctness check, each named on stderr; else 0."""
    failed = {case: run["error"] for case, run in runs.items() if run["error"]}
    for case, error in failed.items():
        print(f"{case}: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
