"""The stages of LongVALE-LLM and AVicuna on TRL's SFTTrainer: what each is ([`FAMILY_STAGES`]), arguments, the run.

    python recipes/family_stage.py --config recipes/configs/longvale/stage2.yaml

A stage is one row of [`FAMILY_STAGES`], keyed by model and number: the projectors it loads (frozen), the adapter it
merges, what it trains (projectors in full, a LoRA, or both) and what it leaves. [`run_family_stage`] follows the
row with the pieces of the VTimeLLM stages ([`vtimellm_hf.training.stages`]: the LoRA from TRL's `lora_*` fields,
the global batch, resuming, the adapter merge) and the family's data ([`vtimellm_hf.data.family_loaders`],
[`FamilyDataCollator`]).

* LongVALE: stage 1 is VTimeLLM's (its projector file, reused and frozen). Stage 2, boundary perception: a LoRA and
  the two new audio projectors (`audio_mm_projector`, `asr_mm_projector`), all trained; they are saved with the
  adapter (PEFT's `modules_to_save`) and as the original's `non_lora_trainables.bin`
  (`base_model.model.model.<projector>.*`), so `convert-original --format longvale` reads the folder too. Stage 3,
  instruction tuning: stage 2 merged (its projectors, then its LoRA), a new LoRA and both audio projectors trained.
* AVicuna: stage 1 the video projector alone on image captions (plain template) -> `mm_projector.safetensors`;
  stage 2 the audio projector alone on audio captions -> `mm_projector_a.safetensors`; stage 3 a LoRA with both
  projectors frozen, at `av_ratio` 0.25; stage 4 stage 3 merged and a new LoRA.
"""

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from transformers.integrations import is_deepspeed_zero3_enabled
from trl import TrlParser

from .. import checkpoints
from ..cli import configure_logging
from ..conversion import _stream_processing
from ..data.family_loaders import load_avicuna, load_longvale
from ..data.features import open_feature_store
from ..model import VTimeProcessor
from ..model.configuration_vtime_llama import avicuna_streams, longvale_streams
from .collator import add_lengths
from .family_collator import FamilyDataCollator, avicuna_rows
from .stages import (
    VTimeDataArguments,
    VTimeModelArguments,
    _verbosity,
    lora_config,
    start_run,
)
from .trainer import VTimeSFTTrainer, VTimeTrainingArguments

logger = logging.getLogger(__name__)

__all__ = [
    "FAMILY_STAGES",
    "FamilyDataArguments",
    "FamilyModelArguments",
    "FamilyStage",
    "family_stage_main",
    "run_family_stage",
    "setup_family_model",
]


@dataclass(frozen=True)
class FamilyStage:
    """
    One stage of LongVALE-LLM or AVicuna, as its paper and scripts run it.

    Attributes:
        model: "longvale" or "avicuna".
        number: the stage's number in its paper.
        data: what it trains on, in words.
        template: the collator's template: "plain" or "vicuna_v1".
        loads: `(projector, argument)` pairs: projectors read from the file an argument of
            [`FamilyModelArguments`] names, then frozen.
        merges: the argument naming the adapter merged into the LLM before training (its whole tensors, then its
            LoRA), or `None`.
        trains: the projectors trained in full (float32 without ZeRO-3).
        trains_lora: whether a new LoRA is trained on the LLM's linear layers (the projectors of `trains` are then
            PEFT's `modules_to_save`).
        leaves: "projectors" (`{projector}.safetensors` of `trains`), "adapter" (the PEFT adapter, the processor and
            `non_lora_trainables.bin`) or "model" (one merged folder).
    """

    model: Literal["longvale", "avicuna"]
    number: int
    data: str
    template: Literal["plain", "vicuna_v1"]
    loads: tuple[tuple[str, str], ...]
    merges: str | None
    trains: tuple[str, ...]
    trains_lora: bool
    leaves: Literal["projectors", "adapter", "model"]


