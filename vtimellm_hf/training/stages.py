"""The three VTimeLLM stages on TRL's SFTTrainer: arguments, model set-up, and what each stage saves.

| stage | data | trains | saves |
|---|---|---|---|
| 1 | LCS-558K images, "plain" template | `mm_projector` only | `mm_projector.safetensors` |
| 2 | InternVid dialogues | a new LoRA on the LLM (projector frozen) | the LoRA adapter |
| 3 | ANet/DiDeMo dialogues + VideoInstruct | stage-2 LoRA merged, then a new LoRA | merged model, or base + adapter |
"""

import json
import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoTokenizer, set_seed
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.trainer_utils import get_last_checkpoint

from ..model import VICUNA_V1_CHAT_TEMPLATE, VIDEO_TOKEN, VTimeLlamaConfig, VTimeLlamaForCausalLM, VTimeProcessor
from ..hub import original_generation_config
from ..model_card import save_training_record
from .collator import VTimeDataCollator, add_lengths

logger = logging.getLogger(__name__)

PROJECTOR_FILE = "mm_projector.safetensors"
PROJECTOR_PREFIX = "model.mm_projector."
LLAMA_LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class VTimeModelArguments:
    """Which models a stage starts from."""

    model_name_or_path: str = field(
        default="lmsys/vicuna-7b-v1.5", metadata={"help": "The base LLM (Vicuna v1.5) or a VTimeLLM checkpoint."}
    )
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
    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16, float16 or auto."})
    lora_r: int = 64
    lora_alpha: int = 128
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LINEAR_LAYERS))
    merge_final_adapter: bool = field(
        default=True, metadata={"help": "Stage 3: save one merged model (True) or the base plus the adapter."}
    )


@dataclass
class VTimeDataArguments:
    """What a stage trains on."""

    train_files: list[str] = field(default_factory=list, metadata={"help": "Annotation files of the stage."})
    feature_dir: str = field(default="", metadata={"help": "Folder of {id}.npy features, or a consolidated store."})
    on_bad_record: str = field(default="skip", metadata={"help": "'skip' (count and log) or 'raise'."})


def load_tokenizer(model_args: VTimeModelArguments):
    """The LLM's tokenizer with the `<video>` token, padding with unk (as the original) and the Vicuna template."""
    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name_or_path or model_args.model_name_or_path)
    if tokenizer.convert_tokens_to_ids(VIDEO_TOKEN) in (None, tokenizer.unk_token_id):
        tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    tokenizer.chat_template = VICUNA_V1_CHAT_TEMPLATE
    return tokenizer


def build_processor(tokenizer, model_args: VTimeModelArguments) -> VTimeProcessor:
    return VTimeProcessor.for_frame_encoder(
        tokenizer, model_args.frame_encoder_name_or_path, num_frames=model_args.num_frames
    )


def load_model(model_args: VTimeModelArguments, tokenizer, require_projector: bool = False) -> VTimeLlamaForCausalLM:
    """
    A [`VTimeLlamaForCausalLM`] from a LLaMA checkpoint (its `mm_projector` newly initialised) or from a VTimeLLM
    checkpoint, its embeddings resized when the tokenizer gained `<video>`. With `require_projector`, a checkpoint
    without a trained projector is refused.
    """
    dtype = model_args.dtype if model_args.dtype == "auto" else getattr(torch, model_args.dtype)
    base_config = AutoConfig.from_pretrained(model_args.model_name_or_path)
    no_projector = (f"{model_args.model_name_or_path} holds no trained projector: set stage1_projector (the output of "
                    "stage 1), or start from a VTimeLLM checkpoint that holds one.")
    # Checked before the conversion below, which makes every config a VTimeLlamaConfig
    if require_projector and not isinstance(base_config, VTimeLlamaConfig):
        raise ValueError(no_projector)
    video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    if isinstance(base_config, VTimeLlamaConfig):
        config = base_config
    else:
        settings = {key: value for key, value in base_config.to_dict().items() if key not in ("model_type", "architectures")}
        config = VTimeLlamaConfig(**settings)
        config.mm_hidden_size, config.num_frames = model_args.mm_hidden_size, model_args.num_frames
    config.video_token_id = video_token_id
    config.pad_token_id = tokenizer.pad_token_id
    model, loading_info = VTimeLlamaForCausalLM.from_pretrained(
        model_args.model_name_or_path, config=config, dtype=dtype, output_loading_info=True
    )
    if require_projector and any(".mm_projector." in key for key in loading_info["missing_keys"]):
        raise ValueError(no_projector)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        # The new <video> row is never read: the splice replaces every placeholder before the first layer
        model.resize_token_embeddings(len(tokenizer))
    return model


