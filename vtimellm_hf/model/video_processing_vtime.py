"""VTimeLLM's video processing: videos -> the frame encoder's pixels -> frame features.

[`VTimeVideoProcessor`] turns videos (files or decoded frames) into the encoder's pixels: `num_frames` frames sampled
and decoded as the original samples them (`video_decoding_vtime.py`), resized, cropped and normalised as its CLIP
transform did ([`preprocess_frames`]). [`VTimeFrameEncoder`] turns pixels into frame features, the `image_embeds` of a
CLIP `CLIPVisionModelWithProjection`. [`VTimeProcessor`] uses both, and so does `vtimellm-hf extract-features`: a
feature is made one way whichever path asks for it.

The names mirror those of transformers' video processors (`num_frames`, `do_sample_frames`, `size`, `crop_size`,
`image_mean`, `image_std`, `sample_frames`, `pixel_values_videos`), without subclassing `BaseVideoProcessor`, which
needs torchvision.

This file travels to the Hub with every checkpoint (`trust_remote_code=True`), imported by `processing_vtime.py`: it
imports only torch, numpy, transformers and its sibling `video_decoding_vtime.py`.
"""

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import BatchFeature
from transformers.image_utils import is_pil_image

from .video_decoding_vtime import load_video_frames, sample_frame_indices

DEFAULT_FRAME_ENCODER = "openai/clip-vit-large-patch14"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# float32 pixels that `preprocess_frames` converts at once by default (one frame at least): two frames of 480x270,
# so that each resize pass reads the previous one's output from cache (chunks of 8 such frames run 1.3x slower)
PREPROCESS_CHUNK_BYTES = 2 * 2**20


# Preprocessing


def preprocess_frames(
    frames: torch.Tensor | np.ndarray,
    size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """
    The original CLIP transform, batched on tensors: `/255`, bicubic resize of the short side to `size` (no
    antialiasing, as torchvision did on tensors), center crop, normalise.

    The separable resize runs as banded matrix products for the rows and columns the crop keeps only, a few frames
    at a time so that each pass finds the previous one's output in cache: several times faster than
    `interpolate(mode="bicubic")` on a CPU, equal to it up to float32 rounding.

    Args:
        frames: uint8 RGB frames of shape `(num_frames, height, width, 3)`.
        chunk_size: frames converted to float32 at a time; by default as many as fit in `PREPROCESS_CHUNK_BYTES`.
            A frame's output does not depend on the chunk it was in.
    Returns:
        float32 tensor of shape `(num_frames, 3, size, size)`.
    """
    frames = torch.as_tensor(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"Frames must have shape (num_frames, height, width, 3), got {tuple(frames.shape)}.")
    num_frames, height, width = frames.shape[:3]
    short, long = min(height, width), max(height, width)
    long_resized = int(size * long / short)
    resized_height, resized_width = (size, long_resized) if height <= width else (long_resized, size)
    top = int(round((resized_height - size) / 2.0))
    left = int(round((resized_width - size) / 2.0))
    # The vertical products are as wide as a chunk of frames, so short blocks (fewer zeros multiplied in the band)
    # lose nothing; the horizontal ones are as wide as their block, and 16 outputs is the fastest width measured
    row_blocks = _bicubic_blocks(height, resized_height, top, size, block=8)
    column_blocks = _bicubic_blocks(width, resized_width, left, size, block=16)
    row_first = row_blocks[0][1]
    rows = max(low + weights.shape[1] for _, low, weights in row_blocks) - row_first
    column_first = column_blocks[0][1]
    columns = max(low + weights.shape[1] for _, low, weights in column_blocks) - column_first
    if chunk_size is None:
        chunk_size = max(1, PREPROCESS_CHUNK_BYTES // (rows * columns * 3 * 4))
    # (x / 255 - mean) / std = x * scale + shift
    scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float64))).float().view(1, 3, 1, 1)
    shift = (-torch.tensor(mean, dtype=torch.float64) / torch.tensor(std, dtype=torch.float64)).float().view(1, 3, 1, 1)
    output = torch.empty(num_frames, 3, size, size)
    # Rows leading, the frames of a chunk side by side in each row: one product per block of output rows
    window = frames[:, row_first : row_first + rows, column_first : column_first + columns].transpose(0, 1)
    for start in range(0, num_frames, chunk_size):
        count = min(chunk_size, num_frames - start)
        pixels = window[:, start : start + count].to(torch.float32, memory_format=torch.contiguous_format)
        pixels = pixels.view(rows, -1)
        vertical = torch.empty(size, count * columns * 3)
        for first, low, weights in row_blocks:
            inputs = slice(low - row_first, low - row_first + weights.shape[1])
            torch.mm(weights, pixels[inputs], out=vertical[first : first + len(weights)])
        # One pass splits the channels into planes and normalises them; the horizontal weights sum to 1, so
        # normalising before that pass gives the same result
        planes = torch.empty(count, 3, size, columns)
        torch.addcmul(shift, vertical.view(size, count, columns, 3).permute(1, 3, 0, 2), scale, out=planes)
        planes = planes.view(-1, columns)
        chunk_output = output[start : start + count].view(-1, size)
        for first, low, weights in column_blocks:
            inputs = slice(low - column_first, low - column_first + weights.shape[1])
            torch.mm(planes[:, inputs], weights.T, out=chunk_output[:, first : first + len(weights)])
    return output


