"""Hub-ready VTimeLLM checkpoints: conversion of the original release, a clean-room load check, and the upload.

- [`build_hub_folder`] (`vtimellm-hf convert-original`): the original release (Vicuna base, stage-1
  `mm_projector.bin`, stage-2 and stage-3 PEFT LoRA folders) or the outputs of this package's recipes become one
  folder that `transformers` loads with `trust_remote_code=True`: config with `auto_map`, safetensors weights, the
  code files, the processor, `generation_config.json` with the original's settings and a model card.
- [`check_remote_loading`]: loads a folder in a fresh interpreter where `vtimellm_hf` cannot be imported, as a Hub
  user would, and runs one forward pass.
- [`push_folder`] (`vtimellm-hf push`): checks the folder that way, then `create_repo` + `upload_folder`. The training
  recipes call it at the end of training.

Pickles are read with `torch.load(weights_only=True)` only, so a checkpoint that would run code when unpickled is
refused. PEFT reads `adapter_model.bin` with `weights_only=True` too (`peft.utils.save_and_load.torch_load`, 0.21),
but adapters are not handed to PEFT as pickles at all: they are read and checked here, then staged as safetensors.
"""

import argparse
import copy
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, GenerationConfig

from .model import VIDEO_TOKEN
from .model.processing_vtime import DEFAULT_FRAME_ENCODER
from .model_card import (
    ADAPTER_SUBFOLDER,
    CONVERSION_RECORD_FILE,
    TRAINING_RECORD_FILE,
    is_hub_id,
    render_model_card,
    write_model_card,
)
if TYPE_CHECKING:
    from peft import LoraConfig

logger = logging.getLogger(__name__)

# The original inference: sampling at temperature 0.05, at most 1024 new tokens
ORIGINAL_GENERATION_SETTINGS = {"do_sample": True, "temperature": 0.05, "max_new_tokens": 1024}
NON_LORA_FILE = "non_lora_trainables.bin"
# Training leftovers that do not belong in a model repository; `training_args.bin` is a pickle of arbitrary objects
DEFAULT_IGNORE_PATTERNS = [
    "training_args.bin",
    "trainer_state.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state*.pth",
    "checkpoint-*",
    "runs/*",
    "*__pycache__*",
    "*.pyc",
]
_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")
_SAVE_DTYPES = ("float16", "bfloat16", "float32")
_SHOWN_KEYS = 8


class PushError(RuntimeError):
    """A push that did not happen; the message says why and what to do."""


class NoTokenError(PushError):
    """No Hugging Face token was found."""


class OfflineModeError(PushError):
    """`HF_HUB_OFFLINE` is set, so the Hub cannot be reached."""


class HubConnectionError(PushError):
    """The Hub could not be reached (no network, DNS, proxy, timeout)."""


class HubRequestError(PushError):
    """The Hub answered with an error (rejected token, no write access, ...)."""


class FolderNotLoadableError(PushError):
    """The folder does not load with `trust_remote_code=True` where `vtimellm_hf` is absent."""


