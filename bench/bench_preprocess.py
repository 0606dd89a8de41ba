"""Benchmark: batched CLIP preprocessing of 100 frames against transformers' per-frame PIL image processor.

    python bench/bench_preprocess.py [--out bench/results/preprocess.json]

The frames are the 100 sampled frames of the Charades video 3MSZA (480x270, decoded with `load_video_frames`) when
the test data is present (`$VTIMELLM_TEST_DATA`, default `../shared/data`), else 100 random 480x270 frames.

* ours: [`preprocess_frames`]: float32 tensors, a few frames at a time: the bicubic resize (no antialiasing) of
  the rows and columns the center crop keeps only, as banded matrix products, normalised in the pass between;
* baseline: transformers' `CLIPImageProcessorPil` (the CLIP image processor on its PIL backend, which needs no
  torchvision) called once on the list of 100 frames: per frame, a PIL bicubic resize of the short side to 224,
  center crop, rescale and normalise in numpy.

Repetitions of the two alternate (order swapped every repetition); the figure is the ratio of the median times.
Ours must lie within 1e-2 of a float64 numpy reference of the original transform (`check`); the baseline's distance
to that reference (PIL antialiases when it shrinks, the original transform does not) is reported, not checked.
PIL works on one core whatever the number of torch threads.
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPImageProcessorPil

from vtimellm_hf.model import CLIP_MEAN, CLIP_STD, load_video_frames, preprocess_frames

TARGET = 3.0
TOLERANCE = 1e-2
SIZE = 224
NUM_FRAMES = 100


def load_frames(seed: int) -> tuple[np.ndarray, str]:
    """The 100 frames to preprocess, and where they come from."""
    video = Path(os.environ.get("VTIMELLM_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    video = video / "videos" / "3MSZA.mp4"
    if video.is_file():
        return load_video_frames(video, NUM_FRAMES)[0], "Charades 3MSZA.mp4 (480x270), 100 sampled frames"
    frames = np.random.default_rng(seed).integers(0, 256, (NUM_FRAMES, 270, 480, 3), dtype=np.uint8)
    return frames, "100 random 480x270 frames (3MSZA.mp4 not found)"


def cubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) float64 matrix of bicubic resampling: a = -0.75, half-pixel centres, edges clamped, no antialias."""
    source = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
    base = np.floor(source).astype(int)
    matrix = np.zeros((out_size, in_size))
    for tap in range(-1, 3):
        distance = np.abs(source - (base + tap))
        weight = np.where(
            distance <= 1,
            (1.25 * distance - 2.25) * distance**2 + 1,
            ((-0.75 * distance + 3.75) * distance - 6) * distance + 3,
        )
        np.add.at(matrix, (np.arange(out_size), np.clip(base + tap, 0, in_size - 1)), weight)
    return matrix


def reference_transform(frames: np.ndarray, size: int = SIZE) -> np.ndarray:
    """The original transform in float64: /255, bicubic resize of the short side, center crop, normalise."""
    _, height, width, _ = frames.shape
    scale = size / min(height, width)
    new_height, new_width = (size, int(width * scale)) if height <= width else (int(height * scale), size)
    rows, columns = cubic_matrix(height, new_height), cubic_matrix(width, new_width)
    pixels = frames.astype(np.float64).transpose(0, 3, 1, 2) / 255.0
    resized = rows @ pixels @ columns.T
    top, left = round((new_height - size) / 2), round((new_width - size) / 2)
    cropped = resized[..., top : top + size, left : left + size]
    return (cropped - np.array(CLIP_MEAN)[:, None, None]) / np.array(CLIP_STD)[:, None, None]


def timed(function) -> tuple[object, float]:
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "preprocess.json")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions of each side (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    frames, source = load_frames(args.seed)
    image_processor = CLIPImageProcessorPil()  # size 224, crop 224, bicubic, CLIP mean and std
    frame_list = list(frames)
    sides = {
        "ours": lambda: preprocess_frames(frames, SIZE),
        "baseline": lambda: image_processor(images=frame_list, return_tensors="pt")["pixel_values"],
    }
    outputs = {name: side() for name, side in sides.items()}  # warm-up, and the outputs checked below
    times = {name: [] for name in sides}
    for repeat in range(args.repeats):
        for name in sorted(sides, reverse=repeat % 2 == 1):
            times[name].append(timed(sides[name])[1])

    reference = reference_transform(frames)
    error = float(np.abs(outputs["ours"].numpy() - reference).max())
    baseline_error = float(np.abs(outputs["baseline"].numpy() - reference).max())
    ours, baseline = (NUM_FRAMES / statistics.median(times[name]) for name in ("ours", "baseline"))
    entry = {
        "name": "preprocess",
        "ours": round(ours, 1),
        "baseline": round(baseline, 1),
        "ratio": round(ours / baseline, 2),
        "target": TARGET,
        "unit": "frames/s",
        "threads": torch.get_num_threads(),
        "frames": source,
        "baseline_impl": "transformers CLIPImageProcessorPil, one call on the list of frames",
        "max_abs_error_vs_float64_reference": round(error, 6),
        "baseline_max_abs_error_vs_float64_reference": round(baseline_error, 4),
        "repeats": args.repeats,
        "check": "ok" if error <= TOLERANCE else f"ours is {error:.2e} from the float64 reference (> {TOLERANCE})",
    }
    print(json.dumps(entry))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")
    return 0 if entry["check"] == "ok" and entry["ratio"] >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
