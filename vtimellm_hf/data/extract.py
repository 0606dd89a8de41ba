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
  `{output_dir}/extraction.jsonl` (a line per written feature: id, clip window, frames, encoder) says it was made
  with other settings (a whole-video feature where a stage-2 record now asks for a clip, say); each file is written
  atomically, so a killed run leaves complete files only and a rerun finishes the rest.
* A video that cannot be used (corrupt, empty, not a video, a window outside it, no file for an annotation id) is
  reported on stderr and in `{output_dir}/failures.jsonl` (`{"id", "path", "reason"}` per line) and the run goes on;
  the command exits with status 1 when anything failed. A rerun retries the failures; `failures.jsonl` always
  describes the latest run and is absent when it had none.
"""

import argparse
import json
import logging
import math
import os
import re
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..model import (
    DEFAULT_FRAME_ENCODER,
    VTimeFrameEncoder,
    VTimeProcessor,
    image_as_frame,
    load_video_frames,
    preprocess_frames,
)
from .features import (
    FEATURE_DTYPE,
    check_feature,
    consolidate_features,
    feature_path,
    read_npy_header,
    remove_stale_temporaries,
    write_feature,
)
from .raw_annotations import read_charades_sta

__all__ = [
    "FAILURES_FILE",
    "SETTINGS_FILE",
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

FAILURES_FILE = "failures.jsonl"
# One line per written feature: what it was made from, so that a resumed run tells a feature made with other
# settings (another clip window, frame count or encoder) from a finished one
SETTINGS_FILE = "extraction.jsonl"
# In order of preference when `{video_root}/{id}.*` matches several files
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")

# Matrix-multiply libraries use other kernels, with other rounding, for matrices of a few rows (MKL: under 12). The
# last batch of a run, the only one that can be short, is padded to a multiple of this many frames, so that a
# feature's bytes do not depend on how many frames happened to be left at the end.
_PAD_MULTIPLE = 16
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class MediaItem:
    """
    One video or image to encode.

    Attributes:
        feature_id: the id, and the name of the output file `{feature_id}.npy`.
        path: the video or image file; a file with an image extension (jpg, jpeg, png, webp) is an image.
        window: `(start_seconds, end_seconds)` of the clip to sample, or `None` for the whole video.
    """

    feature_id: str
    path: Path
    window: tuple[float, float] | None = None

    @property
    def is_image(self) -> bool:
        return self.path.suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class ExtractionFailure:
    """An input that produced no feature: its id, its file (`None` when none was found) and why."""

    feature_id: str
    path: str | None
    reason: str

    def to_json(self) -> str:
        return json.dumps({"id": self.feature_id, "path": self.path, "reason": self.reason}, ensure_ascii=False)


@dataclass
class ExtractionReport:
    """
    What [`extract_features`] did.

    Attributes:
        output_dir: the folder of `{id}.npy` files.
        total: distinct inputs (videos and images).
        extracted: features written by this run.
        skipped: inputs whose features were already complete.
        failures: inputs that gave no feature, also listed in `{output_dir}/failures.jsonl`.
        seconds: time spent decoding, encoding and writing (loading the encoder excluded).
        consolidated: the safetensors file written, if any.
    """

    output_dir: Path
    total: int
    extracted: int
    skipped: int
    failures: list[ExtractionFailure] = field(default_factory=list)
    seconds: float = 0.0
    consolidated: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def videos_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        text = (
            f"{self.extracted} extracted, {self.skipped} already done, {len(self.failures)} failed of {self.total} "
            f"in {self.seconds:.1f} s ({self.videos_per_second:.2f} videos/s) into {self.output_dir}"
        )
        if self.failures:
            text += f"; failures are listed in {self.output_dir / FAILURES_FILE}"
        if self.consolidated is not None:
            text += f"; consolidated into {self.consolidated}"
        return text


def collect_media(
    inputs: str | os.PathLike | Iterable[str | os.PathLike], video_root: str | os.PathLike | None = None
) -> tuple[list[MediaItem], list[ExtractionFailure]]:
    """
    The videos and images named by `inputs`, and the inputs that name none.

    `inputs` is one of:

    * a folder: every video and image file in it and its subfolders (hidden ones excepted); id = file stem.
    * a video or image file; id = its stem.
    * a VTimeLLM annotation file (`.json`), a list of records with an `id`: the video is `{video_root}/{id}.*` and
      the clip `meta.split` (`[start, end]` seconds) when present; a stage-1 record with an `image` field names the
      image `{video_root}/{image}` and keeps `id` as its feature id.
    * an ActivityNet Captions file (`.json`): `{"v_ID": {...}}`, or the coco-style `{"annotations": [{"image_id":
      "v_ID.mp4", ...}]}`; the video is `{video_root}/v_ID.*`, or `{video_root}/ID.*` (downloads often drop the
      prefix); the feature id keeps the annotation's `v_ID`.
    * a Charades-STA file, `VIDEO_ID START END##sentence` a line: the video is `{video_root}/VIDEO_ID.*`, each once.
    * any other file: one path a line (blank lines and `#` comments skipped; relative paths are relative to the
      list's folder); id = file stem. `video_root` is refused here: the paths do not go through it.
    * a list of paths (Python only); id = file stem.

    An id named twice for the same file and window is kept once; an id named for two different inputs is a failure
    of the second (one feature file holds one input).

    Raises:
        FileNotFoundError: when `inputs` or `video_root` does not exist.
        ValueError: naming the file, on an annotation file that cannot be read as one of the formats above, one
            used without `video_root`, or a list of paths given with one.
    """
    if not isinstance(inputs, (str, os.PathLike)):
        return _deduplicate([MediaItem(Path(path).stem, Path(path)) for path in inputs])
    source = Path(inputs)
    if source.is_dir():
        candidates = [MediaItem(path.stem, path) for path in _media_files(source)]
    elif not source.is_file():
        raise FileNotFoundError(f"Input not found: {source}")
    elif source.suffix.lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS:
        candidates = [MediaItem(source.stem, source)]
    elif source.suffix.lower() == ".json":
        candidates = _read_annotation_file(source, video_root)
    elif _is_charades_sta(source):
        videos = _video_index(source, video_root)
        video_ids = dict.fromkeys(query.video_id for query in read_charades_sta(source))
        candidates = [videos.item(video_id) for video_id in video_ids]
    elif video_root is not None:
        raise ValueError(
            f"{source} is a list of paths (relative to its folder): video_root only applies to annotation files "
            "(.json, or Charades-STA 'ID START END##sentence' lines)."
        )
    else:
        candidates = _read_path_list(source)
    return _deduplicate(candidates)


def _media_files(folder: Path) -> list[Path]:
    extensions = set(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)
    files = []
    for directory, subdirectories, names in os.walk(folder):
        # Hidden entries include macOS "._name.mp4" resource forks, which are not videos
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        files += [
            Path(directory) / name
            for name in sorted(names)
            if not name.startswith(".") and Path(name).suffix.lower() in extensions
        ]
    return files


def _is_charades_sta(path: Path) -> bool:
    """Whether the first line that holds anything is a Charades-STA query, `VIDEO_ID START END##sentence`."""
    with open(path, encoding="utf-8-sig", errors="replace") as file:
        for line in file:
            if line.strip():
                return re.fullmatch(r"\S+ +\S+ +\S+ *##.*", line.strip()) is not None
    return False


def _read_path_list(path: Path) -> list[MediaItem]:
    items = []
    with open(path, encoding="utf-8-sig") as file:
        for line in file:
            line = line.strip()
            if line and not line.startswith("#"):
                media = path.parent / line
                items.append(MediaItem(media.stem, media))
    return items


def _read_annotation_file(path: Path, video_root: str | os.PathLike | None) -> list[MediaItem | ExtractionFailure]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON annotation file ({error}).") from error
    videos = _video_index(path, video_root)
    if isinstance(data, list):
        return [_dialogue_item(path, index, record, videos) for index, record in enumerate(data)]
    if isinstance(data, dict):
        if isinstance(data.get("annotations"), list):
            ids = [_coco_video_id(path, index, record) for index, record in enumerate(data["annotations"])]
        else:
            ids = list(data)
        return [videos.item(video_id, fallback=video_id.removeprefix("v_")) for video_id in ids]
    raise ValueError(
        f"{path}: expected a list of VTimeLLM records or an ActivityNet Captions object, found {type(data).__name__}."
    )


def _video_index(path: Path, video_root: str | os.PathLike | None) -> "_VideoIndex":
    if video_root is None:
        raise ValueError(
            f"{path} is an annotation file: give the folder of its videos (video_root, --video-root), where the "
            "video of id ID is ID.mp4 (or another video extension)."
        )
    video_root = Path(video_root)
    if not video_root.is_dir():
        raise FileNotFoundError(f"Video folder not found: {video_root}")
    return _VideoIndex(video_root)


def _dialogue_item(path: Path, index: int, record, videos: "_VideoIndex") -> MediaItem | ExtractionFailure:
    # Raw VideoInstruct-100K pairs `{"video_id", "q", "a"}` name their video by `video_id`, as `load_stage3` reads them
    key = "video_id" if isinstance(record, dict) and "id" not in record and "video_id" in record else "id"
    if not isinstance(record, dict) or not isinstance(record.get(key), (str, int)):
        raise ValueError(
            f"{path}, record #{index}: expected an object with an 'id' (or a VideoInstruct 'video_id'), found "
            f"{str(record)[:80]!r}."
        )
    feature_id = str(record[key])
    if "image" in record:
        if not isinstance(record["image"], str):
            raise ValueError(f"{path}, record #{index}: 'image' must be a relative path, got {record['image']!r}.")
        return MediaItem(feature_id, videos.root / record["image"])
    split = (record.get("meta") or {}).get("split")
    # ActivityNet ids keep their `v_` prefix in the dialogues, and the videos may be saved without it
    found = videos.item(feature_id, fallback=feature_id.removeprefix("v_"))
    if split is None or isinstance(found, ExtractionFailure):
        return found
    if (
        not isinstance(split, (list, tuple))
        or len(split) != 2
        or not all(isinstance(bound, (int, float)) and math.isfinite(bound) for bound in split)
    ):
        reason = f"{path}, record #{index}: meta.split must be [start, end] in seconds, got {split!r}"
        return ExtractionFailure(feature_id, None, reason)
    return MediaItem(feature_id, found.path, (float(split[0]), float(split[1])))


def _coco_video_id(path: Path, index: int, record) -> str:
    if not isinstance(record, dict) or not isinstance(record.get("image_id"), str):
        raise ValueError(f"{path}, annotation #{index}: expected an object with a string 'image_id'.")
    return Path(record["image_id"]).stem


class _VideoIndex:
    """`{root}/{id}.*` lookups from one listing of the folder, not one glob per id."""

    def __init__(self, root: Path):
        self.root = root
        rank = {extension: position for position, extension in enumerate(VIDEO_EXTENSIONS)}
        self._videos = {}
        with os.scandir(root) as entries:
            for entry in entries:
                path = Path(entry.path)
                if path.suffix.lower() not in rank or not entry.is_file():
                    continue
                known = self._videos.get(path.stem)
                if known is None or rank[path.suffix.lower()] < rank[known.suffix.lower()]:
                    self._videos[path.stem] = path

    def item(self, feature_id: str, fallback: str | None = None) -> MediaItem | ExtractionFailure:
        path = self._videos.get(feature_id) or (self._videos.get(fallback) if fallback else None)
        if path is None:
            names = f"{feature_id}.*" + (f" nor {fallback}.*" if fallback and fallback != feature_id else "")
            return ExtractionFailure(feature_id, None, f"no video named {names} in {self.root}")
        return MediaItem(feature_id, path)


def _deduplicate(candidates: list[MediaItem | ExtractionFailure]) -> tuple[list[MediaItem], list[ExtractionFailure]]:
    items, failures, by_id = [], [], {}
    for candidate in candidates:
        if isinstance(candidate, ExtractionFailure):
            failures.append(candidate)
            continue
        try:
            feature_path(".", candidate.feature_id)
        except ValueError as error:
            failures.append(ExtractionFailure(candidate.feature_id, str(candidate.path), str(error)))
            continue
        first = by_id.setdefault(candidate.feature_id, candidate)
        if first is candidate:
            items.append(candidate)
        elif first != candidate:
            failures.append(
                ExtractionFailure(
                    candidate.feature_id,
                    str(candidate.path),
                    f"id {candidate.feature_id!r} is already used by {first.path} (window {first.window}); one "
                    f"{candidate.feature_id}.npy holds one input",
                )
            )
    return items, failures


class _DecodedMedia(Dataset):
    """
    Item `i`: `(i, pixels, None)` with float `pixels` of shape `(frames, 3, frame_size, frame_size)` (1 frame for an
    image), or `(i, None, reason)` when the file cannot be used. Runs in the `DataLoader` workers, so a bad file is
    returned as a reason rather than raised, which would end the whole loader.
    """

    def __init__(self, items, num_frames, frame_size, mean, std, pixel_dtype):
        self.items = items
        self.num_frames = num_frames
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
                pixels, _ = load_video_frames(item.path, self.num_frames, item.window, self._preprocess)
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


class _FailureLog:
    """Failures on stderr and in `failures.jsonl`, which is replaced by each run and created on its first failure."""

    def __init__(self, path: Path):
        self.path = path
        self.failures = []
        self._file = None
        path.unlink(missing_ok=True)

    def add(self, failure: ExtractionFailure) -> None:
        self.failures.append(failure)
        if self._file is None:
            self._file = open(self.path, "w", encoding="utf-8")
        # One flushed line per failure: a killed run still leaves the failures it met
        self._file.write(failure.to_json() + "\n")
        self._file.flush()
        tqdm.write(f"failed: {failure.feature_id} ({failure.path}): {failure.reason}", file=sys.stderr)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _resolve_device_and_dtype(device, dtype) -> tuple[torch.device, torch.dtype]:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if dtype is None:
        # float16 on GPUs, as the original encoded; CPUs are slow or inexact in half precision
        return device, torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"Unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}.")
        dtype = _DTYPES[dtype]
    return device, dtype


def _is_extracted(path: Path, expected_shape: tuple[int, ...]) -> bool:
    try:
        header = read_npy_header(path)
    except (OSError, ValueError):
        return False
    return header.complete and header.dtype == FEATURE_DTYPE and header.shape == expected_shape


def _feature_settings(item: MediaItem, num_frames: int, encoder: str) -> dict:
    window = None if item.window is None else list(item.window)
    return {"id": item.feature_id, "window": window, "num_frames": num_frames, "encoder": encoder}


def _read_settings(path: Path) -> dict[str, dict]:
    """The settings of each feature of earlier runs, by id (the last line of an id wins); unreadable lines (a
    line cut short by a killed run) are skipped, so their features are made again if their settings differ."""
    settings = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
                settings[record["id"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return settings


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
) -> ExtractionReport:
    """
    Encodes videos and images into `{output_dir}/{id}.npy`: float16 `(num_frames, D)` per video, `(D,)` per image.

    A feature is `VTimeProcessor.encode_frames(load_video_frames(path, num_frames, window)[0])` cast to float16: the
    same sampling, preprocessing and encoder. Its bytes do not depend on `workers` nor on which videos shared its
    batches. On CPU with batches of 16 frames or more they are exactly those of `encode_frames`; smaller batches
    (MKL uses other kernels under 12 rows) and GPUs (whose kernels depend on the batch size) may change the last bit.

    Args:
        inputs: a folder, a media file, an annotation file, a list file of paths, or a list of paths; see
            [`collect_media`].
        output_dir: the folder of `{id}.npy` files (created if needed).
        clip: a `CLIPVisionModelWithProjection` name or folder, whose `preprocessor_config.json` gives the crop
            size, mean and std; or a [`VTimeProcessor`], whose encoder and preprocessing are used (its encoder is
            moved to `device` and `dtype`).
        num_frames: frames sampled per video.
        batch_size: frames per encoder forward pass, packed across videos.
        workers: decoding processes (0: decode in this process, without overlap); default: the CPU count, up to 8.
            Each holds up to two decoded videos (`num_frames` frames, 3 x frame_size x frame_size each) in shared
            memory.
        device: where the encoder runs; default: CUDA when available, else CPU.
        dtype: the encoder's dtype (`"float16"`, `"bfloat16"`, `"float32"` or a torch dtype); default: float16 on
            CUDA, float32 on CPU. Features are stored as float16 whatever it is.
        video_root: for annotation files, the folder holding `{id}.*` (and stage-1 images).
        consolidate: also pack all features of `output_dir` into this safetensors file (see
            [`~vtimellm_hf.data.features.consolidate_features`]).
        progress: show a progress bar (videos/s); default: when stderr is a terminal.

    Returns:
        An [`ExtractionReport`]; failed inputs are in its `failures` and in `{output_dir}/failures.jsonl`.
    """
    if num_frames < 1 or batch_size < 1:
        raise ValueError(f"num_frames and batch_size must be positive, got {num_frames} and {batch_size}.")
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    items, input_failures = collect_media(inputs, video_root)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output_dir)
    device, dtype = _resolve_device_and_dtype(device, dtype)
    frame_encoder = clip.frame_encoder if isinstance(clip, VTimeProcessor) else VTimeFrameEncoder(str(clip))
    encoder = frame_encoder.to(device, dtype).model.eval()
    video_processor = frame_encoder.video_processor
    frame_size, mean, std = video_processor.frame_size, video_processor.image_mean, video_processor.image_std
    dim = encoder.config.projection_dim

    def expected_shape(item: MediaItem) -> tuple[int, ...]:
        return (dim,) if item.is_image else (num_frames, dim)

    encoder_name = encoder.name_or_path
    earlier = _read_settings(output_dir / SETTINGS_FILE)

    def is_done(item: MediaItem) -> bool:
        # A feature without a record (copied from elsewhere, or the original's release) is trusted by its shape
        recorded = earlier.get(item.feature_id)
        same_settings = recorded is None or recorded == _feature_settings(item, num_frames, encoder_name)
        return same_settings and _is_extracted(feature_path(output_dir, item.feature_id), expected_shape(item))

    todo = [item for item in items if not is_done(item)]
    stale = sum(feature_path(output_dir, item.feature_id).exists() for item in todo)
    if stale:
        tqdm.write(
            f"re-extracting {stale} feature file(s) that are incomplete, of another shape, or made with other "
            f"settings (clip window, frames, encoder; see {SETTINGS_FILE})",
            file=sys.stderr,
        )

    failure_log = _FailureLog(output_dir / FAILURES_FILE)
    for failure in input_failures:
        failure_log.add(failure)
    loader = DataLoader(
        _DecodedMedia(todo, num_frames, frame_size, mean, std, dtype),
        batch_size=None,
        num_workers=min(workers, len(todo)),
        collate_fn=_as_is,
        pin_memory=device.type == "cuda",
        # Take whichever video is decoded first: a long video must not hold up the others
        in_order=False,
    )
    batcher = _FrameBatcher(encoder, batch_size, device, dtype)
    extracted = 0
    start = time.perf_counter()
    settings_log = open(output_dir / SETTINGS_FILE, "a", encoding="utf-8")
    try:
        with tqdm(total=len(todo), unit="video", disable=None if progress is None else not progress) as bar:

            def save(finished: list[tuple[int, torch.Tensor]]) -> int:
                written = 0
                for index, features in finished:
                    item = todo[index]
                    array = features.numpy()[0] if item.is_image else features.numpy()
                    try:
                        check_feature(array, 1 if item.is_image else num_frames, dim, item.feature_id)
                    except ValueError as error:  # e.g. float16 overflow of a bfloat16 encoder
                        failure_log.add(ExtractionFailure(item.feature_id, str(item.path), str(error)))
                    else:
                        write_feature(feature_path(output_dir, item.feature_id), array)
                        settings_log.write(json.dumps(_feature_settings(item, num_frames, encoder_name)) + "\n")
                        settings_log.flush()
                        written += 1
                    bar.update()
                return written

            for index, pixels, reason in loader:
                if reason is not None:
                    failure_log.add(ExtractionFailure(todo[index].feature_id, str(todo[index].path), reason))
                    bar.update()
                else:
                    extracted += save(batcher.add(index, pixels))
            extracted += save(batcher.flush())
    finally:
        settings_log.close()
        failure_log.close()
    report = ExtractionReport(
        output_dir=output_dir,
        total=len(items) + len(input_failures),
        extracted=extracted,
        skipped=len(items) - len(todo),
        failures=failure_log.failures,
        seconds=time.perf_counter() - start,
    )
    if consolidate is not None:
        report.consolidated = consolidate_features(output_dir, consolidate)
    return report


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or a positive integer, got {text}")
    return value


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
    parser.add_argument("--num-frames", type=_positive_int, default=100, help="frames per video (default: 100)")
    parser.add_argument(
        "--batch-size", type=_positive_int, default=128, help="frames per encoder pass, across videos (default: 128)"
    )
    parser.add_argument(
        "--workers", type=_non_negative_int, default=None, help="decoding processes (default: CPU count, up to 8)"
    )
    parser.add_argument("--device", default=None, help="encoder device (default: cuda if available, else cpu)")
    parser.add_argument(
        "--dtype", choices=sorted(_DTYPES), default=None, help="encoder dtype (default: float16 on cuda, else float32)"
    )
    parser.add_argument(
        "--video-root",
        default=None,
        metavar="DIR",
        help="for an annotation INPUT (JSON, Charades-STA): the folder holding the videos {id}.*",
    )
    parser.add_argument(
        "--consolidate", default=None, metavar="PATH", help="also pack all features into this safetensors file"
    )
    parser.set_defaults(run=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    try:
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
        )
    except (OSError, ValueError) as error:
        print(f"extract-features: error: {error}", file=sys.stderr)
        return 2
    print(f"extract-features: {report.summary()}", file=sys.stderr)
    return 0 if report.ok else 1
