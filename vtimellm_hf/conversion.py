"""Conversion of the original VTimeLLM release (or of the recipes' stage outputs) into one Hub-ready folder.

[`build_hub_folder`] (`vtimellm-hf convert-original`): the Vicuna base, the stage-1 `mm_projector.bin` and the
stage-2 and stage-3 PEFT LoRA folders become one folder that `transformers` loads with `trust_remote_code=True`:
config with `auto_map`, safetensors weights, the code files, the processor, `generation_config.json` with the
original's settings and a model card. Every file is read through [`vtimellm_hf.checkpoints`] (pickles with
`weights_only=True`, adapters checked against the model), and the result is loaded once more by
[`vtimellm_hf.hub.check_remote_loading`] where the package cannot be imported.
"""

import argparse
import hashlib
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig

from .checkpoints import (
    ADAPTER_SUBFOLDER,
    DTYPES,
    NON_LORA_FILE,
    load_model,
    load_projector,
    load_tokenizer,
    projector_file,
    read_projector,
    read_stage_adapter,
    save_model_folder,
    torch_dtype,
)
from .cli import reports_errors
from .files import temporary_path
from .hub import LoadCheck, check_remote_loading
from .model import VIDEO_TOKEN, VTimeProcessor
from .model.processing_vtime import DEFAULT_FRAME_ENCODER
from .model_card import CONVERSION_RECORD_FILE, TRAINING_RECORD_FILE, is_hub_id, write_model_card

logger = logging.getLogger(__name__)

SAVE_DTYPES = tuple(DTYPES)
# The original samples 100 frames a video
NUM_FRAMES = 100


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
    if base_model is not None and not is_hub_id(base_model):
        raise ValueError(f"base_model must be a Hub id (org/name), got {base_model!r}.")
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(SAVE_DTYPES)}, got {dtype!r}.")
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise FileExistsError(f"{output_dir} already exists and is not an empty folder; choose a new --out.")
    stage1_file = projector_file(stage1)
    mm_hidden_size = read_projector(stage1_file)["weight"].shape[1]
    notes = [f"stage 1: projector {stage1_file.name}, {mm_hidden_size} -> hidden"]
    notes += _check_frame_encoder(frame_encoder, mm_hidden_size)

    tokenizer = load_tokenizer(base)
    base_vocab = AutoConfig.from_pretrained(base).vocab_size
    model = load_model(base, tokenizer, mm_hidden_size=mm_hidden_size, num_frames=NUM_FRAMES, dtype="float32")
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
    model.to(torch_dtype(dtype))

    # Built aside and moved in place at the end, so that a failure leaves no half-written folder behind
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_path(output_dir)
    staging.mkdir()
    try:
        processor = VTimeProcessor.for_frame_encoder(tokenizer, frame_encoder, num_frames=NUM_FRAMES)
        save_model_folder(model, processor, staging)
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


def add_subcommand(subparsers) -> None:
    """Registers `convert-original` (exit status 0; 1 when the folder was built but does not load; 2 on unusable
    inputs)."""
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
        "--dtype", choices=SAVE_DTYPES, default="float16", help="dtype of the saved weights (default: %(default)s)"
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


@reports_errors("convert-original")
def _run_convert(args: argparse.Namespace) -> int:
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
    for note in result.notes:
        print(f"convert-original: {note}", file=sys.stderr)
    if result.load_check is not None and not result.load_check.ok:
        print(f"convert-original: error: {result.folder} {result.load_check.describe()}", file=sys.stderr)
        return 1
    status = "" if result.load_check is None else f"; it {result.load_check.describe()}"
    print(f"convert-original: wrote {result.folder}{status}", file=sys.stderr)
    return 0


__all__ = ["SAVE_DTYPES", "ConversionResult", "add_subcommand", "build_hub_folder"]
