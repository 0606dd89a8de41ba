"""VTimeProcessor: the text of VTimeLLM (chat templates, token ids, the `<video>` expansion) and its visual inputs.

Videos and images go through [`VTimeVideoProcessor`] and [`VTimeFrameEncoder`] (`video_processing_vtime.py`); the
audio and speech streams of LongVALE and AVicuna through the stream encoders of `audio_processing_vtime.py`;
precomputed features are checked by `feature_inputs_vtime.py`. The chat templates live in `chat_templates_vtime.py`,
the timestamp helpers that read answers in `timestamps_vtime.py`; both are re-exported here.

This file travels to the Hub with every checkpoint (`trust_remote_code=True`): it imports only torch, numpy,
transformers and its siblings.
"""

import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import BatchFeature, ProcessorMixin
from transformers.utils import logging

from .audio_processing_vtime import AudioTrack, build_stream_encoder, fit_rows
from .chat_templates_vtime import (
    PLAIN_CHAT_TEMPLATE,
    VICUNA_V1_CHAT_TEMPLATE,
    named_chat_templates,
)
from .configuration_vtime_llama import STREAM_NAMES
from .feature_inputs_vtime import _describe_rows, _feature_list, _flatten, _none_if_empty
from .timestamps_vtime import (
    CAPTIONING,
    GROUNDING,
    format_index,
    indices_to_seconds,
    parse_event_indices,
    parse_events,
    parse_grounding_answer,
    parse_moment_indices,
    parse_moments,
    seconds_to_index,
)
from .video_processing_vtime import (
    CLIP_MEAN,
    CLIP_STD,
    DEFAULT_FRAME_ENCODER,
    VTimeFrameEncoder,
    VTimeVideoProcessor,
    _batched_videos,
    image_as_frame,
    read_frame_preprocessing,
)

logger = logging.get_logger(__name__)

VIDEO_TOKEN = "<video>"

# `ProcessorMixin.apply_chat_template` passes these to every processor; they concern audio and text-level
# placeholder expansion, and this processor expands ids, so their values change nothing here.
_CHAT_TEMPLATE_CALL_KWARGS = {"load_audio_from_video", "audio_from_video_indices", "return_text_replacement_offsets"}

# Where the names that moved to `video_processing_vtime.py` and `video_decoding_vtime.py` went
_MOVED_NAMES = {
    "DECODE_CHUNK_BYTES": "video_decoding_vtime",
    "get_video_duration": "video_decoding_vtime",
    "load_video_frames": "video_decoding_vtime",
    "sample_frame_indices": "video_decoding_vtime",
    "PREPROCESS_CHUNK_BYTES": "video_processing_vtime",
    "preprocess_frames": "video_processing_vtime",
}


def _forwarded(part: str, name: str, doc: str) -> property:
    """A processor setting kept by one of its parts (`video_processor` or `frame_encoder`)."""
    return property(
        lambda self: getattr(getattr(self, part), name),
        lambda self, value: setattr(getattr(self, part), name, value),
        doc=doc,
    )


