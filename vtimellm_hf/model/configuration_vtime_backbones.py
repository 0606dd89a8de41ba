"""Configurations of the VTimeLLM recipe on other decoder LLMs: Qwen3, Qwen2 (Qwen2.5) and Mistral.

Each is its decoder's own configuration plus the fields of the feature adapter ([`VTimeFeatureStreamsConfigMixin`]),
as [`VTimeLlamaConfig`] is LLaMA's: a checkpoint's `config.json` holds the decoder's fields flat, as the decoder's own
checkpoint does. Llama 3 (and 3.1, 3.2) is the LLaMA architecture: [`VTimeLlamaConfig`] serves it.

This file travels to the Hub with the checkpoints of these backbones (`trust_remote_code=True`): it imports only
transformers, the dataclass validation of huggingface_hub, and its sibling configuration module.
"""

from huggingface_hub.dataclasses import strict
from transformers import MistralConfig, Qwen2Config, Qwen3Config

from .configuration_vtime_llama import VTimeFeatureStreamsConfigMixin


@strict
class VTimeQwen3Config(VTimeFeatureStreamsConfigMixin, Qwen3Config):
    r"""
    Configuration of [`VTimeQwen3ForCausalLM`]: a [`Qwen3Config`] plus the fields of the feature adapter
    ([`VTimeFeatureStreamsConfigMixin`]: `mm_hidden_size`, `num_frames`, `video_token_id`, `feature_streams`,
    `stream_layout`). Other arguments are those of [`Qwen3Config`].
    """

    model_type = "vtime_qwen3"


@strict
class VTimeQwen2Config(VTimeFeatureStreamsConfigMixin, Qwen2Config):
    r"""
    Configuration of [`VTimeQwen2ForCausalLM`] (Qwen2 and Qwen2.5 checkpoints): a [`Qwen2Config`] plus the fields of
    the feature adapter ([`VTimeFeatureStreamsConfigMixin`]). Other arguments are those of [`Qwen2Config`].
    """

    model_type = "vtime_qwen2"


@strict
class VTimeMistralConfig(VTimeFeatureStreamsConfigMixin, MistralConfig):
    r"""
    Configuration of [`VTimeMistralForCausalLM`]: a [`MistralConfig`] plus the fields of the feature adapter
    ([`VTimeFeatureStreamsConfigMixin`]). Other arguments are those of [`MistralConfig`].
    """

    model_type = "vtime_mistral"


__all__ = ["VTimeMistralConfig", "VTimeQwen2Config", "VTimeQwen3Config"]
