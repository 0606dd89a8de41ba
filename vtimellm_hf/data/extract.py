"""Frame features of videos and images for VTimeLLM: `vtimellm-hf extract-features`.

Every video becomes `{id}.npy`, a float16 array of shape `(num_frames, D)`: the CLIP image embeddings
(`CLIPVisionModelWithProjection(...).image_embeds`, D = 768 for `openai/clip-vit-large-patch14`) of `num_frames`
frames sampled as the original does; every image becomes a `(D,)` array. This is the layout of the original VTimeLLM
(see [`vtimellm_hf.data.features`]), so its features and these are interchangeable.

The pipeline:

* Decoding (only the sampled frames) and CLIP preprocessing run in `workers` processes (a torch `DataLoader`),
  while the main process encodes: frames of consecutive videos are packed into encoder batches of `batch_size`
  frames, whatever the videos' lengths.
* Resumable: an id whose `.npy` already holds a complete array of the expected shape is skipped, unless
  `{output_dir}/extraction.jsonl` (a line per written feature: id, window, frames, encoder) says it was made
  with other settings (a whole-video feature where a stage-2 record now asks for a window of it, say); each file is
  written atomically, so a killed run leaves complete files only and a rerun finishes the rest.
* A video that cannot be used (corrupt, empty, not a video, a window outside it, no file for an annotation id) is
  reported on stderr and in `{output_dir}/failures.jsonl` (`{"id", "path", "reason"}` per line) and the run goes on;
  the command exits with status 1 when anything failed. A rerun retries the failures; `failures.jsonl` always
  describes the latest run and is absent when it had none.
* Several processes (`torchrun`, `accelerate launch`; see [`vtimellm_hf.distributed`]) share the inputs left to do,
  each on its own GPU and with its own record files, which the main process merges: the same files as one process.
* `--consolidate OUT` (or `vtimellm-hf consolidate-features DIR OUT`) packs the features into one store, a
  safetensors file or a sharded `datasets` store (see [`~vtimellm_hf.data.features.consolidate_features`]).
* `--streams video,audio,speech` (LongVALE) or `--streams video,clap` (AVicuna) also encodes the audio track of each
  video, each stream into its folder (`video_features/`, `audio_features/`, `speech_features/`) with its own records;
  see [`vtimellm_hf.data.audio_extract`].
"""

import argparse
import json
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..checkpoints import DTYPES, torch_dtype
from ..cli import USAGE_ERRORS, non_negative_int, positive_int, reports_errors
from ..distributed import ProcessFailedError, Processes, current_processes, job_status, process_files
from ..files import remove_stale_temporaries
from ..model import (
    DEFAULT_FRAME_ENCODER,
    VIDEO_BACKENDS,
    VTimeFrameEncoder,
    VTimeProcessor,
    check_video_backend,
    image_as_frame,
    load_video_frames,
    preprocess_frames,
)
from .audio_extract import STREAMS, extract_streams, parse_streams
from .extraction_records import (
    FAILURES_FILE,
    SETTINGS_FILE,
    ExtractionReport,
    FailureLog,
    announce,
    merge_failures,
    merge_settings,
    read_settings,
)
from .features import (
    FEATURE_DTYPE,
    check_feature,
    consolidate_features,
    feature_path,
    open_feature_store,
    read_npy_header,
    write_feature,
)
from .media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, ExtractionFailure, MediaItem, collect_media

__all__ = [
    "FAILURES_FILE",
    "SETTINGS_FILE",
    "STREAMS",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "ExtractionFailure",
    "ExtractionReport",
    "MediaItem",
    "add_subcommand",
    "collect_media",
    "extract_features",
]

logger = logging.getLogger(__name__)

# Matrix-multiply libraries use other kernels, with other rounding, for matrices of a few rows (MKL: under 12). The
# last batch of a run, the only one that can be short, is padded to a multiple of this many frames, so that a
# feature's bytes do not depend on how many frames happened to be left at the end.
_PAD_MULTIPLE = 16


