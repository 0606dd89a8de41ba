"""Model cards of VTimeLLM checkpoints: Hub metadata, usage code, timestamp convention, training recipe, evaluation
results and limitations.

The card's text is the Jinja template `model_card/template.md` at the root of the repository, where a reader looks
for it; this module gathers what a checkpoint folder says about itself and renders the template with
`huggingface_hub.ModelCard.from_template`. The generator lives in the package (not beside the template) so that
`vtimellm-hf model-card`, `vtimellm-hf push` and the training recipes import it like the rest of `vtimellm_hf`.

What a folder can say about itself, read in this order:

- `vtimellm_training.json` ([`save_training_record`], written by the training recipes): the recipe of each stage.
- `vtimellm_conversion.json` (written by `vtimellm-hf convert-original`): the original release it was converted
  from, hence the paper's recipe.
- `vtimellm_stages.json` (stage 3 saved as base + adapter): which projector and stage-2 adapter it sits on.
- Nothing: the card says the recipe is unknown.

Evaluation results (`--results`, kept in the folder as `eval_results.json` so that a later card keeps them) are a
JSON object with one entry per benchmark, scores in percent as `vtimellm_hf.metrics.score_grounding` and
`score_captioning` return them (their count keys `n`, `unparsed` and `missing` are accepted and left out of the
card):

```json
{
  "charades_sta": {"r1@0.3": 51.0, "r1@0.5": 27.5, "r1@0.7": 11.4, "miou": 31.2},
  "activitynet_grounding": {"r1@0.3": 44.0, "r1@0.5": 27.8, "r1@0.7": 14.3, "miou": 30.4},
  "activitynet_captioning": {"soda_c": 5.8, "cider": 27.6, "meteor": 6.8},
  "synthetic_moments": {"task": "grounding", "dataset_name": "Synthetic moments", "dataset_type": "synthetic",
                        "split": "val", "miou": 42.0}
}
```

`charades_sta` (test), `activitynet_grounding` and `activitynet_captioning` (ActivityNet Captions val_2) are the
paper's benchmarks; any other name must say its `task` (`grounding`: `r1@0.3`, `r1@0.5`, `r1@0.7`, `miou`;
`captioning`: `soda_c`, `cider`, `meteor`), `dataset_name`, `dataset_type` and `split`.
"""

import argparse
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .checkpoints import ADAPTER_SUBFOLDER
from .cli import reports_errors
from .files import read_json
from .model.processing_vtime import DEFAULT_FRAME_ENCODER

# `model_card/template.md` of the repository, reached through a link inside the package so that wheels carry it;
# `model_card/audio_visual.md` for the checkpoints with audio streams (LongVALE-LLM, AVicuna)
TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "model_card.md"
AUDIO_VISUAL_TEMPLATE_PATH = Path(__file__).resolve().parent / "templates" / "audio_visual_model_card.md"
RESULTS_FILE = "eval_results.json"
TRAINING_RECORD_FILE = "vtimellm_training.json"
CONVERSION_RECORD_FILE = "vtimellm_conversion.json"
STAGES_RECORD_FILE = "vtimellm_stages.json"

# The weights derive from Vicuna v1.5, itself under the Llama 2 Community License
DEFAULT_LICENSE = "llama2"
# The transformers pipeline that runs the model: it has no "video-text-to-text" task; "image-text-to-text" takes videos
PIPELINE_TAG = "image-text-to-text"
TAGS = ["vtimellm", "video-llm", "temporal-grounding", "dense-video-captioning", "llama", "custom_code"]
# The Hub datasets of the original training data (stage 1, stage 2, and stage 3's VideoInstruct part); ActivityNet
# Captions and DiDeMo, the rest of stage 3, have no canonical Hub dataset and are named in the card's text instead.
ORIGINAL_DATASETS = ["liuhaotian/LLaVA-Pretrain", "OpenGVLab/InternVid", "MBZUAI/VideoInstruct-100K"]

