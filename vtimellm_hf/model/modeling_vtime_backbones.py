"""The VTimeLLM recipe on other decoder LLMs: Qwen3, Qwen2 (Qwen2.5) and Mistral, beside LLaMA's
[`VTimeLlamaForCausalLM`] (which Llama 3 checkpoints use too: they are the LLaMA architecture).

Each backbone is three small classes: its configuration (`configuration_vtime_backbones.py`), its decoder's base
model with the feature splice ([`VTimeDecoderModelMixin`] over [`VTimeFeatureSpliceMixin`]) and its decoder's causal
LM ([`VTimeDecoderForCausalLMMixin`] over [`VTimeCausalLMMixin`]). The splice itself, the projectors and the
generation hooks are written once, in `modeling_vtime_llama.py`; nothing here depends on the decoder beyond the
`forward` signature that transformers' decoders share.

This file travels to the Hub with the checkpoints of these backbones (`trust_remote_code=True`): it imports only
torch, transformers and its sibling modules.
"""

import torch
from torch import nn
from transformers import (
    Cache,
    MistralForCausalLM,
    MistralModel,
    Qwen2ForCausalLM,
    Qwen2Model,
    Qwen3ForCausalLM,
    Qwen3Model,
)
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_vtime_backbones import VTimeMistralConfig, VTimeQwen2Config, VTimeQwen3Config
from .modeling_vtime_llama import VTimeCausalLMMixin, VTimeFeatureSpliceMixin


class VTimeDecoderModelMixin(VTimeFeatureSpliceMixin):
    """
    A decoder's base model that builds the projectors of its configuration's streams and splices their rows in place
    of the placeholders before its first layer: `class XModel(VTimeDecoderModelMixin, SomeDecoderModel)`.
    """

    def __init__(self, config):
        super().__init__(config)
        self._build_projectors()
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        video_features: torch.FloatTensor | list | None = None,
        audio_features: torch.FloatTensor | list | None = None,
        speech_features: torch.FloatTensor | list | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq_len)`):
                Token ids; each sample holds a run of `config.video_token_id` placeholders, one per feature row.
            inputs_embeds (`torch.FloatTensor` of shape `(batch, seq_len, hidden_size)`, *optional*):
                In place of `input_ids`; placeholders are the positions equal to the `<video>` embedding.
            video_features, audio_features, speech_features (*optional*):
                Each stream's rows, `(batch, rows, width)` or a list with a `(rows, width)` tensor or `None` per
                sample, as [`VTimeLlamaModel.forward`] takes them.
            Other arguments are those of the decoder's base model `forward`, in its order.
        """
        inputs_embeds = self.embed_with_features(
            input_ids, inputs_embeds, cache,
            video_features=video_features, audio_features=audio_features, speech_features=speech_features,
        )  # fmt: skip
        return super().forward(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )


class VTimeDecoderForCausalLMMixin(VTimeCausalLMMixin):
    """
    A decoder's causal LM over its [`VTimeDecoderModelMixin`] base model (`base_model_class`):
    `class XForCausalLM(VTimeDecoderForCausalLMMixin, SomeDecoderForCausalLM)`.
    """

    base_model_class: type

    def __init__(self, config):
        # The decoder's pre-trained model __init__, skipping its causal LM's, which would build a plain base model
        # only to throw it away: the class after this mixin in the method order is the decoder's causal LM
        method_order = type(self).__mro__
        decoder_causal_lm = method_order[method_order.index(VTimeDecoderForCausalLMMixin) + 1]
        super(decoder_causal_lm, self).__init__(config)
        self.model = self.base_model_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        video_features: torch.FloatTensor | list | None = None,
        audio_features: torch.FloatTensor | list | None = None,
        speech_features: torch.FloatTensor | list | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq_len)`):
                Token ids with a run of placeholders per sample when features are given.
            labels (`torch.LongTensor` of shape `(batch, seq_len)`, *optional*):
                Target ids, -100 where no loss is taken (placeholders, prompt, padding).
            video_features, audio_features, speech_features (*optional*):
                Precomputed rows of each stream, one entry per sample (see [`VTimeDecoderModelMixin.forward`]).
            Other arguments are those of the decoder's causal LM `forward`, in its order. They are named here because
            `generate` reads the signature (position ids, the KV cache, `inputs_embeds`, `logits_to_keep`).
        """
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            video_features=video_features,
            audio_features=audio_features,
            speech_features=speech_features,
            **kwargs,
        )


class VTimeQwen3Model(VTimeDecoderModelMixin, Qwen3Model):
    """The Qwen3 decoder with the projectors of its feature streams; the splice happens here (see
    [`VTimeLlamaModel`] for why in the inner model)."""

    config_class = VTimeQwen3Config


class VTimeQwen3ForCausalLM(VTimeDecoderForCausalLMMixin, Qwen3ForCausalLM):
    """The VTimeLLM recipe on Qwen3: [`VTimeQwen3Model`] plus the LM head."""

    config_class = VTimeQwen3Config
    base_model_class = VTimeQwen3Model


class VTimeQwen2Model(VTimeDecoderModelMixin, Qwen2Model):
    """The Qwen2 (Qwen2.5) decoder with the projectors of its feature streams."""

    config_class = VTimeQwen2Config


class VTimeQwen2ForCausalLM(VTimeDecoderForCausalLMMixin, Qwen2ForCausalLM):
    """The VTimeLLM recipe on Qwen2 and Qwen2.5: [`VTimeQwen2Model`] plus the LM head."""

    config_class = VTimeQwen2Config
    base_model_class = VTimeQwen2Model


class VTimeMistralModel(VTimeDecoderModelMixin, MistralModel):
    """The Mistral decoder with the projectors of its feature streams."""

    config_class = VTimeMistralConfig


class VTimeMistralForCausalLM(VTimeDecoderForCausalLMMixin, MistralForCausalLM):
    """The VTimeLLM recipe on Mistral: [`VTimeMistralModel`] plus the LM head."""

    config_class = VTimeMistralConfig
    base_model_class = VTimeMistralModel


__all__ = [
    "VTimeDecoderForCausalLMMixin",
    "VTimeDecoderModelMixin",
    "VTimeMistralForCausalLM",
    "VTimeMistralModel",
    "VTimeQwen2ForCausalLM",
    "VTimeQwen2Model",
    "VTimeQwen3ForCausalLM",
    "VTimeQwen3Model",
]
