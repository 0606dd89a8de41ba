"""The three VTimeLLM stages on TRL's SFTTrainer: what each stage is ([`STAGES`]), their arguments, and the run.

A stage is one row of [`STAGES`]: what it reads, what it starts from, what it trains and what it leaves.
[`run_stage`] follows the row; nothing else in the run depends on the stage's number. Checkpoint files are read and
written by [`vtimellm_hf.checkpoints`].
"""

import copy
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import set_seed
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available, is_liger_kernel_available
from trl import ModelConfig, TrlParser, get_peft_config

from .. import checkpoints
from .._deprecated import moved_names, warn_moved
from ..cli import configure_logging
from ..conversion import build_hub_folder
from ..data import loaders
from ..data.features import open_feature_store
from ..hub import push_folder
from ..model import BACKBONES, VTimeProcessor
from ..chat_formats import chat_template_of
from ..model_card import STAGES_RECORD_FILE, save_training_record
from .collator import VTimeDataCollator, add_lengths
from .trainer import VTimeSFTTrainer, VTimeTrainingArguments

logger = logging.getLogger(__name__)

# PEFT knows no target modules for a new model type, and "all-linear" would also wrap the projector. Qwen2/2.5,
# Qwen3 and Mistral name their linear layers as LLaMA does.
LLAMA_LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# The attention kernels a recipe may ask for (`attn_implementation`; sdpa, torch's own, by default) that come from an
# optional package: how transformers finds it, and how to install it (FlashAttention 3 has no wheel on PyPI)
OPTIONAL_ATTENTION = {
    "flash_attention_2": (is_flash_attn_2_available, "pip install 'vtimellm-hf[flash-attn]'"),
    "flash_attention_3": (is_flash_attn_3_available, "build it from hopper/ of github.com/Dao-AILab/flash-attention"),
}


@dataclass(frozen=True)
class Stage:
    """
    One VTimeLLM stage, as the paper and the original scripts run it.

    Attributes:
        number: 1, 2 or 3.
        data: what it trains on, in words.
        load_records: its loader (`vtimellm_hf.data.loaders.load_stage{1,2,3}`).
        reads_several_files: whether `train_files` may name several files (stage 3: dialogues and VideoInstruct).
        template: the collator's template: "plain" (placeholder and caption) or "vicuna_v1" (the chat).
        feature_rows: feature rows per record; `None` for `num_frames` (a video), 1 for a still.
        starts_from_projector: the projector must be trained already: `stage1_projector`, or held by the checkpoint.
        merges_stage2_adapter: `stage2_adapter` is merged into the LLM before training.
        trains: "projector" (alone, in float32) or "lora" (a new LoRA on the LLM's linear layers, all else frozen).
        leaves: "projector" (`mm_projector.safetensors`), "adapter" (the PEFT adapter and the processor), or
            "model" (one merged folder; with `merge_final_adapter: false` the adapter and what it sits on).
    """

    number: int
    data: str
    load_records: Callable
    reads_several_files: bool
    template: Literal["plain", "vicuna_v1"]
    feature_rows: int | None
    starts_from_projector: bool
    merges_stage2_adapter: bool
    trains: Literal["projector", "lora"]
    leaves: Literal["projector", "adapter", "model"]


STAGES = {
    1: Stage(1, "LCS-558K images with captions", loaders.load_stage1, reads_several_files=False, template="plain",
             feature_rows=1, starts_from_projector=False, merges_stage2_adapter=False, trains="projector",
             leaves="projector"),
    2: Stage(2, "InternVid dialogues", loaders.load_stage2, reads_several_files=False, template="vicuna_v1",
             feature_rows=None, starts_from_projector=True, merges_stage2_adapter=False, trains="lora",
             leaves="adapter"),
    3: Stage(3, "ActivityNet/DiDeMo dialogues and VideoInstruct", loaders.load_stage3, reads_several_files=True,
             template="vicuna_v1", feature_rows=None, starts_from_projector=True, merges_stage2_adapter=True,
             trains="lora", leaves="model"),
}  # fmt: skip