GROUNDING_METRICS = {"r1@0.3": "R1@0.3", "r1@0.5": "R1@0.5", "r1@0.7": "R1@0.7", "miou": "mIoU"}
CAPTIONING_METRICS = {"soda_c": "SODA_c", "cider": "CIDEr", "meteor": "METEOR"}
TASKS = {
    "grounding": ("Temporal video grounding", GROUNDING_METRICS),
    "captioning": ("Dense video captioning", CAPTIONING_METRICS),
}
BENCHMARKS = {
    "charades_sta": {"task": "grounding", "dataset_name": "Charades-STA", "dataset_type": "charades_sta",
                     "split": "test"},
    "activitynet_grounding": {"task": "grounding", "dataset_name": "ActivityNet Captions",
                              "dataset_type": "activitynet_captions", "split": "val_2"},
    "activitynet_captioning": {"task": "captioning", "dataset_name": "ActivityNet Captions",
                               "dataset_type": "activitynet_captions", "split": "val_2"},
}  # fmt: skip
_DESCRIPTION_KEYS = ("task", "dataset_name", "dataset_type", "split")
_COUNT_KEYS = {"n", "unparsed", "missing"}

# The recipe of the paper and of the original scripts (effective batch 128 in every stage)
PAPER_RECIPE = [
    {"stage": "1", "data": "LCS-558K image-caption pairs", "trains": "projector", "epochs": "1",
     "learning_rate": "1e-3", "batch": "128", "lora": "-", "precision": "bf16", "max_length": "2048"},
    {"stage": "2", "data": "InternVid-10M-FLT dialogues (~134k clips)", "trains": "new LoRA, projector frozen",
     "epochs": "2", "learning_rate": "1e-4", "batch": "128", "lora": "r 64, alpha 128, dropout 0.05",
     "precision": "bf16", "max_length": "2048"},
    {"stage": "3", "data": "ActivityNet Captions + DiDeMo dialogues, VideoInstruct-100K QA (~36k)",
     "trains": "stage-2 LoRA merged, then a new LoRA", "epochs": "2", "learning_rate": "1e-4", "batch": "128",
     "lora": "r 64, alpha 128, dropout 0.05", "precision": "bf16", "max_length": "2048"},
]  # fmt: skip
_STAGE_TRAINS = {1: "projector", 2: "new LoRA, projector frozen", 3: "stage-2 LoRA merged, then a new LoRA"}
_LORA_64 = "r 64, alpha 128, dropout 0.05"
_UNSTATED = {"epochs": "?", "learning_rate": "?", "batch": "?", "lora": "-", "precision": "?", "max_length": "?"}
# The recipes of the originals' scripts, as far as they state them ("?": not stated)
LONGVALE_RECIPE = [
    {"stage": "1", "data": "none: VTimeLLM's stage-1 projector, reused", "trains": "-", "epochs": "-",
     "learning_rate": "-", "batch": "-", "lora": "-", "precision": "-", "max_length": "-"},
    {"stage": "2", "data": "longvale-sft-bp-154k (LongVALE + VTimeLLM stage 2)",
     "trains": "new LoRA, new audio and speech projectors", "epochs": "2", "learning_rate": "1e-4", "batch": "128",
     "lora": _LORA_64, "precision": "bf16", "max_length": "2048"},
    {"stage": "3", "data": "longvale-sft-it-61k (LongVALE + VTimeLLM stage 3)",
     "trains": "stage-2 LoRA merged, then a new LoRA; audio and speech projectors", "epochs": "2",
     "learning_rate": "1e-4", "batch": "128", "lora": _LORA_64, "precision": "bf16", "max_length": "2048"},
]
AVICUNA_RECIPE = [
    {**_UNSTATED, "stage": "1", "data": "stage1.json (vision-text alignment)", "trains": "video projector",
     "learning_rate": "1e-3"},
    {**_UNSTATED, "stage": "2", "data": "stage2.json (audio-text alignment, A5-222K)", "trains": "audio projector"},
    {**_UNSTATED, "stage": "3", "data": "stage3.json (context-boundary alignment), audio ratio 0.25",
     "trains": "new LoRA, both projectors frozen", "epochs": "2", "learning_rate": "1e-4", "batch": "128",
     "lora": _LORA_64},
    {**_UNSTATED, "stage": "4", "data": "stage4.json (instruction tuning)",
     "trains": "stage-3 LoRA merged, then a new LoRA", "lora": _LORA_64},
]  # fmt: skip
# What the card of each audio-visual model says of its original (`model_card/audio_visual.md`)
FAMILY_CARDS = {
    "longvale": {
        "title": "LongVALE-LLM",
        "paper": "https://arxiv.org/abs/2411.19772",
        "code": "https://github.com/ttgeng233/LongVALE",
        "summary": "a Vicuna v1.5 language model that reads a video as its CLIP frame rows, BEATs audio rows and "
        "Whisper speech rows, each stream through its own linear projector, spliced where the prompt says "
        "`<video>`.",
        "layout": "A `<video>` becomes the video rows, then the audio rows, then the speech rows, without separators; "
        "a stream a video lacks (no audio track) is simply absent.",
        "recipe": LONGVALE_RECIPE,
        "recipe_note": "The recipe of the LongVALE-LLM scripts (bf16, cosine schedule, 3% warm-up); LoRA on q, k, v, "
        "o, gate, up and down projections. The originals counted only text tokens against the 2048.",
        "datasets": ["ttgeng233/LongVALE"],
        "tags": ["longvale", "audio-visual", "speech"],
        "benchmarks": "LongVALE-LLM is evaluated on the LongVALE test set (1,171 videos): omni-modal temporal "
        "grounding (mIoU, R1@0.3/0.5/0.7), dense captioning (SODA_c, METEOR, CIDEr) and segment captioning "
        "(BLEU-4, METEOR, ROUGE-L, CIDEr). Its numbers are not copied here unverified: read them in the paper, or "
        "record scores measured on this checkpoint with `vtimellm-hf model-card DIR --results`.",
        "length": "Video, audio and speech rows all sit in the prompt: a 10-minute video takes about 100 + 117 + 117 "
        "rows. Every row counts against the model's positions and `max_length`, and a prompt that does not fit is "
        "refused, naming each stream's rows (the originals counted text tokens only).",
        "licence": "The weights derive from Vicuna v1.5 (Llama 2 Community License, this card's `license`). The "
        "LongVALE code repository carried no licence file when this converter was written; its annotations are on "
        "the Hub (`ttgeng233/LongVALE`) under their dataset card's terms. The encoders (CLIP, BEATs, Whisper) have "
        "their own licences.",
        "citation": "@article{geng2024longvale,\n  title = {LongVALE: Vision-Audio-Language-Event Benchmark Towards "
        "Time-Aware Omni-Modal Perception of Long Videos},\n  author = {Geng, Tiantian and Zhang, Jinrui and Wang, "
        "Qingni and Wang, Teng and Duan, Jinming and Zheng, Feng},\n  journal = {arXiv preprint arXiv:2411.19772},"
        "\n  year = {2024}\n}",
    },
    "avicuna": {
        "title": "AVicuna",
        "paper": "https://arxiv.org/abs/2403.16276",
        "code": "https://github.com/yunlong10/AVicuna",
        "summary": "a Vicuna v1.5 language model that reads a video as CLIP frame rows interleaved with CLAP audio "
        "rows, each stream through its own linear projector, spliced where the prompt says `<video>`.",
        "layout": "A `<video>` becomes N_v video and N_a audio rows interleaved (AVicuna's AVTI): with "
        "`f = round(N_v / (N_a + 1))`, the audio rows take slots `0, f + 1, 2 (f + 1), ...` and the video rows the "
        "others, each stream in its own order (75 + 25 rows: audio every fourth slot). A video without an audio "
        "track gets zero audio rows, as in the original.",
        "recipe": AVICUNA_RECIPE,
        "recipe_note": "The recipe of the AVicuna scripts, as far as they state it (\"?\": not stated); LoRA on every "
        "linear layer of the LLM but the LM head.",
        "datasets": [],
        "tags": ["avicuna", "audio-visual"],
        "benchmarks": "AVicuna is evaluated on UnAV-100 dense audio-visual event localisation (mAP at tIoU 0.5:0.9), "
        "open-ended video QA, AVSD and MUSIC-AVQA; no evaluation code was released. Its numbers are not copied here "
        "unverified: read them in the paper, or record scores measured on this checkpoint with "
        "`vtimellm-hf model-card DIR --results`.",
        "length": "A fixed number of rows per video whatever its length, frames and audio rows sharing them. Audio "
        "rows above half of all rows cannot be interleaved and are refused (the original left zero rows there).",
        "licence": "The weights derive from Vicuna v1.5 (Llama 2 Community License, this card's `license`). The "
        "AVicuna code repository carried no licence file when this converter was written. The encoders (CLIP, "
        "CLAP) have their own licences; `laion/clap-htsat-fused` standing for AVicuna's `630k-fusion-best.pt` is "
        "not verified.",
        "citation": "@article{tang2024avicuna,\n  title = {AVicuna: Audio-Visual LLM with Interleaver and "
        "Context-Boundary Alignment for Temporal Referential Dialogue},\n  author = {Tang, Yunlong and Shimada, "
        "Daiki and Bi, Jing and Xu, Chenliang},\n  journal = {arXiv preprint arXiv:2403.16276},\n  year = {2024}\n}",
    },
}
# The rows each feature extractor gives a video, for the card's table of streams
_STREAM_ROWS = {
    "clip": "{video_rows} frames",
    "beats": "one per 512 fbank frames (5.12 s)",
    "whisper": "floor(1500 * ceil(duration / 30) / 256): 30 s chunks, 256 encoder frames each",
    "clap": "{audio_rows}: 10 s windows every 4 s, repeated or cut to fit",
}
# The SFTConfig fields a training record keeps: what the card shows and what a reader needs to reproduce a stage
_RECORDED_TRAINING_FIELDS = (
    "num_train_epochs", "max_steps", "learning_rate", "lr_scheduler_type", "warmup_steps", "weight_decay",
    "per_device_train_batch_size", "gradient_accumulation_steps", "world_size", "max_length", "bf16", "fp16", "seed",
)  # fmt: skip
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(name_or_path: str) -> bool:
    """Whether `name_or_path` is a Hub id (`org/name`) and not a local path that looks like one."""
    return bool(_REPO_ID.match(name_or_path)) and not Path(name_or_path).exists()


