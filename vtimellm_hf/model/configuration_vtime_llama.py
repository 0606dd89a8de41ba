"""Configuration of the VTimeLLM family: a LLaMA language model that reads feature rows in place of `<video>`.

One configuration serves VTimeLLM (100 CLIP frame rows), LongVALE-LLM (video, BEATs audio and Whisper speech rows,
concatenated) and AVicuna (video and CLAP audio rows, interleaved): the checkpoint's feature streams and their layout
are fields ([`VTimeFeatureStreamsConfigMixin`]), not forks of the code.

This file travels to the Hub with every checkpoint (`trust_remote_code=True`): it imports only transformers and the
dataclass validation of huggingface_hub that transformers' own configurations use.
"""

from dataclasses import dataclass

from huggingface_hub.dataclasses import strict, validated_field
from transformers import LlamaConfig
from transformers.utils.type_validators import positive_int, positive_int_field

# The streams a model may read, each passed to `forward` as `{name}_features`, in the order of a `concat` layout
STREAM_NAMES = ("video", "audio", "speech")
# `single`: VTimeLLM's video rows alone; `concat`: LongVALE's streams one after the other, in the order the
# configuration lists them; `interleave`: AVicuna's audio rows spread among the video rows
STREAM_LAYOUTS = ("single", "concat", "interleave")
STREAM_KEYS = ("name", "projector", "hidden_size", "extractor")
# AVicuna puts at most one audio row per video row: above this share of audio rows its slots cannot hold them
MAX_INTERLEAVE_AUDIO_RATIO = 0.5


@dataclass(frozen=True)
class FeatureStream:
    """
    One stream of feature rows: its name (`video`, `audio`, `speech`: the model takes it as `{name}_features`),
    the projector that maps its rows to the LLM's width (a `nn.Linear` of the inner model, by its attribute name),
    the width of its rows, and the feature extractor that makes them (`clip`, `beats`, `whisper`, `clap`).
    """

    name: str
    projector: str
    hidden_size: int
    extractor: str


def longvale_streams(video_size: int = 768, audio_size: int = 768, speech_size: int = 1280) -> list[dict]:
    """LongVALE-LLM's streams: CLIP video, BEATs audio and Whisper speech, in that row order (layout `concat`)."""
    return [
        {"name": "video", "projector": "mm_projector", "hidden_size": video_size, "extractor": "clip"},
        {"name": "audio", "projector": "audio_mm_projector", "hidden_size": audio_size, "extractor": "beats"},
        {"name": "speech", "projector": "asr_mm_projector", "hidden_size": speech_size, "extractor": "whisper"},
    ]


def avicuna_streams(video_size: int = 768, audio_size: int = 512) -> list[dict]:
    """AVicuna's streams: CLIP video and CLAP audio (layout `interleave`)."""
    return [
        {"name": "video", "projector": "mm_projector", "hidden_size": video_size, "extractor": "clip"},
        {"name": "audio", "projector": "mm_projector_a", "hidden_size": audio_size, "extractor": "clap"},
    ]