@dataclass
class VTimeModelArguments(ModelConfig):
    """
    TRL's `ModelConfig` (the LLM, its dtype and revision; the LoRA of stages 2 and 3, built by `get_peft_config` from
    `lora_r`, `lora_alpha`, `lora_dropout`, `lora_target_modules`, ...) and what a VTimeLLM stage starts from.

    The recipes set the paper's LoRA (r 64, alpha 128, dropout 0.05); `lora_target_modules` defaults to every linear
    layer of the LLM (PEFT has no default for `vtime_llama`). Whether a stage trains a LoRA is the stage's
    ([`STAGES`]), not a knob: TRL's `use_peft` is not an argument here.
    """

    use_peft: bool = field(default=False, init=False, metadata={"help": "Set by the stage (STAGES), not a knob."})
    tokenizer_name_or_path: str | None = field(default=None, metadata={"help": "Defaults to model_name_or_path."})
    frame_encoder_name_or_path: str = field(
        default="openai/clip-vit-large-patch14", metadata={"help": "CLIP encoder saved with the processor."}
    )
    mm_hidden_size: int = field(default=768, metadata={"help": "Width of one frame feature."})
    num_frames: int = field(default=100, metadata={"help": "Frames per video."})
    stage1_projector: str | None = field(
        default=None, metadata={"help": "Stage 1 output: a folder or a projector file (.safetensors, or .bin)."}
    )
    stage2_adapter: str | None = field(default=None, metadata={"help": "Stage 2 output: a PEFT adapter folder."})
    merge_final_adapter: bool = field(
        default=True, metadata={"help": "Stage 3: save one merged model (True) or the base plus the adapter."}
    )
    chat_format: str = field(
        default="vicuna_v1",
        metadata={"help": "The LLM's chat template with <video>: vicuna_v1, qwen3, qwen2.5, llama3 or mistral."},
    )

    def __post_init__(self):
        super().__post_init__()
        chat_template_of(self.chat_format)
        if self.attn_implementation in OPTIONAL_ATTENTION:
            available, install = OPTIONAL_ATTENTION[self.attn_implementation]
            if not available():
                raise ValueError(f"attn_implementation={self.attn_implementation!r}, but its package is not installed "
                                 f"({install}, on a CUDA machine); or use 'sdpa'.")  # fmt: skip
        if self.load_in_4bit or self.load_in_8bit:
            raise ValueError("load_in_4bit / load_in_8bit: the stages train and merge unquantized weights.")
        if self.lora_task_type != "CAUSAL_LM":
            raise ValueError(f"lora_task_type must be CAUSAL_LM (the LLM generates), not {self.lora_task_type!r}.")
        if self.lora_target_modules is None:
            self.lora_target_modules = list(LLAMA_LINEAR_LAYERS)
        elif self.lora_target_modules == "all-linear":
            raise ValueError("lora_target_modules: 'all-linear' would also wrap mm_projector, which stages 2 and 3 "
                             f"keep frozen; name the LLM's layers (the default: {' '.join(LLAMA_LINEAR_LAYERS)}).")
        elif isinstance(self.lora_target_modules, str):
            # TRL makes a one-name list a string, for "all-linear"; PEFT would match any other string as a regular
            # expression against whole module names, and find none
            self.lora_target_modules = [self.lora_target_modules]


@dataclass
class VTimeDataArguments:
    """What a stage trains on."""

    train_files: list[str] = field(default_factory=list, metadata={"help": "Annotation files of the stage."})
    feature_dir: str = field(default="", metadata={"help": "Folder of {id}.npy features, or a consolidated store."})
    on_bad_record: str = field(default="skip", metadata={"help": "'skip' (count and log) or 'raise'."})


def stage_of(number: int) -> Stage:
    """The row of [`STAGES`] for a stage number."""
    if number not in STAGES:
        raise ValueError(f"VTimeLLM has stages {', '.join(map(str, STAGES))}, not {number}.")
    return STAGES[number]


def check_arguments(stage: Stage, model_args: VTimeModelArguments, push: bool = False) -> None:
    """Refuses arguments that do not give the stage what it starts from, or ask of it what it does not do."""
    if model_args.model_name_or_path is None:
        raise ValueError("model_name_or_path is not set: the base LLM (Vicuna v1.5) or a VTimeLLM checkpoint.")
    if stage.merges_stage2_adapter and model_args.stage2_adapter is None:
        raise ValueError(f"Stage {stage.number} starts from the stage-2 adapter: set stage2_adapter.")
    if push and stage.leaves != "model":
        raise ValueError(f"Stage {stage.number} leaves its {stage.leaves}, not a model: push the final model of "
                         "stage 3.")
    if push and not model_args.merge_final_adapter and model_args.stage1_projector is None:
        raise ValueError("Pushing a base + adapter builds the folder from the stage outputs: set stage1_projector.")
    reads = {"stage1_projector": stage.starts_from_projector, "stage2_adapter": stage.merges_stage2_adapter}
    for name, read in reads.items():
        if getattr(model_args, name) is not None and not read:
            logger.warning("Stage %d does not read %s; ignored.", stage.number, name)


