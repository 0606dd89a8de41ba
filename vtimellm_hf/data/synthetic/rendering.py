"""Pixels and sounds of the synthetic scenes ([`scenes`]): video frames encoded to H.264 mp4 (with an AAC audio track
for a scene with sounds), stills to PNG. No random draw happens here: the same scene gives the same pixels and
samples."""

import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np
from PIL import Image

from .scenes import COLOURS, NUM_TIME_BINS, Background, SyntheticSound, SyntheticStill, SyntheticVideo, shape_mask

# Peak of a sound's samples (full scale 1): loud, and far from clipping once encoded
SOUND_AMPLITUDE = 0.3


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


def sound_waveform(sound: SyntheticSound, num_samples: int, sampling_rate: int) -> np.ndarray:
    """The float32 samples of `sound`'s kind, `num_samples` of them, at `sampling_rate`."""
    times = np.arange(num_samples) / sampling_rate
    if sound.kind == "beep":
        samples = np.sin(2 * np.pi * 1000 * times)
    elif sound.kind == "hum":
        samples = 0.7 * np.sin(2 * np.pi * 120 * times) + 0.3 * np.sin(2 * np.pi * 240 * times)
    elif sound.kind == "hiss":
        samples = np.clip(np.random.default_rng(sound.seed).normal(0.0, 0.35, num_samples), -1, 1)
    else:
        raise ValueError(f"Unknown sound {sound.kind!r}.")
    return (SOUND_AMPLITUDE * samples).astype(np.float32)


def render_audio(video: SyntheticVideo, sampling_rate: int) -> np.ndarray:
    """
    The float32 mono samples of `video`'s audio track: `duration * sampling_rate` of them, silent but where a sound
    plays, on samples `i` with `start <= i / sampling_rate < end` (exact integer arithmetic, as the frames).
    """
    num_samples = round(video.duration * sampling_rate)
    samples = np.zeros(num_samples, dtype=np.float32)
    for sound in video.sounds or ():
        first = -(-sound.start_bin * num_samples // NUM_TIME_BINS)
        stop = -(-sound.end_bin * num_samples // NUM_TIME_BINS)
        samples[first:stop] = sound_waveform(sound, stop - first, sampling_rate)
    return samples


def write_video(path: Path, video: SyntheticVideo, sampling_rate: int = 16000) -> None:
    """The video's mp4: its frames, and its audio track at `sampling_rate` where it has one."""
    audio = None if video.sounds is None else render_audio(video, sampling_rate)
    encode_mp4(path, render_video_frames(video), video.fps, audio=audio, sampling_rate=sampling_rate)


def write_still(path: Path, still: SyntheticStill) -> None:
    Image.fromarray(render_still(still)).save(path)


def encode_mp4(
    path: str | Path, frames: np.ndarray, fps: int, audio: np.ndarray | None = None, sampling_rate: int = 16000
) -> None:
    """
    Encodes uint8 RGB `frames` `(num_frames, height, width, 3)` to an H.264 mp4 with the ffmpeg binary of
    `imageio-ffmpeg`, piping raw frames to it; with `audio` (mono samples in [-1, 1] at `sampling_rate`), an AAC
    audio track too, read from a 16-bit WAV file written beside `path` and deleted.

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
    ]  # fmt: skip
    encoding = [
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
    if audio is None:
        result = subprocess.run(command + encoding, input=frames.tobytes(), capture_output=True)
    else:
        with tempfile.TemporaryDirectory(dir=Path(path).parent) as folder:
            wav = Path(folder) / "audio.wav"
            _write_wav(wav, audio, sampling_rate)
            command += ["-i", str(wav), "-map", "0:v", "-map", "1:a", "-c:a", "aac", "-b:a", "96k"]
            result = subprocess.run(command + encoding, input=frames.tobytes(), capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed to write {path}: {result.stderr.decode(errors='replace').strip()}")


def _write_wav(path: Path, samples: np.ndarray, sampling_rate: int) -> None:
    pcm = np.rint(np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(sampling_rate)
        file.writeframes(pcm.tobytes())