@dataclass(kw_only=True)
class VTimeFeatureStreamsConfigMixin:
    r"""
    The fields of the feature adapter, for any decoder configuration: `class XConfig(VTimeFeatureStreamsConfigMixin,
    SomeDecoderConfig)`. transformers 5 makes every configuration a dataclass, and this mixin is one, so its fields
    join the subclass's (and `@strict` on the subclass checks them, with `validate_feature_streams`).

    Args:
        mm_hidden_size (`int`, *optional*, defaults to 768):
            Width of one video row: the CLIP image embedding (`image_embeds` of `CLIPVisionModelWithProjection`, 768
            for ViT-L/14). The `mm_projector` maps it to `hidden_size`.
        num_frames (`int`, *optional*, defaults to 100):
            Frames sampled per video: the video rows of VTimeLLM and LongVALE (AVicuna's processor samples fewer, to
            leave slots to audio rows).
        video_token_id (`int`, *optional*):
            Id of the placeholder token; each of its occurrences in `input_ids` is replaced by one projected row.
        feature_streams (`list[dict]`, *optional*):
            The streams of the checkpoint, each `{"name", "projector", "hidden_size", "extractor"}` (see
            [`FeatureStream`]); `None` is VTimeLLM's single video stream (`mm_projector`, `mm_hidden_size`, CLIP).
            The video stream, when listed, has `mm_hidden_size` as its width.
        stream_layout (`str`, *optional*, defaults to `"single"`):
            How a sample's rows fill its `<video>` placeholders: `"single"` (video only), `"concat"` (the streams in
            the order listed, a stream the sample lacks absent) or `"interleave"` (video and audio: audio rows at
            slots `arange(0, T, f + 1)[:N_a]` with `f = round(N_v / (N_a + 1))`, video rows in the others).
    """

    mm_hidden_size: int = positive_int_field(default=768)
    num_frames: int = positive_int_field(default=100)
    video_token_id: int | None = validated_field(positive_int, default=None)
    feature_streams: list[dict] | None = None
    stream_layout: str = "single"

    @property
    def streams(self) -> list[FeatureStream]:
        """The feature streams, in row order for a `concat` layout."""
        if self.feature_streams is None:
            return [FeatureStream("video", "mm_projector", self.mm_hidden_size, "clip")]
        return [FeatureStream(**stream) for stream in self.feature_streams]

    def validate_feature_streams(self):
        """Part of `@strict`'s validation: the streams and the layout fit together."""
        if self.stream_layout not in STREAM_LAYOUTS:
            raise ValueError(f"stream_layout must be one of {', '.join(STREAM_LAYOUTS)}, got {self.stream_layout!r}.")
        for index, stream in enumerate(self.feature_streams or []):
            if not isinstance(stream, dict) or set(stream) != set(STREAM_KEYS):
                raise ValueError(f"feature_streams[{index}] must be a dict with keys {', '.join(STREAM_KEYS)}, got "
                                 f"{stream!r}.")  # fmt: skip
            if stream["name"] not in STREAM_NAMES:
                raise ValueError(f"feature_streams[{index}]: name must be one of {', '.join(STREAM_NAMES)}, got "
                                 f"{stream['name']!r}.")  # fmt: skip
            if not isinstance(stream["hidden_size"], int) or stream["hidden_size"] <= 0:
                raise ValueError(f"feature_streams[{index}]: hidden_size must be a positive integer, got "
                                 f"{stream['hidden_size']!r}.")  # fmt: skip
            if not str(stream["projector"]).isidentifier():
                raise ValueError(f"feature_streams[{index}]: projector must be an attribute name, got "
                                 f"{stream['projector']!r}.")  # fmt: skip
        streams = self.streams
        names = [stream.name for stream in streams]
        projectors = [stream.projector for stream in streams]
        if len(set(names)) != len(names) or len(set(projectors)) != len(projectors):
            raise ValueError(f"feature_streams name each stream and projector once, got streams {names} and "
                             f"projectors {projectors}.")  # fmt: skip
        video = next((stream for stream in streams if stream.name == "video"), None)
        if video is not None and video.hidden_size != self.mm_hidden_size:
            raise ValueError(f"The video stream is {video.hidden_size} wide but mm_hidden_size is "
                             f"{self.mm_hidden_size}: they name the same width.")  # fmt: skip
        expected = {"single": ["video"], "interleave": ["video", "audio"]}.get(self.stream_layout)
        if expected is not None and names != expected:
            raise ValueError(f"stream_layout {self.stream_layout!r} takes the streams {expected}, got {names}.")

    def stream(self, name: str) -> FeatureStream | None:
        """The stream called `name`, or `None` when the checkpoint has none."""
        return next((stream for stream in self.streams if stream.name == name), None)


# As LlamaConfig: `@strict` checks every field's type, and the validators below its value, when the configuration is
# made, loaded or changed, with an error that names the field
@strict
class VTimeLlamaConfig(VTimeFeatureStreamsConfigMixin, LlamaConfig):
    r"""
    Configuration of [`VTimeLlamaForCausalLM`]: a [`LlamaConfig`] plus the fields of the feature adapter
    ([`VTimeFeatureStreamsConfigMixin`]: `mm_hidden_size`, `num_frames`, `video_token_id`, `feature_streams`,
    `stream_layout`). Other arguments are those of [`LlamaConfig`].
    """

    model_type = "vtime_llama"


__all__ = [
    "FeatureStream",
    "STREAM_LAYOUTS",
    "STREAM_NAMES",
    "VTimeFeatureStreamsConfigMixin",
    "VTimeLlamaConfig",
    "avicuna_streams",
    "longvale_streams",
]