def gathered(module: torch.nn.Module, modifier_rank: int | None = None):
    """
    A context in which the module's parameters are whole: under DeepSpeed ZeRO-3 each process holds a slice only, and
    every process must enter it (a collective). With `modifier_rank`, what that process writes is kept.
    """
    if not is_deepspeed_zero3_enabled():
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=modifier_rank)


def save_projector(model: VTimeLlamaForCausalLM, output_dir: str | Path, write: bool = True) -> Path:
    """
    Writes the projector with the original key names (`model.mm_projector.weight`, `.bias`). Every process calls it
    (ZeRO-3 gathers the weights); only those with `write` write.
    """
    path = Path(output_dir) / PROJECTOR_FILE
    with gathered(model.model.mm_projector):
        state = {PROJECTOR_PREFIX + name: tensor.detach().cpu().contiguous()
                 for name, tensor in model.model.mm_projector.state_dict().items()}
    empty = sorted(name for name, tensor in state.items() if tensor.numel() == 0)
    if empty:
        raise ValueError(f"The projector tensors {empty} are empty (weights partitioned by ZeRO-3 and not gathered?); "
                         f"refusing to write {path}.")
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path))
    return path


def load_projector(model: VTimeLlamaForCausalLM, source: str | Path) -> None:
    """
    Loads a stage-1 projector: our `mm_projector.safetensors` or the original release's `mm_projector.bin` (read with
    `torch.load(weights_only=True)`: a pickle that would run code is refused). Keys may be spelled
    `model.mm_projector.*` or `mm_projector.*`.
    """
    path = Path(source)
    if path.is_dir():
        candidates = [path / PROJECTOR_FILE, path / "mm_projector.bin"]
        path = next((candidate for candidate in candidates if candidate.is_file()), candidates[0])
    if not path.is_file():
        raise FileNotFoundError(f"No stage-1 projector at {source} (looked for {PROJECTOR_FILE} and mm_projector.bin).")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(f"Refusing to load {path}: it is not a plain tensor checkpoint ({error}).") from error
    projector = {}
    for key, tensor in state.items():
        name = key.removeprefix("model.").removeprefix("mm_projector.")
        if key.removeprefix("model.").startswith("mm_projector."):
            projector[name] = tensor
    missing = sorted({"weight", "bias"} - set(projector))
    unexpected = sorted(key for key in state if not key.removeprefix("model.").startswith("mm_projector."))
    if missing:
        raise ValueError(f"{path}: projector tensors missing: {missing} (found keys {sorted(state)}).")
    if unexpected:
        logger.warning("%s: ignoring tensors that are not the projector's: %s", path, unexpected)
    with gathered(model.model.mm_projector, modifier_rank=0):
        expected = model.model.mm_projector.weight.shape
        if projector["weight"].shape != expected:
            raise ValueError(
                f"{path}: projector weight has shape {tuple(projector['weight'].shape)}, the model needs "
                f"{tuple(expected)}."
            )
        model.model.mm_projector.load_state_dict(projector)


