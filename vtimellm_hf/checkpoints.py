"""Reading and writing VTimeLLM checkpoints, once for training, conversion and inference.

- The stage-1 projector: [`projector_file`] finds it, [`read_projector`] reads it (ours, `mm_projector.safetensors`,
  or the original release's `mm_projector.bin`), [`load_projector`] and [`save_projector`] move it in and out of a
  model.
- A stage's LoRA adapter: [`read_stage_adapter`] reads and checks it against the model, [`StageAdapter.merge_into`]
  merges it; [`merge_adapter`] is the one call to PEFT's merge.
- The models: [`load_tokenizer`], [`load_model`] (a LLaMA, or another decoder of `BACKBONES`, becomes a VTimeLLM),
  [`save_model_folder`] (a folder that
  loads anywhere) and [`load_model_and_processor`] (what inference loads, a separate stage-3 adapter merged in).

Pickles are read with `torch.load(weights_only=True)` only ([`read_state_dict`]), so a checkpoint that would run code
when unpickled is refused. PEFT reads `adapter_model.bin` with `weights_only=True` too
(`peft.utils.save_and_load.torch_load`, 0.21), but adapters are not handed to PEFT as pickles at all: they are read
and checked here, then staged as safetensors.
"""

import copy
import logging
import pickle
import re
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoTokenizer, GenerationConfig, PreTrainedConfig
from transformers.integrations import is_deepspeed_zero3_enabled

from .model import BACKBONES, VICUNA_V1_CHAT_TEMPLATE, VIDEO_TOKEN, VTimeLlamaForCausalLM

if TYPE_CHECKING:
    from peft import LoraConfig

logger = logging.getLogger(__name__)