def _bicubic_blocks(in_size: int, out_size: int, start: int, count: int, block: int):
    """
    Outputs `start .. start + count` of a bicubic resize `in_size -> out_size` (a = -0.75, half-pixel centres, edges
    clamped, no antialiasing: what `interpolate(mode="bicubic")` computes), as blocks of `block` outputs:
    `[(first_output, first_input, float32 weights (outputs, inputs))]`, each reading only the inputs it weighs.
    """
    source = (torch.arange(start, start + count, dtype=torch.float64) + 0.5) * (in_size / out_size) - 0.5
    base = source.floor()
    distance = ((source - base)[:, None] - torch.arange(-1, 3, dtype=torch.float64)).abs()
    near = (1.25 * distance - 2.25) * distance**2 + 1
    far = ((-0.75 * distance + 3.75) * distance - 6) * distance + 3
    weights = torch.where(distance <= 1, near, far)
    taps = (base.long()[:, None] + torch.arange(-1, 3)).clamp(0, in_size - 1)
    matrix = torch.zeros(count, in_size, dtype=torch.float64).scatter_add_(1, taps, weights)
    blocks = []
    for first in range(0, count, block):
        rows = taps[first : first + block]
        low, high = int(rows.min()), int(rows.max()) + 1
        blocks.append((first, low, matrix[first : first + block, low:high].float()))
    return blocks


def read_frame_preprocessing(frame_encoder_name_or_path: str, default_size: int = 224) -> dict:
    """
    `{"frame_size", "image_mean", "image_std"}` of a CLIP checkpoint, read from its `preprocessor_config.json` as
    plain JSON (no image processor class, hence no torchvision, is needed). Without that file: `default_size` and
    CLIP's mean and std.
    """
    from transformers.utils import cached_file

    # cached_file resolves local folders and Hub ids alike, offline included; a missing file gives None
    config_file = cached_file(
        frame_encoder_name_or_path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False
    )
    if config_file is None:
        return {"frame_size": default_size, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)}
    with open(config_file, encoding="utf-8") as handle:
        config = json.load(handle)
    crop = config.get("crop_size", default_size)
    crop_height, crop_width = (crop["height"], crop["width"]) if isinstance(crop, dict) else (crop, crop)
    size = config.get("size", crop_height)
    shortest_edge = size.get("shortest_edge") if isinstance(size, dict) else size
    # The original transform resizes the short side to the crop size, then crops a square
    if not crop_height == crop_width == shortest_edge:
        raise ValueError(
            f"{config_file}: the VTimeLLM transform needs a square crop equal to the resized short side, got "
            f"size {size} and crop_size {crop}."
        )
    return {
        "frame_size": crop_height,
        "image_mean": list(config.get("image_mean", CLIP_MEAN)),
        "image_std": list(config.get("image_std", CLIP_STD)),
    }

def image_as_frame(image) -> np.ndarray:
    """An image as one RGB frame `(1, height, width, 3)`; greyscale, alpha and CMYK PIL images are converted."""
    if hasattr(image, "convert"):
        image = image.convert("RGB")
    array = np.array(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"An image must be RGB with shape (height, width, 3), got {array.shape}.")
    if array.dtype != np.uint8:
        # A float image in [0, 1] would be divided by 255 once more and encoded as black
        raise ValueError(f"An image array must be uint8 RGB (0-255), got dtype {array.dtype}.")
    return array[None]