def merge_adapter(model: VTimeLlamaForCausalLM, adapter_dir: str | Path) -> VTimeLlamaForCausalLM:
    """Merges a LoRA adapter into the weights and returns the plain model (PEFT returns a new object)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()


def lora_config(model_args: VTimeModelArguments):
    """LoRA on the LLM's linear layers by name: PEFT has no defaults for a new model type, and `all-linear` would also
    catch the projector."""
    from peft import LoraConfig

    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=list(model_args.lora_target_modules),
        task_type="CAUSAL_LM",
    )


def load_stage_dataset(stage: int, data_args: VTimeDataArguments, feature_store, num_rows: int, feature_dim: int):
    """The stage's records in the common schema, bad records skipped (with a count and a log) or raised."""
    from ..data import loaders

    if not data_args.train_files:
        raise ValueError("No train_files given: set them in the recipe's YAML or with --train_files.")
    load = {1: loaders.load_stage1, 2: loaders.load_stage2, 3: loaders.load_stage3}[stage]
    files = data_args.train_files if stage == 3 else data_args.train_files[0]
    if stage != 3 and len(data_args.train_files) > 1:
        raise ValueError(f"Stage {stage} reads one annotation file, got {len(data_args.train_files)}.")
    return load(
        files,
        on_error=data_args.on_bad_record,
        feature_store=feature_store,
        expected_rows=num_rows,
        expected_dim=feature_dim,
    )


def setup_model(stage: int, model_args: VTimeModelArguments, tokenizer):
    """The stage's model, trainable where the stage trains it, and the LoRA config of stages 2 and 3 (None in 1)."""
    # Stages 2 and 3 freeze the projector: a new one would stay random
    model = load_model(model_args, tokenizer, require_projector=stage > 1 and model_args.stage1_projector is None)
    model.config.use_cache = False
    model.requires_grad_(False)
    if stage == 1:
        # Without DeepSpeed nothing keeps fp32 master weights, and bf16 ones round away the small late steps of Adam.
        # DeepSpeed keeps its own, and ZeRO-3's partitioned weights are not recast here
        if not is_deepspeed_zero3_enabled():
            model.model.mm_projector.float()
        model.model.mm_projector.requires_grad_(True)
        return model, None
    if model_args.stage1_projector is not None:
        load_projector(model, model_args.stage1_projector)
    if stage == 3:
        model = merge_adapter(model, model_args.stage2_adapter)
        model.requires_grad_(False)
    return model, lora_config(model_args)


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


def run_stage(stage: int, model_args: VTimeModelArguments, data_args: VTimeDataArguments, training_args) -> Path:
    """
    Runs one stage end to end with TRL's SFTTrainer (`training_args`: [`VTimeTrainingArguments`]); returns the folder
    a following stage (or a user) loads.
    """
    from ..data.features import open_feature_store
    from .trainer import VTimeSFTTrainer

    if stage not in (1, 2, 3):
        raise ValueError(f"VTimeLLM has stages 1, 2 and 3, not {stage}.")
    if stage == 3 and model_args.stage2_adapter is None:
        raise ValueError("Stage 3 starts from the stage-2 adapter: set stage2_adapter.")
    fit_global_batch(training_args, training_args.world_size)
    resume_from = resume_checkpoint(training_args)
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args)
    processor = build_processor(tokenizer, model_args)
    model, peft_config = setup_model(stage, model_args, tokenizer)

    num_rows = 1 if stage == 1 else model_args.num_frames
    feature_store = open_feature_store(data_args.feature_dir)
    dataset = load_stage_dataset(stage, data_args, feature_store, num_rows, model.config.mm_hidden_size)
    collator = VTimeDataCollator(
        processor,
        feature_store,
        max_length=training_args.max_length or 2048,
        template="plain" if stage == 1 else "vicuna_v1",
        num_rows=num_rows,
    )
    if training_args.train_sampling_strategy in ("group_by_length", "batch_rebalance"):
        dataset = add_lengths(dataset, collator, column=training_args.length_column_name)
    # The final model is pushed after the checks of `vtimellm-hf push`; the Trainer's own push would upload
    # checkpoints of stages that are not loadable models, without a card
    push_to = training_args.hub_model_id if training_args.push_to_hub else None
    if push_to is None and training_args.push_to_hub:
        raise ValueError("push_to_hub needs hub_model_id (org/name) in the recipe.")
    if push_to and stage != 3:
        raise ValueError(f"Stage {stage} leaves a {'projector' if stage == 1 else 'LoRA adapter'}, not a model: "
                         "push the final model of stage 3.")
    training_args.push_to_hub = False

    trainer = VTimeSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=processor,
        peft_config=peft_config,
    )
    trainer.train(resume_from_checkpoint=resume_from)
    folder = save_stage(stage, trainer, processor, model_args, training_args.output_dir)
    if trainer.is_world_process_zero():
        save_training_record(folder, stage, model_args, data_args, training_args)
        if push_to:
            push_final_model(folder, push_to, model_args, training_args)
    return folder


