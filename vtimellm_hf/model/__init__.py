"""The VTimeLLM model: configuration, modeling and processing, the files that travel to the Hub.

`processing_vtime.py` (text, the `<video>` expansion) holds the chat templates of `chat_templates_vtime.py`, checks
precomputed features with `feature_inputs_vtime.py` and uses `video_processing_vtime.py` (pixels and the frame
encoder), which reads frames through `video_decoding_vtime.py`; `timestamps_vtime.py` reads answers. The audio
streams of LongVALE and AVicuna (`audio_processing_vtime.py`: the Whisper, BEATs and CLAP encoders) read audio tracks
through `audio_decoding_vtime.py` and BEATs from `beats_vtime.py`.

On other decoder LLMs (`configuration_vtime_backbones.py`, `modeling_vtime_backbones.py`): Qwen3, Qwen2/Qwen2.5 and
Mistral each get a small configuration, base model and causal LM built from the family's mixins, beside
`VTimeLlamaForCausalLM` (which Llama 3 checkpoints use: they are the LLaMA architecture); `BACKBONES` maps a decoder's
model type to its classes. Why not a composite configuration holding a `text_config`, as transformers' LLaVA does:

- Conversion of Vicuna releases stays as it is. The released checkpoints name the decoder's weights `model.layers.*`
  and the projector `model.mm_projector.*` on the same module; a composite puts the decoder under
  `model.language_model.*`, so every released checkpoint, its LoRA adapters and PEFT's target names would need a key
  mapping, and `VTimeLlamaForCausalLM` would change. A decoder's own checkpoint (`Qwen/Qwen3-8B`) likewise loads
  into its VTimeLLM class by name, which is what stage 1 does.
- The splice is written once: `VTimeFeatureSpliceMixin.forward`, every backbone's base model's (LLaMA's too),
  where TRL's fused LM head, which calls `model.model` directly, also goes.
- Hub files stay self-contained: a checkpoint's `config.json` holds the decoder's own fields flat (as the decoder's
  checkpoint does) plus the adapter's, under one model type (`vtime_qwen3`), and its code files are the backbone's
  pair and the family files they import relatively, nothing else. A composite would also have to resolve its
  `text_config`'s class at load time, for every decoder, inside the remote code.
- The cost is a configuration and two classes of a few lines per decoder, registered with the Auto classes.

The chat templates of each backbone are in `vtimellm_hf/chat_formats.py`: the processor saves them with a checkpoint.
"""

import transformers
from transformers import AutoConfig, AutoProcessor

from .chat_templates_vtime import PLAIN_CHAT_TEMPLATE, VICUNA_V1_CHAT_TEMPLATE
from .configuration_vtime_backbones import VTimeMistralConfig, VTimeQwen2Config, VTimeQwen3Config
from .configuration_vtime_llama import (
    STREAM_LAYOUTS,
    STREAM_NAMES,
    FeatureStream,
    VTimeFeatureStreamsConfigMixin,
    VTimeLlamaConfig,
    avicuna_streams,
    longvale_streams,
)
from .modeling_vtime_backbones import (
    VTimeMistralForCausalLM,
    VTimeMistralModel,
    VTimeQwen2ForCausalLM,
    VTimeQwen2Model,
    VTimeQwen3ForCausalLM,
    VTimeQwen3Model,
)
from .modeling_vtime_llama import (
    GENERATING_AUTO_CLASSES,
    VTimeCausalLMMixin,
    VTimeFeatureSpliceMixin,
    VTimeLlamaForCausalLM,
    VTimeLlamaModel,
    interleave_audio_slots,
)
from .processing_vtime import VIDEO_TOKEN, VTimeProcessor
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

# The VTimeLLM configuration and model of each decoder LLM, by the decoder's model type: a checkpoint of that
# decoder (Vicuna and Llama 3 are "llama"; Qwen2.5 is "qwen2") becomes one of these with the stage-1 projector
BACKBONES = {
    "llama": (VTimeLlamaConfig, VTimeLlamaForCausalLM),
    "qwen3": (VTimeQwen3Config, VTimeQwen3ForCausalLM),
    "qwen2": (VTimeQwen2Config, VTimeQwen2ForCausalLM),
    "mistral": (VTimeMistralConfig, VTimeMistralForCausalLM),
}

# In this process the Auto classes resolve "vtime_llama" (and each backbone's type) to these classes; a saved folder
# also carries the files and an `auto_map`, so that `trust_remote_code=True` loads it where this package is not
# installed.
for _config_class, _model_class in BACKBONES.values():
    AutoConfig.register(_config_class.model_type, _config_class, exist_ok=True)
    for _auto_class in GENERATING_AUTO_CLASSES:
        getattr(transformers, _auto_class).register(_config_class, _model_class, exist_ok=True)
    AutoProcessor.register(_config_class, VTimeProcessor, exist_ok=True)
    _config_class.register_for_auto_class("AutoConfig")
    _model_class.register_for_auto_class("AutoModelForCausalLM")
VTimeProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "BACKBONES",
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
    "VTimeMistralConfig",
    "VTimeMistralForCausalLM",
    "VTimeMistralModel",
    "VTimeProcessor",
    "VTimeQwen2Config",
    "VTimeQwen2ForCausalLM",
    "VTimeQwen2Model",
    "VTimeQwen3Config",
    "VTimeQwen3ForCausalLM",
    "VTimeQwen3Model",
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
