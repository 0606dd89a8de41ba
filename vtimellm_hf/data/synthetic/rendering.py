"""Pixels of the synthetic scenes ([`scenes`]): video frames encoded to H.264 mp4, stills to PNG. No random draw
happens here: the same scene gives the same pixels."""

import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from .scenes import COLOURS, Background, SyntheticStill, SyntheticVideo, shape_mask


def background_image(background: Background, width: int, height: int) -> np.ndarray:
    """The float32 `(height, width, 3)` image of `background`."""
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = np.cos(background.angle) * columns / width + np.sin(background.angle) * rows / height
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    first, second = np.array(background.first) * 255, np.array(background.second) * 255
    image = (1 - ramp[..., None]) * first + ramp[..., None] * second
    # The coarse field upsampled bilinearly, so the texture is smooth and cheap to encode.
    coarse = np.array(background.blotches, dtype=np.float32)
    row_positions = np.linspace(0, 3, height)
    column_positions = np.linspace(0, 3, width)
    blotches = np.stack([np.interp(column_positions, np.arange(4), line) for line in coarse])
    blotches = np.stack([np.interp(row_positions, np.arange(4), blotches[:, column]) for column in range(width)], 1)
    return (image + blotches[..., None]).astype(np.float32)


def render_video_frames(video: SyntheticVideo) -> np.ndarray:
    """
    The frames of `video` as a uint8 array `(num_frames, height, width, 3)`.

    The background breathes slowly (a few grey levels over several seconds) so that frames outside events are
    not all identical; events are drawn in start order, so a later shape covers an earlier one where they meet.
    """
    times = np.arange(video.num_frames, dtype=np.float32) / video.fps
    breathing = 4.0 * np.sin(2 * np.pi * times / 6.0)
    frames = background_image(video.background, video.width, video.height)[None] + breathing[:, None, None, None]
    for event in video.events:
        mask = event.mask(video.width, video.height)
        frame_range = video.event_frame_range(event)
        frames[frame_range.start : frame_range.stop, mask] = COLOURS[event.colour]
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def render_still(still: SyntheticStill) -> np.ndarray:
    """The uint8 `(height, width, 3)` image of `still`."""
    image = background_image(still.background, still.width, still.height)
    for colour, shape, box in still.shapes:
        image[shape_mask(shape, box, still.width, still.height)] = COLOURS[colour]
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_video(path: Path, video: SyntheticVideo) -> None:
    encode_mp4(path, render_video_frames(video), video.fps)


def write_still(path: Path, still: SyntheticStill) -> None:
    Image.fromarray(render_still(still)).save(path)


def encode_mp4(path: str | Path, frames: np.ndarray, fps: int) -> None:
    """
    Encodes uint8 RGB `frames` `(num_frames, height, width, 3)` to an H.264 mp4 with the ffmpeg binary of
    `imageio-ffmpeg`, piping raw frames to it.

    One encoder thread and bit-exact flags keep the file identical from run to run.
    """
    try:
        import imageio_ffmpeg
    except ImportError as error:
        raise ImportError(
            f"Writing {path} needs the ffmpeg binary of imageio-ffmpeg: `pip install imageio-ffmpeg`."
        ) from error
    num_frames, height, width, channels = frames.shape
    if frames.dtype != np.uint8 or channels != 3:
        raise ValueError(f"{path}: expected uint8 RGB frames, got dtype {frames.dtype} with {channels} channels.")
    if width % 2 or height % 2:
        raise ValueError(f"{path}: H.264 in yuv420p needs an even frame size, got {width}x{height}.")
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-y",
        "-loglevel", "error",
        "-f", "rawvideo",
        "-pix_fmt", "rgb24",
        "-s", f"{width}x{height}",
        "-framerate", str(fps),
        "-i", "pipe:0",
        "-c:v", "libx264",
        "-preset", "veryfast",
        "-crf", "18",
        "-pix_fmt", "yuv420p",
        "-threads", "1",
        "-map_metadata", "-1",
        "-fflags", "+bitexact",
        "-flags", "+bitexact",
        str(path),
    ]  # fmt: skip
    result = subprocess.run(command, input=frames.tobytes(), capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed to write {path}: {result.stderr.decode(errors='replace').strip()}")