_VIDEO = ("mm_projector", "stage1_projector")
_AUDIO = ("mm_projector_a", "audio_projector")
FAMILY_STAGES = {
    ("longvale", 2): FamilyStage("longvale", 2, "LongVALE-SFT boundary perception (bp-154k)", "vicuna_v1",
                                 loads=(_VIDEO,), merges=None, trains=("audio_mm_projector", "asr_mm_projector"),
                                 trains_lora=True, leaves="adapter"),
    ("longvale", 3): FamilyStage("longvale", 3, "LongVALE-SFT instruction tuning (it-61k)", "vicuna_v1",
                                 loads=(_VIDEO,), merges="stage2_adapter",
                                 trains=("audio_mm_projector", "asr_mm_projector"), trains_lora=True, leaves="model"),
    ("avicuna", 1): FamilyStage("avicuna", 1, "image-text pairs (video projector)", "plain", loads=(), merges=None,
                                trains=("mm_projector",), trains_lora=False, leaves="projectors"),
    ("avicuna", 2): FamilyStage("avicuna", 2, "A5-222K audio-text pairs (audio projector)", "plain", loads=(),
                                merges=None, trains=("mm_projector_a",), trains_lora=False, leaves="projectors"),
    ("avicuna", 3): FamilyStage("avicuna", 3, "PU-VALOR and audio-visual instructions", "vicuna_v1",
                                loads=(_VIDEO, _AUDIO), merges=None, trains=(), trains_lora=True, leaves="adapter"),
    ("avicuna", 4): FamilyStage("avicuna", 4, "audio-visual instruction tuning", "vicuna_v1", loads=(_VIDEO, _AUDIO),
                                merges="stage3_adapter", trains=(), trains_lora=True, leaves="model"),
}  # fmt: skip


@dataclass
class FamilyModelArguments(VTimeModelArguments):
    """
    [`VTimeModelArguments`] and what the family's stages add: which model and stage, the audio and speech widths,
    the projector and adapter files the stages start from, and the stream encoders saved with the processor.
    """

    family: str = field(default="longvale", metadata={"help": "longvale or avicuna."})
    stage: int = field(default=2, metadata={"help": "The stage of the model (FAMILY_STAGES)."})
    audio_hidden_size: int = field(default=768, metadata={"help": "Audio row width: BEATs 768, CLAP 512."})
    speech_hidden_size: int = field(default=1280, metadata={"help": "Speech row width (LongVALE): Whisper 1280."})
    audio_projector: str | None = field(default=None, metadata={"help": "AVicuna stage 2's mm_projector_a."})
    stage3_adapter: str | None = field(default=None, metadata={"help": "AVicuna stage 3's adapter folder."})
    audio_encoder_name_or_path: str | None = field(
        default=None, metadata={"help": "Processor's audio encoder: BEATs checkpoint (LongVALE) or CLAP (AVicuna)."}
    )
    speech_encoder_name_or_path: str = field(
        default="openai/whisper-large-v2", metadata={"help": "Processor's speech encoder (LongVALE)."}
    )


@dataclass
class FamilyDataArguments(VTimeDataArguments):
    """[`VTimeDataArguments`] (`feature_dir` holds the video features) and the other streams' features."""

    audio_feature_dir: str | None = field(default=None, metadata={"help": "Audio features (BEATs or CLAP) by id."})
    speech_feature_dir: str | None = field(default=None, metadata={"help": "LongVALE's Whisper features by id."})
    sub_video_feature_dir: str | None = field(default=None, metadata={"help": "PU-VALOR sub-video CLIP features."})
    sub_audio_feature_dir: str | None = field(default=None, metadata={"help": "PU-VALOR sub-video CLAP features."})
    av_ratio: float = field(default=0.25, metadata={"help": "AVicuna: share of audio rows in a video's 100."})
    max_length_counts_rows: bool = field(
        default=False, metadata={"help": "False: max_length counts text tokens, rows on top (the originals)."}
    )


def family_stage(model_args: FamilyModelArguments) -> FamilyStage:
    """The row of [`FAMILY_STAGES`] the arguments name."""
    key = (model_args.family, model_args.stage)
    if key not in FAMILY_STAGES:
        known = ", ".join(f"{model} {number}" for model, number in FAMILY_STAGES)
        raise ValueError(f"No stage {model_args.stage} of {model_args.family!r}; the stages are: {known}.")
    return FAMILY_STAGES[key]


def _streams(model_args: FamilyModelArguments) -> tuple[list[dict], str]:
    if model_args.family == "longvale":
        streams = longvale_streams(model_args.mm_hidden_size, model_args.audio_hidden_size,
                                   model_args.speech_hidden_size)  # fmt: skip
        return streams, "concat"
    return avicuna_streams(model_args.mm_hidden_size, model_args.audio_hidden_size), "interleave"


