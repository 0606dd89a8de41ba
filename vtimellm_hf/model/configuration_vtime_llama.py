"""Configuration of VTimeLLM: a LLaMA language model that reads one row per video frame."""

from transformers import LlamaConfig


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

    mm_hidden_size: int = 768
    num_frames: int = 100
    video_token_id: int | None = None


__all__ = ["VTimeLlamaConfig"]
