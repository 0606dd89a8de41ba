"""Conversion of the original releases of the family (VTimeLLM, LongVALE-LLM, AVicuna), or of the recipes' stage
outputs, into one Hub-ready folder.

[`build_hub_folder`] (`vtimellm-hf convert-original --format vtimellm|longvale|avicuna`): the Vicuna base, the
projector files and the PEFT LoRA folders of the stages become one folder that `transformers` loads with
`trust_remote_code=True`: config with `auto_map` (and the checkpoint's feature streams), safetensors weights, the
code files, the processor (with the stream encoders the checkpoint reads), `generation_config.json` with the
original's settings and a model card. Every file is read through [`vtimellm_hf.checkpoints`] (pickles with
`weights_only=True`, projector keys matched by exact prefix, adapters checked against the model), and the result is
loaded once more by [`vtimellm_hf.hub.check_remote_loading`] where the package cannot be imported.

| format | stage 1 | stage 2 | stage 3 | stage 4 |
|---|---|---|---|---|
| vtimellm | `mm_projector.bin` | LoRA folder | LoRA folder | - |
| longvale | VTimeLLM's `mm_projector.bin` | LoRA + audio projectors (`non_lora_trainables.bin`) | the same | - |
| avicuna | `mm_projector.bin` | `mm_projector_a.bin` | LoRA folder | LoRA folder |
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
    read_state_dict,
    save_model_folder,
    torch_dtype,
)
from .cli import reports_errors
from .files import temporary_path
from .hub import LoadCheck, check_remote_loading
from .model import VIDEO_TOKEN, VTimeProcessor, avicuna_streams, longvale_streams
from .model.audio_processing_vtime import DEFAULT_CLAP_ENCODER, DEFAULT_SPEECH_ENCODER
from .model.processing_vtime import DEFAULT_FRAME_ENCODER
from .model_card import CONVERSION_RECORD_FILE, TRAINING_RECORD_FILE, is_hub_id, write_model_card

logger = logging.getLogger(__name__)

SAVE_DTYPES = tuple(DTYPES)
FORMATS = ("vtimellm", "longvale", "avicuna")
# The originals read 100 rows a video (AVicuna: video and audio rows together)
NUM_FRAMES = 100
# AVicuna's inference ratio of audio rows, 0.25: int(100 * 0.25) = 25 audio rows and 75 frames
AVICUNA_AUDIO_ROWS = 25
# LongVALE's audio projectors, as its `non_lora_trainables.bin` names them once PEFT's `base_model.model.` is dropped
LONGVALE_PROJECTORS = {"audio": "audio_mm_projector", "speech": "asr_mm_projector"}


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
    release_format: str = "vtimellm",
    stage4: str | Path | None = None,
    audio_encoder: str | None = None,
    speech_encoder: str = DEFAULT_SPEECH_ENCODER,
    frame_encoder: str = DEFAULT_FRAME_ENCODER,
    merge: bool = True,
    dtype: str = "float16",
    repo_id: str | None = None,
    base_model: str | None = None,
    check: bool = True,
) -> ConversionResult:
    """
    Builds one Hub-ready folder from the stages of a release, as the original inference assembles them: the Vicuna
    base with `<video>` added and the projectors of the format's streams, then:

    - `vtimellm`: the stage-1 projector; for stage 2 and stage 3 in turn, the adapter folder's
      `non_lora_trainables.bin` (if any) and its LoRA merged;
    - `longvale`: the same, the stage-1 projector being VTimeLLM's and `non_lora_trainables.bin` holding the audio
      (BEATs) and speech (Whisper) projectors (stage 3's replace stage 2's); streams concatenated;
    - `avicuna`: the video projector of `stage1` (`mm_projector.bin`) and the audio projector of `stage2`
      (`mm_projector_a.bin`), then the LoRA of `stage3` and of `stage4` merged; streams interleaved, the processor
      at AVicuna's inference ratio (75 frames and 25 audio rows).

    Works on the original releases (`*.bin`) and on the outputs of this package's recipes (`*.safetensors`).
    Merging is done in float32 (4 bytes of memory per parameter: 28 GB for 7B), then the weights are cast to `dtype`.

    Args:
        base: the Vicuna v1.5 checkpoint (folder or Hub id) the stages were trained on.
        stage1: the stage-1 projector file, or its folder.
        stage2: the stage-2 LoRA adapter folder (`avicuna`: the `mm_projector_a.bin` file).
        stage3: the stage-3 LoRA adapter folder.
        output_dir: the folder to create; it must not exist or be empty.
        release_format: `vtimellm`, `longvale` or `avicuna`.
        stage4: AVicuna's stage-4 LoRA adapter folder (only and always with `avicuna`).
        audio_encoder: the audio stream's encoder the processor names: LongVALE's BEATs checkpoint file
            (`BEATs_iter3_plus_AS20K.pt`, not on the Hub: without it the processor asks for it when it first reads a
            video file), AVicuna's CLAP (default `laion/clap-htsat-fused`).
        speech_encoder: LongVALE's Whisper (`openai/whisper-large-v2`).
        frame_encoder: the CLIP encoder the processor names (`openai/clip-vit-large-patch14` for the original).
        merge: merge the last stage too (one plain model); `False` keeps it apart in `stage3_adapter/` (the name the
            loaders know, also for AVicuna's stage 4), over a base that holds everything before it.
        dtype: dtype of the saved weights: float16 (the original's inference), bfloat16 or float32.
        repo_id: the Hub id the model card's usage code loads.
        base_model: the Hub id of the base (`lmsys/vicuna-7b-v1.5`) for the card's `base_model` metadata, where
            `base` is a local folder; default: `base` when it is a Hub id, else no `base_model`.
        check: run [`check_remote_loading`] on the result.

    Raises:
        FileExistsError: when `output_dir` holds files.
        FileNotFoundError, ValueError: on missing or inconsistent inputs, naming what is missing or unexpected.
    """
    if release_format not in FORMATS:
        raise ValueError(f"release_format must be one of {', '.join(FORMATS)}, got {release_format!r}.")
    if (stage4 is not None) != (release_format == "avicuna"):
        raise ValueError("--stage4 is AVicuna's last LoRA folder: give it with --format avicuna, and only then.")
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
    streams, layout = _feature_streams(release_format, mm_hidden_size, stage2)
    if release_format != "vtimellm":
        described = ", ".join(f"{stream['name']} ({stream['projector']}, {stream['hidden_size']})"
                              for stream in streams)  # fmt: skip
        notes.append(f"{release_format}: streams {described}, layout {layout}")

    tokenizer = load_tokenizer(base)
    base_vocab = AutoConfig.from_pretrained(base).vocab_size
    model = load_model(base, tokenizer, mm_hidden_size=mm_hidden_size, num_frames=NUM_FRAMES, dtype="float32",
                       feature_streams=streams, stream_layout=layout)  # fmt: skip
    video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_TOKEN)
    if model.config.vocab_size != base_vocab:
        notes.append(
            f"{VIDEO_TOKEN} added to the tokenizer (id {video_token_id}); embeddings resized from {base_vocab} to "
            f"{model.config.vocab_size} rows"
        )
    else:
        notes.append(f"the tokenizer already has {VIDEO_TOKEN} (id {video_token_id})")
    load_projector(model, stage1_file)

    adapters = {3: stage3, 4: stage4} if release_format == "avicuna" else {2: stage2, 3: stage3}
    if release_format == "avicuna":
        stage2_file = projector_file(stage2, "mm_projector_a")
        load_projector(model, stage2_file, "mm_projector_a")
        notes.append(f"stage 2: projector {stage2_file.name} (mm_projector_a)")
    *merged_stages, last_stage = adapters
    for stage in merged_stages:
        adapter = read_stage_adapter(adapters[stage], model)
        notes += [f"stage {stage}: {note}" for note in adapter.notes]
        model = adapter.merge_into(model)
    last_adapter = read_stage_adapter(adapters[last_stage], model)
    notes += [f"stage {last_stage}: {note}" for note in last_adapter.notes]
    if merge:
        model = last_adapter.merge_into(model)
    else:
        last_adapter.apply_full_weights(model)
    model.to(torch_dtype(dtype))

    # Built aside and moved in place at the end, so that a failure leaves no half-written folder behind
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_path(output_dir)
    staging.mkdir()
    try:
        processor = VTimeProcessor.for_frame_encoder(
            tokenizer, frame_encoder, num_frames=NUM_FRAMES, max_positions=model.config.max_position_embeddings,
            **_stream_processing(release_format, audio_encoder, speech_encoder),
        )  # fmt: skip
        save_model_folder(model, processor, staging)
        if not merge:
            last_adapter.save(staging / ADAPTER_SUBFOLDER)
        record = {
            "converted_with": "vtimellm-hf convert-original",
            "format": release_format,
            "base": base,
            "base_model": base_model,
            "stage1": {"path": str(stage1_file), "sha256": _sha256(stage1_file)},
            **{f"stage{stage}": _adapter_record(Path(folder)) for stage, folder in adapters.items()},
            "streams": model.config.feature_streams,
            "stream_layout": model.config.stream_layout,
            "frame_encoder": frame_encoder,
            "merged": merge,
            "dtype": dtype,
            "notes": notes,
        }
        (staging / CONVERSION_RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if release_format == "avicuna":
            record["stage2"] = {"path": str(stage2_file), "sha256": _sha256(stage2_file)}
        # Stages trained with the recipes carry their recipe: the card then tells it rather than the paper's
        if (Path(adapters[last_stage]) / TRAINING_RECORD_FILE).is_file():
            shutil.copy(Path(adapters[last_stage]) / TRAINING_RECORD_FILE, staging / TRAINING_RECORD_FILE)
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


def _feature_streams(release_format: str, mm_hidden_size: int, stage2: str | Path) -> tuple[list[dict] | None, str]:
    """The configuration's streams and layout for `release_format`, the audio projectors' widths read from stage 2."""
    if release_format == "vtimellm":
        return None, "single"
    if release_format == "avicuna":
        audio = read_projector(projector_file(stage2, "mm_projector_a"), "mm_projector_a")
        return avicuna_streams(mm_hidden_size, audio["weight"].shape[1]), "interleave"
    non_lora = Path(stage2) / NON_LORA_FILE
    if not non_lora.is_file():
        raise FileNotFoundError(f"{non_lora} is missing: LongVALE's stage 2 saves its audio projectors there.")
    state = {key.removeprefix("base_model.model."): tensor for key, tensor in read_state_dict(non_lora).items()}
    widths = {}
    for stream, projector in LONGVALE_PROJECTORS.items():
        weight = state.get(f"model.{projector}.weight")
        if weight is None or weight.ndim != 2:
            raise ValueError(f"{non_lora}: no model.{projector}.weight (2-d) under base_model.model. (found keys "
                             f"{sorted(state)}); is it LongVALE's stage 2?")  # fmt: skip
        widths[stream] = weight.shape[1]
    return longvale_streams(mm_hidden_size, widths["audio"], widths["speech"]), "concat"


def _stream_processing(release_format: str, audio_encoder: str | None, speech_encoder: str) -> dict:
    """The processor's settings for the streams of `release_format`: their encoders, and AVicuna's audio rows."""
    if release_format == "longvale":
        beats = {"kind": "beats"} if audio_encoder is None else {"kind": "beats", "name_or_path": audio_encoder}
        return {"stream_encoders": {"audio": beats, "speech": {"kind": "whisper", "name_or_path": speech_encoder}}}
    if release_format == "avicuna":
        clap = {"kind": "clap", "name_or_path": audio_encoder or DEFAULT_CLAP_ENCODER}
        return {"stream_encoders": {"audio": clap}, "audio_rows": AVICUNA_AUDIO_ROWS}
    return {}


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
        help="build one Hub-ready folder from an original release of VTimeLLM, LongVALE-LLM or AVicuna (or the "
        "recipes' stage outputs)",
        description="Assemble the Vicuna base, the projectors and the LoRA adapters of the stages as the original "
        "inference does, and save one folder that transformers loads with trust_remote_code=True: merged "
        "safetensors weights (or the base plus the last adapter with --no-merge), the code files, the processor, "
        "generation_config.json (sampling, temperature 0.05, 1024 new tokens) and a model card. LongVALE: --stage1 "
        "VTimeLLM's mm_projector.bin, --stage2/--stage3 its LoRA folders (with the audio projectors in "
        "non_lora_trainables.bin). AVicuna: --stage1 mm_projector.bin, --stage2 mm_projector_a.bin, --stage3/--stage4 "
        "its LoRA folders.",
    )
    convert.add_argument("--format", choices=FORMATS, default="vtimellm",
                         help="the release's model (default: %(default)s)")  # fmt: skip
    convert.add_argument("--base", required=True, metavar="PATH_OR_NAME", help="Vicuna v1.5 folder or Hub id")
    convert.add_argument(
        "--stage1", required=True, metavar="FILE", help="mm_projector.bin (or .safetensors, or its folder)"
    )
    convert.add_argument("--stage2", required=True, metavar="DIR_OR_FILE",
                         help="stage-2 LoRA adapter folder (avicuna: mm_projector_a.bin)")  # fmt: skip
    convert.add_argument("--stage3", required=True, metavar="DIR", help="stage-3 LoRA adapter folder")
    convert.add_argument("--stage4", default=None, metavar="DIR", help="avicuna: stage-4 LoRA adapter folder")
    convert.add_argument("--clip", default=DEFAULT_FRAME_ENCODER, metavar="NAME_OR_PATH",
                         help="CLIP encoder the processor names (default: %(default)s)")  # fmt: skip
    convert.add_argument("--audio-encoder", default=None, metavar="PATH_OR_NAME",
                         help=f"longvale: the BEATs checkpoint file the processor names (BEATs_iter3_plus_AS20K.pt); "
                         f"avicuna: the CLAP (default {DEFAULT_CLAP_ENCODER})")  # fmt: skip
    convert.add_argument("--speech-encoder", default=DEFAULT_SPEECH_ENCODER, metavar="NAME_OR_PATH",
                         help="longvale: the Whisper the processor names (default: %(default)s)")  # fmt: skip
    convert.add_argument("--out", required=True, metavar="DIR", help="folder to create (new or empty)")
    convert.add_argument(
        "--no-merge", action="store_true", help=f"keep the last stage's adapter apart in {ADAPTER_SUBFOLDER}/"
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
        release_format=args.format,
        stage4=args.stage4,
        audio_encoder=args.audio_encoder,
        speech_encoder=args.speech_encoder,
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


__all__ = ["FORMATS", "SAVE_DTYPES", "ConversionResult", "add_subcommand", "build_hub_folder"]