def push_final_model(folder: Path, repo_id: str, model_args: VTimeModelArguments, training_args) -> None:
    """Pushes the final model after the checks of `vtimellm-hf push` (it loads as remote code, it has a card)."""
    from ..hub import build_hub_folder, push_folder

    if not model_args.merge_final_adapter:
        # An adapter alone is not a loadable model: push base + projector + stage-2 merge with the adapter beside it
        folder = build_hub_folder(
            model_args.model_name_or_path, model_args.stage1_projector, model_args.stage2_adapter, folder,
            folder.with_name(folder.name + "-hub"), frame_encoder=model_args.frame_encoder_name_or_path,
            merge=False, dtype=model_args.dtype if model_args.dtype != "auto" else "float16", repo_id=repo_id,
        ).folder
    push_folder(folder, repo_id, private=bool(training_args.hub_private_repo), revision=training_args.hub_revision,
                token=training_args.hub_token)


def save_stage(stage: int, trainer, processor: VTimeProcessor, model_args: VTimeModelArguments, output_dir) -> Path:
    """
    What each stage leaves for the next: the projector, the adapter, or the final model with its processor. Every
    process calls it (sharded weights are gathered) and only the main one writes; all leave when the files are there.
    """
    output_dir = Path(output_dir)
    model = trainer.model
    main = trainer.is_world_process_zero()
    if stage == 1:
        save_projector(model, output_dir, write=main)
    elif stage == 2 or not model_args.merge_final_adapter:
        trainer.save_model(str(output_dir))
        if main:
            processor.save_pretrained(output_dir)
        if main and stage == 3:
            # Base + adapter: the adapter alone does not say which projector and stage-2 merge it sits on
            record = {"base": model_args.model_name_or_path, "stage1_projector": model_args.stage1_projector,
                      "stage2_adapter": model_args.stage2_adapter}
            (output_dir / "vtimellm_stages.json").write_text(json.dumps(record, indent=2))
    elif main:
        merged = model.merge_and_unload()
        merged.config.use_cache = True
        merged.generation_config = original_generation_config(processor.tokenizer)
        merged.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    trainer.accelerator.wait_for_everyone()
    logger.info("Stage %d saved to %s", stage, output_dir)
    return output_dir


def stage_main(stage: int, argv: list[str] | None = None) -> Path:
    """Entry point of `recipes/stage{1,2,3}.py`: parses the YAML recipe and the command line, runs the stage."""
    from trl import TrlParser

    from .trainer import VTimeTrainingArguments

    parser = TrlParser((VTimeModelArguments, VTimeDataArguments, VTimeTrainingArguments))
    model_args, data_args, training_args = parser.parse_args_and_config(argv)
    training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
    training_args.remove_unused_columns = False
    return run_stage(stage, model_args, data_args, training_args)