def _is_frame(item) -> bool:
    return is_pil_image(item) or (isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 3)


def _batched_videos(videos) -> list:
    """
    Videos as a flat list of paths, 4-D arrays or tensors, and lists of frames, by the conventions of transformers'
    `make_batched_videos`: a list holding only frames is one video, a 5-D array a batch, a 3-D one a single frame.
    """
    if isinstance(videos, (str, Path)):
        return [videos]
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        if videos.ndim == 3:
            return [videos[None]]
        if videos.ndim == 4:
            return [videos]
        if videos.ndim == 5:
            return list(videos)
        raise ValueError(
            "A video array must have shape (frames, height, width, 3), or (videos, frames, height, width, 3) for a "
            f"batch, got {tuple(videos.shape)}."
        )
    if is_pil_image(videos):
        return [[videos]]
    if not isinstance(videos, (list, tuple)):
        raise ValueError(
            "videos must be paths, arrays or tensors (frames, height, width, 3), lists of frames, or lists of these; "
            f"got {type(videos).__name__}."
        )
    if videos and all(_is_frame(item) for item in videos):
        return [list(videos)]
    flat = []
    for item in videos:
        if _is_frame(item):
            raise ValueError(
                "videos mixes single frames with whole videos; a video given as frames is a list of frames only."
            )
        flat.extend(_batched_videos(item))
    return flat


# The video processor and the frame encoder