PROJECTOR_FILE = "mm_projector.safetensors"
# The original release's stage-1 output, a pickle
ORIGINAL_PROJECTOR_FILE = "mm_projector.bin"
PROJECTOR_PREFIX = "model.mm_projector."
NON_LORA_FILE = "non_lora_trainables.bin"
# Where a stage-3 LoRA adapter kept apart from its base lives (`convert-original --no-merge`, a stage 3 trained with
# `--merge_final_adapter false` once converted)
ADAPTER_SUBFOLDER = "stage3_adapter"
# The original inference: sampling at temperature 0.05, at most 1024 new tokens
ORIGINAL_GENERATION_SETTINGS = {"do_sample": True, "temperature": 0.05, "max_new_tokens": 1024}
# The dtypes a model or an encoder is loaded in, by the names of the command lines and recipes (which add "auto":
# the checkpoint's own)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# The model types loaded with this package's classes, never with the code a checkpoint folder carries
PACKAGE_MODEL_TYPES = frozenset(config_class.model_type for config_class, _ in BACKBONES.values())
_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")
_SHOWN_KEYS = 8


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype of a name of [`DTYPES`] (a torch dtype is returned as it is); a `ValueError` otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """
    A flat state dict from a `.safetensors` file or a PyTorch pickle, the latter read with
    `torch.load(weights_only=True)`: a pickle that would build arbitrary objects (and could run code) is refused.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for objects beyond tensors, RuntimeError for corrupt archives
        raise ValueError(f"Refusing to load {path}: it is not a plain tensor checkpoint ({error}).") from error
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors.")
    return state


# The stage-1 projector


def projector_file(source: str | Path, name: str = "mm_projector") -> Path:
    """A projector file: `source` itself, or in the folder `source` ours (`{name}.safetensors`), else the original's
    (`{name}.bin`)."""
    path = Path(source)
    if path.is_dir():
        candidates = [path / f"{name}.safetensors", path / f"{name}.bin"]
        path = next((candidate for candidate in candidates if candidate.is_file()), candidates[0])
    if not path.is_file():
        label = "stage-1" if name == "mm_projector" else name
        raise FileNotFoundError(f"No {label} projector at {source} (a file, or a folder with {name}.safetensors or "
                                f"{name}.bin).")  # fmt: skip
    return path


def read_projector(source: str | Path, name: str = "mm_projector") -> dict[str, torch.Tensor]:
    """
    The projector `name`'s `{"weight": (hidden_size, width), "bias": (hidden_size,)}` from the file
    [`projector_file`] finds for `source`, its keys spelled `model.{name}.*` (ours, the original's) or `{name}.*`.
    The prefix is matched exactly: AVicuna's stage-1 file also holds `mm_projector_a` (its script saved every key
    containing "mm_projector"), which is not `mm_projector`. Other tensors are ignored with a warning.
    """
    path = projector_file(source, name)
    state = read_state_dict(path)
    prefix = f"{name}."
    ours = {key: key.removeprefix("model.") for key in state if key.removeprefix("model.").startswith(prefix)}
    projector = {short.removeprefix(prefix): state[key] for key, short in ours.items()}
    missing = sorted({"weight", "bias"} - set(projector))
    if missing:
        raise ValueError(f"{path}: {name} tensors missing: {missing} (found keys {sorted(state)}).")
    if projector["weight"].ndim != 2:
        raise ValueError(f"{path}: the {name} weight has shape {tuple(projector['weight'].shape)}, not 2-d.")
    unexpected = sorted(key for key in state if key not in ours)
    if unexpected:
        logger.warning("%s: ignoring tensors that are not %s's: %s", path, name, unexpected)
    return {part: projector[part] for part in ("weight", "bias")}


def gathered(module: nn.Module, modifier_rank: int | None = None):
    """
    A context in which the module's parameters are whole: under DeepSpeed ZeRO-3 each process holds a slice only, and
    every process must enter it (a collective). With `modifier_rank`, what that process writes is kept.
    """
    if not is_deepspeed_zero3_enabled():
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=modifier_rank)


def load_projector(model: VTimeLlamaForCausalLM, source: str | Path, name: str = "mm_projector") -> None:
    """Loads the projector `name` ([`read_projector`]) into `model`; every process calls it under ZeRO-3."""
    projector = read_projector(source, name)
    module = getattr(model.model, name, None)
    if module is None:
        raise ValueError(f"{projector_file(source, name)}: the model has no {name} (its streams: "
                         f"{[stream.projector for stream in model.config.streams]}).")  # fmt: skip
    with gathered(module, modifier_rank=0):
        expected = module.weight.shape
        if projector["weight"].shape != expected:
            raise ValueError(f"{projector_file(source, name)}: {name} weight has shape "
                             f"{tuple(projector['weight'].shape)}, the model needs {tuple(expected)}.")  # fmt: skip
        module.load_state_dict(projector)


def save_projector(
    model: VTimeLlamaForCausalLM, output_dir: str | Path, write: bool = True, name: str = "mm_projector"
) -> Path:
    """
    Writes `output_dir/{name}.safetensors` (`mm_projector.safetensors`; AVicuna's stage 2 also `mm_projector_a`)
    with the original key names (`model.{name}.weight`, `.bias`). Every process calls it (ZeRO-3 gathers the
    weights); only those with `write` write.
    """
    path = Path(output_dir) / f"{name}.safetensors"
    module = getattr(model.model, name)
    with gathered(module):
        state = {f"model.{name}.{part}": tensor.detach().cpu().contiguous()
                 for part, tensor in module.state_dict().items()}  # fmt: skip
    empty = sorted(name for name, tensor in state.items() if tensor.numel() == 0)
    if empty:
        raise ValueError(f"The projector tensors {empty} are empty (weights partitioned by ZeRO-3 and not gathered?); "
                         f"refusing to write {path}.")  # fmt: skip
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path))
    return path


# LoRA adapters


def merge_adapter(model: nn.Module, adapter: str | Path, subfolder: str | None = None) -> nn.Module:
    """Merges a PEFT LoRA adapter (a folder or a Hub id) into the weights and returns the plain model (a new
    object)."""
    from peft import PeftModel

    kwargs = {"subfolder": subfolder} if subfolder else {}
    return PeftModel.from_pretrained(model, str(adapter), **kwargs).merge_and_unload()


@dataclass
class StageAdapter:
    """
    A LoRA adapter folder (stage 2 or 3) read with [`read_stage_adapter`] and checked against the model it applies
    to.

    Attributes:
        source: the folder it was read from.
        config: its `LoraConfig`.
        lora_state: the LoRA tensors under PEFT's saved names (`base_model.model.<module>.lora_A.weight`).
        full_weights: whole tensors under the model's state-dict names: those of `non_lora_trainables.bin` (the
            projector in some releases), then those PEFT saved beside the LoRA (embeddings and LM head of a resized
            vocabulary, `modules_to_save`). They replace the model's before the LoRA applies, as the original loader
            does.
        notes: what was found, for the conversion record.
    """

    source: Path
    config: "LoraConfig"
    lora_state: dict[str, torch.Tensor]
    full_weights: dict[str, torch.Tensor]
    notes: list[str] = field(default_factory=list)

    def save(self, folder: str | Path) -> Path:
        """Writes the adapter as PEFT saves one: `adapter_config.json` and `adapter_model.safetensors`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(self.config)
        # The recorded base (a training machine's path) is not what this adapter applies to once converted
        config.base_model_name_or_path = None
        config.inference_mode = True
        # Only the LoRA tensors are written: whole modules (`modules_to_save`) are `full_weights`, applied apart
        config.modules_to_save = None
        config.save_pretrained(str(folder))
        save_file({key: tensor.contiguous() for key, tensor in self.lora_state.items()},
                  str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})  # fmt: skip
        return folder

    def apply_full_weights(self, model: nn.Module) -> None:
        """Copies `full_weights` into `model`."""
        state = model.state_dict()
        with torch.no_grad():
            for name, tensor in self.full_weights.items():
                state[name].copy_(tensor)

    def merge_into(self, model: nn.Module) -> nn.Module:
        """`full_weights` copied in, then the LoRA merged (through PEFT, from a safetensors copy); returns the model."""
        self.apply_full_weights(model)
        with tempfile.TemporaryDirectory() as staging:
            return merge_adapter(model, self.save(staging))