class _DecodedMedia(Dataset):
    """
    Item `i`: `(i, pixels, None)` with float `pixels` of shape `(frames, 3, frame_size, frame_size)` (1 frame for an
    image), or `(i, None, reason)` when the file cannot be used. Runs in the `DataLoader` workers, so a bad file is
    returned as a reason rather than raised, which would end the whole loader.
    """

    def __init__(self, items, num_frames, frame_size, mean, std, pixel_dtype, video_backend):
        self.items = items
        self.num_frames = num_frames
        self.video_backend = video_backend
        self.frame_size = frame_size
        self.mean = mean
        self.std = std
        self.pixel_dtype = pixel_dtype

    def __len__(self) -> int:
        return len(self.items)

    def _preprocess(self, frames) -> torch.Tensor:
        return preprocess_frames(frames, self.frame_size, self.mean, self.std)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        item = self.items[index]
        try:
            if item.is_image:
                from PIL import Image

                with Image.open(item.path) as image:
                    # A copy: PIL's array is read-only, which torch warns about
                    pixels = self._preprocess(image_as_frame(image).copy())
            else:
                # Each chunk of decoded frames is preprocessed before the next is decoded: a worker never holds a
                # video of huge frames whole
                pixels, _ = load_video_frames(
                    item.path, self.num_frames, item.window, self._preprocess, self.video_backend
                )
        except Exception as error:  # whatever a damaged file makes the decoders raise, it is that file's failure
            return index, None, f"{type(error).__name__}: {error}"
        # The encoder casts to its dtype anyway; casting here halves what crosses processes for a float16 encoder
        return index, pixels.to(self.pixel_dtype), None


def _as_is(sample):
    return sample


@dataclass
class _PendingVideo:
    key: int
    pixels: torch.Tensor  # (frames, 3, size, size)
    encoded: int = 0  # frames already sent to the encoder
    chunks: list[torch.Tensor] = field(default_factory=list)  # their embeddings, in order