class VTimeVideoProcessor:
    r"""
    Videos -> the frame encoder's input, `pixel_values_videos`: `num_frames` frames sampled as the original samples
    them ([`sample_frame_indices`]; by time where the frame rate varies), then resized (bicubic, short side
    `frame_size`, no antialiasing), center-cropped to a square and normalised ([`preprocess_frames`]).

    Args:
        num_frames: frames sampled per video.
        do_sample_frames: `False` keeps every frame of decoded videos, as given (a video file is always sampled).
        frame_size: side of the square crop fed to the encoder: transformers' `size={"shortest_edge": frame_size}`
            and `crop_size={"height": frame_size, "width": frame_size}`.
        image_mean, image_std: normalisation of the encoder (CLIP's by default).
    """

    model_input_names = ["pixel_values_videos"]

    def __init__(
        self,
        num_frames: int = 100,
        do_sample_frames: bool = True,
        frame_size: int = 224,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
    ):
        for name, value in (("num_frames", num_frames), ("frame_size", frame_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        for name, values in (("image_mean", image_mean), ("image_std", image_std)):
            if len(values) != 3 or not all(isinstance(value, (int, float)) for value in values):
                raise ValueError(f"{name} must be three numbers, one per RGB channel, got {values!r}.")
        if min(image_std) <= 0:
            raise ValueError(f"image_std must be positive, got {image_std!r}.")
        self.num_frames = int(num_frames)
        self.do_sample_frames = bool(do_sample_frames)
        self.frame_size = int(frame_size)
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)

    @classmethod
    def from_frame_encoder(cls, frame_encoder_name_or_path: str, default_size: int = 224, **kwargs):
        """A video processor with the crop size, mean and std of a CLIP checkpoint ([`read_frame_preprocessing`])."""
        return cls(**read_frame_preprocessing(frame_encoder_name_or_path, default_size), **kwargs)

    @property
    def size(self) -> dict[str, int]:
        """The resize, as transformers writes it: the short side becomes `frame_size`."""
        return {"shortest_edge": self.frame_size}

    @property
    def crop_size(self) -> dict[str, int]:
        """The center crop, as transformers writes it: a `frame_size` square."""
        return {"height": self.frame_size, "width": self.frame_size}

    def sample_frames(
        self,
        total_frames: int,
        num_frames: int | None = None,
        fps: float | None = None,
        window: Sequence[float] | None = None,
    ) -> np.ndarray:
        """The indices of the frames to sample ([`sample_frame_indices`]); `num_frames` defaults to this processor's."""
        return sample_frame_indices(total_frames, self.num_frames if num_frames is None else num_frames, fps, window)

    def frame_pixels(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """
        The encoder's input, float32 `(num_frames, 3, frame_size, frame_size)`, of uint8 RGB frames
        `(num_frames, height, width, 3)`: [`preprocess_frames`] with this processor's size, mean and std.
        """
        return preprocess_frames(frames, self.frame_size, self.image_mean, self.image_std)

    def load_video(
        self, path: str | Path, window: Sequence[float] | None = None, num_frames: int | None = None
    ) -> tuple[torch.Tensor, float]:
        """
        `(pixels (num_frames, 3, frame_size, frame_size), duration in seconds)` of a video file, or of its `window`:
        each chunk of decoded frames is preprocessed before the next is decoded, so that a video of huge frames is
        never held whole (see [`load_video_frames`]). The pixels equal `frame_pixels` of the decoded frames.
        """
        return load_video_frames(path, self.num_frames if num_frames is None else num_frames, window, self.frame_pixels)

    def iter_pixels(
        self,
        videos,
        video_windows: Sequence[Sequence[float] | None] | None = None,
        num_frames: int | None = None,
        do_sample_frames: bool | None = None,
    ) -> Iterator[torch.Tensor]:
        """
        The pixels `(frames, 3, frame_size, frame_size)` of each video, one video at a time, so that a caller that
        encodes each before asking for the next never holds the pixels of two.

        Args:
            videos: as transformers takes videos: a path, decoded uint8 frames `(frames, height, width, 3)` as an array
                or tensor, or a list of frames (arrays `(height, width, 3)` or PIL images) is one video; a 5-D array or
                tensor `(videos, frames, height, width, 3)`, a list of videos, or a list of them per sample, a batch.
            video_windows: `(start_seconds, end_seconds)` per video file, to sample that part of it.
            num_frames, do_sample_frames: default to this processor's.
        """
        videos = _batched_videos(videos)
        windows = list(video_windows) if video_windows is not None else [None] * len(videos)
        if len(windows) != len(videos):
            raise ValueError(f"Got {len(videos)} videos but {len(windows)} video_windows.")
        num_frames = self.num_frames if num_frames is None else num_frames
        do_sample_frames = self.do_sample_frames if do_sample_frames is None else do_sample_frames
        for index, (video, window) in enumerate(zip(videos, windows)):
            yield self._video_pixels(video, window, num_frames, do_sample_frames, index)

    def _video_pixels(self, video, window, num_frames: int, do_sample_frames: bool, index: int) -> torch.Tensor:
        if isinstance(video, (str, Path)):
            if not do_sample_frames:
                raise ValueError(
                    f"videos[{index}] is the file {video}, of which VTimeLLM samples num_frames frames; "
                    "do_sample_frames=False takes decoded frames."
                )
            return self.load_video(video, window, num_frames)[0]
        if window is not None:
            # A window is in seconds, and decoded frames come without their frame rate
            raise ValueError(
                f"video_windows[{index}] is {window}, but videos[{index}] is decoded frames: windows cut video files; "
                "pass the frames of that part of the video instead."
            )
        total = len(video)
        if total < 1:
            raise ValueError(f"videos[{index}] holds no frames.")
        indices = sample_frame_indices(total, num_frames) if do_sample_frames else np.arange(total)
        if isinstance(video, list):
            # Only the frames sampled from a list of frames are converted
            frames = [np.asarray(video[i].convert("RGB") if is_pil_image(video[i]) else video[i]) for i in indices]
            shapes = sorted({frame.shape for frame in frames})
            if len(shapes) > 1:
                raise ValueError(f"The frames of videos[{index}] differ in shape: {shapes}.")
            frames = np.stack(frames)
        else:
            frames = np.asarray(video)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(
                f"A decoded video must have shape (frames, height, width, 3), got {frames.shape} for videos[{index}]."
            )
        if frames.dtype not in (np.uint8, torch.uint8):
            # Float frames in [0, 1] would be divided by 255 once more and encoded as black
            raise ValueError(
                f"A decoded video must be uint8 RGB (0-255), got dtype {frames.dtype} for videos[{index}]."
            )
        return self.frame_pixels(frames if isinstance(video, list) else frames[indices])

    def __call__(
        self,
        videos,
        video_windows: Sequence[Sequence[float] | None] | None = None,
        num_frames: int | None = None,
        do_sample_frames: bool | None = None,
        return_tensors: str | None = None,
    ) -> BatchFeature:
        """
        [`BatchFeature`] with `pixel_values_videos`: the pixels of each video (see [`iter_pixels`] for the arguments),
        a list of `(frames, 3, frame_size, frame_size)` tensors, or one tensor `(videos, frames, ...)` with
        `return_tensors="pt"`.
        """
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}.")
        pixels = list(self.iter_pixels(videos, video_windows, num_frames, do_sample_frames))
        if return_tensors == "pt":
            shapes = sorted({tuple(video.shape) for video in pixels})
            if len(shapes) > 1:
                raise ValueError(f"Videos of pixels of different shapes cannot be stacked, got {shapes}.")
            pixels = torch.stack(pixels)
        return BatchFeature({"pixel_values_videos": pixels})

    def to_dict(self) -> dict:
        """The settings, as `__init__` takes them."""
        return {
            "num_frames": self.num_frames,
            "do_sample_frames": self.do_sample_frames,
            "frame_size": self.frame_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }

    def __eq__(self, other) -> bool:
        return isinstance(other, VTimeVideoProcessor) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {json.dumps(self.to_dict(), sort_keys=True)}"


class VTimeFrameEncoder:
    r"""
    The frame encoder: the CLIP `CLIPVisionModelWithProjection` whose `image_embeds` are VTimeLLM's frame features,
    loaded the first time it is used.

    Args:
        name_or_path: the encoder's checkpoint, a Hub id or a folder.
        batch_size: frames per forward pass of [`encode_pixels`].
        device: where the encoder runs.
        dtype: the encoder's dtype; `None` loads the checkpoint as `from_pretrained` does by default.
        video_processor: how frames become pixels; by default a [`VTimeVideoProcessor`] with the crop size, mean and
            std of the checkpoint's `preprocessor_config.json` ([`VTimeVideoProcessor.from_frame_encoder`]).
        model: an already loaded encoder, used as it is instead of loading `name_or_path`.
    """

    def __init__(
        self,
        name_or_path: str = DEFAULT_FRAME_ENCODER,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        video_processor: VTimeVideoProcessor | None = None,
        model=None,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        self.name_or_path = str(name_or_path)
        self.batch_size = int(batch_size)
        self.device, self.dtype = device, dtype
        self._video_processor = video_processor
        self._model = model

    @property
    def model(self):
        """The `CLIPVisionModelWithProjection`, loaded on first use onto `device`, in `dtype`, in eval mode."""
        if self._model is None:
            from transformers import CLIPVisionModelWithProjection

            dtype = {} if self.dtype is None else {"dtype": self.dtype}
            model = CLIPVisionModelWithProjection.from_pretrained(self.name_or_path, **dtype)
            self._model = model.to(device=self.device, dtype=self.dtype).eval()
        return self._model

    @property
    def video_processor(self) -> VTimeVideoProcessor:
        """How frames become pixels: the one given, else the checkpoint's preprocessing (which loads the model)."""
        if self._video_processor is None:
            self._video_processor = VTimeVideoProcessor.from_frame_encoder(
                self.name_or_path, self.model.config.image_size
            )
        return self._video_processor

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "VTimeFrameEncoder":
        """Moves the encoder to `device` and `dtype` (now if it is loaded, else when it loads); returns it."""
        self.device = self.device if device is None else device
        self.dtype = self.dtype if dtype is None else dtype
        if self._model is not None:
            self._model.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """
        Frame features of preprocessed frames `(num_frames, 3, size, size)` (see [`VTimeVideoProcessor.frame_pixels`])
        -> float32 `(num_frames, D)` on the CPU, `batch_size` frames per forward pass.
        """
        model = self.model
        parameter = next(model.parameters())
        embeddings = [
            model(pixel_values=batch.to(parameter.device, parameter.dtype)).image_embeds.float().cpu()
            for batch in pixels.split(self.batch_size)
        ]
        return torch.cat(embeddings)

    def encode_frames(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Frame features of uint8 RGB frames `(num_frames, height, width, 3)` -> float32 `(num_frames, D)`."""
        return self.encode_pixels(self.video_processor.frame_pixels(frames))

    def encode_video(
        self, path: str | Path, window: Sequence[float] | None = None, num_frames: int | None = None
    ) -> tuple[torch.Tensor, float]:
        """
        `(features (num_frames, D), duration in seconds)` of a video file, or of its `window`, sampled and
        preprocessed by [`VTimeVideoProcessor.load_video`]; the features equal `encode_frames` of the decoded frames.
        """
        pixels, duration = self.video_processor.load_video(path, window, num_frames)
        return self.encode_pixels(pixels), duration


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_FRAME_ENCODER",
    "VTimeFrameEncoder",
    "VTimeVideoProcessor",
    "image_as_frame",
    "preprocess_frames",
    "read_frame_preprocessing",
]