def read_stage_adapter(folder: str | Path, model: nn.Module) -> StageAdapter:
    """
    Reads a PEFT LoRA folder of the original release (`adapter_model.bin`, maybe `non_lora_trainables.bin`) or of
    the recipes (`adapter_model.safetensors`) and checks it against `model`.

    Raises:
        FileNotFoundError: without `adapter_config.json` or adapter weights.
        ValueError: for a non-LoRA adapter, a pickle that is not plain tensors, LoRA tensors missing for modules the
            config targets, tensors that name no module (or parameter) of `model`, or shapes that do not fit.
    """
    from peft import LoraConfig, PeftConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a PEFT adapter folder: adapter_config.json is missing.")
    config = PeftConfig.from_pretrained(str(folder))
    if not isinstance(config, LoraConfig):
        raise ValueError(f"{folder}: a {config.peft_type} adapter; VTimeLLM's stages are LoRA adapters.")
    candidates = [folder / "adapter_model.safetensors", folder / "adapter_model.bin"]
    weights = next((path for path in candidates if path.is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder}: no adapter weights (adapter_model.safetensors or adapter_model.bin).")
    notes = [f"{folder}: LoRA r {config.r}, alpha {config.lora_alpha}, weights {weights.name}"]

    state = model.state_dict()
    full_weights, unknown = {}, []
    non_lora = folder / NON_LORA_FILE
    if non_lora.is_file():
        for key, tensor in read_state_dict(non_lora).items():
            _place_full_weight(key, tensor, state, full_weights, unknown)
        if unknown:
            raise ValueError(
                f"{non_lora}: tensors that match no parameter of the model (by name and shape): {_shorten(unknown)}."
            )
        replaced = ", ".join(sorted(full_weights))
        notes.append(f"{non_lora.name}: replaces {replaced}" if full_weights else f"{non_lora.name}: empty")
    else:
        notes.append(f"no {NON_LORA_FILE}")

    linear_layers = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    found: dict[str, set[str]] = {}
    lora_state, in_adapter, unexpected, bad_shapes = {}, {}, [], []
    for key, tensor in read_state_dict(weights).items():
        match = _LORA_KEY.match(key)
        if match is None:
            # Whole tensors saved with the adapter: PEFT adds the embeddings and LM head when the vocabulary was
            # resized (<video>), and the modules in `modules_to_save`. They apply after non_lora_trainables, as
            # PEFT loads them after the original's loader read that file.
            _place_full_weight(key, tensor, state, in_adapter, unexpected)
            continue
        if match["module"] not in linear_layers:
            unexpected.append(key)
            continue
        module, part = match["module"], match["part"]
        layer = linear_layers[module]
        # A is (r, in_features), B is (out_features, r)
        fits = tensor.ndim == 2 and (
            tensor.shape[1] == layer.in_features if part == "A" else tensor.shape[0] == layer.out_features
        )
        if not fits:
            sizes = f"{layer.in_features} -> {layer.out_features}"
            bad_shapes.append(f"{key} {tuple(tensor.shape)} for {module} ({sizes})")
        found.setdefault(module, set()).add(part)
        lora_state[f"base_model.model.{module}.lora_{part}.weight"] = tensor
    if in_adapter:
        notes.append(f"{weights.name} also holds whole tensors: {', '.join(sorted(in_adapter))}")
        full_weights.update(in_adapter)
    if config.target_modules == "all-linear":
        # PEFT's shorthand: every linear layer but the output head
        targeted = {name for name in linear_layers if name != "lm_head"}
    else:
        targeted = {name for name in linear_layers if check_target_module_exists(config, name)}
    missing = sorted(
        f"{module}.lora_{part}" for module in targeted for part in "AB" if part not in found.get(module, set())
    )
    # PEFT would build no LoRA layer for these, and would drop their tensors without a word
    untargeted = sorted(module for module in found if module not in targeted)
    problems = []
    if missing:
        problems.append(f"missing LoRA tensors for modules its config targets: {_shorten(missing)}")
    if untargeted:
        problems.append(f"LoRA tensors for modules its config does not target: {_shorten(untargeted)}")
    if unexpected:
        problems.append(
            f"unexpected tensors (neither LoRA tensors of a linear layer nor parameters of the model): "
            f"{_shorten(unexpected)}"
        )
    if bad_shapes:
        problems.append(f"shapes that do not fit the model: {_shorten(bad_shapes)}")
    if problems:
        raise ValueError(f"{weights}: " + "; ".join(problems) + ".")

    return StageAdapter(folder, config, lora_state, full_weights, notes)


def _place_full_weight(key: str, tensor: torch.Tensor, state: dict, placed: dict, unplaced: list) -> None:
    """Files `tensor` under the model's name for `key` when the model has a tensor of that name and shape."""
    name = _model_key(key)
    if name in state and state[name].shape == tensor.shape:
        placed[name] = tensor
    else:
        unplaced.append(f"{key} {tuple(tensor.shape)}")


def _model_key(key: str) -> str:
    """
    A state-dict name of the model from a key saved by a PEFT-wrapped model (`base_model.model.` + the model's name,
    as `non_lora_trainables.bin` and PEFT's whole tensors have it) or by the model itself, with or without the
    `model.` of the inner model before `mm_projector`.
    """
    name = key.removeprefix("base_model.model.")
    return "model." + name if name.startswith("mm_projector.") else name


def _shorten(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN_KEYS])
    return shown + (f" and {len(items) - _SHOWN_KEYS} more" if len(items) > _SHOWN_KEYS else "")


