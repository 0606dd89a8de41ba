"""Benchmark: decoding 100 sampled frames with PyAV (the default backend) against seeking to each frame, and decord.

    python bench/bench_decode.py [--out bench/results/decode.json] [--seconds 120] [--size 1280x720] [--gop 250]

Two figures, in videos/s (one video's 100 sampled frames as RGB arrays, `load_video_frames`):

* `decode_long_gop`: a synthetic video with keyframes far apart (ffmpeg's `testsrc2`, `--seconds` long at 30 fps,
  `--size`, H.264 with a keyframe every `--gop` frames and 3 B-frames; by default 2 minutes of 720p, GOP 250, made
  once with the ffmpeg of imageio-ffmpeg, in `--video-dir` if given). Ours decodes forwards and seeks only where a
  keyframe lies between the last decoded frame and the next sampled one: here it reads the video through once. The
  baseline seeks to each sampled frame (PyAV: `seek` to its time, decode from the keyframe before it up to it), which
  decodes from the keyframe again for every frame. Target: 2x.
* `decode_real`: the two real test videos (`$VTIMELLM_TEST_DATA/videos`, default `../shared/data/videos`: Charades
  3MSZA, 480x270, and a 406x720 clip, keyframes 160 to 250 frames apart), ours against decord (`backend="decord"`,
  the decoder before PyAV became the default). Target: 1x, no slower. Needs decord (`pip install
  vtimellm-hf[decord]`) and the test videos; left out without them.

Every side decodes on one thread, as each extraction worker does. Repetitions alternate (order swapped every
repetition); figures come from the median times. The frames of every side must be identical (`check`). The long-GOP
entry also gives decord's rate on that video where decord is installed.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vtimellm_hf.model import load_video_frames, sample_frame_indices

NUM_FRAMES = 100
FPS = 30
TARGETS = {"decode_long_gop": 2.0, "decode_real": 1.0}


def make_long_gop_video(path: Path, seconds: int, size: str, gop: int) -> None:
    import imageio_ffmpeg

    source = f"testsrc2=size={size}:rate={FPS}:duration={seconds}"
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i", source,
        "-c:v", "libx264", "-preset", "veryfast", "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
        "-bf", "3", "-pix_fmt", "yuv420p", str(path),
    ]  # fmt: skip
    subprocess.run(command, check=True)


def seek_to_each_frame(path: Path) -> np.ndarray:
    """The baseline: per sampled frame, a seek to its time (to the keyframe before it) and decoding up to it."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        times = sorted(packet.pts for packet in container.demux(stream) if packet.size)
        indices = sample_frame_indices(len(times), NUM_FRAMES)
        frames = {}
        for index in np.unique(indices).tolist():
            container.seek(times[index], stream=stream, backward=True)
            frame = next(frame for frame in container.decode(stream) if frame.pts >= times[index])
            frames[index] = frame.to_ndarray(format="rgb24")
    return np.stack([frames[index] for index in indices.tolist()])


def has_decord() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def measure(sides: dict, repeats: int) -> tuple[dict[str, float], str]:
    """`({side: median seconds}, check)` of `sides` (`{name: function giving a list of frame arrays}`, ours first),
    run alternately."""
    outputs = {name: side() for name, side in sides.items()}  # warm-up, and the frames compared
    reference = outputs["ours"]
    differing = [name for name, frames in outputs.items()
                 if len(frames) != len(reference) or not all(map(np.array_equal, frames, reference))]  # fmt: skip
    times = {name: [] for name in sides}
    for repeat in range(repeats):
        for name in sorted(sides, reverse=repeat % 2 == 1):
            started = time.perf_counter()
            sides[name]()
            times[name].append(time.perf_counter() - started)
    check = f"frames differ from ours: {', '.join(differing)}" if differing else "ok"
    return {name: statistics.median(seconds) for name, seconds in times.items()}, check


def entry(name: str, seconds: dict[str, float], baseline: str, count: int, check: str, **details) -> dict:
    """The figure of `name`: videos/s of ours and of `baseline`, which decoded `count` videos a repetition."""
    ours, theirs = count / seconds["ours"], count / seconds[baseline]
    return {"name": name, "ours": round(ours, 3), "baseline": round(theirs, 3), "ratio": round(ours / theirs, 2),
            "target": TARGETS[name], "unit": "videos/s", **details, "check": check}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "decode.json")
    parser.add_argument("--seconds", type=int, default=120, help="length of the long-GOP video (default: %(default)s)")
    parser.add_argument("--size", default="1280x720", help="its frame size (default: %(default)s)")
    parser.add_argument("--gop", type=int, default=250, help="frames from keyframe to keyframe (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of each side (default: %(default)s)")
    parser.add_argument("--video-dir", type=Path, help="where the long-GOP video is made once and kept")
    parser.add_argument("--threads", type=int, default=None, help="accepted for run_all.py; decoding uses one thread")
    args = parser.parse_args(argv)

    decord = has_decord()
    entries = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.video_dir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        video = folder / f"long_gop_{args.seconds}s_{args.size}_gop{args.gop}.mp4"
        if not video.is_file():
            make_long_gop_video(video, args.seconds, args.size, args.gop)
        sides = {
            "ours": lambda: [load_video_frames(video, NUM_FRAMES)[0]],
            "seek_each": lambda: [seek_to_each_frame(video)],
        }
        if decord:
            sides["decord"] = lambda: [load_video_frames(video, NUM_FRAMES, backend="decord")[0]]
        seconds, check = measure(sides, args.repeats)
        details = {"decord": round(1 / seconds["decord"], 3)} if decord else {}
        video_name = f"{args.seconds} s of {args.size} at {FPS} fps, H.264, GOP {args.gop}, 3 B-frames"
        entries.append(entry("decode_long_gop", seconds, "seek_each", 1, check, video=video_name,
                             repeats=args.repeats, **details))  # fmt: skip

    data = Path(os.environ.get("VTIMELLM_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    real = sorted((data / "videos").glob("*.mp4"))
    if decord and real:
        sides = {
            "ours": lambda: [load_video_frames(path, NUM_FRAMES)[0] for path in real],
            "decord": lambda: [load_video_frames(path, NUM_FRAMES, backend="decord")[0] for path in real],
        }
        seconds, check = measure(sides, args.repeats)
        entries.append(entry("decode_real", seconds, "decord", len(real), check,
                             videos=", ".join(path.name for path in real), repeats=args.repeats))  # fmt: skip
    else:
        print(f"decode_real left out: {'the real test videos are missing' if decord else 'decord is not installed'}")

    print(json.dumps(entries))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    met = all(item["check"] == "ok" and item["ratio"] >= item["target"] for item in entries)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
