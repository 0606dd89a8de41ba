"""Benchmark: `extract_features` (parallel decoding, frames batched across videos) against a sequential loop.

    python bench/bench_extract.py [--out bench/results/extract.json]

The videos: short synthetic ones from `generate_synthetic_moments` (64x64 to 128x96, 8-30 s), plus copies of the
real test videos (`$VTIMELLM_TEST_DATA/videos`, default `../shared/data/videos`: Charades 3MSZA 480x270 and a
406x720 clip) when present, 32 in all. The encoder is a random `build_tiny_frame_encoder` CLIP at 64 px with
768-d embeddings (a ViT-L/14 at 224 px encodes about 1 frame/s on a 2-core CPU), so the figure measures the
pipeline around the encoder: decoding, preprocessing, batching and writing.

* ours: `extract_features(..., workers=2, batch_size=128)` into an empty folder, encoder loading included;
* baseline: what the original script does, one video at a time: decode its 100 sampled frames
  (`load_video_frames`), preprocess them (`preprocess_frames`), encode them in one forward pass, `np.save` float16,
  next video; encoder loading included;
* decode only: the sequential loop's decoding alone (decord reading the sampled frames), for scale.

`cores_used` is each side's CPU time (the process and its decoding workers) over its wall time: ours can only be
faster than the sequential loop by as many cores as the scheduler grants it, which other jobs on a shared machine
take.

Repetitions alternate (order swapped every repetition); figures come from the median times. Every feature of ours
must equal the baseline's bit for bit (`check`).
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import CLIPVisionModelWithProjection

from vtimellm_hf.data.extract import extract_features
from vtimellm_hf.data.synthetic import SyntheticMomentsConfig, generate_synthetic_moments
from vtimellm_hf.model.processing_vtime import load_video_frames, preprocess_frames, read_frame_preprocessing
from vtimellm_hf.tiny_models import build_tiny_frame_encoder

TARGET = 1.6
NUM_FRAMES = 100
IMAGE_SIZE = 64
EMBEDDING_SIZE = 768


def make_videos(folder: Path, total: int, real_copies: int, seed: int) -> tuple[list[Path], str]:
    """`total` videos in `folder`: `real_copies` copies of the real test videos (when found), the rest synthetic."""
    data = Path(os.environ.get("VTIMELLM_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    real = sorted((data / "videos").glob("*.mp4"))
    real_copies = real_copies if real else 0
    generate_synthetic_moments(
        folder / "synthetic", num_videos=total - real_copies, num_val_videos=0, seed=seed,
        config=SyntheticMomentsConfig(num_images=0),
    )  # fmt: skip
    videos = sorted((folder / "synthetic" / "videos").glob("*.mp4"))
    for index in range(real_copies):
        source = real[index % len(real)]
        videos.append(Path(shutil.copy(source, folder / f"real_{index:02d}_{source.name}")))
    names = ", ".join(path.name for path in real) or "none found"
    return videos, f"{total - real_copies} synthetic + {real_copies} copies of real videos ({names})"


def sequential(videos: list[Path], encoder_dir: Path, output_dir: Path) -> None:
    """The original's loop: decode, preprocess, encode and save one video after the other."""
    encoder = CLIPVisionModelWithProjection.from_pretrained(encoder_dir).eval()
    preprocessing = read_frame_preprocessing(str(encoder_dir))
    output_dir.mkdir()
    with torch.inference_mode():
        for path in videos:
            frames, _ = load_video_frames(path, NUM_FRAMES)
            pixels = preprocess_frames(
                frames, preprocessing["frame_size"], preprocessing["image_mean"], preprocessing["image_std"]
            )
            features = encoder(pixel_values=pixels).image_embeds
            np.save(output_dir / f"{path.stem}.npy", features.numpy().astype(np.float16))


def decode_only(videos: list[Path]) -> None:
    for path in videos:
        load_video_frames(path, NUM_FRAMES)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the decoding workers)."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "extract.json")
    parser.add_argument("--videos", type=int, default=32, help="videos in all (default: %(default)s)")
    parser.add_argument("--real-copies", type=int, default=8, help="copies of real videos (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of each side (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="decoding processes of ours (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        videos, source = make_videos(scratch, args.videos, args.real_copies, args.seed)
        encoder_dir = scratch / "clip"
        build_tiny_frame_encoder(encoder_dir, embedding_size=EMBEDDING_SIZE, image_size=IMAGE_SIZE, seed=args.seed)
        sides = {
            "ours": lambda out, videos=videos: extract_features(
                videos, out, clip=encoder_dir, num_frames=NUM_FRAMES, batch_size=128, workers=args.workers,
                device="cpu", progress=False,
            ),
            "baseline": lambda out, videos=videos: sequential(videos, encoder_dir, out),
            "decode_only": lambda out, videos=videos: decode_only(videos),
        }  # fmt: skip
        for name, side in sides.items():  # warm-up on two videos, not timed
            side(scratch / f"warmup_{name}", videos[:2])
        times, cores = {name: [] for name in sides}, {name: [] for name in sides}
        for repeat in range(args.repeats):
            for name in sorted(sides, reverse=repeat % 2 == 1):
                started, cpu_started = time.perf_counter(), cpu_seconds()
                sides[name](scratch / f"{name}_{repeat}")
                times[name].append(time.perf_counter() - started)
                cores[name].append((cpu_seconds() - cpu_started) / times[name][-1])
        ours_dir, baseline_dir = scratch / "ours_0", scratch / "baseline_0"
        differing = [
            path.stem
            for path in videos
            if not np.array_equal(np.load(ours_dir / f"{path.stem}.npy"), np.load(baseline_dir / f"{path.stem}.npy"))
        ]
    rates = {name: len(videos) / statistics.median(seconds) for name, seconds in times.items()}
    entry = {
        "name": "extract",
        "ours": round(rates["ours"], 2),
        "baseline": round(rates["baseline"], 2),
        "ratio": round(rates["ours"] / rates["baseline"], 2),
        "target": TARGET,
        "unit": "videos/s",
        "decode_only": round(rates["decode_only"], 2),
        "cores_used": {name: round(statistics.median(cores[name]), 2) for name in ("ours", "baseline")},
        "videos": source,
        "encoder": f"random CLIP, 2 layers, hidden 64, {IMAGE_SIZE} px, {EMBEDDING_SIZE}-d embeddings",
        "workers": args.workers,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "check": f"{len(differing)} feature(s) differ from the sequential loop's: {differing[:5]}"
        if differing
        else "ok",
    }
    print(json.dumps(entry))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")
    return 0 if entry["check"] == "ok" and entry["ratio"] >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
