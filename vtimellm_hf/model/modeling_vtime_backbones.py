"""The VTimeLLM recipe on other decoder LLMs: Qwen3, Qwen2 (Qwen2.5) and Mistral, beside LLaMA's
[`VTimeLlamaForCausalLM`] (which Llama 3 checkpoints use too: they are the LLaMA architecture).

Each backbone is three small classes, as LLaMA's: its configuration (`configuration_vtime_backbones.py`), its
decoder's base model with the projectors and the splice ([`VTimeFeatureSpliceMixin`]) and its decoder's causal LM
([`VTimeCausalLMMixin`]). The splice, the projectors, `forward` and the generation hooks are written once, in
`modeling_vtime_llama.py`; nothing here depends on the decoder beyond the `forward` signature that transformers'
decoders share.

This file travels to the Hub with the checkpoints of these backbones (`trust_remote_code=True`): it imports only
transformers and its sibling modules.
"""

from transformers import MistralForCausalLM, MistralModel, Qwen2ForCausalLM, Qwen2Model, Qwen3ForCausalLM, Qwen3Model

from .configuration_vtime_backbones import VTimeMistralConfig, VTimeQwen2Config, VTimeQwen3Config
from .modeling_vtime_llama import VTimeCausalLMMixin, VTimeFeatureSpliceMixin


class VTimeQwen3Model(VTimeFeatureSpliceMixin, Qwen3Model):
    """The Qwen3 decoder with the projectors of its feature streams; the splice happens here (see
    [`VTimeLlamaModel`] for why in the inner model)."""

    config_class = VTimeQwen3Config


class VTimeQwen3ForCausalLM(VTimeCausalLMMixin, Qwen3ForCausalLM):
    """The VTimeLLM recipe on Qwen3: [`VTimeQwen3Model`] plus the LM head."""

    config_class = VTimeQwen3Config
    base_model_class = VTimeQwen3Model


class VTimeQwen2Model(VTimeFeatureSpliceMixin, Qwen2Model):
    """The Qwen2 (Qwen2.5) decoder with the projectors of its feature streams."""

    config_class = VTimeQwen2Config


class VTimeQwen2ForCausalLM(VTimeCausalLMMixin, Qwen2ForCausalLM):
    """The VTimeLLM recipe on Qwen2 and Qwen2.5: [`VTimeQwen2Model`] plus the LM head."""

    config_class = VTimeQwen2Config
    base_model_class = VTimeQwen2Model


class VTimeMistralModel(VTimeFeatureSpliceMixin, MistralModel):
    """The Mistral decoder with the projectors of its feature streams."""

    config_class = VTimeMistralConfig


class VTimeMistralForCausalLM(VTimeCausalLMMixin, MistralForCausalLM):
    """The VTimeLLM recipe on Mistral: [`VTimeMistralModel`] plus the LM head."""

    config_class = VTimeMistralConfig
    base_model_class = VTimeMistralModel


__all__ = [
    "VTimeMistralForCausalLM",
    "VTimeMistralModel",
    "VTimeQwen2ForCausalLM",
    "VTimeQwen2Model",
    "VTimeQwen3ForCausalLM",
    "VTimeQwen3Model",
]
