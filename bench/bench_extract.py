"""Benchmark: `extract_features` (parallel decoding, frames batched across videos) against a sequential loop.

    python bench/bench_extract.py [--out bench/results/extract.json]

The videos: short synthetic ones from `generate_synthetic_moments` (64x64 to 128x96, 8-30 s), plus copies of the
real test videos (`$VTIMELLM_TEST_DATA/videos`, default `../shared/data/videos`: Charades 3MSZA 480x270 and a
406x720 clip) when present, 32 in all. The encoder is a random `build_tiny_frame_encoder` CLIP at 64 px with
768-d embeddings (a ViT-L/14 at 224 px encodes about 1 frame/s on a 2-core CPU), so the figure measures the
pipeline around the encoder: decoding, preprocessing, batching and writing. On a GPU (`--encoder vit-l-14
--device cuda --dtype bfloat16`, as `run_gpu.py` runs it) the encoder is a random CLIP shaped as VTimeLLM's,
`openai/clip-vit-large-patch14`'s vision tower at 224 px.

* ours: `extract_features(..., workers=2, batch_size=128)` into an empty folder, encoder loading included;
* baseline: what the original script does, one video at a time: decode its 100 sampled frames
  (`load_video_frames`), preprocess them (`preprocess_frames`), encode them in one forward pass on `--device`,
  `np.save` float16, next video; encoder loading included;
* decode only: the sequential loop's decoding alone (PyAV, the default backend, reading the sampled frames), for
  scale.

`cores_used` is each side's CPU time (the process and its decoding workers) over its wall time: ours can only be
faster than the sequential loop by as many cores as the scheduler grants it, which other jobs on a shared machine
take.

Making the videos needs the ffmpeg of `imageio-ffmpeg`; where it is missing (a GPU machine, say), `--make-videos DIR`
makes them beforehand elsewhere and `--video-dir DIR` reads them back.

Repetitions alternate (order swapped every repetition); figures come from the median times. Every feature of ours
must equal the baseline's bit for bit (`check`), or with `--tolerance` lie within that relative distance of it: in
reduced precision the encoder's kernels, hence its rounding, depend on the batch's shape (ours encodes
`--batch-size` frames across videos, the baseline a video's 100 frames).
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
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from vtimellm_hf.data.extract import extract_features
from vtimellm_hf.data.synthetic import SyntheticMomentsConfig, generate_synthetic_moments
from vtimellm_hf.model import load_video_frames, preprocess_frames, read_frame_preprocessing
from vtimellm_hf.tiny_models import build_tiny_frame_encoder

from common import DTYPES, created_on, peak_gpu_mib, synchronize

TARGET = 1.6
NUM_FRAMES = 100
IMAGE_SIZE = 64
EMBEDDING_SIZE = 768
# The vision tower of openai/clip-vit-large-patch14, VTimeLLM's frame encoder. Initialised 5 times wider than CLIP's
# default, as `build_tiny_frame_encoder` is: with the default, a random ViT-L/14 puts any two frames' embeddings
# within about 6% (relative) of each other, too close to the 1.3% by which bfloat16 moves an embedding from its
# float32 value for `--tolerance` to catch a frame encoded in the wrong place; 5 times wider, they lie about 35% apart
# while bfloat16 still moves them by 1.3% (both measured on a CPU, on random frames).
CLIP_VIT_L_14 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
    patch_size=14, projection_dim=EMBEDDING_SIZE, initializer_factor=5.0,
)  # fmt: skip
ENCODERS = ("tiny", "vit-l-14")
# Written by `--make-videos` beside the videos: their paths, in order, and what they are
VIDEO_LIST = "videos.json"


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


def save_video_list(folder: Path, videos: list[Path], source: str) -> None:
    paths = [str(path.relative_to(folder)) for path in videos]
    (folder / VIDEO_LIST).write_text(json.dumps({"source": source, "videos": paths}, indent=2), encoding="utf-8")


def read_video_list(folder: Path) -> tuple[list[Path], str]:
    """The videos that `--make-videos` left in `folder`, in the order `make_videos` gave them, and what they are."""
    listed = json.loads((folder / VIDEO_LIST).read_text(encoding="utf-8"))
    return [folder / path for path in listed["videos"]], listed["source"]


def build_encoder(encoder: str, folder: Path, device: str, dtype: str, seed: int) -> str:
    """Saves a random frame encoder to `folder`; returns its description.

    The ViT-L/14 is created on `device` in `dtype` (a float32 one on a CPU takes seconds of random draws); it has no
    `preprocessor_config.json`, so both sides use CLIP's mean and std at its 224 px, as the real checkpoint does.
    """
    if encoder == "tiny":
        build_tiny_frame_encoder(folder, embedding_size=EMBEDDING_SIZE, image_size=IMAGE_SIZE, seed=seed)
        return f"random CLIP, 2 layers, hidden 64, {IMAGE_SIZE} px, {EMBEDDING_SIZE}-d embeddings"
    torch.manual_seed(seed)
    with created_on(device, dtype):
        CLIPVisionModelWithProjection(CLIPVisionConfig(**CLIP_VIT_L_14)).save_pretrained(folder)
    return f"random CLIP ViT-L/14 (24 layers, hidden 1024, patch 14, 224 px, {EMBEDDING_SIZE}-d embeddings), {dtype}"


def sequential(videos: list[Path], encoder_dir: Path, output_dir: Path, device: str = "cpu",
               dtype: str = "float32") -> None:  # fmt: skip
    """The original's loop: decode, preprocess, encode and save one video after the other."""
    encoder = CLIPVisionModelWithProjection.from_pretrained(encoder_dir, dtype=DTYPES[dtype]).to(device).eval()
    preprocessing = read_frame_preprocessing(str(encoder_dir))
    output_dir.mkdir()
    with torch.inference_mode():
        for path in videos:
            frames, _ = load_video_frames(path, NUM_FRAMES)
            pixels = preprocess_frames(
                frames, preprocessing["frame_size"], preprocessing["image_mean"], preprocessing["image_std"]
            )
            features = encoder(pixel_values=pixels.to(device, DTYPES[dtype])).image_embeds
            np.save(output_dir / f"{path.stem}.npy", features.float().cpu().numpy().astype(np.float16))


