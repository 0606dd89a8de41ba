"""Configuration of VTimeLLM: a LLaMA language model that reads one row per video frame.

This file travels to the Hub with every checkpoint (`trust_remote_code=True`): it imports only transformers and the
dataclass validation of huggingface_hub that transformers' own configurations use.
"""

from huggingface_hub.dataclasses import strict, validated_field
from transformers import LlamaConfig
from transformers.utils.type_validators import positive_int, positive_int_field


# As LlamaConfig: `@strict` checks every field's type, and the validators below its value, when the configuration is
# made, loaded or changed, with an error that names the field
@strict
class VTimeLlamaConfig(LlamaConfig):
    r"""
    Configuration of [`VTimeLlamaForCausalLM`]: a [`LlamaConfig`] plus the fields of the video adapter.

    Args:
        mm_hidden_size (`int`, *optional*, defaults to 768):
            Width of one frame feature: the CLIP image embedding (`image_embeds` of
            `CLIPVisionModelWithProjection`, 768 for ViT-L/14). The `mm_projector` maps it to `hidden_size`.
        num_frames (`int`, *optional*, defaults to 100):
            Frames sampled per video, hence feature rows spliced per `<video>` placeholder.
        video_token_id (`int`, *optional*):
            Id of the placeholder token; each of its occurrences in `input_ids` is replaced by one projected
            feature row.
        Other arguments are those of [`LlamaConfig`].
    """

    model_type = "vtime_llama"

    mm_hidden_size: int = positive_int_field(default=768)
    num_frames: int = positive_int_field(default=100)
    video_token_id: int | None = validated_field(positive_int, default=None)


__all__ = ["VTimeLlamaConfig"]