def read_results(source: str | Path | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """
    Reads and checks evaluation results (the format is in the module docstring).

    Returns:
        `{benchmark: {"task", "dataset_name", "dataset_type", "split", "metrics": {metric: float}}}`.

    Raises:
        ValueError: naming the benchmark and key, on an unknown benchmark without its description, an unknown
            metric, a value that is not a finite number, or a benchmark without metrics.
    """
    if isinstance(source, Mapping):
        raw, origin = source, "results"
    else:
        raw, origin = read_json(source), str(source)
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"{origin} must be a non-empty JSON object of benchmarks, e.g. {{\"charades_sta\": {{...}}}}.")
    results = {}
    for benchmark, entry in raw.items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"{origin}: {benchmark!r} must map metric names to scores.")
        given = {key: entry[key] for key in _DESCRIPTION_KEYS if key in entry}
        description = {**BENCHMARKS.get(benchmark, {}), **given}
        absent = [key for key in _DESCRIPTION_KEYS if not isinstance(description.get(key), str)]
        if absent:
            raise ValueError(
                f"{origin}: {benchmark!r} is not one of {sorted(BENCHMARKS)}, so it must give {', '.join(absent)} "
                "as strings."
            )
        if description["task"] not in TASKS:
            raise ValueError(f"{origin}: {benchmark!r} has task {description['task']!r}; use one of {sorted(TASKS)}.")
        known = TASKS[description["task"]][1]
        metrics = {}
        for key, value in entry.items():
            if key in _DESCRIPTION_KEYS or key in _COUNT_KEYS:
                continue
            if key not in known:
                raise ValueError(
                    f"{origin}: {benchmark!r} has an unknown metric {key!r}; a {description['task']} benchmark "
                    f"reports {', '.join(known)}."
                )
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{origin}: {benchmark}.{key} must be a finite number (percent), got {value!r}.")
            metrics[key] = float(value)
        if not metrics:
            raise ValueError(f"{origin}: {benchmark!r} holds no metric; expected some of {', '.join(known)}.")
        results[benchmark] = {**description, "metrics": metrics}
    return results


