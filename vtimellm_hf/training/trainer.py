"""TRL's SFTTrainer and SFTConfig, with what the VTimeLLM recipes need on top: a global batch that does not depend on
the number of GPUs, length-grouped batches that a resumed run draws again, and `padding_waste` in the logs."""

from dataclasses import dataclass, field

import torch
from transformers.trainer_pt_utils import get_length_grouped_indices
from transformers.trainer_utils import has_length
from trl import SFTConfig, SFTTrainer


@dataclass
class VTimeTrainingArguments(SFTConfig):
    """TRL's `SFTConfig` and the global batch of the paper."""

    global_batch_size: int | None = field(
        default=None,
        metadata={"help": "Examples per optimizer step over all processes. When set, gradient_accumulation_steps is "
                          "derived from it, per_device_train_batch_size and the number of processes (it must divide)."},
    )


class EpochSeededLengthGroupedSampler(torch.utils.data.Sampler):
    """
    transformers' length grouping (`get_length_grouped_indices`), its permutation drawn from `seed + epoch`.

    transformers' `LengthGroupedSampler` draws from the global RNG and has no `set_epoch`: a run resumed in its second
    epoch draws the order of the first one again (it draws before the checkpoint's RNG state is restored). Every
    process draws the same order, which accelerate then shards.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class VTimeSFTTrainer(SFTTrainer):
    """`SFTTrainer` with [`EpochSeededLengthGroupedSampler`] for `group_by_length`, and `padding_waste` (share of
    padded tokens in the batches of all processes since the last log) in the training logs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._length_sampler = None
        self._padding_counts = torch.zeros(2, dtype=torch.long)

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or not has_length(train_dataset):
            return super()._get_train_sampler(train_dataset)
        column = self.args.length_column_name
        if column not in getattr(train_dataset, "column_names", ()):
            raise ValueError(f"train_sampling_strategy='group_by_length' needs a {column!r} column (add_lengths).")
        self._length_sampler = EpochSeededLengthGroupedSampler(
            list(train_dataset[column]),
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )
        return self._length_sampler

    def _run_epoch(self, *args, epoch, **kwargs):
        # The Trainer's set_epoch reaches the sampler through accelerate's wrappers, except when a resumed epoch skips
        # batches on several processes (SkipBatchSampler over BatchSamplerShard): the sampler would keep epoch 0
        if self._length_sampler is not None:
            self._length_sampler.set_epoch(epoch)
        return super()._run_epoch(*args, epoch=epoch, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.model.training:
            # Counted here, in the training process: collators run in the dataloader's workers
            mask = inputs["attention_mask"]
            self._padding_counts = self._padding_counts.to(mask.device)
            self._padding_counts += torch.stack([mask.sum(), torch.tensor(mask.numel(), device=mask.device)])
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Every process logs at the same steps: the counts of all are summed once per log, not once per batch
        counts = self.accelerator.reduce(self._padding_counts.to(self.accelerator.device), reduction="sum").cpu()
        real, total = counts.tolist()
        if total:
            logs["padding_waste"] = round(1 - real / total, 4)
        self._padding_counts.zero_()
        super().log(logs, start_time)