def build_processor(tokenizer, model_args: VTimeModelArguments) -> VTimeProcessor:
    """The processor of the frame encoder, with the chat template of the recipe's `chat_format` as its default."""
    return VTimeProcessor.for_frame_encoder(
        tokenizer, model_args.frame_encoder_name_or_path, num_frames=model_args.num_frames,
        chat_template=chat_template_of(model_args.chat_format),
    )  # fmt: skip


def lora_config(model_args: VTimeModelArguments):
    """The LoRA a stage trains: TRL's `get_peft_config` from the `lora_*` fields."""
    lora_args = copy.copy(model_args)
    lora_args.use_peft = True
    return get_peft_config(lora_args)


def setup_model(stage: int, model_args: VTimeModelArguments, tokenizer):
    """
    The stage's model, loaded and merged as its row of [`STAGES`] says, trainable where the stage trains it, and the
    LoRA config of a stage that trains a LoRA (None otherwise).
    """
    spec = stage_of(stage)
    model = checkpoints.load_model(
        model_args.model_name_or_path, tokenizer, mm_hidden_size=model_args.mm_hidden_size,
        num_frames=model_args.num_frames, dtype=model_args.dtype, revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        require_projector=spec.starts_from_projector and model_args.stage1_projector is None,
    )  # fmt: skip
    if spec.starts_from_projector and model_args.stage1_projector is not None:
        checkpoints.load_projector(model, model_args.stage1_projector)
    if spec.merges_stage2_adapter:
        model = checkpoints.read_stage_adapter(model_args.stage2_adapter, model).merge_into(model)
    model.config.use_cache = False
    model.requires_grad_(False)
    if spec.trains == "projector":
        # Without DeepSpeed nothing keeps fp32 master weights, and bf16 ones round away the small late steps of Adam.
        # DeepSpeed keeps its own, and ZeRO-3's partitioned weights are not recast here
        if not is_deepspeed_zero3_enabled():
            model.model.mm_projector.float()
        model.model.mm_projector.requires_grad_(True)
        return model, None
    return model, lora_config(model_args)


def apply_liger_kernels(model, kernel_config: dict | None = None) -> None:
    """
    Liger's layer kernels (RMSNorm, SwiGLU, RoPE) on the decoder of a VTimeLLM model. Liger finds its patches by
    model type and knows the decoders' types (`qwen3`), not the VTimeLLM ones (`vtime_qwen3`): the Trainer's own
    call finds none, so they are applied here by the decoder's. Its fused linear cross-entropy stays off, as TRL
    keeps it: it would replace the `forward` that splices the feature rows.
    """
    import liger_kernel.transformers

    decoder = next(model_type for model_type, (_, model_class) in BACKBONES.items() if isinstance(model, model_class))
    apply = getattr(liger_kernel.transformers, f"apply_liger_kernel_to_{decoder}")
    apply(model=model, **{**(kernel_config or {}), "fused_linear_cross_entropy": False})


def load_stage_dataset(stage: int, data_args: VTimeDataArguments, feature_store, num_rows: int, feature_dim: int):
    """The stage's records in the common schema, bad records skipped (with a count and a log) or raised."""
    spec = stage_of(stage)
    if not data_args.train_files:
        raise ValueError(f"No train_files given (stage {spec.number} trains on {spec.data}): set them in the recipe's "
                         "YAML or with --train_files.")
    if not spec.reads_several_files and len(data_args.train_files) > 1:
        raise ValueError(f"Stage {spec.number} reads one annotation file, got {len(data_args.train_files)}.")
    return spec.load_records(
        data_args.train_files if spec.reads_several_files else data_args.train_files[0],
        on_error=data_args.on_bad_record,
        feature_store=feature_store,
        expected_rows=num_rows,
        expected_dim=feature_dim,
    )


def fit_global_batch(training_args, world_size: int) -> None:
    """
    Sets `gradient_accumulation_steps` so that an optimizer step sees `global_batch_size` examples over `world_size`
    processes, whatever their number; nothing changes when `global_batch_size` is unset.
    """
    if training_args.global_batch_size is None:
        return
    per_step = training_args.train_batch_size * world_size
    if training_args.global_batch_size % per_step:
        raise ValueError(
            f"global_batch_size={training_args.global_batch_size} is not a multiple of the per-device batch "
            f"{training_args.train_batch_size} x {world_size} processes: change per_device_train_batch_size."
        )
    accumulation = training_args.global_batch_size // per_step
    if training_args.gradient_accumulation_steps not in (1, accumulation):
        logger.warning("gradient_accumulation_steps=%d replaced by %d, for global_batch_size=%d on %d processes.",
                       training_args.gradient_accumulation_steps, accumulation, training_args.global_batch_size,
                       world_size)
    training_args.gradient_accumulation_steps = accumulation