def original_generation_config(tokenizer) -> GenerationConfig:
    """The generation settings of the original VTimeLLM inference, with the special token ids of `tokenizer`."""
    return GenerationConfig(
        **ORIGINAL_GENERATION_SETTINGS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


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
        from .training.stages import merge_adapter

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


@dataclass
class LoadCheck:
    """
    The outcome of [`check_remote_loading`].

    Attributes:
        ok: whether config, model (and adapter), processor and one forward pass all worked.
        stage: what failed: "layout", "import", "config", "model", "adapter", "processor", "forward" or "timeout".
        error: why.
        classes: the classes built (all from the folder's code when `ok`).
        video_features: the features of the forward pass, `(1, num_frames, mm_hidden_size)`.
        input_ids: the prompt's ids.
        logits: the logits at the prompt's last position.
    """

    ok: bool
    stage: str | None = None
    error: str | None = None
    classes: dict[str, str] = field(default_factory=dict)
    video_features: torch.Tensor | None = None
    input_ids: list[int] | None = None
    logits: torch.Tensor | None = None

    def describe(self) -> str:
        if self.ok:
            built = ", ".join(name.rsplit(".", 1)[-1] for name in self.classes.values())
            return f"loads with trust_remote_code=True without vtimellm_hf ({built} from the folder's code)"
        return f"does not load with trust_remote_code=True without vtimellm_hf: {self.stage} failed: {self.error}"


# Runs in a fresh interpreter where importing vtimellm_hf fails, as on a machine that has only transformers (and
# peft for a folder with a separate adapter); it writes a JSON report instead of raising.
_LOAD_CHECK_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class HidePackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "vtimellm_hf" or name.startswith("vtimellm_hf."):
                raise ImportError(f"{name} is not importable here: the folder must load with its own code")

    sys.meta_path.insert(0, HidePackage())
    folder, features_file, report_file, adapter_subfolder = sys.argv[1:5]
    report = {"ok": False, "stage": "import"}
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

        report["stage"] = "config"
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        report["stage"] = "model"
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, trust_remote_code=True, dtype="auto", output_loading_info=True
        )
        mismatches = {key: [str(item) for item in info[key]] for key in
                      ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(key)}
        if mismatches:
            raise RuntimeError(f"the weights do not match the model: {mismatches}")
        classes = {"config": type(config).__module__ + "." + type(config).__name__,
                   "model": type(model).__module__ + "." + type(model).__name__}
        if adapter_subfolder:
            report["stage"] = "adapter"
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, folder, subfolder=adapter_subfolder)
        report["stage"] = "processor"
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        classes["processor"] = type(processor).__module__ + "." + type(processor).__name__
        report["stage"] = "forward"
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device).eval()
        features = torch.load(features_file, weights_only=True)
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "When does it happen?"}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=prompt, video_features=features, return_tensors="pt").to(device)
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1].float().cpu()
        if not torch.isfinite(logits).all():
            raise RuntimeError("the logits of the forward pass are not finite")
        leaked = sorted(name for name in sys.modules if name.startswith("vtimellm_hf"))
        if leaked:
            raise RuntimeError(f"vtimellm_hf modules were imported: {leaked}")
        report.update(ok=True, stage=None, classes=classes, input_ids=inputs["input_ids"][0].tolist(),
                      logits=logits.tolist())
    except Exception as error:
        report["error"] = f"{type(error).__name__}: {error}"
    with open(report_file, "w") as handle:
        json.dump(report, handle)
    """
)


def check_remote_loading(folder: str | Path, timeout: float = 3600) -> LoadCheck:
    """
    Loads `folder` as a Hub user would, in a fresh Python process where `vtimellm_hf` cannot be imported and the
    Hub is offline: `AutoConfig`, `AutoModelForCausalLM` (every weight must match), the separate stage-3 adapter
    with PEFT when there is one, `AutoProcessor`, all with `trust_remote_code=True`, then one forward pass on
    random features (seed 0) through the chat template. The modules cache is a fresh folder, so stale copies of the
    code cannot hide a broken file.

    Never raises for a broken folder: the returned [`LoadCheck`] says what failed.
    """
    folder = Path(folder).resolve()
    config_file = folder / "config.json"
    if not config_file.is_file():
        if (folder / "adapter_config.json").is_file():
            return LoadCheck(False, "layout", f"{folder} holds only a LoRA adapter; build a full folder with "
                             "`vtimellm-hf convert-original` (its --stage3 takes this adapter)")  # fmt: skip
        return LoadCheck(False, "layout", f"{folder} holds no config.json")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if "mm_hidden_size" not in config:
        return LoadCheck(False, "config", f"{config_file} is not a VTimeLLM config (no mm_hidden_size)")
    adapter = ADAPTER_SUBFOLDER if (folder / ADAPTER_SUBFOLDER / "adapter_config.json").is_file() else ""
    features = torch.randn(
        1, config.get("num_frames", 100), config["mm_hidden_size"], generator=torch.Generator().manual_seed(0)
    )
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        torch.save(features, scratch / "features.pt")
        environment = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_MODULES_CACHE": str(scratch / "modules"),
            "TRANSFORMERS_VERBOSITY": "error",
        }
        command = [sys.executable, "-c", _LOAD_CHECK_SCRIPT, str(folder), str(scratch / "features.pt"),
                   str(scratch / "report.json"), adapter]  # fmt: skip
        try:
            result = subprocess.run(
                command, env=environment, cwd=scratch, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return LoadCheck(False, "timeout", f"loading and one forward pass took more than {timeout:.0f} s")
        report_file = scratch / "report.json"
        if not report_file.is_file():
            return LoadCheck(False, "import", f"the process died (status {result.returncode}): {result.stderr[-2000:]}")
        report = json.loads(report_file.read_text())
    if not report["ok"]:
        return LoadCheck(False, report["stage"], report.get("error"))
    return LoadCheck(
        True,
        classes=report["classes"],
        video_features=features,
        input_ids=report["input_ids"],
        logits=torch.tensor(report["logits"]),
    )


@dataclass
class ConversionResult:
    """What [`build_hub_folder`] built: the folder, what it found on the way, and the load check (if run)."""

    folder: Path
    notes: list[str]
    load_check: LoadCheck | None


def build_hub_folder(
    base: str,
    stage1: str | Path,
    stage2: str | Path,
    stage3: str | Path,
    output_dir: str | Path,
    *,
    frame_encoder: str = DEFAULT_FRAME_ENCODER,
    merge: bool = True,
    dtype: str = "float16",
    repo_id: str | None = None,
    base_model: str | None = None,
    check: bool = True,
) -> ConversionResult:
    """
    Builds one Hub-ready folder from the three stages of VTimeLLM, as the original inference assembles them: the
    Vicuna base with `<video>` added, the stage-1 projector, then for stage 2 and stage 3 in turn the adapter
    folder's `non_lora_trainables.bin` (if any) and its LoRA merged.

    Works on the original release (`mm_projector.bin`, `adapter_model.bin`) and on the outputs of this package's
    recipes (`mm_projector.safetensors`, `adapter_model.safetensors`). Merging is done in float32 (4 bytes of memory
    per parameter: 28 GB for 7B), then the weights are cast to `dtype`.

    Args:
        base: the Vicuna v1.5 checkpoint (folder or Hub id) the stages were trained on.
        stage1: the stage-1 projector file, or its folder.
        stage2, stage3: the LoRA adapter folders.
        output_dir: the folder to create; it must not exist or be empty.
        frame_encoder: the CLIP encoder the processor names (`openai/clip-vit-large-patch14` for the original).
        merge: merge stage 3 too (one plain model); `False` keeps it apart in `stage3_adapter/`, over a base that
            holds the projector and the stage-2 merge.
        dtype: dtype of the saved weights: float16 (the original's inference), bfloat16 or float32.
        repo_id: the Hub id the model card's usage code loads.
        base_model: the Hub id of the base (`lmsys/vicuna-7b-v1.5`) for the card's `base_model` metadata, where
            `base` is a local folder; default: `base` when it is a Hub id, else no `base_model`.
        check: run [`check_remote_loading`] on the result.

    Raises:
        FileExistsError: when `output_dir` holds files.
        FileNotFoundError, ValueError: on missing or inconsistent inputs, naming what is missing or unexpected.
    """
    # The training code imports this module (push_folder); importing it back here, not at the top, keeps that legal
    from .training.stages import VTimeModelArguments, build_processor, load_model, load_projector, load_tokenizer

    if base_model is not None and not is_hub_id(base_model):
        raise ValueError(f"base_model must be a Hub id (org/name), got {base_model!r}.")
    if dtype not in _SAVE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_SAVE_DTYPES)}, got {dtype!r}.")
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FileExistsError(f"{output_dir} already exists and is not an empty folder; choose a new --out.")
    stage1_file = _projector_file(stage1)
    mm_hidden_size = _projector_input_size(stage1_file)
    notes = [f"stage 1: projector {stage1_file.name}, {mm_hidden_size} -> hidden"]
    notes += _check_frame_encoder(frame_encoder, mm_hidden_size)

    model_args = VTimeModelArguments(
        model_name_or_path=base,
        frame_encoder_name_or_path=frame_encoder,
        mm_hidden_size=mm_hidden_size,
        num_frames=100,
        dtype="float32",
    )
    tokenizer = load_tokenizer(model_args)
    base_vocab = AutoConfig.from_pretrained(base).vocab_size
    model = load_model(model_args, tokenizer)
    video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    if model.config.vocab_size != base_vocab:
        notes.append(
            f"{VIDEO_TOKEN} added to the tokenizer (id {video_token_id}); embeddings resized from {base_vocab} to "
            f"{model.config.vocab_size} rows"
        )
    else:
        notes.append(f"the tokenizer already has {VIDEO_TOKEN} (id {video_token_id})")
    load_projector(model, stage1_file)

    stage2_adapter = read_stage_adapter(stage2, model)
    notes += [f"stage 2: {note}" for note in stage2_adapter.notes]
    model = stage2_adapter.merge_into(model)
    stage3_adapter = read_stage_adapter(stage3, model)
    notes += [f"stage 3: {note}" for note in stage3_adapter.notes]
    if merge:
        model = stage3_adapter.merge_into(model)
    else:
        stage3_adapter.apply_full_weights(model)

    model.config.use_cache = True
    model.generation_config = original_generation_config(tokenizer)
    model.to(getattr(torch, dtype))

    # Built aside and moved in place at the end, so that a failure leaves no half-written folder behind
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    # mkdtemp makes a private (0700) folder; the result gets the permissions of any folder the user creates
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)
    try:
        model.save_pretrained(staging)
        build_processor(tokenizer, model_args).save_pretrained(staging)
        if not merge:
            stage3_adapter.save(staging / ADAPTER_SUBFOLDER)
        record = {
            "converted_with": "vtimellm-hf convert-original",
            "base": base,
            "base_model": base_model,
            "stage1": {"path": str(stage1_file), "sha256": _sha256(stage1_file)},
            "stage2": _adapter_record(Path(stage2)),
            "stage3": _adapter_record(Path(stage3)),
            "frame_encoder": frame_encoder,
            "merged": merge,
            "dtype": dtype,
            "notes": notes,
        }
        (staging / CONVERSION_RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        # Stages trained with the recipes carry their recipe: the card then tells it rather than the paper's
        if (Path(stage3) / TRAINING_RECORD_FILE).is_file():
            shutil.copy(Path(stage3) / TRAINING_RECORD_FILE, staging / TRAINING_RECORD_FILE)
        write_model_card(staging, repo_id=repo_id or output_dir.resolve().name)
        if output_dir.exists():
            output_dir.rmdir()
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for note in notes:
        logger.info("%s", note)
    return ConversionResult(output_dir, notes, check_remote_loading(output_dir) if check else None)


def list_upload_files(folder: str | Path, ignore_patterns: list[str] | None = None) -> list[tuple[str, int]]:
    """
    `(path in repo, size in bytes)` of every file `upload_folder` would send from `folder`, with the same filter
    (`ignore_patterns`, default [`DEFAULT_IGNORE_PATTERNS`], plus huggingface_hub's own: `.git`, caches).
    """
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS as HUB_IGNORE_PATTERNS
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder).resolve()
    patterns = list(DEFAULT_IGNORE_PATTERNS if ignore_patterns is None else ignore_patterns) + HUB_IGNORE_PATTERNS
    files = {path.relative_to(folder).as_posix(): path for path in sorted(folder.glob("**/*")) if path.is_file()}
    return [(name, files[name].stat().st_size) for name in filter_repo_objects(files, ignore_patterns=patterns)]


@dataclass
class PushResult:
    """
    What [`push_folder`] did, or would do with `dry_run=True`.

    Attributes:
        repo_id: the repository.
        files: `(path in repo, size in bytes)` of the uploaded files.
        load_check: the clean-room load check the folder passed.
        card_written: whether a model card was written (the folder had no README.md).
        warnings: things the caller should know (a card that loads another model id, say).
        dry_run: nothing was sent.
        commit_url, pr_url: the commit, and the pull request when one was opened.
    """

    repo_id: str
    files: list[tuple[str, int]]
    load_check: LoadCheck
    card_written: bool
    warnings: list[str]
    dry_run: bool
    commit_url: str | None = None
    pr_url: str | None = None


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    ignore_patterns: list[str] | None = None,
) -> PushResult:
    """
    Uploads a checkpoint folder (model, processor, code files, card) to the Hub, after checking that it loads with
    `trust_remote_code=True` in a fresh process where `vtimellm_hf` is absent ([`check_remote_loading`]).

    A folder without README.md gets a model card first ([`write_model_card`], with `repo_id` in its usage code).
    Call it from the main process only.

    Args:
        folder: a saved checkpoint (from `save_pretrained` + the processor's, or `build_hub_folder`).
        repo_id: `org/name` (or `name` in the token owner's namespace).
        private: create the repository private (an existing one keeps its visibility).
        revision: a branch to push to, created from the default branch when missing.
        create_pr: open a pull request against the default branch instead of committing to it.
        dry_run: check the folder and list what would be uploaded, without any network call.
        token: a write token; defaults to `HF_TOKEN` or the one `hf auth login` saved.
        commit_message: defaults to "Upload VTimeLLM checkpoint".
        ignore_patterns: files to leave out; default [`DEFAULT_IGNORE_PATTERNS`] (training leftovers).

    Raises:
        NoTokenError, OfflineModeError, HubConnectionError, HubRequestError: the push could not happen (checked
            before the folder when the cause is known without it).
        FolderNotLoadableError: the folder does not load; nothing was sent.
        FileNotFoundError, ValueError: a missing folder, a malformed repo id, `revision` with `create_pr`.
    """
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.utils import validate_repo_id

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"No folder at {folder}.")
    validate_repo_id(repo_id)
    if create_pr and revision is not None:
        raise ValueError("A pull request is opened against the default branch: pass either revision or create_pr.")
    if not dry_run:
        token = token or get_token()
        if token is None:
            raise NoTokenError(
                "No Hugging Face token found: set HF_TOKEN to a write token or run `hf auth login` (nothing was sent)."
            )
        if constants.is_offline_mode():
            raise OfflineModeError("HF_HUB_OFFLINE is set, so the Hub cannot be reached: unset it to push.")

    load_check = check_remote_loading(folder)
    if not load_check.ok:
        raise FolderNotLoadableError(f"Refusing to push {folder}: it {load_check.describe()}")

    warnings = []
    card_path = folder / "README.md"
    card_written = not card_path.exists()
    if card_written:
        card_text = str(render_model_card(folder, repo_id=repo_id))
        if not dry_run:
            card_path.write_text(card_text, encoding="utf-8")
    elif f'"{repo_id}"' not in card_path.read_text(encoding="utf-8"):
        warnings.append(
            f"{card_path}'s usage code does not load {repo_id!r}; "
            f"`vtimellm-hf model-card {folder} --repo-id {repo_id}` writes one that does."
        )
    files = list_upload_files(folder, ignore_patterns)
    if dry_run and card_written:
        files = sorted([*files, ("README.md", len(card_text.encode("utf-8")))])
    result = PushResult(repo_id, files, load_check, card_written, warnings, dry_run)
    if dry_run:
        return result

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message or "Upload VTimeLLM checkpoint",
            ignore_patterns=list(DEFAULT_IGNORE_PATTERNS if ignore_patterns is None else ignore_patterns),
        )
    except OfflineModeIsEnabled as error:
        message = f"HF_HUB_OFFLINE is set, so the Hub cannot be reached: unset it to push ({error})."
        raise OfflineModeError(message) from error
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        reason = {
            401: "the Hub rejected the token (401): check HF_TOKEN or run `hf auth login`",
            403: f"the token may not write to {repo_id} (403): use a write token with access to its namespace",
        }.get(status, f"the Hub refused the request ({status})")
        raise HubRequestError(f"Could not push to {repo_id}: {reason}: {error}") from error
    except _transport_errors() as error:
        raise HubConnectionError(
            f"Could not reach the Hub to push {repo_id}: no network connection, or a proxy or firewall in the way "
            f"({type(error).__name__}: {error})."
        ) from error
    result.commit_url = commit.commit_url
    result.pr_url = commit.pr_url
    return result


def _transport_errors() -> tuple[type[BaseException], ...]:
    """
    The exceptions of an unreachable Hub: huggingface_hub talks HTTP through httpx (1.x) or its fork httpx2 (2.x),
    whose `TransportError` covers DNS failures, refused connections and timeouts.
    """
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module_name).TransportError)
        except ImportError:
            continue
    return tuple(errors)


def _projector_file(source: str | Path) -> Path:
    """The stage-1 projector file: `source` itself, or the projector file of the folder `source`."""
    from .training.stages import PROJECTOR_FILE

    path = Path(source)
    if path.is_dir():
        candidates = [path / PROJECTOR_FILE, path / "mm_projector.bin"]
        path = next((candidate for candidate in candidates if candidate.is_file()), candidates[-1])
    if not path.is_file():
        raise FileNotFoundError(f"No stage-1 projector at {source} (a file, or a folder with {PROJECTOR_FILE} or "
                                "mm_projector.bin).")  # fmt: skip
    return path


def _projector_input_size(path: Path) -> int:
    """Width of the frame features a projector reads: the input size of its weight, in either key spelling."""
    state = read_state_dict(path)
    weight = state.get("model.mm_projector.weight", state.get("mm_projector.weight"))
    if weight is None or weight.ndim != 2:
        raise ValueError(f"{path}: no 2-d mm_projector.weight (or model.mm_projector.weight); found {sorted(state)}.")
    return weight.shape[1]


def _check_frame_encoder(frame_encoder: str, mm_hidden_size: int) -> list[str]:
    """Checks that the encoder's embedding width is the projector's, when its config can be read."""
    from transformers.utils import cached_file

    try:
        config_file = cached_file(
            frame_encoder,
            "config.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except OSError:
        config_file = None
    if config_file is None:
        return [f"frame encoder {frame_encoder}: config not available here, width not checked"]
    config = json.loads(Path(config_file).read_text(encoding="utf-8"))
    width = config.get("projection_dim", config.get("vision_config", {}).get("projection_dim"))
    if width is not None and width != mm_hidden_size:
        raise ValueError(
            f"The frame encoder {frame_encoder} embeds frames in {width} dimensions but the projector reads "
            f"{mm_hidden_size}: pass the encoder the stages were trained with (--clip)."
        )
    return [f"frame encoder {frame_encoder}: {width}-d embeddings"]


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


def _adapter_record(folder: Path) -> dict:
    files = [folder / name for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin",
                                        NON_LORA_FILE)]  # fmt: skip
    return {"path": str(folder), "sha256": {path.name: _sha256(path) for path in files if path.is_file()}}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _shorten(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN_KEYS])
    return shown + (f" and {len(items) - _SHOWN_KEYS} more" if len(items) > _SHOWN_KEYS else "")


def _human_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def add_subcommand(subparsers) -> None:
    """
    Registers `convert-original` (exit status 0; 1 when the folder was built but does not load; 2 on unusable
    inputs) and `push` (0; 1 when the push did not happen; 2 on unusable arguments).
    """
    convert = subparsers.add_parser(
        "convert-original",
        help="build one Hub-ready folder from the original VTimeLLM release (or the recipes' stage outputs)",
        description="Assemble the Vicuna base, the stage-1 projector and the stage-2/3 LoRA adapters as the original "
        "inference does, and save one folder that transformers loads with trust_remote_code=True: merged "
        "safetensors weights (or the base plus the stage-3 adapter with --no-merge), the code files, the processor, "
        "generation_config.json (sampling, temperature 0.05, 1024 new tokens) and a model card.",
    )
    convert.add_argument("--base", required=True, metavar="PATH_OR_NAME", help="Vicuna v1.5 folder or Hub id")
    convert.add_argument(
        "--stage1", required=True, metavar="FILE", help="mm_projector.bin (or .safetensors, or its folder)"
    )
    convert.add_argument("--stage2", required=True, metavar="DIR", help="stage-2 LoRA adapter folder")
    convert.add_argument("--stage3", required=True, metavar="DIR", help="stage-3 LoRA adapter folder")
    convert.add_argument("--clip", default=DEFAULT_FRAME_ENCODER, metavar="NAME_OR_PATH",
                         help="CLIP encoder the processor names (default: %(default)s)")  # fmt: skip
    convert.add_argument("--out", required=True, metavar="DIR", help="folder to create (new or empty)")
    convert.add_argument(
        "--no-merge", action="store_true", help=f"keep the stage-3 adapter apart in {ADAPTER_SUBFOLDER}/"
    )
    convert.add_argument(
        "--dtype", choices=_SAVE_DTYPES, default="float16", help="dtype of the saved weights (default: %(default)s)"
    )
    convert.add_argument("--repo-id", default=None, metavar="ORG/NAME", help="Hub id the model card's usage code loads")
    convert.add_argument(
        "--base-model", default=None, metavar="ORG/NAME",
        help="Hub id of the base for the card's metadata, where --base is a folder (e.g. lmsys/vicuna-7b-v1.5)",
    )  # fmt: skip
    convert.add_argument(
        "--skip-load-check",
        action="store_true",
        help="do not load the result in a fresh process (that loads the whole model once more)",
    )
    convert.set_defaults(run=_run_convert)

    push = subparsers.add_parser(
        "push",
        help="upload a checkpoint folder to the Hub after checking it loads without vtimellm_hf",
        description="Check that DIR loads with trust_remote_code=True in a fresh process where vtimellm_hf is "
        "absent, write its model card if it has none, then create the repository and upload the folder.",
    )
    push.add_argument("folder", metavar="DIR", help="a saved checkpoint folder")
    push.add_argument("repo_id", metavar="ORG/NAME", help="Hub repository")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--revision", default=None, metavar="BRANCH", help="branch to push to (created if missing)")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    push.add_argument("--commit-message", default=None)
    push.add_argument("--dry-run", action="store_true", help="check and list the files, send nothing")
    push.set_defaults(run=_run_push)


def _run_convert(args: argparse.Namespace) -> int:
    try:
        result = build_hub_folder(
            args.base,
            args.stage1,
            args.stage2,
            args.stage3,
            args.out,
            frame_encoder=args.clip,
            merge=not args.no_merge,
            dtype=args.dtype,
            repo_id=args.repo_id,
            base_model=args.base_model,
            check=not args.skip_load_check,
        )
    except (OSError, ValueError) as error:
        print(f"convert-original: error: {error}", file=sys.stderr)
        return 2
    for note in result.notes:
        print(f"convert-original: {note}", file=sys.stderr)
    if result.load_check is not None and not result.load_check.ok:
        print(f"convert-original: error: {result.folder} {result.load_check.describe()}", file=sys.stderr)
        return 1
    status = "" if result.load_check is None else f"; it {result.load_check.describe()}"
    print(f"convert-original: wrote {result.folder}{status}", file=sys.stderr)
    return 0


def _run_push(args: argparse.Namespace) -> int:
    try:
        result = push_folder(
            args.folder,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            create_pr=args.create_pr,
            dry_run=args.dry_run,
            commit_message=args.commit_message,
        )
    except PushError as error:
        print(f"push: error: {error}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as error:
        print(f"push: error: {error}", file=sys.stderr)
        return 2
    for warning in result.warnings:
        print(f"push: warning: {warning}", file=sys.stderr)
    print(f"push: {args.folder} {result.load_check.describe()}")
    total = sum(size for _, size in result.files)
    verb = "would upload" if result.dry_run else "uploaded"
    target = args.repo_id + (f" (branch {args.revision})" if args.revision else "")
    target += " as a pull request" if args.create_pr else ""
    print(f"push: {verb} {len(result.files)} files ({_human_size(total)}) to {target}:")
    width = max((len(name) for name, _ in result.files), default=0)
    for name, size in result.files:
        print(f"  {name:<{width}}  {_human_size(size):>9}")
    if result.card_written:
        print("push: README.md: model card " + ("to be generated" if result.dry_run else "generated"))
    if result.pr_url or result.commit_url:
        print(f"push: {result.pr_url or result.commit_url}")
    return 0


__all__ = [
    "DEFAULT_IGNORE_PATTERNS",
    "ORIGINAL_GENERATION_SETTINGS",
    "ConversionResult",
    "FolderNotLoadableError",
    "HubConnectionError",
    "HubRequestError",
    "LoadCheck",
    "NoTokenError",
    "OfflineModeError",
    "PushError",
    "PushResult",
    "StageAdapter",
    "build_hub_folder",
    "check_remote_loading",
    "list_upload_files",
    "original_generation_config",
    "push_folder",
    "read_stage_adapter",
    "read_state_dict",
]