def eval_results(results: Mapping[str, Mapping[str, Any]], model_name: str) -> list[EvalResult]:
    """The model-index entries of checked results ([`read_results`]), one per benchmark and metric."""
    entries = []
    for benchmark in results.values():
        task_name, names = TASKS[benchmark["task"]]
        for key, value in benchmark["metrics"].items():
            entries.append(
                EvalResult(
                    task_type=PIPELINE_TAG,
                    task_name=task_name,
                    dataset_type=benchmark["dataset_type"],
                    dataset_name=benchmark["dataset_name"],
                    dataset_split=benchmark["split"],
                    metric_type=key,
                    metric_name=names[key],
                    metric_value=value,
                )
            )
    return entries


@dataclass
class Provenance:
    """What a folder says about where its weights come from: a paragraph, the recipe rows and a note under them."""

    text: str
    recipe: list[dict[str, str]] | None
    recipe_note: str
    base_model: str | None
    datasets: list[str]


def read_provenance(folder: str | Path) -> Provenance:
    """Reads the records of a checkpoint folder (see the module docstring) into what the card says about them."""
    folder = Path(folder)
    training = _read_json(folder / TRAINING_RECORD_FILE)
    conversion = _read_json(folder / CONVERSION_RECORD_FILE)
    stages = _read_json(folder / STAGES_RECORD_FILE)
    if training is not None:
        rows = [_recipe_row(stage) for stage in sorted(training["stages"], key=lambda stage: stage["stage"])]
        recorded = ", ".join(row["stage"] for row in rows)
        note = (
            f"Recorded by the vtimellm-hf recipes (stages {recorded}); batch is the effective batch, per-device "
            "batch x gradient accumulation x processes."
        )
        if len(rows) < 3:
            note += " Stages without a row left no record in the folders this checkpoint was trained from."
        first = min(training["stages"], key=lambda stage: stage["stage"])
        return Provenance(
            text="Trained with the vtimellm-hf recipes (TRL's `SFTTrainer`, PEFT LoRA).",
            recipe=rows,
            recipe_note=note,
            base_model=first.get("base"),
            datasets=[],
        )
    if conversion is not None and conversion.get("format") in FAMILY_CARDS:
        family = FAMILY_CARDS[conversion["format"]]
        kept_apart = "the last stage's adapter kept apart in" if not conversion["merged"] else None
        layout = (f"{kept_apart} `{ADAPTER_SUBFOLDER}/`" if kept_apart else "the LoRA adapters merged into the weights")
        stages = ("VTimeLLM's stage-1 projector, the stage-2 and stage-3 LoRA adapters with their audio and speech "
                  "projectors" if conversion["format"] == "longvale" else
                  "the stage-1 video projector, the stage-2 audio projector, the stage-3 and stage-4 LoRA adapters")
        return Provenance(
            text=(
                f"Converted with `vtimellm-hf convert-original --format {conversion['format']}` from the original "
                f"{family['title']} release (base `{_display_name(conversion['base'])}`, {stages}), with {layout}. "
                f"The weights are those the {family['title']} authors trained."
            ),
            recipe=family["recipe"],
            recipe_note=family["recipe_note"],
            base_model=conversion.get("base_model") or conversion["base"],
            datasets=list(family["datasets"]),
        )
    if conversion is not None:
        layout = (
            "the stage-2 and stage-3 LoRA adapters merged into the weights"
            if conversion["merged"]
            else f"the stage-2 adapter merged and the stage-3 adapter kept apart in `{ADAPTER_SUBFOLDER}/`"
        )
        return Provenance(
            text=(
                "Converted with `vtimellm-hf convert-original` from the original VTimeLLM release (base "
                f"`{_display_name(conversion['base'])}`, stage-1 projector, stage-2 and stage-3 LoRA adapters), with "
                f"{layout}. "
                "The weights are those the VTimeLLM authors trained."
            ),
            recipe=PAPER_RECIPE,
            recipe_note=(
                "The recipe of the paper and the original scripts (bf16, cosine schedule, 3% warm-up, no weight "
                "decay). Stage 1 trains on 768-d CLIP embeddings of single images; stages 2 and 3 on 100-frame videos."
            ),
            base_model=conversion.get("base_model") or conversion["base"],
            datasets=list(ORIGINAL_DATASETS),
        )
    if stages is not None:
        return Provenance(
            text="A stage-3 LoRA adapter of the vtimellm-hf recipes.",
            recipe=None,
            recipe_note=(
                f"Trained over base `{stages.get('base')}` with the stage-1 projector "
                f"`{stages.get('stage1_projector')}` and the stage-2 adapter `{stages.get('stage2_adapter')}`; the "
                "hyperparameters were not recorded."
            ),
            base_model=stages.get("base"),
            datasets=[],
        )
    return Provenance(
        text="",
        recipe=None,
        recipe_note=(
            "The training recipe of this checkpoint is unknown: its folder holds no record of it "
            f"({TRAINING_RECORD_FILE}, {CONVERSION_RECORD_FILE} or {STAGES_RECORD_FILE})."
        ),
        base_model=None,
        datasets=[],
    )


