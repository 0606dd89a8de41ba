"""The VTimeLLM family on LLaMA: projected feature rows (video, audio, speech) spliced in place of `<video>`.

VTimeLLM splices 100 CLIP frame rows; LongVALE-LLM adds BEATs audio and Whisper speech rows after them; AVicuna
interleaves CLAP audio rows with its video rows. One model serves all three, configured by the checkpoint's streams
and layout ([`VTimeFeatureStreamsConfigMixin`]).

This file travels to the Hub with every checkpoint (`trust_remote_code=True`): it imports only torch,
transformers and its sibling configuration module.
"""

import torch
from torch import nn
from transformers import Cache, LlamaForCausalLM, LlamaModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import is_torchdynamo_compiling
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_vtime_llama import MAX_INTERLEAVE_AUDIO_RATIO, STREAM_NAMES, FeatureStream, VTimeLlamaConfig

# How an error names what a stream's tensor holds per sample
_STREAM_ITEMS = {"video": "videos", "audio": "audio tracks", "speech": "speech tracks"}

# The Auto classes that build the generating model, in a saved folder's `auto_map`: `AutoModel` too, because users
# load VTimeLLM with it and call `generate`; `AutoModelForImageTextToText` is the class `pipeline("image-text-to-text")`
# loads, `AutoModelForMultimodalLM` that of `pipeline("any-to-any")`.
GENERATING_AUTO_CLASSES = ("AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText",
                           "AutoModelForMultimodalLM")  # fmt: skip


def interleave_audio_slots(video_rows: int, audio_rows: int) -> torch.LongTensor:
    """
    AVicuna's slots of the audio rows among `video_rows + audio_rows`: `arange(0, T, f + 1)[:N_a]` with
    `f = round(N_v / (N_a + 1))` (Python's rounding, half to even, as the original). Video rows fill the other slots.

    Raises:
        ValueError: when the audio rows are more than half of all rows: the slots cannot hold them (the original
            silently left zero rows there).
    """
    total = video_rows + audio_rows
    step = round(video_rows / (audio_rows + 1)) + 1
    slots = torch.arange(0, total, step)[:audio_rows]
    if audio_rows > MAX_INTERLEAVE_AUDIO_RATIO * total or len(slots) < audio_rows:
        raise ValueError(
            f"{audio_rows} audio rows among {video_rows} video rows (audio ratio {audio_rows / total:.2f}): AVicuna's "
            f"interleave places at most one audio row per video row (ratio <= {MAX_INTERLEAVE_AUDIO_RATIO}); give "
            "fewer audio rows or more video rows."
        )
    return slots


