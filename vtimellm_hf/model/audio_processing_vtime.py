"""The audio streams of the VTimeLLM family: a video's audio track -> LongVALE's and AVicuna's audio and speech rows.

Each stream encoder reads the audio track of a file as its original's extraction read it ([`load_audio`]) and gives
one feature row per stretch of audio:

| encoder | stream | model | rows |
|---|---|---|---|
| [`WhisperSpeechEncoder`] | speech (LongVALE) | `openai/whisper-large-v2`'s encoder | `1500 * chunks // 256` x 1280 |
| [`BeatsAudioEncoder`] | audio (LongVALE) | BEATs `BEATs_iter3_plus_AS20K.pt` | one per 512 fbank frames x 768 |
| [`ClapAudioEncoder`] | audio (AVicuna) | CLAP `laion/clap-htsat-fused` | one per 10 s window, every 4 s x 512 |

Each loads its model the first time it encodes ([`build_stream_encoder`] builds one from the settings
`processor_config.json` keeps), and [`fit_rows`] / [`fit_video_rows`] fit AVicuna's rows to its interleave.

This file travels to the Hub with a checkpoint that reads audio (`trust_remote_code=True`): it imports only torch,
numpy, transformers and its siblings `audio_decoding_vtime.py` and `beats_vtime.py` (PyAV decodes, soxr resamples for
AVicuna's reading; both imported where a file is read).
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers.utils import logging

from .audio_decoding_vtime import AUDIO_READERS, load_audio
from .beats_vtime import FBANK_MEAN, FBANK_STD, BeatsModel, kaldi_fbank

logger = logging.get_logger(__name__)

DEFAULT_SPEECH_ENCODER = "openai/whisper-large-v2"
DEFAULT_CLAP_ENCODER = "laion/clap-htsat-fused"
BEATS_CHECKPOINT_FILE = "BEATs_iter3_plus_AS20K.pt"
# LongVALE: Whisper's 30 s chunks give 1500 encoder frames each, pooled by 256 (5.12 s); BEATs windows of 512 frames
WHISPER_CHUNK_SECONDS = 30
WHISPER_POOL_FRAMES = 256
BEATS_WINDOW_FRAMES = 512
BEATS_TAILS = ("longvale", "pad")
# AVicuna: CLAP windows of 10 s every 4 s; a tail of at most 1 s is dropped, a longer one padded to a window
CLAP_WINDOW_SECONDS = 10
CLAP_STRIDE_SECONDS = 4
CLAP_MIN_TAIL_SECONDS = 1


class _StreamEncoder:
    """What the stream encoders share: settings, lazy loading on `device` in `dtype`, and reading files."""

    stream: str
    kind: str
    sampling_rate: int

    def __init__(self, name_or_path: str, batch_size: int, device, dtype, reader: str, model=None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        if reader not in AUDIO_READERS:
            raise ValueError(f"reader must be one of {', '.join(map(repr, AUDIO_READERS))}, got {reader!r}.")
        self.name_or_path = str(name_or_path)
        self.batch_size = int(batch_size)
        self.device, self.dtype = device, dtype
        self.reader = reader
        self._model = model

    @property
    def model(self):
        """The encoder, loaded on first use onto `device`, in `dtype`, in eval mode."""
        if self._model is None:
            self._model = self._load().to(device=self.device, dtype=self.dtype).eval()
        return self._model

    def _load(self):
        raise NotImplementedError

    def to(self, device=None, dtype: torch.dtype | None = None):
        """Moves the encoder to `device` and `dtype` (now if it is loaded, else when it loads); returns it."""
        self.device = self.device if device is None else device
        self.dtype = self.dtype if dtype is None else dtype
        if self._model is not None:
            self._model.to(device=device, dtype=dtype)
        return self

    def _inputs(self, batch: torch.Tensor) -> torch.Tensor:
        parameter = next(self.model.parameters())
        return batch.to(parameter.device, parameter.dtype)

    def encode_waveform(self, waveform: np.ndarray | torch.Tensor) -> torch.FloatTensor:
        """Features of mono samples at `sampling_rate` -> float32 `(rows, feature_size)` on the CPU."""
        raise NotImplementedError

    def encode_file(self, path: str | Path, window: Sequence[float] | None = None) -> torch.FloatTensor | None:
        """
        Features `(rows, feature_size)` of the audio track of `path` (or of its `window`, in seconds), read as
        this encoder's original read it (`reader`); `None` (and a log line) where the file has no audio track, or
        too little audio for the original to make a row of it.
        """
        return AudioTrack(path, window).encode(self)

    def encode_track(self, path: str | Path, waveform: np.ndarray | None) -> torch.FloatTensor | None:
        """`encode_file` of the track `waveform` that `path` holds, read at `sampling_rate` as `reader` reads it
        (`None`: the file has no audio track)."""
        if waveform is None:
            return None
        features = self.encode_waveform(waveform)
        if len(features) == 0:
            logger.warning(
                "%s: its %.2f s of audio give no %s row (%s): treated as no audio.",
                path, len(waveform) / self.sampling_rate, self.stream, type(self).__name__,
            )  # fmt: skip
            return None
        return features

    def to_dict(self) -> dict:
        """The settings, as [`build_stream_encoder`] takes them (`processor_config.json`)."""
        return {"kind": self.kind, "name_or_path": self.name_or_path, "batch_size": self.batch_size,
                "reader": self.reader}  # fmt: skip

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()})"


class AudioTrack:
    """
    The audio track of one file (or of its `window`, in seconds), read once for all the stream encoders that read it
    alike (the same `reader` and `sampling_rate`: LongVALE's BEATs and Whisper both read it at 16 kHz). A read
    that failed fails again for every encoder that asks for it.
    """

    def __init__(self, path: str | Path, window: Sequence[float] | None = None):
        self.path, self.window = path, window
        self._reads: dict[tuple[str, int], np.ndarray | None | Exception] = {}

    def waveform(self, encoder: _StreamEncoder) -> np.ndarray | None:
        """The samples as `encoder` reads them (`None`: no audio track)."""
        key = (encoder.reader, encoder.sampling_rate)
        if key not in self._reads:
            try:
                self._reads[key] = load_audio(self.path, encoder.sampling_rate, self.window, reader=encoder.reader)
            except (OSError, ValueError) as error:
                self._reads[key] = error
        read = self._reads[key]
        if isinstance(read, Exception):
            raise read
        return read

    def encode(self, encoder: _StreamEncoder) -> torch.FloatTensor | None:
        """`encoder.encode_file(path, window)`, from the samples read once."""
        return encoder.encode_track(self.path, self.waveform(encoder))


def _as_waveform(waveform: np.ndarray | torch.Tensor) -> np.ndarray:
    waveform = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else np.asarray(waveform)
    if waveform.ndim != 1 or waveform.size == 0:
        raise ValueError(f"A waveform must be mono samples (samples,), at least one, got shape {waveform.shape}.")
    return waveform.astype(np.float32, copy=False)


class _PretrainedStreamEncoder(_StreamEncoder):
    """A stream encoder whose model (`model_class`) and feature extractor transformers loads from `name_or_path`."""

    model_class: str
    feature_extractor_class: str

    def __init__(self, name_or_path, batch_size, device, dtype, reader, model=None, feature_extractor=None):
        super().__init__(name_or_path, batch_size, device, dtype, reader, model)
        self._feature_extractor = feature_extractor

    def _load(self):
        import transformers

        dtype = {} if self.dtype is None else {"dtype": self.dtype}
        return getattr(transformers, self.model_class).from_pretrained(self.name_or_path, **dtype)

    @property
    def feature_extractor(self):
        """The checkpoint's feature extractor (`feature_extractor_class`), loaded on first use."""
        if self._feature_extractor is None:
            import transformers

            extractor_class = getattr(transformers, self.feature_extractor_class)
            self._feature_extractor = extractor_class.from_pretrained(self.name_or_path)
        return self._feature_extractor


class WhisperSpeechEncoder(_PretrainedStreamEncoder):
    r"""
    LongVALE's speech features: Whisper's encoder on 30 s chunks, mean-pooled by 256 frames.

    The audio is cut into 30 s chunks (the last padded to 30 s, as `WhisperFeatureExtractor` pads), each chunk's
    log-mel made by the checkpoint's `WhisperFeatureExtractor`, encoded to 1500 frames; the frames of all chunks,
    in order, are averaged over non-overlapping runs of 256 (5.12 s), the last partial run dropped: `(N_s, d_model)`
    with `N_s = floor(1500 * ceil(duration / 30) / 256)`, windows over the padding included.

    Args:
        name_or_path: a Whisper checkpoint (`WhisperModel`; only its encoder is kept).
        batch_size: 30 s chunks per forward pass.
        device, dtype: where and in what the encoder runs (`None`: as `from_pretrained` loads it).
        reader: how the audio track is read ([`load_audio`]); `"moviepy"` as LongVALE's extraction.
        model, feature_extractor: already loaded ones, used instead of loading `name_or_path`.
    """

    stream, kind, sampling_rate = "speech", "whisper", 16000
    model_class, feature_extractor_class = "WhisperModel", "WhisperFeatureExtractor"

    def __init__(
        self,
        name_or_path: str = DEFAULT_SPEECH_ENCODER,
        batch_size: int = 4,
        device="cpu",
        dtype: torch.dtype | None = None,
        reader: str = "moviepy",
        model=None,
        feature_extractor=None,
    ):
        # Only the encoder of a whole `WhisperModel` is kept
        model = model.get_encoder() if hasattr(model, "get_encoder") else model
        super().__init__(name_or_path, batch_size, device, dtype, reader, model, feature_extractor)

    def _load(self):
        return super()._load().get_encoder()

    @property
    def feature_size(self) -> int:
        """The encoder's width (`d_model`: 1280 for whisper-large-v2)."""
        return self.model.config.d_model

    @torch.no_grad()
    def encode_waveform(self, waveform: np.ndarray | torch.Tensor) -> torch.FloatTensor:
        waveform = _as_waveform(waveform)
        chunk = WHISPER_CHUNK_SECONDS * self.sampling_rate
        # Each chunk on its own, as the original: the log-mel's dynamic range is clipped per chunk
        mels = torch.cat([
            self.feature_extractor(
                waveform[start : start + chunk], sampling_rate=self.sampling_rate, max_length=chunk, return_tensors="pt"
            ).input_features
            for start in range(0, len(waveform), chunk)
        ])  # fmt: skip
        frames = torch.cat([
            self.model(input_features=self._inputs(batch)).last_hidden_state.float().cpu()
            for batch in mels.split(self.batch_size)
        ]).flatten(0, 1)  # fmt: skip
        rows = len(frames) // WHISPER_POOL_FRAMES
        return frames[: rows * WHISPER_POOL_FRAMES].view(rows, WHISPER_POOL_FRAMES, -1).mean(dim=1)


class BeatsAudioEncoder(_StreamEncoder):
    r"""
    LongVALE's audio features: BEATs on windows of 512 fbank frames, each window's patch states averaged.

    The 16 kHz samples, scaled to 16-bit values (`* 2**15`), give Kaldi fbank (128 bins, 25 ms frames every 10 ms,
    [`kaldi_fbank`]), normalised as `(fbank - 15.41663) / (2 * 6.55582)`, cut into windows of 512 frames (5.12 s);
    BEATs encodes each into 256 patch states, averaged: `(N_a, 768)`.

    The last window follows `tail`: `"longvale"`, the original's rule, pads the fbank with as many zero frames as
    its remainder `r = frames % 512` (not `512 - r`), so the tail makes a window (zero-padded) only when `r >= 256`
    and is dropped otherwise (and audio under 2.56 s makes none); `"pad"` always pads the tail to a whole window.

    Args:
        name_or_path: the BEATs checkpoint file (the official `BEATs_iter3_plus_AS20K.pt`), or a folder or Hub repo
            holding `checkpoint_file`.
        batch_size: windows per forward pass.
        device, dtype: where and in what BEATs runs (float32 by default, as the original).
        reader: how the audio track is read ([`load_audio`]); `"moviepy"` as LongVALE's extraction.
        tail: `"longvale"` or `"pad"`, see above.
        checkpoint_file: the file to take from a folder or repo.
        model: an already loaded [`BeatsModel`], used instead of loading `name_or_path`.
    """

    stream, kind, sampling_rate = "audio", "beats", 16000

    def __init__(
        self,
        name_or_path: str,
        batch_size: int = 16,
        device="cpu",
        dtype: torch.dtype | None = None,
        reader: str = "moviepy",
        tail: str = "longvale",
        checkpoint_file: str = BEATS_CHECKPOINT_FILE,
        model=None,
    ):
        if tail not in BEATS_TAILS:
            raise ValueError(f"tail must be one of {', '.join(map(repr, BEATS_TAILS))}, got {tail!r}.")
        super().__init__(name_or_path, batch_size, device, dtype, reader, model)
        self.tail, self.checkpoint_file = tail, checkpoint_file

    def _load(self):
        path = Path(self.name_or_path)
        if not path.is_file():
            from transformers.utils import cached_file

            path = cached_file(self.name_or_path, self.checkpoint_file)
        return BeatsModel.from_checkpoint(path)

    @property
    def feature_size(self) -> int:
        """BEATs' width (768 for the iter3 checkpoints)."""
        return self.model.config["encoder_embed_dim"]

    def fbank_windows(self, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The normalised fbank windows `(N_a, 512, 128)` BEATs encodes, the tail as `tail` says."""
        waveform = torch.from_numpy(_as_waveform(waveform))
        fbank = (kaldi_fbank(waveform * 2**15) - FBANK_MEAN) / (2 * FBANK_STD)
        remainder = len(fbank) % BEATS_WINDOW_FRAMES
        padding = remainder if self.tail == "longvale" else (-len(fbank)) % BEATS_WINDOW_FRAMES
        fbank = F.pad(fbank, (0, 0, 0, padding))
        windows = len(fbank) // BEATS_WINDOW_FRAMES
        return fbank[: windows * BEATS_WINDOW_FRAMES].view(windows, BEATS_WINDOW_FRAMES, fbank.shape[1])

    @torch.no_grad()
    def encode_waveform(self, waveform: np.ndarray | torch.Tensor) -> torch.FloatTensor:
        windows = self.fbank_windows(waveform)
        if len(windows) == 0:
            return torch.zeros(0, self.feature_size)
        return torch.cat([
            self.model(self._inputs(batch)).mean(dim=1).float().cpu() for batch in windows.split(self.batch_size)
        ])  # fmt: skip

    def to_dict(self) -> dict:
        return {**super().to_dict(), "tail": self.tail, "checkpoint_file": self.checkpoint_file}


def clap_windows(waveform: np.ndarray | torch.Tensor, sampling_rate: int = 48000) -> np.ndarray:
    """
    AVicuna's CLAP input: float32 windows `(N, 10 * rate)` of 10 s every 4 s, after the int16 round trip.

    The audio's remainder past its last whole 10 s is dropped when it lasts at most 1 s and padded with zeros to
    10 s otherwise (the remainder of the whole length, not of the 4 s grid: windows then run to the end of the
    padding); audio of at most 1 s gives no window. Samples are clipped to [-1, 1], truncated to int16 at 32767 and
    scaled back by 32767, as laion_clap's `float32_to_int16` / `int16_to_float32`.
    """
    waveform = _as_waveform(waveform)
    window, stride = CLAP_WINDOW_SECONDS * sampling_rate, CLAP_STRIDE_SECONDS * sampling_rate
    remainder = len(waveform) % window
    if 0 < remainder <= CLAP_MIN_TAIL_SECONDS * sampling_rate:
        waveform = waveform[:-remainder]
    elif remainder:
        waveform = np.pad(waveform, (0, window - remainder))
    if len(waveform) == 0:
        return np.zeros((0, window), dtype=np.float32)
    count = max((len(waveform) - window) // stride + 1, 1)
    windows = np.stack([waveform[index * stride : index * stride + window] for index in range(count)])
    quantised = (np.clip(windows, -1.0, 1.0) * np.float32(32767.0)).astype(np.int16)
    return (quantised / 32767.0).astype(np.float32)


class ClapAudioEncoder(_PretrainedStreamEncoder):
    r"""
    AVicuna's audio features: CLAP's audio embedding of 10 s windows every 4 s ([`clap_windows`]), 48 kHz.

    Each window's log-mel is the checkpoint's `ClapFeatureExtractor`'s (fusion: the 10 s mel stacked four times);
    `ClapModel.get_audio_features` embeds it (projected, L2-normalised as laion_clap's): `(N, 512)`. Every window
    lasts exactly 10 s, so none is "longer" than CLAP's input: laion_clap's inference embeds them without its fusion
    branch, and so does this encoder (transformers' feature extractor marks one window of a batch as longer at
    random, laion_clap's training-time rule; that mark is not used, and the random state it draws from is restored).

    Args:
        name_or_path: a CLAP checkpoint with fusion (`laion/clap-htsat-fused`).
        batch_size: windows per forward pass.
        device, dtype: where and in what CLAP runs.
        reader: how the audio track is read ([`load_audio`]); `"librosa"` as AVicuna's extraction.
        model, feature_extractor: an already loaded `ClapModel` and `ClapFeatureExtractor`.
    """

    stream, kind, sampling_rate = "audio", "clap", 48000
    model_class, feature_extractor_class = "ClapModel", "ClapFeatureExtractor"

    def __init__(
        self,
        name_or_path: str = DEFAULT_CLAP_ENCODER,
        batch_size: int = 16,
        device="cpu",
        dtype: torch.dtype | None = None,
        reader: str = "librosa",
        model=None,
        feature_extractor=None,
    ):
        super().__init__(name_or_path, batch_size, device, dtype, reader, model, feature_extractor)

    def _load(self):
        model = super()._load()
        if not model.config.audio_config.enable_fusion:
            raise ValueError(f"{self.name_or_path} is a CLAP without fusion; AVicuna's is the fused one.")
        return model

    @property
    def feature_size(self) -> int:
        """The embedding's width (`projection_dim`: 512)."""
        return self.model.config.projection_dim

    @torch.no_grad()
    def encode_waveform(self, waveform: np.ndarray | torch.Tensor) -> torch.FloatTensor:
        windows = clap_windows(waveform, self.sampling_rate)
        embeddings = [torch.zeros(0, self.feature_size)]
        for start in range(0, len(windows), self.batch_size):
            random_state = np.random.get_state()
            mels = self.feature_extractor(
                list(windows[start : start + self.batch_size]), sampling_rate=self.sampling_rate, return_tensors="pt"
            ).input_features
            np.random.set_state(random_state)
            mels = self._inputs(mels)
            is_longer = torch.zeros(len(mels), 1, dtype=torch.bool, device=mels.device)
            embedded = self.model.get_audio_features(input_features=mels, is_longer=is_longer).pooler_output
            embeddings.append(embedded.float().cpu())
        return torch.cat(embeddings)


STREAM_ENCODERS = {"whisper": WhisperSpeechEncoder, "beats": BeatsAudioEncoder, "clap": ClapAudioEncoder}


def build_stream_encoder(kind: str, name_or_path: str | None = None, **settings):
    """
    The stream encoder of `kind` (`"whisper"`, `"beats"` or `"clap"`) for `name_or_path` (Whisper and CLAP default
    to the originals' checkpoints; BEATs needs its checkpoint file), with `settings` as its class takes them.
    """
    if kind not in STREAM_ENCODERS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, STREAM_ENCODERS))}, got {kind!r}.")
    if name_or_path is None:
        if kind == "beats":
            raise ValueError(
                f"The BEATs encoder needs its checkpoint: the path of {BEATS_CHECKPOINT_FILE} (microsoft/unilm's BEATs "
                "release), or a folder or repo holding it."
            )
        return STREAM_ENCODERS[kind](**settings)
    return STREAM_ENCODERS[kind](name_or_path, **settings)


def fit_rows(features: torch.Tensor | None, rows: int, feature_size: int | None = None) -> torch.Tensor:
    """
    AVicuna's audio rows: `features (N, D)` fitted to `rows`. Fewer rows are repeated in order, each
    `rows // N` times and the first `rows % N` once more; more are cut to the first `rows`. `None` (a video without
    audio) gives `rows` zero rows of `feature_size`.
    """
    if features is None:
        if feature_size is None:
            raise ValueError("fit_rows needs feature_size to make the zero rows of a video without audio.")
        return torch.zeros(rows, feature_size)
    if len(features) == 0:
        raise ValueError(f"No audio rows to fit to {rows}; pass None for a video without audio.")
    count = len(features)
    repeats = torch.full((count,), rows // count, dtype=torch.long)
    repeats[: rows % count] += 1
    return features.repeat_interleave(repeats.to(features.device), dim=0)


def fit_video_rows(features: torch.Tensor, rows: int) -> torch.Tensor:
    """
    AVicuna's video rows in training: `features (L, D)` fitted to `rows`. At least `rows` give rows
    `floor(j * L / rows)`; fewer are followed by zero rows.
    """
    count = len(features)
    if count >= rows:
        return features[torch.arange(rows) * count // rows]
    return torch.cat([features, features.new_zeros(rows - count, *features.shape[1:])])


__all__ = [
    "BEATS_CHECKPOINT_FILE",
    "DEFAULT_CLAP_ENCODER",
    "DEFAULT_SPEECH_ENCODER",
    "STREAM_ENCODERS",
    "AudioTrack",
    "BeatsAudioEncoder",
    "ClapAudioEncoder",
    "WhisperSpeechEncoder",
    "build_stream_encoder",
    "clap_windows",
    "fit_rows",
    "fit_video_rows",
    "load_audio",
]