# Models


def load_tokenizer(
    name_or_path: str, revision: str = "main", trust_remote_code: bool = False,
    chat_template: str = VICUNA_V1_CHAT_TEMPLATE,
):  # fmt: skip
    """
    The LLM's tokenizer with the `<video>` token and `chat_template` (Vicuna v1 by default; the other LLMs' are in
    `vtimellm_hf.chat_formats`). One without a pad token pads with unk, as the original did with Vicuna's, or with
    its end-of-sequence token where it has no unk (Llama 3). Code that the checkpoint carries runs only with
    `trust_remote_code`.
    """
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.convert_tokens_to_ids(VIDEO_TOKEN) in (None, tokenizer.unk_token_id):
        tokenizer.add_special_tokens({"additional_special_tokens": [VIDEO_TOKEN]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    tokenizer.chat_template = chat_template
    return tokenizer


def load_model(
    name_or_path: str,
    tokenizer,
    *,
    mm_hidden_size: int = 768,
    num_frames: int = 100,
    dtype: str = "float32",
    require_projector: bool = False,
    revision: str = "main",
    attn_implementation: str | None = None,
    feature_streams: list[dict] | None = None,
    stream_layout: str = "single",
    trust_remote_code: bool = False,
) -> VTimeLlamaForCausalLM:
    """
    A [`VTimeLlamaForCausalLM`] from a LLaMA checkpoint, or the VTimeLLM class of another decoder of `BACKBONES`
    (Qwen3, Qwen2/2.5, Mistral) from that decoder's checkpoint (its `mm_projector`, `mm_hidden_size -> hidden_size`,
    and the projectors of `feature_streams` in `stream_layout` (LongVALE's, AVicuna's), newly initialised;
    `num_frames` recorded in its config), or from a VTimeLLM checkpoint of any backbone (its own sizes and streams),
    its embeddings resized when the tokenizer gained `<video>`. With `require_projector`, a checkpoint without a
    trained projector is refused. `dtype`: float32, bfloat16, float16 or auto (the checkpoint's). A configuration
    class that the checkpoint carries as code runs only with `trust_remote_code`; the model is always this package's.
    """
    base_config = AutoConfig.from_pretrained(name_or_path, revision=revision, trust_remote_code=trust_remote_code)
    no_projector = (f"{name_or_path} holds no trained projector: set stage1_projector (the output of stage 1), or "
                    "start from a VTimeLLM checkpoint that holds one.")  # fmt: skip
    vtime_models = dict(BACKBONES.values())
    if type(base_config) in vtime_models:
        config, model_class = base_config, vtime_models[type(base_config)]
    elif require_projector:
        raise ValueError(no_projector)
    elif base_config.model_type not in BACKBONES:
        raise ValueError(f"{name_or_path} is a {base_config.model_type!r} model; VTimeLLM is built on the decoders "
                         f"{', '.join(BACKBONES)} (Llama 3 is 'llama', Qwen2.5 'qwen2').")  # fmt: skip
    else:
        config_class, model_class = BACKBONES[base_config.model_type]
        settings = base_config.to_dict()
        config = config_class(**{key: value for key, value in settings.items()
                                 if key not in ("model_type", "architectures")})  # fmt: skip
        config.mm_hidden_size, config.num_frames = mm_hidden_size, num_frames
        config.feature_streams, config.stream_layout = feature_streams, stream_layout
    config.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    config.pad_token_id = tokenizer.pad_token_id
    model, loading_info = model_class.from_pretrained(
        name_or_path, config=config, dtype=dtype if dtype == "auto" else torch_dtype(dtype), revision=revision,
        attn_implementation=attn_implementation, output_loading_info=True,
    )  # fmt: skip
    if require_projector and any(".mm_projector." in key for key in loading_info["missing_keys"]):
        raise ValueError(no_projector)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        # The new <video> row is never read: the splice replaces every placeholder before the first layer
        model.resize_token_embeddings(len(tokenizer))
    return model


def original_generation_config(tokenizer) -> GenerationConfig:
    """The generation settings of the original VTimeLLM inference, with the special token ids of `tokenizer`."""
    return GenerationConfig(
        **ORIGINAL_GENERATION_SETTINGS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def save_model_folder(model: VTimeLlamaForCausalLM, processor, folder: str | Path) -> Path:
    """
    Writes a folder that loads with the Auto classes here and with `trust_remote_code=True` elsewhere: the weights,
    the config (with `auto_map` and the cache on), the code files, the original's generation settings
    ([`ORIGINAL_GENERATION_SETTINGS`]) and the processor.
    """
    model.config.use_cache = True
    model.generation_config = original_generation_config(processor.tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return Path(folder)


def load_model_and_processor(
    name_or_path: str, device: str | None = None, dtype: str = "auto", trust_remote_code: bool = False
):
    """
    A VTimeLLM checkpoint (a folder or a Hub id) and its processor, the model in eval mode on `device`.

    A checkpoint of this package's model type is loaded with this package's classes, whatever code files and
    `auto_map` the folder carries: none of its code runs. Any other checkpoint is refused unless `trust_remote_code`
    (`--trust-remote-code`), as transformers refuses to run a folder's code unless told.

    A checkpoint that keeps its stage-3 LoRA adapter apart (`stage3_adapter/`, from `convert-original --no-merge`) is
    the base it sits on: the adapter is merged in here, or every answer would come from the stage-2 model.
    """
    from transformers import AutoModelForCausalLM, AutoProcessor
    from transformers.utils import cached_file

    runs_folder_code = check_model_type(name_or_path, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, trust_remote_code=runs_folder_code, dtype=dtype)
    except (SafetensorError, pickle.UnpicklingError, EOFError) as error:
        raise ValueError(
            f"{name_or_path}: cannot read its weights ({type(error).__name__}: {error}); the file is truncated or "
            "damaged: copy or download it again."
        ) from None
    adapter_config = cached_file(
        name_or_path, "adapter_config.json", subfolder=ADAPTER_SUBFOLDER, _raise_exceptions_for_missing_entries=False
    )
    if adapter_config is not None:
        logger.info("%s: merging the stage-3 adapter of %s/", name_or_path, ADAPTER_SUBFOLDER)
        model = merge_adapter(model, name_or_path, subfolder=ADAPTER_SUBFOLDER)
    processor = AutoProcessor.from_pretrained(name_or_path, trust_remote_code=runs_folder_code)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    processor.frame_encoder_device = device
    return model.to(device).eval(), processor


def check_model_type(name_or_path: str, trust_remote_code: bool = False) -> bool:
    """
    Whether loading the checkpoint `name_or_path` may run the code its folder carries: never for this package's
    model types ([`PACKAGE_MODEL_TYPES`], loaded with this package's classes), only with `trust_remote_code` for
    any other.

    Raises:
        ValueError: for a checkpoint of another model type without `trust_remote_code`, naming the type and the
            code that would run.
        OSError: when there is no `config.json`, or it is not JSON.
    """
    # The settings only, as JSON: no configuration class is built, so no code of the folder runs
    config, _ = PreTrainedConfig.get_config_dict(name_or_path)
    model_type = config.get("model_type")
    if model_type in PACKAGE_MODEL_TYPES:
        return False
    if not trust_remote_code:
        auto_map = config.get("auto_map")
        code = sorted({str(reference) for reference in auto_map.values()}) if isinstance(auto_map, dict) else []
        runs = f"; loading it would run its own code ({', '.join(code)})" if code else ""
        raise ValueError(
            f"{name_or_path}: config.json names model type {model_type!r}, not a VTimeLLM checkpoint "
            f"({', '.join(sorted(PACKAGE_MODEL_TYPES))}){runs}. Pass --trust-remote-code to load it with the code "
            "it carries, if you trust it."
        )
    return True


__all__ = [
    "ADAPTER_SUBFOLDER",
    "DTYPES",
    "NON_LORA_FILE",
    "ORIGINAL_GENERATION_SETTINGS",
    "ORIGINAL_PROJECTOR_FILE",
    "PROJECTOR_FILE",
    "PACKAGE_MODEL_TYPES",
    "StageAdapter",
    "check_model_type",
    "gathered",
    "load_model",
    "load_model_and_processor",
    "load_projector",
    "load_tokenizer",
    "merge_adapter",
    "original_generation_config",
    "projector_file",
    "read_projector",
    "read_stage_adapter",
    "read_state_dict",
    "save_model_folder",
    "save_projector",
    "torch_dtype",
]
