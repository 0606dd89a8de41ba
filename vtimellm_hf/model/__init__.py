"""The VTimeLLM model: configuration, modeling and processing, the three files that travel to the Hub."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoProcessor

from .configuration_vtime_llama import VTimeLlamaConfig
from .modeling_vtime_llama import VTimeLlamaForCausalLM, VTimeLlamaModel
from .processing_vtime import (
    CAPTIONING,
    GROUNDING,
    VIDEO_TOKEN,
    VICUNA_V1_CHAT_TEMPLATE,
    VTimeProcessor,
    format_index,
    get_video_duration,
    indices_to_seconds,
    load_video_frames,
    parse_event_indices,
    parse_events,
    parse_grounding_answer,
    parse_moment_indices,
    parse_moments,
    preprocess_frames,
    sample_frame_indices,
    seconds_to_index,
)

# In this process the Auto classes resolve "vtime_llama" to these classes; a saved folder also carries the files
# and an `auto_map`, so that `trust_remote_code=True` loads it where this package is not installed.
AutoConfig.register(VTimeLlamaConfig.model_type, VTimeLlamaConfig, exist_ok=True)
AutoModel.register(VTimeLlamaConfig, VTimeLlamaForCausalLM, exist_ok=True)
AutoModelForCausalLM.register(VTimeLlamaConfig, VTimeLlamaForCausalLM, exist_ok=True)
AutoProcessor.register(VTimeLlamaConfig, VTimeProcessor, exist_ok=True)
VTimeLlamaConfig.register_for_auto_class("AutoConfig")
VTimeLlamaForCausalLM.register_for_auto_class("AutoModelForCausalLM")
VTimeProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "CAPTIONING",
    "GROUNDING",
    "VIDEO_TOKEN",
    "VICUNA_V1_CHAT_TEMPLATE",
    "VTimeLlamaConfig",
    "VTimeLlamaForCausalLM",
    "VTimeLlamaModel",
    "VTimeProcessor",
    "format_index",
    "get_video_duration",
    "indices_to_seconds",
    "load_video_frames",
    "parse_event_indices",
    "parse_events",
    "parse_grounding_answer",
    "parse_moment_indices",
    "parse_moments",
    "preprocess_frames",
    "sample_frame_indices",
    "seconds_to_index",
]
