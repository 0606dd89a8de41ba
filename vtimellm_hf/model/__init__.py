"""The VTimeLLM model: configuration, modeling and processing, the files that travel to the Hub.

`processing_vtime.py` (text, chat templates, the `<video>` expansion) uses `video_processing_vtime.py` (pixels and the
frame encoder), which reads frames through `video_decoding_vtime.py`; `timestamps_vtime.py` reads answers. The audio
streams of LongVALE and AVicuna (`audio_processing_vtime.py`: the Whisper, BEATs and CLAP encoders) read audio tracks
through `audio_decoding_vtime.py` and BEATs from `beats_vtime.py`.
"""

import transformers
from transformers import AutoConfig, AutoProcessor

from .configuration_vtime_llama import (
    STREAM_LAYOUTS,
    STREAM_NAMES,
    FeatureStream,
    VTimeFeatureStreamsConfigMixin,
    VTimeLlamaConfig,
    avicuna_streams,
    longvale_streams,
)
from .modeling_vtime_llama import (
    GENERATING_AUTO_CLASSES,
    VTimeCausalLMMixin,
    VTimeFeatureSpliceMixin,
    VTimeLlamaForCausalLM,
    VTimeLlamaModel,
    interleave_audio_slots,
)
from .processing_vtime import PLAIN_CHAT_TEMPLATE, VICUNA_V1_CHAT_TEMPLATE, VIDEO_TOKEN, VTimeProcessor
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
from .video_decoding_vtime import (
    VIDEO_BACKENDS,
    check_video_backend,
    get_video_duration,
    load_video_frames,
    sample_frame_indices,
)
from .video_processing_vtime import (
    CLIP_MEAN,
    CLIP_STD,
    DEFAULT_FRAME_ENCODER,
    VTimeFrameEncoder,
    VTimeVideoProcessor,
    image_as_frame,
    preprocess_frames,
    read_frame_preprocessing,
)

# In this process the Auto classes resolve "vtime_llama" to these classes; a saved folder also carries the files
# and an `auto_map`, so that `trust_remote_code=True` loads it where this package is not installed.
AutoConfig.register(VTimeLlamaConfig.model_type, VTimeLlamaConfig, exist_ok=True)
for _auto_class in GENERATING_AUTO_CLASSES:
    getattr(transformers, _auto_class).register(VTimeLlamaConfig, VTimeLlamaForCausalLM, exist_ok=True)
AutoProcessor.register(VTimeLlamaConfig, VTimeProcessor, exist_ok=True)
VTimeLlamaConfig.register_for_auto_class("AutoConfig")
VTimeLlamaForCausalLM.register_for_auto_class("AutoModelForCausalLM")
VTimeProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "CAPTIONING",
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_FRAME_ENCODER",
    "FeatureStream",
    "GROUNDING",
    "PLAIN_CHAT_TEMPLATE",
    "STREAM_LAYOUTS",
    "STREAM_NAMES",
    "VICUNA_V1_CHAT_TEMPLATE",
    "VIDEO_BACKENDS",
    "VIDEO_TOKEN",
    "VTimeCausalLMMixin",
    "VTimeFeatureSpliceMixin",
    "VTimeFeatureStreamsConfigMixin",
    "VTimeFrameEncoder",
    "VTimeLlamaConfig",
    "VTimeLlamaForCausalLM",
    "VTimeLlamaModel",
    "VTimeProcessor",
    "VTimeVideoProcessor",
    "avicuna_streams",
    "check_video_backend",
    "format_index",
    "get_video_duration",
    "image_as_frame",
    "indices_to_seconds",
    "interleave_audio_slots",
    "load_video_frames",
    "longvale_streams",
    "parse_event_indices",
    "parse_events",
    "parse_grounding_answer",
    "parse_moment_indices",
    "parse_moments",
    "preprocess_frames",
    "read_frame_preprocessing",
    "sample_frame_indices",
    "seconds_to_index",
]
