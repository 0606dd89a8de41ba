"""Benchmark: LongVALE's audio and speech streams made together, each track decoded once, against one stream at a time.

    python bench/bench_audio_streams.py [--out bench/results/audio_streams.json] [--videos 16] [--seconds 100]

The videos: `--videos` synthetic videos of `--seconds` with an audio track (`generate_synthetic_moments` with a
sound on each, 16 kHz AAC, as `python -m vtimellm_hf.demo --family longvale` makes them). The encoders: the tiny
BEATs and Whisper of `tiny_models` (`build_tiny_beats_checkpoint`, `build_tiny_whisper`), so that the figure
measures what surrounds them, reading the track above all; with the real encoders (BEATs iter3+, Whisper large-v2)
the encoding weighs more and the gain is smaller.

* ours: `extract_features(..., streams="audio,speech")` into an empty folder: for each video, the track is read
  once for both streams (they read it alike: LongVALE's moviepy reading at 16 kHz);
* baseline: what LongVALE's two extraction scripts do, one stream after the other: for each video, the stream's
  encoder reads the track (`encode_file`) and the features are saved (`np.save`, float16); then the other stream.

Repetitions alternate (order swapped every repetition); figures come from the median times, encoder loading
included on both sides. Every feature of ours must equal the baseline's bit for bit (`check`).
"""

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vtimellm_hf.data.extract import extract_features
from vtimellm_hf.data.synthetic import SyntheticMomentsConfig, generate_synthetic_moments
from vtimellm_hf.model.audio_processing_vtime import build_stream_encoder
from vtimellm_hf.tiny_models import build_tiny_beats_checkpoint, build_tiny_whisper

TARGET = 1.2
STREAMS = {"audio": "beats", "speech": "whisper"}


def one_stream_at_a_time(videos: list[Path], encoders: dict[str, str], output: Path) -> None:
    """The baseline: each stream on its own, every video's track read by that stream's encoder."""
    for stream, kind in STREAMS.items():
        encoder = build_stream_encoder(kind, encoders[stream], device="cpu")
        folder = output / f"{stream}_features"
        folder.mkdir(parents=True, exist_ok=True)
        for video in videos:
            features = encoder.encode_file(video)
            if features is not None:
                np.save(folder / f"{video.stem}.npy", features.numpy().astype(np.float16))


def together(video_dir: Path, encoders: dict[str, str], output: Path) -> None:
    report = extract_features(video_dir, output, streams="audio,speech", audio_encoders=encoders, device="cpu",
                              progress=False)  # fmt: skip
    if not report.ok:
        failures = [failure for stream in report.streams.values() for failure in stream.failures]
        raise RuntimeError(f"the extraction failed: {report.summary()}: {failures[:1]}")


def differing_features(ours: Path, baseline: Path) -> list[str]:
    differing = []
    for stream in STREAMS:
        names = sorted(path.name for path in (baseline / f"{stream}_features").glob("*.npy"))
        for name in names:
            stored, expected = ours / f"{stream}_features" / name, baseline / f"{stream}_features" / name
            if not stored.is_file() or not np.array_equal(np.load(stored), np.load(expected)):
                differing.append(f"{stream}/{name}")
    return differing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "audio_streams.json")
    parser.add_argument("--videos", type=int, default=16, help="videos (default: %(default)s)")
    parser.add_argument("--seconds", type=int, default=100, help="length of each video (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of each side (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        config = SyntheticMomentsConfig(
            num_images=1, sounds_per_video=(1, 1), fps_choices=(1,), duration_range=(args.seconds, args.seconds),
            frame_sizes=((64, 64),),
        )  # fmt: skip
        dataset = generate_synthetic_moments(scratch / "data", num_videos=args.videos, num_val_videos=0,
                                             seed=args.seed, config=config)  # fmt: skip
        videos = sorted(dataset.video_dir.glob("*.mp4"))
        build_tiny_whisper(scratch / "whisper", seed=args.seed)
        beats = build_tiny_beats_checkpoint(scratch / "beats" / "beats.pt", seed=args.seed)
        encoders = {"audio": str(beats), "speech": str(scratch / "whisper")}
        sides = {
            "ours": lambda output: together(dataset.video_dir, encoders, output),
            "baseline": lambda output: one_stream_at_a_time(videos, encoders, output),
        }
        # Warm-up, and the features compared
        for name, side in sides.items():
            side(scratch / f"warm_{name}")
        differing = differing_features(scratch / "warm_ours", scratch / "warm_baseline")
        times = {name: [] for name in sides}
        for repeat in range(args.repeats):
            for name in sorted(sides, reverse=repeat % 2 == 1):
                output = scratch / f"run_{name}"
                shutil.rmtree(output, ignore_errors=True)
                started = time.perf_counter()
                sides[name](output)
                times[name].append(time.perf_counter() - started)

    seconds = {name: statistics.median(values) for name, values in times.items()}
    ours, baseline = args.videos / seconds["ours"], args.videos / seconds["baseline"]
    entry = {
        "name": "audio_streams", "ours": round(ours, 3), "baseline": round(baseline, 3),
        "ratio": round(ours / baseline, 2), "target": TARGET, "unit": "videos/s",
        "videos": f"{args.videos} synthetic, {args.seconds} s, 16 kHz AAC", "reader": "moviepy (LongVALE's)",
        "encoders": "tiny BEATs (tiny_models) and tiny Whisper", "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "check": f"features differ: {', '.join(differing)}" if differing else "ok",
    }  # fmt: skip
    print(json.dumps(entry))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([entry], indent=2) + "\n", encoding="utf-8")
    return 0 if entry["check"] == "ok" and entry["ratio"] >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
