"""VTimeLLM: LLaMA with a linear adapter that splices 100 CLIP frame embeddings in place of `<video>`.

This file travels to the Hub with every checkpoint (`trust_remote_code=True`): it imports only torch,
transformers and its sibling configuration module.
"""

import torch
from torch import nn
from transformers import Cache, LlamaForCausalLM, LlamaModel, LlamaPreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import is_torchdynamo_compiling
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_vtime_llama import VTimeLlamaConfig

# The Auto classes that build the generating model, in a saved folder's `auto_map`: `AutoModel` too, because users
# load VTimeLLM with it and call `generate`; `AutoModelForImageTextToText` is the class `pipeline("image-text-to-text")`
# loads, `AutoModelForMultimodalLM` that of `pipeline("any-to-any")`.
GENERATING_AUTO_CLASSES = ("AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText",
                           "AutoModelForMultimodalLM")  # fmt: skip


class VTimeLlamaModel(LlamaModel):
    """
    The LLaMA decoder with the frame adapter `mm_projector`.

    The splice of the frame rows happens here, in the inner model, and not in [`VTimeLlamaForCausalLM`]: TRL's
    `SFTTrainer` patches the causal LM with a fused LM head that calls this inner model directly, so logic placed
    only in the outer `forward` would be skipped in training.
    """

    config_class = VTimeLlamaConfig

    def __init__(self, config: VTimeLlamaConfig):
        super().__init__(config)
        self.mm_projector = nn.Linear(config.mm_hidden_size, config.hidden_size)
        self.post_init()

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, video_features: torch.Tensor
    ) -> torch.BoolTensor:
        """
        Returns the `(batch, seq_len)` mask of the video placeholder tokens, after checking that every sample holds
        exactly as many placeholders as `video_features` `(batch, rows, ...)` have rows.

        Without `input_ids`, placeholders are found by comparing `inputs_embeds` with the embedding of
        `config.video_token_id`.
        """
        if self.config.video_token_id is None:
            raise ValueError("`video_features` were given but `config.video_token_id` is not set.")
        if input_ids is None:
            video_embedding = self.get_input_embeddings()(
                torch.tensor(self.config.video_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            placeholder_mask = (inputs_embeds == video_embedding).all(-1)
        else:
            placeholder_mask = input_ids == self.config.video_token_id

        if video_features.shape[0] != placeholder_mask.shape[0]:
            raise ValueError(
                f"`video_features` holds {video_features.shape[0]} videos but the batch has "
                f"{placeholder_mask.shape[0]} samples; pass one video per sample."
            )
        rows = video_features.shape[1]
        # Reading the counts back is a host sync, which would break a torch.compile graph: compiled, they go unchecked
        if not is_torchdynamo_compiling():
            for index, placeholders in enumerate(placeholder_mask.sum(-1).tolist()):
                if placeholders != rows:
                    raise ValueError(
                        f"Video placeholder tokens and feature rows do not match in sample {index}: "
                        f"{placeholders} placeholder tokens (id {self.config.video_token_id}) but {rows} feature "
                        "rows."
                    )
        return placeholder_mask

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        video_features: torch.FloatTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq_len)`):
                Token ids; each sample holds a run of `config.video_token_id` placeholders when `video_features`
                are given.
            inputs_embeds (`torch.FloatTensor` of shape `(batch, seq_len, hidden_size)`, *optional*):
                In place of `input_ids`; placeholders are the positions equal to the `<video>` embedding.
            video_features (`torch.FloatTensor` of shape `(batch, rows, mm_hidden_size)`, *optional*):
                One video per sample: `rows` frame embeddings (100 for a video, 1 for a stage-1 image). Row `k` of
                sample `i` replaces the `k`-th placeholder of sample `i`.
            Other arguments are those of [`LlamaModel.forward`], in its order.
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        if video_features is None:
            # Placeholders without frames would be read as the untrained <video> embedding, silently. Only a forward
            # that starts a sequence, outside torch.compile, is checked: the check is a host sync, and the later
            # steps of a cached generation feed sampled tokens, which may be the placeholder id.
            starts_sequence = cache is None or cache.get_seq_length() == 0
            if (
                input_ids is not None
                and self.config.video_token_id is not None
                and starts_sequence
                and not is_torchdynamo_compiling()
                and (input_ids == self.config.video_token_id).any()
            ):
                raise ValueError(
                    "input_ids hold video placeholder tokens but no video_features were given; pass the features of "
                    "each sample's video (the processor returns them as `video_features`)."
                )
        else:
            if video_features.ndim != 3:
                raise ValueError(
                    f"video_features must have shape (batch, rows, mm_hidden_size), one video per sample, but have "
                    f"shape {tuple(video_features.shape)}; for a single video, add the batch dimension "
                    "(`video_features[None]`)."
                )
            if video_features.shape[-1] != self.config.mm_hidden_size:
                raise ValueError(
                    f"video_features have {video_features.shape[-1]} values per row but the projector takes "
                    f"mm_hidden_size={self.config.mm_hidden_size}: were they made by another frame encoder?"
                )
            placeholder_mask = self.get_placeholder_mask(input_ids, inputs_embeds, video_features)
            projected = self.mm_projector(video_features.to(self.mm_projector.weight.dtype))
            # The projector may be kept in float32 while the LLM runs in bfloat16: rows take the embeddings' dtype
            inputs_embeds = inputs_embeds.masked_scatter(
                placeholder_mask.unsqueeze(-1).to(inputs_embeds.device),
                projected.to(inputs_embeds.device, inputs_embeds.dtype),
            )

        return super().forward(
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )


class VTimeLlamaForCausalLM(LlamaForCausalLM):
    """
    VTimeLLM for generation and training: [`VTimeLlamaModel`] plus the LM head.

    Every Auto class of `GENERATING_AUTO_CLASSES` builds this class (`AutoModel` among them), so that the model a user
    loads, or a pipeline loads, can generate.
    """

    config_class = VTimeLlamaConfig

    def __init__(self, config: VTimeLlamaConfig):
        # Skip LlamaForCausalLM.__init__, which would build a plain LlamaModel only to throw it away
        LlamaPreTrainedModel.__init__(self, config)
        self.model = VTimeLlamaModel(config)
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
        video_features: torch.FloatTensor | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq_len)`):
                Token ids with a run of video placeholders per sample when `video_features` are given.
            attention_mask (`torch.LongTensor` of shape `(batch, seq_len)`, *optional*):
                1 for real tokens, 0 for padding (left padding for batched generation).
            inputs_embeds (`torch.FloatTensor` of shape `(batch, seq_len, hidden_size)`, *optional*):
                In place of `input_ids`, the `<video>` embedding at each placeholder.
            labels (`torch.LongTensor` of shape `(batch, seq_len)`, *optional*):
                Target ids, -100 where no loss is taken (placeholders, prompt, padding).
            video_features (`torch.FloatTensor` of shape `(batch, rows, mm_hidden_size)`, *optional*):
                Precomputed CLIP frame embeddings, one video per sample (see [`VTimeLlamaModel.forward`]).
            Other arguments are those of [`LlamaForCausalLM.forward`], in its order. They are named here because
            `generate` reads the signature: it derives position ids, accepts a KV cache and `inputs_embeds`, and
            computes prefill logits for the last position only (`logits_to_keep`), only for a `forward` that names
            them.
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
            **kwargs,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        inputs_embeds: torch.FloatTensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ):
        # `inputs_embeds` is named because `generate` accepts it only from a model whose method names it.
        # generate() passes custom kwargs on every step; the frames belong to the prompt, spliced once at prefill,
        # after which the KV cache holds them and the new tokens carry no placeholder.
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **kwargs
        )
        if not is_first_iteration and model_inputs.get("use_cache", True):
            model_inputs.pop("video_features", None)
        return model_inputs

    def save_pretrained(self, save_directory, *args, **kwargs):
        # `register_for_auto_class` records one Auto class per model class; the others must build this one too
        auto_map = dict(self.config.auto_map or {}) if hasattr(self.config, "auto_map") else {}
        if self._auto_class is not None:
            class_reference = f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"
            auto_map.update(dict.fromkeys(GENERATING_AUTO_CLASSES, class_reference))
            self.config.auto_map = auto_map
        super().save_pretrained(save_directory, *args, **kwargs)


__all__ = ["VTimeLlamaForCausalLM", "VTimeLlamaModel"]
