"""The training collator: conversational records -> padded token ids, labels and stacked frame features."""

import logging

import numpy as np
import torch
from transformers.utils.chat_template_utils import render_jinja_template

from ..data.features import check_feature
from ..model import VICUNA_V1_CHAT_TEMPLATE, VIDEO_TOKEN, VTimeProcessor

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

# Stage 1 of the original ("plain" template): the input is the visual placeholder alone, the question is dropped,
# and the target is the caption followed by a newline.
PLAIN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- '<video>' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '\\n' -}}{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
TEMPLATES = {"vicuna_v1": VICUNA_V1_CHAT_TEMPLATE, "plain": PLAIN_CHAT_TEMPLATE}


class VTimeDataCollator:
    """
    Builds training batches from records of the common schema (`id`, `video_id`, `messages`, ...).

    For each record: the prompt is rendered with the chat template (Vicuna v1, or "plain" for stage 1), tokenized
    by [`VTimeProcessor`] exactly as the original (its `<video>` expanded to one placeholder per feature row), and
    labelled on assistant tokens only (answers and their `</s>`; system, user turns and placeholders are -100).
    Sequences longer than `max_length` are cut at the end, never inside the video rows. Batches are padded on the
    right and the features stacked into `(batch, rows, mm_hidden_size)`.

    Args:
        processor: the [`VTimeProcessor`] whose tokenizer and tokenization are used.
        feature_store: where features are read, by `video_id` (see `vtimellm_hf.data.features`).
        max_length: longest sequence kept, in tokens, video rows included.
        template: `"vicuna_v1"` (stages 2 and 3) or `"plain"` (stage 1).
        num_rows: feature rows per visual input: 100 for videos, 1 for stage-1 images.
    """

    def __init__(
        self,
        processor: VTimeProcessor,
        feature_store,
        max_length: int = 2048,
        template: str = "vicuna_v1",
        num_rows: int = 100,
    ):
        if template not in TEMPLATES:
            raise ValueError(f"Unknown template {template!r}; choose from {sorted(TEMPLATES)}.")
        self.processor = processor
        self.feature_store = feature_store
        self.max_length = max_length
        self.template = template
        self.num_rows = num_rows
        self.pad_token_id = processor.tokenizer.pad_token_id
        # Tokens collated by this process (with dataloader workers, by each worker's copy): for measurements that
        # collate in-process; training logs `padding_waste` from the batches (`VTimeSFTTrainer`)
        self.real_tokens = 0
        self.padded_tokens = 0

    def encode(self, example: dict) -> dict:
        """`input_ids` and `labels` (lists) of one record, truncated to `max_length`."""
        tokenizer = self.processor.tokenizer
        prompts, generation_spans = render_jinja_template(
            conversations=[example["messages"]],
            chat_template=TEMPLATES[self.template],
            return_assistant_tokens_mask=True,
            **tokenizer.special_tokens_map,
        )
        prompt, spans = prompts[0], generation_spans[0]
        if prompt.count(VIDEO_TOKEN) != 1:
            raise ValueError(
                f"Record {example.get('id')!r}: the prompt holds {prompt.count(VIDEO_TOKEN)} {VIDEO_TOKEN} "
                "placeholders; a training record needs exactly one, at the start of its first user turn."
            )
        encoded = self.processor.encode_prompt(prompt, rows=self.num_rows, return_offsets_mapping=True)
        input_ids = encoded["input_ids"]
        labels = [
            token_id
            if token_id != self.processor.video_token_id
            and any(start < span_end and end > span_start for span_start, span_end in spans)
            else IGNORE_INDEX
            for token_id, (start, end) in zip(input_ids, encoded["offset_mapping"])
        ]
        if len(input_ids) > self.max_length:
            video_end = len(input_ids) - input_ids[::-1].index(self.processor.video_token_id)
            if video_end > self.max_length:
                raise ValueError(
                    f"Record {example.get('id')!r}: max_length={self.max_length} would cut its video rows, which "
                    f"end at token {video_end}; raise max_length."
                )
            input_ids, labels = input_ids[: self.max_length], labels[: self.max_length]
        return {"input_ids": input_ids, "labels": labels}

    def load_features(self, example: dict) -> torch.Tensor:
        """The `(rows, mm_hidden_size)` features of a record; a stage-1 image `(D,)` is one row."""
        features = np.asarray(self.feature_store.load(example["video_id"]))
        try:
            # Non-finite or integer features would give a NaN or meaningless loss without a word
            check_feature(features, self.num_rows, None, example["video_id"])
        except ValueError as error:
            raise ValueError(f"Record {example.get('id')!r}: {error}") from None
        if features.ndim == 1:
            features = features[None]
        return torch.from_numpy(features.astype(np.float32))

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(example) for example in examples]
        longest = max(len(sample["input_ids"]) for sample in encoded)
        input_ids = torch.full((len(encoded), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(encoded), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), longest), dtype=torch.long)
        for row, sample in enumerate(encoded):
            length = len(sample["input_ids"])
            input_ids[row, :length] = torch.tensor(sample["input_ids"])
            labels[row, :length] = torch.tensor(sample["labels"])
            attention_mask[row, :length] = 1
        self.real_tokens += int(attention_mask.sum())
        self.padded_tokens += attention_mask.numel() - int(attention_mask.sum())
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "video_features": torch.stack([self.load_features(example) for example in examples]),
        }


def add_lengths(dataset, collator: VTimeDataCollator, num_proc: int | None = None, column: str = "length"):
    """
    A column of lengths (tokens, video rows included) for `train_sampling_strategy="group_by_length"` or
    `"batch_rebalance"`, named as the Trainer's `length_column_name`.
    """
    return dataset.map(
        lambda example: {column: len(collator.encode(example)["input_ids"])},
        num_proc=num_proc,
        desc="Measuring sequence lengths",
    )