def resume_checkpoint(training_args) -> str | None:
    """The checkpoint to resume from: `resume_from_checkpoint` as given, or the last one of `output_dir` for `true`."""
    asked = training_args.resume_from_checkpoint
    output_dir = Path(training_args.output_dir)
    last = get_last_checkpoint(output_dir) if output_dir.is_dir() else None
    if asked is None or str(asked).lower() == "false":
        if last is not None:
            logger.warning("%s holds checkpoints (the last: %s), and this run starts over without them: pass "
                           "--resume_from_checkpoint true to continue from the last.", output_dir, last)
        return None
    if str(asked).lower() == "true":
        if last is None:
            raise ValueError(f"resume_from_checkpoint=true, but {output_dir} holds no checkpoint-* folder.")
        return last
    return asked


def start_run(model_args, training_args):
    """
    What every stage does first: the accumulation that keeps the recipe's global batch on this many processes, the
    checkpoint to resume from, the seed, and the tokenizer with the chat template of `model_args.chat_format`.
    Returns `(resume_from, tokenizer)`.
    """
    fit_global_batch(training_args, training_args.world_size)
    resume_from = resume_checkpoint(training_args)
    set_seed(training_args.seed)
    tokenizer = checkpoints.load_tokenizer(
        model_args.tokenizer_name_or_path or model_args.model_name_or_path,
        revision="main" if model_args.tokenizer_name_or_path else model_args.model_revision,
        chat_template=chat_template_of(model_args.chat_format),
    )
    return resume_from, tokenizer


def run_stage(stage: int, model_args: VTimeModelArguments, data_args: VTimeDataArguments, training_args) -> Path:
    """
    Runs one stage end to end with TRL's SFTTrainer (`training_args`: [`VTimeTrainingArguments`]); returns the folder
    a following stage (or a user) loads.
    """
    spec = stage_of(stage)
    # The final model is pushed after the checks of `vtimellm-hf push`; the Trainer's own push would upload
    # checkpoints of stages that are not loadable models, without a card
    push_to = training_args.hub_model_id if training_args.push_to_hub else None
    if push_to is None and training_args.push_to_hub:
        raise ValueError("push_to_hub needs hub_model_id (org/name) in the recipe.")
    check_arguments(spec, model_args, push=push_to is not None)
    if training_args.use_liger_kernel and not is_liger_kernel_available():
        raise ValueError("use_liger_kernel: liger-kernel is not installed (pip install 'vtimellm-hf[liger]', on a CUDA "
                         "machine).")  # fmt: skip
    training_args.push_to_hub = False
    resume_from, tokenizer = start_run(model_args, training_args)
    processor = build_processor(tokenizer, model_args)
    model, peft_config = setup_model(spec.number, model_args, tokenizer)
    if training_args.use_liger_kernel:
        apply_liger_kernels(model, training_args.liger_kernel_config)

    num_rows = spec.feature_rows or model_args.num_frames
    feature_store = open_feature_store(data_args.feature_dir)
    dataset = load_stage_dataset(spec.number, data_args, feature_store, num_rows, model.config.mm_hidden_size)
    collator = VTimeDataCollator(
        processor, feature_store, max_length=training_args.max_length or 2048, template=spec.template, num_rows=num_rows
    )
    if training_args.train_sampling_strategy in ("group_by_length", "batch_rebalance"):
        dataset = add_lengths(dataset, collator, column=training_args.length_column_name)

    trainer = VTimeSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=processor,
        peft_config=peft_config,
    )
    trainer.train(resume_from_checkpoint=resume_from)
    folder = save_stage(spec.number, trainer, processor, model_args, training_args.output_dir)
    if trainer.is_world_process_zero():
        save_training_record(folder, spec.number, model_args, data_args, training_args)
        if push_to:
            push_final_model(folder, push_to, model_args, training_args)
    return folder