def check_family_arguments(spec: FamilyStage, model_args: FamilyModelArguments) -> None:
    """Refuses arguments that do not give the stage the files it starts from."""
    if model_args.model_name_or_path is None:
        raise ValueError("model_name_or_path is not set: the base LLM (Vicuna v1.5).")
    if model_args.chat_format != "vicuna_v1":
        raise ValueError(
            f"chat_format: {model_args.chat_format!r}: LongVALE and AVicuna are Vicuna v1.5 models (vicuna_v1)."
        )
    if not model_args.merge_final_adapter:
        raise ValueError("merge_final_adapter: false is VTimeLLM's; the family's final stages save one merged folder.")
    needed = [argument for _, argument in spec.loads] + ([spec.merges] if spec.merges else [])
    for argument in needed:
        if getattr(model_args, argument) is None:
            raise ValueError(f"{spec.model} stage {spec.number} starts from {argument}: set it.")


def setup_family_model(spec: FamilyStage, model_args: FamilyModelArguments, tokenizer):
    """
    The stage's model (the family's streams and layout, its projectors loaded and its adapter merged as the row
    says), trainable where the stage trains it, and the LoRA config of a stage that trains a LoRA (None otherwise).
    """
    streams, layout = _streams(model_args)
    model = checkpoints.load_model(
        model_args.model_name_or_path, tokenizer, mm_hidden_size=model_args.mm_hidden_size,
        num_frames=model_args.num_frames, dtype=model_args.dtype, revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation, feature_streams=streams, stream_layout=layout,
    )  # fmt: skip
    for projector, argument in spec.loads:
        checkpoints.load_projector(model, getattr(model_args, argument), name=projector)
    if spec.merges:
        model = checkpoints.read_stage_adapter(getattr(model_args, spec.merges), model).merge_into(model)
    model.config.use_cache = False
    model.requires_grad_(False)
    for projector in spec.trains:
        module = getattr(model.model, projector)
        # As VTimeLLM's stage 1: fp32 master weights, which nothing else keeps without DeepSpeed
        if not is_deepspeed_zero3_enabled():
            module.float()
        module.requires_grad_(True)
    if not spec.trains_lora:
        return model, None
    peft_config = lora_config(model_args)
    peft_config.modules_to_save = list(spec.trains) or None
    return model, peft_config


def build_family_processor(tokenizer, model_args: FamilyModelArguments) -> VTimeProcessor:
    """The processor of the family's checkpoints: the frame encoder and the stream encoders of the conversion."""
    settings = _stream_processing(model_args.family, model_args.audio_encoder_name_or_path,
                                  model_args.speech_encoder_name_or_path)  # fmt: skip
    return VTimeProcessor.for_frame_encoder(
        tokenizer, model_args.frame_encoder_name_or_path, num_frames=model_args.num_frames, **settings
    )


def _store(folder: str | None):
    return open_feature_store(folder) if folder else None


def load_family_dataset(spec: FamilyStage, model_args: FamilyModelArguments, data_args: FamilyDataArguments):
    """The stage's records ([`vtimellm_hf.data.family_loaders`]) and the stores of their streams."""
    if not data_args.train_files:
        raise ValueError(f"No train_files given ({spec.model} stage {spec.number} trains on {spec.data}): set them "
                         "in the recipe's YAML or with --train_files.")  # fmt: skip
    stores = {"video": _store(data_args.feature_dir), "audio": _store(data_args.audio_feature_dir),
              "speech": _store(data_args.speech_feature_dir)}  # fmt: skip
    widths = {"video": model_args.mm_hidden_size, "audio": model_args.audio_hidden_size,
              "speech": model_args.speech_hidden_size}  # fmt: skip
    if spec.model == "longvale":
        dataset = load_longvale(data_args.train_files, video_store=stores["video"], audio_store=stores["audio"],
                                speech_store=stores["speech"], on_error=data_args.on_bad_record, widths=widths)
        return dataset, stores, None  # fmt: skip
    sub_stores = {"video": _store(data_args.sub_video_feature_dir) or stores["video"],
                  "audio": _store(data_args.sub_audio_feature_dir) or stores["audio"]}  # fmt: skip
    dataset = load_avicuna(data_args.train_files, video_store=stores["video"], audio_store=stores["audio"],
                           sub_video_store=sub_stores["video"], sub_audio_store=sub_stores["audio"],
                           on_error=data_args.on_bad_record, widths=widths)  # fmt: skip
    return dataset, stores, sub_stores