class VTimeFeatureSpliceMixin:
    """
    The feature adapter of the inner decoder model: one `nn.Linear` projector per stream of the configuration
    (named as in the original checkpoints: `mm_projector`, `audio_mm_projector`, `asr_mm_projector`,
    `mm_projector_a`) and the splice of the projected rows in place of the placeholder tokens.

    A mixin on the decoder's own base model (`class XModel(VTimeFeatureSpliceMixin, SomeDecoderModel)`), not a
    composite that wraps it as LLaVA does (`model.language_model` + a projector): the released checkpoints name the
    decoder's weights `model.layers.*` and the projectors `model.mm_projector.*` on that same module, so a mixin loads
    and converts them by name, PEFT's LoRA targets keep their names, and TRL's fused LM head, which calls
    `model.model` directly, goes through the splice. Any decoder whose base model takes `inputs_embeds` and shares
    the `forward` signature of transformers' decoders (LLaMA, Qwen2, Qwen3, Mistral) can take it.

    Its `__init__` builds the decoder, then the projectors; its `forward` splices the rows into the embeddings, then
    runs the decoder on them.
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
            video_features (`torch.FloatTensor` of shape `(batch, rows, mm_hidden_size)`, or a list, *optional*):
                One video per sample: `rows` frame embeddings (100 for a VTimeLLM video, 1 for a stage-1 image);
                a list holds a `(rows, mm_hidden_size)` tensor or `None` per sample.
            audio_features, speech_features (*optional*):
                The audio (BEATs for LongVALE, CLAP for AVicuna) and speech (Whisper) rows of the checkpoints that
                have these streams, in the same forms. Each sample's rows fill its placeholders in the order of
                `config.stream_layout`; row `k` of that order replaces its `k`-th placeholder.
            Other arguments are those of the decoder's base model `forward` ([`LlamaModel.forward`]), in its order.
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

    def _build_projectors(self) -> None:
        for stream in self.config.streams:
            setattr(self, stream.projector, nn.Linear(stream.hidden_size, self.config.hidden_size))

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor
    ) -> torch.BoolTensor:
        """
        The `(batch, seq_len)` mask of the placeholder tokens: `input_ids == config.video_token_id`, or without
        `input_ids`, the positions of `inputs_embeds` equal to the embedding of that token.
        """
        if self.config.video_token_id is None:
            raise ValueError("Feature rows were given but `config.video_token_id` is not set.")
        if input_ids is not None:
            return input_ids == self.config.video_token_id
        video_embedding = self.get_input_embeddings()(
            torch.tensor(self.config.video_token_id, dtype=torch.long, device=inputs_embeds.device)
        )
        return (inputs_embeds == video_embedding).all(-1)

    def _per_sample(self, stream: FeatureStream, features, batch_size: int) -> list[torch.Tensor | None]:
        """A stream's features as one `(rows, width)` tensor or `None` per sample, checked against its projector."""
        name = f"{stream.name}_features"
        if isinstance(features, torch.Tensor):
            if features.ndim != 3:
                width = "mm_hidden_size" if stream.name == "video" else "width"
                raise ValueError(
                    f"{name} must have shape (batch, rows, {width}), one {stream.name} per sample, but have shape "
                    f"{tuple(features.shape)}; for a single one, add the batch dimension (`{name}[None]`), or pass "
                    "a list with a (rows, width) tensor (or None) per sample."
                )
            items = "videos" if stream.name == "video" else _STREAM_ITEMS[stream.name]
            if features.shape[0] != batch_size:
                raise ValueError(
                    f"`{name}` holds {features.shape[0]} {items} but the batch has {batch_size} samples; pass one "
                    "per sample."
                )
            features = list(features)
        elif len(features) != batch_size:
            raise ValueError(
                f"`{name}` holds {len(features)} entries but the batch has {batch_size} samples; pass one per "
                "sample (None for a sample without this stream)."
            )
        for index, sample in enumerate(features):
            if sample is None:
                continue
            if not isinstance(sample, torch.Tensor) or sample.ndim != 2:
                shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else type(sample).__name__
                raise ValueError(f"{name}[{index}] must be a (rows, width) tensor or None, got {shape}.")
            if sample.shape[-1] != stream.hidden_size:
                width = "mm_hidden_size" if stream.name == "video" else "its width"
                raise ValueError(
                    f"{name} of sample {index} have {sample.shape[-1]} values per row but the projector "
                    f"{stream.projector} takes {width}={stream.hidden_size}: were they made by another "
                    f"{stream.extractor} encoder?"
                )
        return features

    def _projected(self, stream: FeatureStream, samples: list, dtype: torch.dtype, device) -> list:
        """Each sample's rows through the stream's projector (in its dtype), as `dtype` on `device`."""
        projector = getattr(self, stream.projector)
        present = [sample for sample in samples if sample is not None]
        if not present:
            return samples
        projected = projector(torch.cat(present).to(projector.weight.device, projector.weight.dtype))
        pieces = iter(projected.to(device, dtype).split([len(sample) for sample in present]))
        return [None if sample is None else next(pieces) for sample in samples]

    def _sample_rows(self, rows: dict[str, torch.Tensor], index: int) -> torch.Tensor:
        """One sample's projected rows in the order of the layout."""
        if self.config.stream_layout == "interleave" and len(rows) == 2:
            video, audio = rows["video"], rows["audio"]
            try:
                audio_slots = interleave_audio_slots(len(video), len(audio))
            except ValueError as error:
                raise ValueError(f"Sample {index}: {error}") from None
            is_audio = torch.zeros(len(video) + len(audio), dtype=torch.bool)
            is_audio[audio_slots] = True
            ordered = video.new_empty(len(is_audio), video.shape[-1])
            ordered[is_audio.to(video.device)] = audio
            ordered[~is_audio.to(video.device)] = video
            return ordered
        return torch.cat(list(rows.values()))

    def embed_with_features(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor | None,
        cache: Cache | None = None,
        **features,
    ) -> torch.Tensor:
        r"""
        The input embeddings with each sample's projected rows written over its placeholders, in one
        `masked_scatter`.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch, seq_len)`): with a run of placeholders per sample.
            inputs_embeds (`torch.FloatTensor` of shape `(batch, seq_len, hidden_size)`): in place of `input_ids`.
            cache: the KV cache; a forward that continues a sequence is not checked for stray placeholders.
            **features: `{name}_features` for each stream of the configuration: `(batch, rows, width)` (every
                sample with as many rows) or a list with a `(rows, width)` tensor, or `None`, per sample. Computed
                on every call from the rows given: batches, row counts and streams may differ between calls and
                between the samples of a batch.
        """
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        streams = {stream.name: stream for stream in self.config.streams}
        given = {name.removesuffix("_features"): value for name, value in features.items() if value is not None}
        unknown = sorted(set(given) - set(streams))
        if unknown:
            raise ValueError(
                f"This model has no {', '.join(unknown)} stream (its streams: {', '.join(streams)}); drop "
                f"{', '.join(name + '_features' for name in unknown)}."
            )
        if not given:
            # Placeholders without rows would be read as the untrained <video> embedding, silently. Only a forward
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
            return inputs_embeds

        batch_size = inputs_embeds.shape[0]
        projected = {
            name: self._projected(
                streams[name], self._per_sample(streams[name], given[name], batch_size),
                inputs_embeds.dtype, inputs_embeds.device,
            )
            for name in streams if name in given
        }  # fmt: skip
        placeholder_mask = self.get_placeholder_mask(input_ids, inputs_embeds)
        # Reading the counts back is a host sync, which would break a torch.compile graph: compiled, they go unchecked
        placeholders = None if is_torchdynamo_compiling() else placeholder_mask.sum(-1).tolist()
        rows = []
        for index in range(batch_size):
            sample = {name: samples[index] for name, samples in projected.items() if samples[index] is not None}
            sample_rows = self._sample_rows(sample, index) if sample else inputs_embeds.new_zeros(0, 0)
            if placeholders is not None and placeholders[index] != len(sample_rows):
                counts = ", ".join(f"{name} {len(value)}" for name, value in sample.items()) or "no stream"
                raise ValueError(
                    f"Video placeholder tokens and feature rows do not match in sample {index}: "
                    f"{placeholders[index]} placeholder tokens (id {self.config.video_token_id}) but "
                    f"{len(sample_rows)} feature rows ({counts})."
                )
            if len(sample_rows):
                rows.append(sample_rows)
        if not rows:
            return inputs_embeds
        return inputs_embeds.masked_scatter(placeholder_mask.unsqueeze(-1).to(inputs_embeds.device), torch.cat(rows))