def decode_only(videos: list[Path]) -> None:
    for path in videos:
        load_video_frames(path, NUM_FRAMES)


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    """The largest relative L2 distance between two `(frames, D)` features, frame by frame."""
    ours, theirs = ours.astype(np.float32), theirs.astype(np.float32)
    return float((np.linalg.norm(ours - theirs, axis=-1) / np.linalg.norm(theirs, axis=-1)).max())


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
    parser.add_argument("--batch-size", type=int, default=128, help="frames per pass of ours (default: %(default)s)")
    parser.add_argument("--encoder", choices=ENCODERS, default="tiny", help="random CLIP (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="where both sides encode (default: %(default)s)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="encoder's (default: %(default)s)")
    parser.add_argument(
        "--tolerance", type=float, default=0.0,
        help="largest relative distance of a frame's feature to the baseline's; 0: identical bytes (default)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    videos_from = parser.add_mutually_exclusive_group()
    videos_from.add_argument("--make-videos", type=Path, metavar="DIR", help="only make the videos, into DIR")
    videos_from.add_argument("--video-dir", type=Path, metavar="DIR", help="the videos made by --make-videos DIR")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.make_videos:
        videos, source = make_videos(args.make_videos, args.videos, args.real_copies, args.seed)
        save_video_list(args.make_videos, videos, source)
        print(f"{source} in {args.make_videos}")
        return 0

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        if args.video_dir:
            videos, source = read_video_list(args.video_dir)
        else:
            videos, source = make_videos(scratch, args.videos, args.real_copies, args.seed)
        encoder_dir = scratch / "clip"
        encoder = build_encoder(args.encoder, encoder_dir, args.device, args.dtype, args.seed)
        sides = {
            "ours": lambda out, videos=videos: extract_features(
                videos, out, clip=encoder_dir, num_frames=NUM_FRAMES, batch_size=args.batch_size,
                workers=args.workers, device=args.device, dtype=args.dtype, progress=False,
            ),
            "baseline": lambda out, videos=videos: sequential(videos, encoder_dir, out, args.device, args.dtype),
            "decode_only": lambda out, videos=videos: decode_only(videos),
        }  # fmt: skip
        for name, side in sides.items():  # warm-up on two videos, not timed
            side(scratch / f"warmup_{name}", videos[:2])
        times, cores = {name: [] for name in sides}, {name: [] for name in sides}
        for repeat in range(args.repeats):
            for name in sorted(sides, reverse=repeat % 2 == 1):
                started, cpu_started = time.perf_counter(), cpu_seconds()
                sides[name](scratch / f"{name}_{repeat}")
                synchronize(args.device)
                times[name].append(time.perf_counter() - started)
                cores[name].append((cpu_seconds() - cpu_started) / times[name][-1])
        ours_dir, baseline_dir = scratch / "ours_0", scratch / "baseline_0"
        pairs = {path.stem: (np.load(ours_dir / f"{path.stem}.npy"), np.load(baseline_dir / f"{path.stem}.npy"))
                 for path in videos}  # fmt: skip
    errors = {stem: relative_error(*pair) for stem, pair in pairs.items()}
    if args.tolerance:
        differing = [stem for stem, error in errors.items() if error > args.tolerance]
        difference = f"by more than {args.tolerance} (relative)"
    else:
        differing = [stem for stem, pair in pairs.items() if not np.array_equal(*pair)]
        difference = "bit for bit"
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
        "encoder": encoder,
        "workers": args.workers,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "check": f"{len(differing)} feature(s) differ from the sequential loop's {difference}: {differing[:5]}"
        if differing
        else "ok",
    }
    if (args.device, args.dtype, args.batch_size) != ("cpu", "float32", 128):
        entry.update({
            "device": args.device, "dtype": args.dtype, "batch_size": args.batch_size,
            "max_relative_error": float(f"{max(errors.values()):.3g}"), "peak_gpu_mib": peak_gpu_mib(args.device),
        })  # fmt: skip
    print(json.dumps(entry))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")
    return 0 if entry["check"] == "ok" and entry["ratio"] >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