def run_family_stage(
    model_args: FamilyModelArguments, data_args: FamilyDataArguments, training_args: VTimeTrainingArguments
) -> Path:
    """Runs one stage of LongVALE or AVicuna end to end; returns the folder the next stage (or a user) loads."""
    spec = family_stage(model_args)
    check_family_arguments(spec, model_args)
    if training_args.push_to_hub:
        raise ValueError("push_to_hub: push the final folder with `vtimellm-hf push`, which checks it first.")
    resume_from, tokenizer = start_run(model_args, training_args)
    processor = build_family_processor(tokenizer, model_args)
    model, peft_config = setup_family_model(spec, model_args, tokenizer)
    dataset, stores, sub_stores = load_family_dataset(spec, model_args, data_args)
    total_rows = model_args.num_frames
    if spec.model == "avicuna":
        logger.info("AVicuna stage %d: video records get %d video and %d audio rows (av_ratio %s).", spec.number,
                    *avicuna_rows(data_args.av_ratio, total_rows), data_args.av_ratio)  # fmt: skip
    collator = FamilyDataCollator(
        processor, stores, max_length=training_args.max_length or 2048, template=spec.template,
        sub_stores=sub_stores, av_ratio=data_args.av_ratio if spec.model == "avicuna" else None,
        total_rows=total_rows, video_width=model_args.mm_hidden_size, audio_width=model_args.audio_hidden_size,
        max_length_counts_rows=data_args.max_length_counts_rows,
    )  # fmt: skip
    if training_args.train_sampling_strategy in ("group_by_length", "batch_rebalance"):
        dataset = add_lengths(dataset, collator, column=training_args.length_column_name)
    trainer = VTimeSFTTrainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator,
                              processing_class=processor, peft_config=peft_config)  # fmt: skip
    trainer.train(resume_from_checkpoint=resume_from)
    return save_family_stage(spec, trainer, processor, model_args, training_args.output_dir)


def save_family_stage(spec: FamilyStage, trainer, processor, model_args: FamilyModelArguments, output_dir) -> Path:
    """What the stage leaves ([`FamilyStage.leaves`]); every process calls it, the main one writes."""
    output_dir = Path(output_dir)
    main = trainer.is_world_process_zero()
    if spec.leaves == "projectors":
        for projector in spec.trains:
            checkpoints.save_projector(trainer.model, output_dir, write=main, name=projector)
    elif spec.leaves == "adapter":
        trainer.save_model(str(output_dir))
        if main:
            processor.save_pretrained(output_dir)
            _save_non_lora_trainables(trainer.model, spec.trains, output_dir)
            record = {"family": spec.model, "stage": spec.number, "base": model_args.model_name_or_path,
                      **{argument: getattr(model_args, argument) for _, argument in spec.loads}}  # fmt: skip
            (output_dir / "family_stage.json").write_text(json.dumps(record, indent=2))
    elif main:
        checkpoints.save_model_folder(trainer.model.merge_and_unload(), processor, output_dir)
    trainer.accelerator.wait_for_everyone()
    logger.info("%s stage %d saved to %s", spec.model, spec.number, output_dir)
    return output_dir


def _save_non_lora_trainables(peft_model, projectors: tuple[str, ...], output_dir: Path) -> None:
    """The trained projectors under the original's names (`base_model.model.model.<projector>.*`), as LongVALE's
    `non_lora_trainables.bin`; an empty dict when none is trained (AVicuna's release)."""
    inner = peft_model.get_base_model().model
    state = {}
    for projector in projectors:
        module = getattr(inner, projector)
        # PEFT's modules_to_save wrapper holds the trained copy
        trained = module.modules_to_save["default"] if hasattr(module, "modules_to_save") else module
        for part, tensor in trained.state_dict().items():
            state[f"base_model.model.model.{projector}.{part}"] = tensor.detach().cpu().clone()
    torch.save(state, output_dir / checkpoints.NON_LORA_FILE)


def family_stage_main(argv: list[str] | None = None) -> Path:
    """Entry point of `recipes/family_stage.py`: parses the YAML recipe and the command line, runs the stage."""
    parser = TrlParser((FamilyModelArguments, FamilyDataArguments, VTimeTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_and_config(argv)
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    training_args.remove_unused_columns = False
    with configure_logging(_verbosity(training_args.get_process_log_level())):
        return run_family_stage(model_args, data_args, training_args)