class VTimeLlamaModel(VTimeFeatureSpliceMixin, LlamaModel):
    """
    The LLaMA decoder with the projectors of its feature streams (`mm_projector` for VTimeLLM's video rows).

    The splice of the rows happens here, in the inner model, and not in [`VTimeLlamaForCausalLM`]: TRL's
    `SFTTrainer` patches the causal LM with a fused LM head that calls this inner model directly, so logic placed
    only in the outer `forward` would be skipped in training.
    """

    config_class = VTimeLlamaConfig


class VTimeCausalLMMixin:
    """
    What the causal LM of any decoder of the family adds to its decoder's: its base model is `base_model_class` (the
    decoder's base model with [`VTimeFeatureSpliceMixin`]), `forward` takes the rows of each stream, the rows are
    spliced once, at prefill, and `save_pretrained` records that every Auto class of `GENERATING_AUTO_CLASSES` builds
    the causal LM: `class XForCausalLM(VTimeCausalLMMixin, SomeDecoderForCausalLM)`.
    """

    base_model_class: type

    def __init__(self, config):
        # The decoder's pre-trained model __init__, skipping its causal LM's, which would build a plain base model
        # only to throw it away: the class after this mixin in the method order is the decoder's causal LM
        method_order = type(self).__mro__
        decoder_causal_lm = method_order[method_order.index(VTimeCausalLMMixin) + 1]
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
            attention_mask (`torch.LongTensor` of shape `(batch, seq_len)`, *optional*):
                1 for real tokens, 0 for padding (left padding for batched generation).
            inputs_embeds (`torch.FloatTensor` of shape `(batch, seq_len, hidden_size)`, *optional*):
                In place of `input_ids`, the `<video>` embedding at each placeholder.
            labels (`torch.LongTensor` of shape `(batch, seq_len)`, *optional*):
                Target ids, -100 where no loss is taken (placeholders, prompt, padding).
            video_features, audio_features, speech_features (*optional*):
                Precomputed rows of each stream, one entry per sample (see [`VTimeFeatureSpliceMixin.forward`]).
            Other arguments are those of the decoder's causal LM `forward` ([`LlamaForCausalLM.forward`]), in its
            order. They are named here because `generate` reads the signature: it derives position ids, accepts a KV
            cache and `inputs_embeds`, and computes prefill logits for the last position only (`logits_to_keep`),
            only for a `forward` that names them.
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

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        inputs_embeds: torch.FloatTensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ):
        # `inputs_embeds` is named because `generate` accepts it only from a model whose method names it.
        # generate() passes custom kwargs on every step; the rows belong to the prompt, spliced once at prefill,
        # after which the KV cache holds them and the new tokens carry no placeholder.
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, inputs_embeds=inputs_embeds, is_first_iteration=is_first_iteration, **kwargs
        )
        if not is_first_iteration and model_inputs.get("use_cache", True):
            for name in STREAM_NAMES:
                model_inputs.pop(f"{name}_features", None)
        return model_inputs

    def save_pretrained(self, save_directory, *args, **kwargs):
        # `register_for_auto_class` records one Auto class per model class; the others must build this one too
        auto_map = dict(self.config.auto_map or {}) if hasattr(self.config, "auto_map") else {}
        if self._auto_class is not None:
            class_reference = f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"
            auto_map.update(dict.fromkeys(GENERATING_AUTO_CLASSES, class_reference))
            self.config.auto_map = auto_map
        super().save_pretrained(save_directory, *args, **kwargs)


class VTimeLlamaForCausalLM(VTimeCausalLMMixin, LlamaForCausalLM):
    """
    The VTimeLLM family for generation and training: [`VTimeLlamaModel`] plus the LM head.

    Every Auto class of `GENERATING_AUTO_CLASSES` builds this class (`AutoModel` among them), so that the model a user
    loads, or a pipeline loads, can generate.
    """

    config_class = VTimeLlamaConfig
    base_model_class = VTimeLlamaModel


__all__ = [
    "VTimeCausalLMMixin",
    "VTimeFeatureSpliceMixin",
    "VTimeLlamaForCausalLM",
    "VTimeLlamaModel",
    "interleave_audio_slots",
]
