"""The training collator: conversational records -> padded token ids, labels and stacked frame features."""

import logging
import warnings

import numpy as np
import torch

from ..data.features import check_feature
from ..model import VTimeProcessor

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

# The collator's template names -> the processor's chat template names
_CHAT_TEMPLATES = {"vicuna_v1": None, "plain": "plain"}


class VTimeDataCollator:
    """
    Builds training batches from records of the common schema (`id`, `video_id`, `messages`, ...).

    Each record goes through the processor's public path, as an inference prompt does:
    `processor.apply_chat_template(messages, tokenize=True, return_assistant_tokens_mask=True, ...)` renders it with
    the processor's chat template (its default, Vicuna v1, or the one named "plain" for stage 1), tokenizes it exactly
    as the original (its `<video>` expanded to one placeholder per feature row), cuts it to `max_length` (at the
    end for Vicuna's tokenizer, never inside the video rows) and marks the assistant tokens, the only ones labelled
    (answers and their `</s>`; system, user turns and placeholders are -100). Batches are padded on the right and
    the features stacked into `(batch, rows, mm_hidden_size)`.

    Args:
        processor: the [`VTimeProcessor`] whose chat templates and tokenization are used.
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
        if template not in _CHAT_TEMPLATES:
            raise ValueError(f"Unknown template {template!r}; choose from {sorted(_CHAT_TEMPLATES)}.")
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
        try:
            encoded = self.processor.apply_chat_template(
                example["messages"],
                chat_template=_CHAT_TEMPLATES[self.template],
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
                # The ids depend on the number of feature rows only: the features themselves are read by __call__
                processor_kwargs={
                    **self.placeholder_rows(example),
                    "truncation": True,
                    "max_length": self.length_limit(example),
                },
            )
        except ValueError as error:
            raise ValueError(f"Record {example.get('id')!r}: {error}") from None
        input_ids, assistant_mask = encoded["input_ids"][0], encoded["assistant_masks"][0]
        labels = [token_id if trained else IGNORE_INDEX for token_id, trained in zip(input_ids, assistant_mask)]
        return {"input_ids": input_ids, "labels": labels}

    def length_limit(self, example: dict) -> int:
        """The longest the record's sequence may be, in tokens: `max_length`, feature rows included."""
        return self.max_length

    def placeholder_rows(self, example: dict) -> dict[str, list]:
        """The processor's feature arguments with the record's row counts alone (`(rows, 0)` tensors)."""
        return {"video_features": [torch.empty(self.num_rows, 0)]}

    def batch_features(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """The model's feature arguments of a batch: `video_features (batch, rows, mm_hidden_size)`."""
        return {"video_features": torch.stack([self.load_features(example) for example in examples])}

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
            **self.batch_features(examples),
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


def __getattr__(name: str):
    # The plain template moved to the processor, which holds it as its chat template named "plain"
    if name == "PLAIN_CHAT_TEMPLATE":
        from ..model import PLAIN_CHAT_TEMPLATE

        warnings.warn(
            "PLAIN_CHAT_TEMPLATE moved to vtimellm_hf.model (the processor's chat template named 'plain'); import "
            "it from vtimellm_hf.",
            FutureWarning,
            stacklevel=2,
        )
        return PLAIN_CHAT_TEMPLATE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