def render_model_card(
    folder: str | Path,
    repo_id: str | None = None,
    results: str | Path | Mapping[str, Any] | None = None,
    license: str = DEFAULT_LICENSE,
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    template: str | Path | None = None,
) -> ModelCard:
    """
    The model card of a checkpoint folder, without writing anything.

    Args:
        folder: a saved VTimeLLM checkpoint (`config.json`, processor, code files).
        repo_id: the Hub id the usage code loads; defaults to the folder's name (say it when you know it).
        results: evaluation results (path or mapping, format in the module docstring); defaults to the folder's
            `eval_results.json` when there is one.
        license: a Hub licence identifier.
        base_model: the Hub id of the base LLM; defaults to the one the folder's records name, when it is a Hub id.
        datasets: Hub dataset ids of the training data; defaults to the original release's for a converted folder.
        template: a Jinja template; defaults to `model_card/template.md`, or `model_card/audio_visual.md` for a
            checkpoint with audio streams (LongVALE-LLM, AVicuna).
    """
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    if config is None:
        raise FileNotFoundError(f"{folder} holds no config.json: a model card describes a saved checkpoint.")
    family = _family(config)
    default_template = TEMPLATE_PATH if family is None else AUDIO_VISUAL_TEMPLATE_PATH
    template = Path(template) if template is not None else default_template
    if not template.is_file():
        raise FileNotFoundError(
            f"Model card template not found at {template}: it ships in the repository's model_card/ folder; pass "
            "--template (or template=) when the package runs without its source tree."
        )
    if results is None and (folder / RESULTS_FILE).is_file():
        results = folder / RESULTS_FILE
    checked = read_results(results) if results is not None else {}
    model_name = (repo_id or folder.resolve().name).split("/")[-1]
    provenance = read_provenance(folder)
    base_model = base_model or provenance.base_model
    processor_config = _read_json(folder / "processor_config.json") or {}

    card_data = ModelCardData(
        license=license,
        # Only a Hub id belongs in the metadata: a local path would not resolve on the Hub
        base_model=base_model if base_model and is_hub_id(base_model) else None,
        datasets=list(datasets) if datasets is not None else provenance.datasets or None,
        pipeline_tag=PIPELINE_TAG,
        tags=list(TAGS) + (FAMILY_CARDS[family]["tags"] if family else []),
        library_name="transformers",
        # The name of the model-index entry; without results it would be a stray metadata key
        model_name=model_name if checked else None,
        eval_results=eval_results(checked, model_name) or None,
    )
    adapter_subfolder = ADAPTER_SUBFOLDER if (folder / ADAPTER_SUBFOLDER / "adapter_config.json").is_file() else None
    return ModelCard.from_template(
        card_data,
        template_path=str(template),
        model_name=model_name,
        model_id=repo_id or folder.resolve().name,
        adapter_subfolder=adapter_subfolder,
        family=FAMILY_CARDS.get(family),
        streams=_card_streams(config, processor_config),
        audio_rows=processor_config.get("audio_rows"),
        frame_encoder=processor_config.get("frame_encoder_name_or_path", DEFAULT_FRAME_ENCODER),
        num_frames=config.get("num_frames", 100),
        mm_hidden_size=config.get("mm_hidden_size", 768),
        provenance=provenance.text,
        recipe=provenance.recipe,
        recipe_note=provenance.recipe_note,
        results=[
            {
                "dataset_name": benchmark["dataset_name"],
                "split": benchmark["split"],
                "task_name": TASKS[benchmark["task"]][0],
                "metrics": [(TASKS[benchmark["task"]][1][key], value) for key, value in benchmark["metrics"].items()],
            }
            for benchmark in checked.values()
        ],
    )