class _FrameBatcher:
    """
    Packs the frames of consecutive videos into encoder batches of `batch_size` frames and hands back each video's
    features, float16 `(frames, D)`, once all its frames are encoded (videos finish in the order they were added).

    A frame's embedding does not depend on the other frames of its batch (CLIP encodes each image on its own), nor on
    the batch's shape: every forward pass has `batch_size` rows, but the last of a run, which has a multiple of
    `_PAD_MULTIPLE`. So the bytes of a feature do not depend on which videos shared its batches.
    """

    def __init__(self, encoder, batch_size: int, device: torch.device, dtype: torch.dtype):
        self.encoder = encoder
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self._queue: deque[_PendingVideo] = deque()
        self._pending_frames = 0

    def add(self, key: int, pixels: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        self._queue.append(_PendingVideo(key, pixels))
        self._pending_frames += len(pixels)
        finished = []
        while self._pending_frames >= self.batch_size:
            finished += self._encode(self.batch_size)
        return finished

    def flush(self) -> list[tuple[int, torch.Tensor]]:
        finished = []
        while self._pending_frames:
            finished += self._encode(min(self._pending_frames, self.batch_size))
        return finished

    @torch.inference_mode()
    def _encode(self, count: int) -> list[tuple[int, torch.Tensor]]:
        takers, needed = [], count
        for video in self._queue:
            if not needed:
                break
            take = min(needed, len(video.pixels) - video.encoded)
            if take:
                takers.append((video, video.pixels[video.encoded : video.encoded + take]))
                video.encoded += take
                needed -= take
        # The pieces are views of the worker outputs, pinned when on CUDA: copied one by one, they go asynchronously
        batch = torch.cat([piece.to(self.device, non_blocking=True) for _, piece in takers])
        padded = min(self.batch_size, math.ceil(count / _PAD_MULTIPLE) * _PAD_MULTIPLE)
        if padded > count:
            batch = torch.cat([batch, batch[:1].expand(padded - count, *batch.shape[1:])])
        embeddings = self.encoder(pixel_values=batch.to(self.dtype)).image_embeds
        embeddings = embeddings[:count].to("cpu", torch.float16)
        start = 0
        for video, piece in takers:
            video.chunks.append(embeddings[start : start + len(piece)])
            start += len(piece)
        self._pending_frames -= count
        finished = []
        while self._queue and self._queue[0].encoded == len(self._queue[0].pixels):
            video = self._queue.popleft()
            finished.append((video.key, torch.cat(video.chunks)))
        return finished


def _resolve_device_and_dtype(device, dtype) -> tuple[torch.device, torch.dtype]:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        # float16 on GPUs, as the original encoded; CPUs are slow or inexact in half precision
        return device, torch.float16 if device.type == "cuda" else torch.float32
    return device, torch_dtype(dtype)


def _is_extracted(path: Path, expected_shape: tuple[int, ...]) -> bool:
    try:
        header = read_npy_header(path)
    except (OSError, ValueError):
        return False
    return header.complete and header.dtype == FEATURE_DTYPE and header.shape == expected_shape


@dataclass
class _Encoding:
    """What the features of a run are made with, and how each is recorded in `extraction.jsonl`."""

    encoder: torch.nn.Module
    frame_size: int
    mean: list[float]
    std: list[float]
    device: torch.device
    dtype: torch.dtype
    num_frames: int
    batch_size: int
    video_backend: str

    @property
    def dim(self) -> int:
        return self.encoder.config.projection_dim

    def expected_shape(self, item: MediaItem) -> tuple[int, ...]:
        return (self.dim,) if item.is_image else (self.num_frames, self.dim)

    def settings(self, item: MediaItem) -> dict:
        window = None if item.window is None else list(item.window)
        return {"id": item.feature_id, "window": window, "num_frames": self.num_frames,
                "encoder": self.encoder.name_or_path}  # fmt: skip


@dataclass
class _Plan:
    """What the main process found to do: every input, those that named no usable file, those left to encode."""

    total: int
    input_failures: list[ExtractionFailure]
    todo: list[MediaItem]


def _plan_extraction(inputs, video_root, output_dir: Path, encoding: _Encoding) -> _Plan:
    """The main process's plan: every input, less the features already made with the same settings."""
    items, input_failures = collect_media(inputs, video_root)
    # What earlier runs recorded, merged first: their features count as done; their failures are retried
    merge_settings(output_dir)
    for path in [output_dir / FAILURES_FILE, *process_files(output_dir / FAILURES_FILE)]:
        path.unlink(missing_ok=True)
    earlier = read_settings(output_dir)

    def is_done(item: MediaItem) -> bool:
        # A feature without a record (copied from elsewhere, or the original's release) is trusted by its shape
        recorded = earlier.get(item.feature_id)
        same_settings = recorded is None or recorded == encoding.settings(item)
        return same_settings and _is_extracted(feature_path(output_dir, item.feature_id), encoding.expected_shape(item))

    todo = [item for item in items if not is_done(item)]
    # `os.path.exists`: an unusable name (too long, say) is no stale file; writing it is the item's failure
    stale = sum(os.path.exists(feature_path(output_dir, item.feature_id)) for item in todo)
    if stale:
        tqdm.write(
            f"re-extracting {stale} feature file(s) that are incomplete, of another shape, or made with other "
            f"settings (window, frames, encoder; see {SETTINGS_FILE})",
            file=sys.stderr,
        )
    for failure in input_failures:
        announce(failure)
    return _Plan(len(items) + len(input_failures), input_failures, todo)


def _extract_share(
    items: list[MediaItem], output_dir: Path, encoding: _Encoding, workers: int, processes: Processes, progress
) -> int:
    """Encodes `items` into their `.npy` files, recording each in this process's record files; returns how many
    were written."""
    failure_log = FailureLog(processes.record_file(output_dir / FAILURES_FILE))
    loader = DataLoader(
        _DecodedMedia(
            items, encoding.num_frames, encoding.frame_size, encoding.mean, encoding.std, encoding.dtype,
            encoding.video_backend,
        ),  # fmt: skip
        batch_size=None,
        num_workers=min(workers, len(items)),
        collate_fn=_as_is,
        pin_memory=encoding.device.type == "cuda",
        # Take whichever video is decoded first: a long video must not hold up the others
        in_order=False,
    )
    batcher = _FrameBatcher(encoding.encoder, encoding.batch_size, encoding.device, encoding.dtype)
    extracted = 0
    # One progress bar, the main process's share, whatever the number of processes
    show = (None if progress is None else progress) if processes.is_main else False
    settings_log = open(processes.record_file(output_dir / SETTINGS_FILE), "a", encoding="utf-8")
    try:
        with tqdm(total=len(items), unit="video", disable=None if show is None else not show) as bar:

            def save(finished: list[tuple[int, torch.Tensor]]) -> int:
                written = 0
                for index, features in finished:
                    item = items[index]
                    array = features.numpy()[0] if item.is_image else features.numpy()
                    try:
                        check_feature(array, 1 if item.is_image else encoding.num_frames, encoding.dim, item.feature_id)
                    except ValueError as error:  # e.g. float16 overflow of a bfloat16 encoder
                        failure_log.add(ExtractionFailure(item.feature_id, str(item.path), str(error)))
                    else:
                        # The record first, and without the stale file it would describe: a run killed in between
                        # leaves no feature, so the next run makes it (a feature without its record is trusted)
                        path = feature_path(output_dir, item.feature_id)
                        try:
                            path.unlink(missing_ok=True)
                            settings_log.write(json.dumps(encoding.settings(item)) + "\n")
                            settings_log.flush()
                            write_feature(path, array)
                            written += 1
                        # A name too long for the file system, a folder in the way, an id it cannot encode: this
                        # item's failure, not the run's
                        except (OSError, ValueError) as error:
                            failure_log.add(ExtractionFailure(item.feature_id, str(item.path),
                                                              f"cannot write {path}: {error}"))  # fmt: skip
                    bar.update()
                return written

            for index, pixels, reason in loader:
                if reason is not None:
                    failure_log.add(ExtractionFailure(items[index].feature_id, str(items[index].path), reason))
                    bar.update()
                else:
                    extracted += save(batcher.add(index, pixels))
            extracted += save(batcher.flush())
    finally:
        settings_log.close()
        failure_log.close()
    return extracted


def extract_features(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    clip: str | os.PathLike | VTimeProcessor = DEFAULT_FRAME_ENCODER,
    num_frames: int = 100,
    batch_size: int = 128,
    workers: int | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    video_root: str | os.PathLike | None = None,
    consolidate: str | os.PathLike | None = None,
    progress: bool | None = None,
    max_shard_size: str | int | None = None,
    streams: str | Sequence[str] = ("video",),
    audio_encoders: Mapping[str, str | None] | None = None,
    audio_reader: str | None = None,
    video_backend: str = "pyav",
) -> ExtractionReport:
    """
    Encodes videos and images into `{output_dir}/{id}.npy`: float16 `(num_frames, D)` per video, `(D,)` per image.

    A feature is `VTimeProcessor.encode_frames(load_video_frames(path, num_frames, window)[0])` cast to float16: the
    same sampling, preprocessing and encoder. Its bytes do not depend on `workers`, on the number of processes nor on
    which videos shared its batches. On CPU with batches of 16 frames or more they are exactly those of
    `encode_frames`; smaller batches (MKL uses other kernels under 12 rows) and GPUs (whose kernels depend on the batch
    size) may change the last bit.

    Run by several processes (`torchrun`, `accelerate launch`: see [`vtimellm_hf.distributed`]), each encodes every
    `world_size`-th input left to do on its own device (`cuda:LOCAL_RANK`), writes its own record files
    (`extraction.rankR.jsonl`, `failures.rankR.jsonl`), and the main process merges them once all have finished:
    the files are those one process writes. A rerun, with any number of processes, merges what a killed run recorded
    and finishes the rest.

    Args:
        inputs: a folder, a media file, an annotation file, a list file of paths, or a list of paths; see
            [`collect_media`].
        output_dir: the folder of `{id}.npy` files (created if needed).
        clip: a `CLIPVisionModelWithProjection` name or folder, whose `preprocessor_config.json` gives the crop
            size, mean and std; or a [`VTimeProcessor`], whose encoder and preprocessing are used (its encoder is
            moved to `device` and `dtype`).
        num_frames: frames sampled per video.
        batch_size: frames per encoder forward pass, packed across videos.
        workers: decoding processes of each process (0: decode in the process, without overlap); default: its share
            of the CPUs (`LOCAL_WORLD_SIZE` processes per machine), up to 8. Each holds up to two decoded videos
            (`num_frames` frames, 3 x frame_size x frame_size each) in shared memory.
        device: where the encoder runs; default: CUDA when available (the process's own GPU), else CPU.
        dtype: the encoder's dtype (`"float16"`, `"bfloat16"`, `"float32"` or a torch dtype); default: float16 on
            CUDA, float32 on CPU. Features are stored as float16 whatever it is.
        video_root: for annotation files, the folder holding `{id}.*` (and stage-1 images).
        consolidate: also pack all features of `output_dir` into this store once all are written: a `.safetensors`
            file, or a sharded `datasets` store for any other name (see
            [`~vtimellm_hf.data.features.consolidate_features`]); skipped when a process failed.
        progress: show a progress bar (videos/s); default: when stderr is a terminal.
        max_shard_size: the largest shard of a sharded `consolidate` store (default 500MB).
        streams: the streams to make, of `video`, `audio` (BEATs), `speech` (Whisper) and `clap` (AVicuna's CLAP
            audio), as a list or a comma-separated string. `("video",)` writes `output_dir/{id}.npy` as above; with
            audio streams every stream gets its folder in `output_dir` (`video_features`, `audio_features`,
            `speech_features`), the originals' layout, and `consolidate` packs the video stream.
        audio_encoders: the name or path of each audio stream's encoder, by stream
            (`{"audio": "BEATs_iter3_plus_AS20K.pt"}`); Whisper and CLAP default to `openai/whisper-large-v2` and
            `laion/clap-htsat-fused`, BEATs has no default.
        audio_reader: how every audio stream reads the track (`"moviepy"`, `"librosa"`, `"ffmpeg"`; see
            [`~vtimellm_hf.model.audio_decoding_vtime.load_audio`]); default: as each stream's original.
        video_backend: the video decoder, `"pyav"` or `"decord"` (`pip install vtimellm-hf[decord]`): the same
            frames either way (see [`~vtimellm_hf.model.load_video_frames`]).

    Returns:
        An [`ExtractionReport`] (the same on every process); failed inputs are in its `failures` and in
        `{output_dir}/failures.jsonl`.

    Raises:
        ImportError: with `video_backend="decord"` where decord is not installed, before anything is done.
        ProcessFailedError: on every process of a job of several, once the records are merged, when one of them
            raised (its error names it); a job of one process raises the error itself.
    """
    if num_frames < 1 or batch_size < 1:
        raise ValueError(f"num_frames and batch_size must be positive, got {num_frames} and {batch_size}.")
    # Here rather than in the workers, where it would be a failure of every video
    check_video_backend(video_backend)
    streams = parse_streams(streams)
    if streams != ("video",):
        video = dict(clip=clip, num_frames=num_frames, batch_size=batch_size, workers=workers, device=device,
                     dtype=None if dtype is None else torch_dtype(dtype), video_root=video_root,
                     consolidate=consolidate, progress=progress, max_shard_size=max_shard_size,
                     video_backend=video_backend)  # fmt: skip
        return extract_streams(inputs, Path(output_dir), streams, extract_features, video, audio_encoders, audio_reader)
    processes = current_processes()
    if workers is None:
        workers = min(8, max(1, (os.cpu_count() or 1) // processes.local_world_size))
    output_dir = Path(output_dir)

    def set_up() -> _Encoding:
        output_dir.mkdir(parents=True, exist_ok=True)
        if processes.is_first_on_its_machine:
            remove_stale_temporaries(output_dir)
        run_device, run_dtype = _resolve_device_and_dtype(processes.device(device), dtype)
        frame_encoder = clip.frame_encoder if isinstance(clip, VTimeProcessor) else VTimeFrameEncoder(str(clip))
        encoder = frame_encoder.to(run_device, run_dtype).model.eval()
        video_processor = frame_encoder.video_processor
        frame_size, mean, std = video_processor.frame_size, video_processor.image_mean, video_processor.image_std
        return _Encoding(encoder, frame_size, mean, std, run_device, run_dtype, num_frames, batch_size, video_backend)

    encoding = processes.set_up_each(set_up)
    plan = processes.run_on_main(lambda: _plan_extraction(inputs, video_root, output_dir, encoding))
    start = time.perf_counter()
    shares = processes.run_on_each(
        lambda: _extract_share(processes.share(plan.todo), output_dir, encoding, workers, processes, progress)
    )
    seconds = time.perf_counter() - start

    def merge() -> ExtractionReport:
        merge_settings(output_dir)
        report = ExtractionReport(
            output_dir=output_dir,
            total=plan.total,
            extracted=sum(count or 0 for count in shares.values),
            skipped=plan.total - len(plan.input_failures) - len(plan.todo),
            failures=merge_failures(output_dir, plan.input_failures, plan.todo),
            seconds=seconds,
        )
        if consolidate is not None and not shares.errors:
            report.consolidated = consolidate_features(output_dir, consolidate, max_shard_size=max_shard_size)
        return report

    report = processes.run_on_main(merge)
    processes.raise_errors(shares)
    return report


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    """
    Registers `extract-features INPUT OUTPUT_DIR [options]` on an argparse `subparsers` object; the parsed
    arguments carry `run(args) -> exit status` (0: all done, 1: some inputs failed, 2: unusable arguments).
    """
    parser = subparsers.add_parser(
        "extract-features",
        help="encode videos and images into VTimeLLM frame features ({id}.npy)",
        description="Encode videos and images with CLIP into VTimeLLM frame features: one float16 "
        "(num_frames, D) OUTPUT_DIR/{id}.npy per video, (D,) per image, the layout of the original VTimeLLM. "
        "Resumable; failures go to OUTPUT_DIR/failures.jsonl and make the exit status 1.",
    )
    parser.add_argument(
        "input",
        metavar="INPUT",
        help="a folder of videos/images, a video or image, a text file of paths (one a line), or a VTimeLLM or "
        "ActivityNet Captions JSON file (with --video-root)",
    )
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="folder of the {id}.npy files")
    parser.add_argument(
        "--clip",
        default=DEFAULT_FRAME_ENCODER,
        metavar="NAME_OR_PATH",
        help="CLIPVisionModelWithProjection checkpoint (default: %(default)s)",
    )
    parser.add_argument("--num-frames", type=positive_int, default=100, help="frames per video (default: 100)")
    parser.add_argument(
        "--batch-size", type=positive_int, default=128, help="frames per encoder pass, across videos (default: 128)"
    )
    parser.add_argument(
        "--workers", type=non_negative_int, default=None, help="decoding processes (default: CPU count, up to 8)"
    )
    parser.add_argument("--device", default=None, help="encoder device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype", choices=tuple(DTYPES), default=None, help="encoder dtype (default: float16 on cuda, else float32)"
    )
    parser.add_argument(
        "--video-root",
        default=None,
        metavar="DIR",
        help="for an annotation INPUT (JSON, Charades-STA): the folder holding the videos {id}.*",
    )
    _add_store_arguments(parser, "--consolidate", "also pack all features into this store once they are written: ")
    parser.add_argument(
        "--streams", default="video", metavar="LIST",
        help="streams to make, comma-separated: video, audio (BEATs), speech (Whisper), clap (AVicuna's CLAP audio); "
        "with audio streams each goes to OUTPUT_DIR/{video,audio,speech}_features (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--beats", default=None, metavar="PATH",
                        help="BEATs checkpoint of the audio stream: BEATs_iter3_plus_AS20K.pt, or a folder holding it")
    parser.add_argument("--whisper", default=None, metavar="NAME_OR_PATH",
                        help="Whisper checkpoint of the speech stream (default: openai/whisper-large-v2)")
    parser.add_argument("--clap-audio", default=None, metavar="NAME_OR_PATH",
                        help="CLAP checkpoint of the clap stream (default: laion/clap-htsat-fused)")
    parser.add_argument(
        "--audio-reader", choices=("moviepy", "librosa", "ffmpeg"), default=None,
        help="how audio tracks are read: moviepy (LongVALE's), librosa (AVicuna's), ffmpeg (resampled once, clean); "
        "default: as each stream's original",
    )  # fmt: skip
    parser.add_argument(
        "--video-backend", choices=VIDEO_BACKENDS, default="pyav",
        help="video decoder: pyav, or decord (pip install vtimellm-hf[decord]); the same frames (default: %(default)s)",
    )  # fmt: skip
    parser.set_defaults(run=_run)

    consolidate = subparsers.add_parser(
        "consolidate-features",
        help="pack a folder of {id}.npy features into one store",
        description="Pack the {id}.npy features of NPY_DIR into OUTPUT: one .safetensors file (up to about a million "
        "ids), or, for any other name, a sharded datasets store (Arrow shards, any number of ids, load_from_disk and "
        "push_to_hub). Written atomically; an earlier store at OUTPUT is replaced.",
    )
    consolidate.add_argument("npy_dir", metavar="NPY_DIR", help="folder of the {id}.npy files")
    _add_store_arguments(consolidate, "output", "")
    consolidate.set_defaults(run=_run_consolidate)
    return parser


def _add_store_arguments(parser: argparse.ArgumentParser, name: str, help_start: str) -> None:
    parser.add_argument(
        name, default=None, metavar="OUTPUT" if name == "output" else "PATH",
        help=f"{help_start}a FILE.safetensors, or a folder for a sharded datasets store",
    )  # fmt: skip
    parser.add_argument(
        "--max-shard-size", default=None, metavar="SIZE", type=lambda text: int(text) if text.isdigit() else text,
        help="largest shard of a sharded store, in bytes or as 500MB (default: 500MB)",
    )  # fmt: skip


@reports_errors("extract-features", {(*USAGE_ERRORS, ImportError, ProcessFailedError): 2})
def _run(args: argparse.Namespace) -> int:
    def run(processes: Processes) -> int:
        report = extract_features(
            args.input,
            args.output_dir,
            clip=args.clip,
            num_frames=args.num_frames,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            dtype=args.dtype,
            video_root=args.video_root,
            consolidate=args.consolidate,
            max_shard_size=args.max_shard_size,
            streams=args.streams,
            audio_encoders={"audio": args.beats, "speech": args.whisper, "clap": args.clap_audio},
            audio_reader=args.audio_reader,
            video_backend=args.video_backend,
        )
        if processes.is_main:
            print(f"extract-features: {report.summary()}", file=sys.stderr)
        return 0 if report.ok else 1

    return job_status(run)


@reports_errors("consolidate-features")
def _run_consolidate(args: argparse.Namespace) -> int:
    output = consolidate_features(args.npy_dir, args.output, max_shard_size=args.max_shard_size)
    print(f"consolidate-features: {len(open_feature_store(output))} features in {output}", file=sys.stderr)
    return 0