def push_final_model(folder: Path, repo_id: str, model_args: VTimeModelArguments, training_args) -> None:
    """Pushes the final model after the checks of `vtimellm-hf push` (it loads as remote code, it has a card)."""
    if not model_args.merge_final_adapter:
        # An adapter alone is not a loadable model: push base + projector + stage-2 merge with the adapter beside it
        folder = build_hub_folder(
            model_args.model_name_or_path, model_args.stage1_projector, model_args.stage2_adapter, folder,
            folder.with_name(folder.name + "-hub"), frame_encoder=model_args.frame_encoder_name_or_path,
            merge=False, dtype=model_args.dtype if model_args.dtype != "auto" else "float16", repo_id=repo_id,
        ).folder  # fmt: skip
    push_folder(folder, repo_id, private=bool(training_args.hub_private_repo), revision=training_args.hub_revision,
                token=training_args.hub_token)  # fmt: skip


def save_stage(stage: int, trainer, processor: VTimeProcessor, model_args: VTimeModelArguments, output_dir) -> Path:
    """
    What the stage leaves for the next ([`Stage.leaves`]): the projector, the adapter, or the final model with its
    processor. Every process calls it (sharded weights are gathered) and only the main one writes; all leave when the
    files are there.
    """
    spec = stage_of(stage)
    output_dir = Path(output_dir)
    main = trainer.is_world_process_zero()
    leaves = "adapter" if spec.leaves == "model" and not model_args.merge_final_adapter else spec.leaves
    if leaves == "projector":
        checkpoints.save_projector(trainer.model, output_dir, write=main)
    elif leaves == "adapter":
        trainer.save_model(str(output_dir))
        if main:
            processor.save_pretrained(output_dir)
        if main and spec.merges_stage2_adapter:
            # The adapter alone does not say which projector and stage-2 merge it sits on
            record = {"base": model_args.model_name_or_path, "stage1_projector": model_args.stage1_projector,
                      "stage2_adapter": model_args.stage2_adapter}  # fmt: skip
            (output_dir / STAGES_RECORD_FILE).write_text(json.dumps(record, indent=2))
    elif main:
        checkpoints.save_model_folder(trainer.model.merge_and_unload(), processor, output_dir)
    trainer.accelerator.wait_for_everyone()
    logger.info("Stage %d saved to %s", spec.number, output_dir)
    return output_dir


def stage_main(stage: int, argv: list[str] | None = None) -> Path:
    """Entry point of `recipes/stage{1,2,3}.py`: parses the YAML recipe and the command line, runs the stage."""
    parser = TrlParser((VTimeModelArguments, VTimeDataArguments, VTimeTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_and_config(argv)
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    training_args.remove_unused_columns = False
    # The package's messages show as `vtimellm-hf -v/-q` shows them, from the level `--log_level` (or, on the other
    # processes, `--log_level_replica`) sets for transformers' own
    with configure_logging(_verbosity(training_args.get_process_log_level())):
        return run_stage(stage, model_args, data_args, training_args)


def _verbosity(level: int) -> int:
    """The count of `vtimellm-hf -v` (-1: `-q`) that shows the messages of `level` and above."""
    if level <= logging.DEBUG:
        return 2
    if level <= logging.INFO:
        return 1
    return 0 if level <= logging.WARNING else -1


def load_tokenizer(model_args: VTimeModelArguments):
    """Deprecated: [`vtimellm_hf.checkpoints.load_tokenizer`] with the tokenizer's name."""
    warn_moved("vtimellm_hf.training.stages.load_tokenizer(model_args)",
               "vtimellm_hf.checkpoints.load_tokenizer(name_or_path)")  # fmt: skip
    return checkpoints.load_tokenizer(model_args.tokenizer_name_or_path or model_args.model_name_or_path)


def load_model(model_args: VTimeModelArguments, tokenizer, require_projector: bool = False):
    """Deprecated: [`vtimellm_hf.checkpoints.load_model`] with explicit arguments."""
    warn_moved("vtimellm_hf.training.stages.load_model(model_args, ...)",
               "vtimellm_hf.checkpoints.load_model(name_or_path, tokenizer, ...)")  # fmt: skip
    return checkpoints.load_model(
        model_args.model_name_or_path, tokenizer, mm_hidden_size=model_args.mm_hidden_size,
        num_frames=model_args.num_frames, dtype=model_args.dtype, require_projector=require_projector,
    )  # fmt: skip


# Names this module had before checkpoint files got their own module
__getattr__ = moved_names(__name__, {
    name: f"vtimellm_hf.checkpoints:{name}"
    for name in ("PROJECTOR_FILE", "PROJECTOR_PREFIX", "gathered", "load_projector", "merge_adapter", "save_projector")
})  # fmt: skip