def write_model_card(
    folder: str | Path,
    repo_id: str | None = None,
    results: str | Path | Mapping[str, Any] | None = None,
    **kwargs,
) -> Path:
    """
    Writes `folder/README.md` (see [`render_model_card`] for the arguments). Given `results` are checked and kept
    as `folder/eval_results.json`, so that a card written again later (by `vtimellm-hf push`, say) keeps them.
    """
    folder = Path(folder)
    raw_results = None
    if results is not None:
        checked = read_results(results)
        raw_results = {
            name: {**{key: entry[key] for key in _DESCRIPTION_KEYS}, **entry["metrics"]}
            for name, entry in checked.items()
        }
    card = render_model_card(folder, repo_id=repo_id, results=raw_results, **kwargs)
    if raw_results is not None:
        (folder / RESULTS_FILE).write_text(json.dumps(raw_results, indent=2) + "\n", encoding="utf-8")
    path = folder / "README.md"
    card.save(path)
    return path


def save_training_record(output_dir: str | Path, stage: int, model_args, data_args, training_args) -> Path:
    """
    Records the recipe of a finished stage in `output_dir/vtimellm_training.json`, for the model card.

    The records of earlier stages are carried over from the folders this stage started from (the stage-1
    projector folder for stage 2, the stage-2 adapter folder for stage 3), so the final folder tells the whole
    recipe when every stage was run with the recipes.

    Args:
        output_dir: the folder the stage saved.
        stage: 1, 2 or 3.
        model_args, data_args, training_args: the stage's `VTimeModelArguments`, `VTimeDataArguments` and
            `SFTConfig`.
    """
    earlier_source = {2: model_args.stage1_projector, 3: model_args.stage2_adapter}.get(stage)
    earlier = []
    if earlier_source:
        earlier_folder = Path(earlier_source)
        earlier_folder = earlier_folder if earlier_folder.is_dir() else earlier_folder.parent
        record = _read_json(earlier_folder / TRAINING_RECORD_FILE)
        earlier = [entry for entry in (record or {}).get("stages", []) if entry["stage"] < stage]
    entry = {
        "stage": stage,
        "base": model_args.model_name_or_path,
        "frame_encoder": model_args.frame_encoder_name_or_path,
        "train_files": [str(path) for path in data_args.train_files],
        "lora": (
            {"r": model_args.lora_r, "alpha": model_args.lora_alpha, "dropout": model_args.lora_dropout,
             "target_modules": list(model_args.lora_target_modules)}
            if stage > 1 else None
        ),
        "training": {name: getattr(training_args, name, None) for name in _RECORDED_TRAINING_FIELDS},
    }  # fmt: skip
    path = Path(output_dir) / TRAINING_RECORD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stages": [*earlier, entry]}, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def _recipe_row(entry: Mapping[str, Any]) -> dict[str, str]:
    training = entry.get("training", {})
    batch_factors = ("per_device_train_batch_size", "gradient_accumulation_steps", "world_size")
    batch = [training.get(name) for name in batch_factors]
    lora = entry.get("lora")
    max_steps = training.get("max_steps")
    precision = "bf16" if training.get("bf16") else "fp16" if training.get("fp16") else "fp32"
    return {
        "stage": str(entry["stage"]),
        "data": ", ".join(Path(path).name for path in entry.get("train_files", [])) or "unknown",
        "trains": _STAGE_TRAINS.get(entry["stage"], "unknown"),
        "epochs": f"{max_steps} steps" if max_steps and max_steps > 0 else str(training.get("num_train_epochs", "?")),
        "learning_rate": f"{training['learning_rate']:g}" if training.get("learning_rate") is not None else "?",
        "batch": str(math.prod(batch)) if all(isinstance(value, int) for value in batch) else "?",
        "lora": f"r {lora['r']}, alpha {lora['alpha']}, dropout {lora['dropout']}" if lora else "-",
        "precision": precision,
        "max_length": str(training.get("max_length") or "?"),
    }