class VTimeProcessor(ProcessorMixin):
    r"""
    Turns text and videos into the inputs of [`VTimeLlamaForCausalLM`].

    Each `<video>` in the text becomes as many placeholder tokens as its video has feature rows (100 frames, or 1
    for an image). Videos are sampled, decoded (only the sampled frames) and preprocessed by `video_processor`, a
    [`VTimeVideoProcessor`], and encoded by `frame_encoder`, a [`VTimeFrameEncoder`] whose CLIP model loads the first
    time raw videos or images are given; precomputed features skip all of that.

    The text is tokenized piece by piece around each `<video>` and special token, as the original's slow
    SentencePiece tokenizer did: each piece as a standalone string, so that a LLaMA tokenizer prefixes every piece
    with its space marker, and the ids equal those a released checkpoint was trained on.

    The chat templates are named, as transformers allows: the default is the Vicuna v1 template of the original
    (stages 2 and 3, inference), `"plain"` the stage-1 template (`apply_chat_template(..., chat_template="plain")`).
    Training samples take the path of inference prompts: `apply_chat_template(messages, tokenize=True,
    return_assistant_tokens_mask=True, processor_kwargs={..., "truncation": True, "max_length": n})` gives their
    ids, cut as [`__call__`] cuts prompts, and the mask of the answers the loss is taken on (`VTimeDataCollator`).

    The video processor and the frame encoder are plain attributes, saved as their settings in
    `processor_config.json`, not sub-processors: transformers 5 checks a `video_processor` sub-processor against
    `VideoProcessorMixin` through a mapping that exists only with torchvision, and loads it with `AutoVideoProcessor`,
    which needs torchvision too.

    Args:
        tokenizer: a LLaMA tokenizer that knows the `<video>` token.
        chat_template: the default template (Vicuna v1 by default), or named templates; the `"plain"` template is
            added where none is named so.
        frame_encoder_name_or_path: the `CLIPVisionModelWithProjection` whose `image_embeds` are the frame features.
        num_frames: frames sampled per video.
        frame_size: side of the square crop fed to the encoder.
        image_mean, image_std: normalisation of the encoder.
        encoder_batch_size: frames encoded per forward pass of the encoder.
        do_sample_frames: `False` encodes every frame of decoded videos, as given.
        frame_encoder: an already loaded `CLIPVisionModelWithProjection` (not saved; the name or path is).
        stream_encoders: the audio and speech streams of the checkpoint (LongVALE, AVicuna), made from the audio
            track of each video file: `{"audio": {"kind": "beats", "name_or_path": ...}, "speech": {"kind":
            "whisper", ...}}`, the settings [`build_stream_encoder`] takes; each encoder is built and loaded the first
            time a video file is given. `None`: VTimeLLM's video alone.
        audio_rows: AVicuna's audio rows per video (`int(num_frames * av_ratio)`: 25 at its inference ratio 0.25).
            They take slots of `num_frames`: a video file gives `num_frames - audio_rows` frames (75) and its audio
            rows repeated or cut to `audio_rows`, or as many zero rows when it has no audio track, as the original.
            `None` (LongVALE): every row the encoders give, and no audio or speech rows without an audio track.
        max_positions: the positions the model reads (`max_position_embeddings`); a longer prompt is refused.
            `None`: not checked.
    """

    def __init__(
        self,
        tokenizer=None,
        chat_template=None,
        frame_encoder_name_or_path: str = DEFAULT_FRAME_ENCODER,
        num_frames: int = 100,
        frame_size: int = 224,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        encoder_batch_size: int = 64,
        do_sample_frames: bool = True,
        frame_encoder=None,
        stream_encoders: dict[str, dict] | None = None,
        audio_rows: int | None = None,
        max_positions: int | None = None,
        **kwargs,
    ):
        unknown = sorted(set(stream_encoders or {}) - (set(STREAM_NAMES) - {"video"}))
        if unknown:
            raise ValueError(f"stream_encoders name the streams audio and speech, got {unknown}.")
        for name, value in (("audio_rows", audio_rows), ("max_positions", max_positions)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}.")
        if audio_rows is not None and audio_rows >= num_frames:
            raise ValueError(f"audio_rows ({audio_rows}) take slots of num_frames ({num_frames}): give fewer.")
        self.stream_encoders = {name: dict(settings) for name, settings in (stream_encoders or {}).items()}
        self.audio_rows, self.max_positions = audio_rows, max_positions
        # Built from `stream_encoders` when a video file first needs them; not saved
        self._built_encoders = {}
        self.video_processor = VTimeVideoProcessor(num_frames, do_sample_frames, frame_size, image_mean, image_std)
        self.frame_encoder = VTimeFrameEncoder(
            frame_encoder_name_or_path, encoder_batch_size, video_processor=self.video_processor, model=frame_encoder
        )
        super().__init__(tokenizer, chat_template=named_chat_templates(chat_template), **kwargs)

    num_frames = _forwarded("video_processor", "num_frames", "Frames sampled per video.")
    frame_size = _forwarded("video_processor", "frame_size", "Side of the square crop fed to the encoder.")
    image_mean = _forwarded("video_processor", "image_mean", "Mean of the encoder's normalisation.")
    image_std = _forwarded("video_processor", "image_std", "Standard deviation of the encoder's normalisation.")
    frame_encoder_name_or_path = _forwarded("frame_encoder", "name_or_path", "The frame encoder's checkpoint.")
    encoder_batch_size = _forwarded("frame_encoder", "batch_size", "Frames per forward pass of the encoder.")

    @property
    def frame_encoder_device(self):
        """Where the frame encoder runs (not saved); setting it moves a loaded encoder."""
        return self.frame_encoder.device

    @frame_encoder_device.setter
    def frame_encoder_device(self, device) -> None:
        self.frame_encoder.to(device=device)
        for encoder in self._built_encoders.values():
            encoder.to(device=device)

    def stream_encoder(self, name: str):
        """The encoder of the stream `name` (`"audio"` or `"speech"`) as `stream_encoders` sets it, built on first
        use (its model loads when it first encodes)."""
        if name not in self.stream_encoders:
            raise ValueError(
                f"This processor has no {name} stream (its stream_encoders: {sorted(self.stream_encoders)})."
            )
        if name not in self._built_encoders:
            self._built_encoders[name] = build_stream_encoder(**self.stream_encoders[name])
            self._built_encoders[name].to(device=self.frame_encoder.device)
        return self._built_encoders[name]

    @classmethod
    def for_frame_encoder(cls, tokenizer, frame_encoder_name_or_path: str = DEFAULT_FRAME_ENCODER, **kwargs):
        """A processor whose crop size, mean and std are those of the encoder (see [`read_frame_preprocessing`])."""
        settings = read_frame_preprocessing(frame_encoder_name_or_path)
        return cls(tokenizer=tokenizer, frame_encoder_name_or_path=frame_encoder_name_or_path, **settings, **kwargs)

    @property
    def video_token(self) -> str:
        return VIDEO_TOKEN

    @property
    def video_token_id(self) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(
                f"The tokenizer has no {VIDEO_TOKEN} token. Add it with "
                f"`tokenizer.add_special_tokens({{'additional_special_tokens': ['{VIDEO_TOKEN}']}})` and resize the "
                "model's embeddings."
            )
        return token_id

    def to_dict(self):
        # The parts are saved as their settings, flat, as `__init__` takes them (the layout of processor_config.json
        # before they were parts); the encoder's model must not be deep-copied
        parts = {name: self.__dict__.pop(name) for name in ("video_processor", "frame_encoder", "_built_encoders")}
        try:
            output = super().to_dict()
        finally:
            self.__dict__.update(parts)
        output.update(self.video_processor.to_dict())
        output.update(frame_encoder_name_or_path=self.frame_encoder_name_or_path,
                      encoder_batch_size=self.encoder_batch_size)  # fmt: skip
        # A VTimeLLM processor (no audio streams, no limits) saves the settings it saved before the family's
        for name in ("stream_encoders", "audio_rows", "max_positions"):
            if not output.get(name):
                output.pop(name, None)
        return output

    def frame_pixels(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The encoder's input of uint8 RGB frames: [`VTimeVideoProcessor.frame_pixels`]."""
        return self.video_processor.frame_pixels(frames)

    def encode_frames(self, frames: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Frame features of uint8 RGB frames `(num_frames, height, width, 3)`: [`VTimeFrameEncoder.encode_frames`]."""
        return self.frame_encoder.encode_frames(frames)

    def encode_video(
        self, path: str | Path, window: Sequence[float] | None = None, num_frames: int | None = None
    ) -> tuple[torch.Tensor, float]:
        """`(features (num_frames, D), duration in seconds)` of a video file: [`VTimeFrameEncoder.encode_video`]."""
        return self.frame_encoder.encode_video(path, window, num_frames)

    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frame features of preprocessed frames: [`VTimeFrameEncoder.encode_pixels`]."""
        return self.frame_encoder.encode_pixels(pixels)

    def _visual_features(
        self, videos, images, video_features, video_windows, num_frames: int | None, do_sample_frames: bool | None
    ) -> tuple[list[torch.Tensor | None], list[bool]]:
        """
        One float32 `(rows, D)` tensor (or `None`, for precomputed features of a sample without video) per visual
        input, in order (precomputed features, else videos, else images), and whether each was given as a numpy array.
        """
        given = [name for name, value in (("videos", videos), ("images", images), ("video_features", video_features))
                 if value is not None]
        if len(given) > 1:
            raise ValueError(f"Pass one kind of visual input per call, got {', '.join(given)}.")
        if video_features is not None:
            return _feature_list("video_features", video_features)
        features = []
        if videos is not None:
            if num_frames is None and self.audio_rows is not None:
                # AVicuna: the audio rows take their slots of num_frames
                num_frames = self.num_frames - self.audio_rows
            for pixels in self.video_processor.iter_pixels(videos, video_windows, num_frames, do_sample_frames):
                features.append(self.frame_encoder.encode_pixels(pixels))
                # Not held while the next video is decoded
                del pixels
        elif images is not None:
            features = [self.encode_frames(image_as_frame(image)) for image in _flatten(images)]
        return features, [False] * len(features)

    def _media_streams(self, videos, video_windows, given: dict) -> dict[str, tuple[list, list[bool]]]:
        """
        The audio and speech rows of each video in `videos` for the streams of `stream_encoders` not `given`: made
        from the audio track of each video file; a video without one (or given as decoded frames) gets no rows, or
        AVicuna's `audio_rows` zero rows.
        """
        needed = [name for name in self.stream_encoders if given.get(name) is None]
        if videos is None or not needed:
            return {}
        videos = _batched_videos(videos)
        windows = list(video_windows) if video_windows is not None else [None] * len(videos)
        rows = {name: [] for name in needed}
        # Video by video, each track read once for the streams that read it alike
        for index, (video, window) in enumerate(zip(videos, windows)):
            track = AudioTrack(video, window) if isinstance(video, (str, Path)) else None
            if track is None:
                logger.warning("videos[%d] is decoded frames, without an audio track: no %s rows from it; pass its "
                               "file, or %s.", index, " or ".join(needed),
                               " and ".join(f"{name}_features" for name in needed))  # fmt: skip
            for name in needed:
                encoder = self.stream_encoder(name)
                features = None if track is None else track.encode(encoder)
                if self.audio_rows is not None and name == "audio":
                    features = fit_rows(features, self.audio_rows, encoder.feature_size)
                rows[name].append(features)
        return {name: (stream_rows, [False] * len(stream_rows)) for name, stream_rows in rows.items()}

    def encode_prompt(
        self,
        text: str,
        rows: int,
        add_special_tokens: bool = True,
        return_offsets_mapping: bool = False,
        sanitize_control_tokens: bool = False,
    ) -> dict:
        """
        Token ids (and, on request, character offsets) of one prompt, each `<video>` replaced by `rows` placeholders.

        As the original's slow SentencePiece tokenizer did, the text is cut at `<video>` and at every special token
        (`</s>` between turns) and each piece is tokenized as a standalone string, so each gets SentencePiece's
        leading space marker. A whole-string fast tokenization drops that marker after `<video>` and `</s>`, giving
        ids a released checkpoint never saw.

        With `sanitize_control_tokens` (set by `apply_chat_template(..., sanitize_control_tokens=True)`), the special
        tokens that it marked in user input are tokenized as the plain text of their piece, and are no `<video>`.
        """
        if sanitize_control_tokens and return_offsets_mapping:
            raise ValueError("sanitize_control_tokens gives no offsets mapping: its markers move the characters.")
        special_tokens = {VIDEO_TOKEN, *self.tokenizer.all_special_tokens}
        pieces = _special_token_pattern(special_tokens, sanitize_control_tokens).split(text)
        input_ids, offsets, char_start = [], [], 0
        if add_special_tokens:
            input_ids += self.tokenizer("", add_special_tokens=True)["input_ids"]
            offsets += [(0, 0)] * len(input_ids)
        for index, piece in enumerate(pieces):
            char_end = char_start + len(piece)
            # The split's pattern captures the special tokens: they are the odd pieces
            if index % 2 and piece == VIDEO_TOKEN:
                input_ids += [self.video_token_id] * rows
                offsets += [(char_start, char_end)] * rows
            elif index % 2:
                input_ids.append(self.tokenizer.convert_tokens_to_ids(piece))
                offsets.append((char_start, char_end))
            elif piece and sanitize_control_tokens:
                start_marker, end_marker = _control_token_markers()
                plain = piece.replace(start_marker, "").replace(end_marker, "")
                if plain:
                    input_ids += self.tokenizer(plain, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            elif piece:
                encoded = self.tokenizer(
                    piece, add_special_tokens=False, return_offsets_mapping=return_offsets_mapping
                )
                input_ids += encoded["input_ids"]
                if return_offsets_mapping:
                    offsets += [(start + char_start, end + char_start) for start, end in encoded["offset_mapping"]]
            char_start = char_end
        return {"input_ids": input_ids, "offset_mapping": offsets}

    def __call__(
        self,
        text: str | list[str] | None = None,
        videos=None,
        images=None,
        video_features=None,
        video_windows: Sequence[Sequence[float] | None] | None = None,
        return_tensors: str | None = None,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        add_special_tokens: bool = True,
        return_offsets_mapping: bool = False,
        num_frames: int | None = None,
        do_sample_frames: bool | None = None,
        sanitize_control_tokens: bool = False,
        audio=None,
        audio_features=None,
        speech_features=None,
        **kwargs,
    ) -> BatchFeature:
        r"""
        Args:
            text: one prompt or a batch; each holds at most one `<video>`.
            videos: one per `<video>`, in order, as transformers takes videos: a path, decoded uint8 frames
                `(frames, height, width, 3)` as an array or tensor, or a list of frames (arrays `(height, width, 3)`
                or PIL images) is one video; a 5-D array or tensor `(videos, frames, height, width, 3)`, a list of
                videos, or a list of them per sample (as `apply_chat_template` passes them), a batch.
            images: one per `<video>`: PIL images or uint8 arrays `(height, width, 3)`; each is a 1-frame video.
            video_features: precomputed features, one per `<video>`: `(rows, mm_hidden_size)` or `(mm_hidden_size,)`;
                only their number of rows matters to the token ids.
            video_windows: `(start_seconds, end_seconds)` per video file, to sample that part of it.
            return_tensors: `"pt"` for tensors, else lists.
            padding, pad_to_multiple_of, padding_side: as for the tokenizer (no padding by default; `True` pads a
                batch to its longest prompt, left padding for batched generation). Prompts of one length need no
                pad token.
            truncation, max_length: as for the tokenizer, on the side of `tokenizer.truncation_side`; a prompt
                whose cut would reach the rows of its video is refused.
            num_frames: frames sampled per video (default: this processor's `num_frames`).
            do_sample_frames: `False` encodes every frame of decoded videos as given, one row each (default: this
                processor's `do_sample_frames`).
            sanitize_control_tokens: set by `apply_chat_template(..., sanitize_control_tokens=True)`; see
                [`encode_prompt`].
            audio_features, speech_features: precomputed rows of the audio (BEATs or CLAP) and speech (Whisper)
                streams of LongVALE and AVicuna, one entry per `<video>`, `None` for a sample without that stream
                (`video_features` may hold `None` too); taken as given (fit AVicuna's with [`fit_rows`]). Without
                them, video files give them through `stream_encoders`.

        Each `<video>` expands to its sample's rows of every stream; they count against `max_length` and
        `max_positions`. Features without rows or with NaN or infinite values are refused.

        Returns:
            [`BatchFeature`] with `input_ids` and `attention_mask` `(batch, seq_len)`, and `{stream}_features` for
            each stream given or made: with `return_tensors="pt"`, float32 `(batch, rows, width)` where every sample
            has that stream with as many rows, else a list of `(rows, width)` tensors or `None`; without it, a list of
            float32 `(rows, width)` features, each a numpy array where it was given as one, else a tensor.
        """
        videos, images = _none_if_empty(videos), _none_if_empty(images)
        texts = self._check_arguments(text, videos, audio, num_frames, kwargs)
        streams = self._feature_streams(
            videos, images, video_features, video_windows, num_frames, do_sample_frames, audio_features, speech_features
        )
        self._check_placeholders(texts, streams, sanitize_control_tokens)
        sample_rows = self._sample_rows(texts, streams)
        encoded = self._expand_prompts(
            texts, sample_rows, add_special_tokens, return_offsets_mapping, sanitize_control_tokens
        )
        encoded = self._truncate_prompts(encoded, sample_rows, truncation, max_length, padding)
        self._check_positions(encoded, sample_rows)
        data = self._pad(encoded, padding, max_length, pad_to_multiple_of, padding_side, return_offsets_mapping)
        return self._batch_features(data, streams, return_tensors)

    def _check_arguments(self, text, videos, audio, num_frames: int | None, kwargs: dict) -> list[str]:
        """
        The `batch` prompts, as a list. Refuses audio (taken from the video files or as `audio_features`), arguments
        this processor does not take and a call without text; warns where `num_frames` is not the checkpoint's.
        """
        # Inputs as other processors are called: empty lists for absent inputs, `audios` the older name of `audio`
        for name, value in (("audio", audio), ("audios", kwargs.get("audios"))):
            if _none_if_empty(value) is not None:
                raise ValueError(
                    f"VTimeProcessor takes no `{name}`: pass the video in `videos` (a path or decoded frames), or its "
                    "features in `video_features`."
                )
        if videos is not None and num_frames is not None and num_frames != self.num_frames:
            warnings.warn(
                f"num_frames={num_frames}, but this checkpoint was trained on {self.num_frames} frames a video (the "
                "processor's num_frames): the model gets a frame count it never saw, and its answers may be less "
                "accurate. parse_moments and post_process_video_grounding still read the answers' indices as "
                f"positions among {self.num_frames} frames.",
                UserWarning,
                # The caller of `__call__`
                stacklevel=3,
            )
        passed = {key for key, value in kwargs.items() if value is not None}
        unexpected = passed - _CHAT_TEMPLATE_CALL_KWARGS - {"audios"}
        if unexpected:
            raise TypeError(f"VTimeProcessor got unexpected arguments: {', '.join(sorted(unexpected))}.")
        if text is None:
            raise ValueError("VTimeProcessor needs text with a <video> placeholder for each visual input.")
        return [text] if isinstance(text, str) else list(text)

    def _feature_streams(
        self,
        videos,
        images,
        video_features,
        video_windows,
        num_frames: int | None,
        do_sample_frames: bool | None,
        audio_features,
        speech_features,
    ) -> dict[str, tuple[list[torch.Tensor | None], list[bool]]]:
        """
        `{stream: (features, as_arrays)}`: per `<video>`, in order, one float32 `(rows, D)` tensor, or `None` for a
        sample without that stream, and whether it was given as a numpy array. The video stream from `videos`,
        `images` or `video_features` (see [`_visual_features`]); audio and speech as given, else made from the video
        files by `stream_encoders` (see [`_media_streams`]). A stream without any input is left out.
        """
        streams = {"video": self._visual_features(
            videos, images, video_features, video_windows, num_frames, do_sample_frames
        )}  # fmt: skip
        given = {"audio": audio_features, "speech": speech_features}
        streams.update({name: _feature_list(f"{name}_features", value) for name, value in given.items()
                        if value is not None})  # fmt: skip
        streams.update(self._media_streams(videos, video_windows, given))
        return {name: value for name, value in streams.items() if value[0]}

    def _check_placeholders(self, texts: list[str], streams: dict, sanitize_control_tokens: bool) -> None:
        """
        Refuses texts whose `<video>` placeholders do not match the inputs: more than one in a text, a number other
        than each stream's number of features (placeholders without any input among them), a text without one in a
        batch with inputs, or features of one stream of different widths `D`.
        """
        video_pattern = _special_token_pattern({VIDEO_TOKEN}, sanitize_control_tokens)
        placeholders = [len(video_pattern.findall(sample)) for sample in texts]
        for index, count in enumerate(placeholders):
            if count > 1:
                raise ValueError(
                    f"Text {index} holds {count} {VIDEO_TOKEN} placeholders; VTimeLLM takes one video per sample."
                )
        # Placeholders without any input are refused as a video stream of no inputs
        for name, (features, _) in (streams or {"video": ([], [])}).items():
            if sum(placeholders) != len(features):
                kind = "visual inputs" if name == "video" else f"{name}_features entries"
                raise ValueError(
                    f"The text holds {sum(placeholders)} {VIDEO_TOKEN} placeholders but {len(features)} {kind} "
                    "were given; pass one video (or image, or features) per placeholder."
                )
        if streams and not all(placeholders):
            missing = [index for index, count in enumerate(placeholders) if count == 0]
            raise ValueError(
                f"Texts {missing} hold no {VIDEO_TOKEN}: in a batch with videos, every sample needs one video."
            )
        for name, (features, _) in streams.items():
            widths = sorted({feature.shape[1] for feature in features if feature is not None})
            if len(widths) > 1:
                raise ValueError(f"The {name} features of a batch need one width, got {widths}.")

    def _sample_rows(self, texts: list[str], streams: dict) -> list[dict[str, int]]:
        """
        `{stream: rows}` per sample: the feature rows its `<video>` expands to, which count against `max_length` and
        the model's positions (`{}` in a batch without inputs). Refuses a sample without rows in any stream.
        """
        if not streams:
            return [{} for _ in texts]
        sample_rows = [
            {name: len(features[index]) for name, (features, _) in streams.items() if features[index] is not None}
            for index in range(len(texts))
        ]
        for index, rows in enumerate(sample_rows):
            if not rows:
                raise ValueError(f"Sample {index} has no feature rows in any stream for its {VIDEO_TOKEN}.")
        return sample_rows

    def _expand_prompts(
        self,
        texts: list[str],
        sample_rows: list[dict[str, int]],
        add_special_tokens: bool,
        return_offsets_mapping: bool,
        sanitize_control_tokens: bool,
    ) -> list[dict]:
        """
        Per text, `{"input_ids": [seq_len], "offset_mapping": [seq_len]}` (offsets empty unless asked for), its
        `<video>` expanded to the sample's rows of every stream: [`encode_prompt`].
        """
        return [
            self.encode_prompt(
                text, sum(rows.values()), add_special_tokens, return_offsets_mapping, sanitize_control_tokens
            )
            for text, rows in zip(texts, sample_rows)
        ]

    def _truncate_prompts(
        self,
        encoded: list[dict],
        sample_rows: list[dict[str, int]],
        truncation: bool | str | None,
        max_length: int | None,
        padding: bool | str,
    ) -> list[dict]:
        """
        `encoded` with each prompt cut to `max_length` tokens (the tokenizer's `model_max_length` without one) where
        truncation is asked for, as tokenizers do: a `max_length` alone, without padding, truncates. See
        [`_truncate`].
        """
        if truncation is None and max_length is not None and padding is False:
            truncation = True
        if truncation in (None, False, "do_not_truncate"):
            return encoded
        if truncation not in (True, "longest_first", "only_first"):
            raise ValueError(
                f"truncation={truncation!r} does not apply: VTimeProcessor truncates single prompts, with "
                "truncation=True, 'longest_first' or 'only_first'."
            )
        limit = self.tokenizer.model_max_length if max_length is None else max_length
        return [self._truncate(sample, limit, index, rows)
                for index, (sample, rows) in enumerate(zip(encoded, sample_rows))]  # fmt: skip

    def _check_positions(self, encoded: list[dict], sample_rows: list[dict[str, int]]) -> None:
        """Refuses a prompt of more tokens than the model reads positions (`max_positions`, where set)."""
        if self.max_positions is None:
            return
        for index, (sample, rows) in enumerate(zip(encoded, sample_rows)):
            if len(sample["input_ids"]) > self.max_positions:
                raise ValueError(
                    f"Text {index} is {len(sample['input_ids'])} tokens ({_describe_rows(rows)}) but the model reads "
                    f"at most {self.max_positions} positions: shorten the text, give fewer rows, or truncate "
                    f"(max_length <= {self.max_positions})."
                )

    def _pad(
        self,
        encoded: list[dict],
        padding: bool | str,
        max_length: int | None,
        pad_to_multiple_of: int | None,
        padding_side: str | None,
        return_offsets_mapping: bool,
    ) -> dict:
        """
        `input_ids` and `attention_mask`, `batch` lists of `seq_len` ids padded as the tokenizer pads, and on request
        `offset_mapping`, padded with empty spans. Prompts of one length are not padded unless asked to a length.
        """
        batch = {"input_ids": [sample["input_ids"] for sample in encoded]}
        if return_offsets_mapping:
            batch["offset_mapping"] = [sample["offset_mapping"] for sample in encoded]
        lengths = {len(ids) for ids in batch["input_ids"]}
        if (padding is True or padding == "longest") and len(lengths) <= 1 and pad_to_multiple_of is None:
            # Nothing to pad, but the tokenizer would still ask for a pad token (stock Vicuna has none)
            padding = False
        padding_side = padding_side or self.tokenizer.padding_side
        data = dict(
            self.tokenizer.pad(
                batch,
                padding=padding,
                max_length=max_length if padding == "max_length" else None,
                pad_to_multiple_of=pad_to_multiple_of,
                return_attention_mask=True,
                padding_side=padding_side,
            )
        )
        if return_offsets_mapping:
            data["offset_mapping"] = [
                _pad_offsets(offsets, len(ids), padding_side)
                for offsets, ids in zip(data["offset_mapping"], data["input_ids"])
            ]
        return data

    def _batch_features(self, data: dict, streams: dict, return_tensors: str | None) -> BatchFeature:
        """
        `data` and each stream's `{stream}_features`: with `return_tensors="pt"`, float32 `(batch, rows, D)` where
        every sample has that stream with as many rows, else the list of `(rows, D)` tensors or `None`; without it, a
        list of features, each a numpy array where it was given as one.
        """
        tensors = {}
        for name, (features, as_arrays) in streams.items():
            shapes = {None if feature is None else tuple(feature.shape) for feature in features}
            if return_tensors == "pt" and len(shapes) == 1 and None not in shapes:
                tensors[f"{name}_features"] = torch.stack(features)
            elif return_tensors == "pt":
                # Rows that differ between samples, or a stream some samples lack: a list, as the model takes it
                tensors[f"{name}_features"] = features
            else:
                data[f"{name}_features"] = [
                    feature.numpy() if as_array and feature is not None else feature
                    for feature, as_array in zip(features, as_arrays)
                ]
        output = BatchFeature(data=data, tensor_type=return_tensors)
        output.update(tensors)
        return output

    def _truncate(self, sample: dict, limit: int, index: int, rows: dict[str, int]) -> dict:
        """
        `sample` cut to `limit` tokens on the tokenizer's truncation side (the end, for Vicuna's tokenizer, as the
        original cut its training samples); never into the rows (`rows`, per stream) of its video.
        """
        ids = sample["input_ids"]
        excess = len(ids) - limit
        if excess <= 0:
            return sample
        kept = slice(0, limit) if self.tokenizer.truncation_side == "right" else slice(excess, None)
        total = sum(rows.values())
        if total and ids[kept].count(self.video_token_id) != total:
            first = ids.index(self.video_token_id)
            raise ValueError(
                f"Text {index} is {len(ids)} tokens, {total} of them the rows of its video (tokens {first} to "
                f"{first + total - 1}); truncating it to max_length={limit} on the {self.tokenizer.truncation_side} "
                f"would cut into those rows ({_describe_rows(rows)}). Raise max_length, shorten the text or give "
                "fewer rows."
            )
        return {"input_ids": ids[kept], "offset_mapping": sample["offset_mapping"][kept]}

    def parse_moments(self, text: str, duration: float, convention: str = GROUNDING) -> list[tuple[float, float]]:
        """The moments of a generated answer in seconds, as indices into this processor's `num_frames`; see
        [`parse_moments`]."""
        return parse_moments(text, duration, convention, self.num_frames)

    def parse_events(self, text: str, duration: float, convention: str = CAPTIONING) -> list[tuple[float, float, str]]:
        """The dense-captioning events of a generated answer, as indices into this processor's `num_frames`; see
        [`parse_events`]."""
        return parse_events(text, duration, convention, self.num_frames)

    def post_process_video_grounding(
        self, answers: str | Sequence[str], video_durations: float | Sequence[float]
    ) -> tuple[float, float] | None | list[tuple[float, float] | None]:
        """
        The moment each grounding answer names, `(start_seconds, end_seconds)`, as the original evaluation reads it:
        its first pair of indices into this processor's `num_frames`, in the grounding convention; `None` where the
        answer names no moment or a reversed one (see [`parse_grounding_answer`]). The counterpart, for generated
        text, of the `post_process_video_grounding` of transformers' video grounding processors (TVP).

        Args:
            answers: a generated answer (the text after the prompt, as `pipeline(..., return_full_text=False)` gives
                it or as decoded from the new tokens), or a list of them.
            video_durations: the duration of the video in seconds, or one per answer.

        Returns:
            One moment (or `None`) for one answer, else a list with one per answer.
        """
        if isinstance(answers, str):
            return parse_grounding_answer(answers, float(video_durations), self.num_frames)
        answers = list(answers)
        durations = [video_durations] * len(answers) if np.ndim(video_durations) == 0 else list(video_durations)
        if len(durations) != len(answers):
            raise ValueError(f"Got {len(answers)} answers but {len(durations)} video_durations; pass one per answer.")
        return [parse_grounding_answer(answer, float(duration), self.num_frames)
                for answer, duration in zip(answers, durations)]  # fmt: skip

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", *(f"{name}_features" for name in STREAM_NAMES)]


def _control_token_markers() -> tuple[str, str]:
    """What `apply_chat_template(..., sanitize_control_tokens=True)` wraps the control tokens of user input in."""
    # Imported where used: the markers are private to transformers, and only sanitized calls need them
    from transformers.utils.chat_template_utils import _CONTROL_TOKEN_END, _CONTROL_TOKEN_START

    return _CONTROL_TOKEN_START, _CONTROL_TOKEN_END


def _special_token_pattern(tokens, sanitize_control_tokens: bool) -> re.Pattern:
    """A pattern capturing `tokens`, longest first; with `sanitize_control_tokens`, none that is marked as user text."""
    alternatives = "|".join(re.escape(token) for token in sorted(tokens, key=len, reverse=True))
    if not sanitize_control_tokens:
        return re.compile(f"({alternatives})")
    return re.compile(f"(?<!{re.escape(_control_token_markers()[0])})({alternatives})")


def _pad_offsets(offsets: list, length: int, padding_side: str) -> list:
    """Offsets padded with empty spans to the padded length of their ids."""
    padding = [(0, 0)] * (length - len(offsets))
    return padding + offsets if padding_side == "left" else offsets + padding


def __getattr__(name: str):
    # Names that moved to the video files keep importing from here, with a warning
    if name in _MOVED_NAMES:
        warnings.warn(
            f"{name} moved to {_MOVED_NAMES[name]}.py; import it from vtimellm_hf (or that module) instead of "
            "processing_vtime.",
            FutureWarning,
            stacklevel=2,
        )
        return getattr(sys.modules[f"{__package__}.{_MOVED_NAMES[name]}"], name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CAPTIONING",
    "GROUNDING",
    "PLAIN_CHAT_TEMPLATE",
    "VICUNA_V1_CHAT_TEMPLATE",
    "VIDEO_TOKEN",
    "VTimeProcessor",
    "format_index",
    "indices_to_seconds",
    "parse_event_indices",
    "parse_events",
    "parse_grounding_answer",
    "parse_moment_indices",
    "parse_moments",
    "seconds_to_index",
]