def _family(config: Mapping[str, Any]) -> str | None:
    """The audio-visual model a configuration is (`longvale`: streams concatenated, `avicuna`: interleaved), or
    `None` for VTimeLLM's video alone."""
    streams = {stream["name"] for stream in config.get("feature_streams") or []}
    if not streams - {"video"}:
        return None
    return {"concat": "longvale", "interleave": "avicuna"}.get(config.get("stream_layout"))


def _card_streams(config: Mapping[str, Any], processor_config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of the card's table of streams: name, projector, width, the encoder that makes them, rows."""
    num_frames, audio_rows = config.get("num_frames", 100), processor_config.get("audio_rows")
    encoders = processor_config.get("stream_encoders") or {}
    rows = []
    for stream in config.get("feature_streams") or []:
        if stream["name"] == "video":
            encoder = processor_config.get("frame_encoder_name_or_path", DEFAULT_FRAME_ENCODER)
        else:
            encoder = encoders.get(stream["name"], {}).get("name_or_path")
        # BEATs is not on the Hub: a folder converted without its file asks the user for it
        setting = f'`processor.stream_encoders["{stream["name"]}"]["name_or_path"]`'
        described = f"`{encoder}`" if encoder else f"{stream['extractor']}, not named: set {setting}"
        rows.append({
            "name": stream["name"], "projector": stream["projector"], "width": stream["hidden_size"],
            "encoder": described,
            "rows": _STREAM_ROWS.get(stream["extractor"], "?").format(
                video_rows=num_frames - (audio_rows or 0), audio_rows=audio_rows
            ),
        })  # fmt: skip
    return rows


def _display_name(name_or_path: str) -> str:
    """A Hub id as it is; a local path by its last component, which names the model without the machine's layout."""
    return name_or_path if is_hub_id(name_or_path) else Path(name_or_path).name


def _read_json(path: Path) -> Any:
    """The content of a record file, None where the folder has none."""
    return read_json(path) if path.is_file() else None


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    """Registers `model-card DIR [--results results.json] [options]`; exit status 0, or 2 on unusable input."""
    parser = subparsers.add_parser(
        "model-card",
        help="write the model card (README.md) of a checkpoint folder",
        description="Write DIR/README.md: Hub metadata (licence, base model, datasets, pipeline tag, tags, library, "
        "evaluation results as model-index), usage code, timestamp convention, training recipe and limitations. "
        "Results JSON: {\"charades_sta\": {\"r1@0.3\": 51.0, \"miou\": 31.2}, ...} in percent; see "
        "vtimellm_hf/model_card.py for the benchmarks and metrics it knows.",
    )
    parser.add_argument("folder", metavar="DIR", help="a saved VTimeLLM checkpoint")
    parser.add_argument("--results", metavar="JSON", default=None, help="evaluation results (kept in DIR)")
    parser.add_argument("--repo-id", default=None, metavar="ORG/NAME", help="Hub id the usage code loads")
    parser.add_argument("--license", default=DEFAULT_LICENSE, help="Hub licence identifier (default: %(default)s)")
    parser.add_argument("--base-model", default=None, metavar="HUB_ID", help="Hub id of the base LLM")
    parser.add_argument(
        "--dataset", dest="datasets", action="append", default=None, metavar="HUB_ID",
        help="Hub id of a training dataset (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--template", default=None, metavar="PATH", help="Jinja template (default: model_card/template.md)"
    )
    parser.set_defaults(run=_run)
    return parser


@reports_errors("model-card")
def _run(args: argparse.Namespace) -> int:
    path = write_model_card(
        args.folder,
        repo_id=args.repo_id,
        results=args.results,
        license=args.license,
        base_model=args.base_model,
        datasets=args.datasets,
        template=args.template,
    )
    print(f"model-card: wrote {path}", file=sys.stderr)
    return 0


__all__ = [
    "ADAPTER_SUBFOLDER",
    "AUDIO_VISUAL_TEMPLATE_PATH",
    "FAMILY_CARDS",
    "BENCHMARKS",
    "CONVERSION_RECORD_FILE",
    "RESULTS_FILE",
    "TEMPLATE_PATH",
    "TRAINING_RECORD_FILE",
    "Provenance",
    "eval_results",
    "read_provenance",
    "read_results",
    "render_model_card",
    "save_training_record",
    "write_model_card",
]
