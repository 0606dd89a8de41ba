"""
[`generate_synthetic_moments`] and `vtimellm-hf synth`: the synthetic moments dataset written to a folder, with a
manifest of what was written (`synthetic_manifest.json`: each file and its SHA-256), so that `--overwrite` deletes
what an earlier run wrote and nothing else.
"""

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...cli import USAGE_ERRORS, non_negative_int, positive_int, reports_errors
from ...files import atomic_write, read_json
from ..converters import write_captioning_references, write_dialogues, write_grounding_queries
from ..raw_annotations import grounding_queries, read_activitynet_captions
from .records import raw_annotation, stage1_records, stage2_grounding_records, stage2_records, stage3_records
from .rendering import write_still, write_video
from .scenes import SyntheticMomentsConfig, SyntheticVideo, plan_stills, plan_video

ANNOTATIONS_FILE = "annotations.json"
SPLITS_FILE = "splits.json"
STAGE1_FILE = "stage1.json"
STAGE2_FILE = "stage2.json"
STAGE3_FILE = "stage3.json"
GROUNDING_VAL_FILE = "grounding_val.jsonl"
DENSE_CAPTIONING_VAL_FILE = "dense_captioning_val.json"
CONFIG_FILE = "synthetic_config.json"
MANIFEST_FILE = "synthetic_manifest.json"
VIDEO_DIR = "videos"
IMAGE_DIR = "images"
_FILES = (
    ANNOTATIONS_FILE,
    SPLITS_FILE,
    STAGE1_FILE,
    STAGE2_FILE,
    STAGE3_FILE,
    GROUNDING_VAL_FILE,
    DENSE_CAPTIONING_VAL_FILE,
    CONFIG_FILE,
)
# Every name a run writes, the only names a manifest may list
_WRITTEN_NAME = re.compile(
    "|".join(map(re.escape, _FILES))
    + rf"|{VIDEO_DIR}/v_synthetic_\d{{4,}}\.mp4|{IMAGE_DIR}/synthetic_image_\d{{4,}}\.png"
)


@dataclass(frozen=True)
class SyntheticDataset:
    """
    What `generate_synthetic_moments` wrote under `root`. Paths in the records are relative to `root`.

    Args:
        root: the output folder.
        seed: the seed everything was drawn from.
        config: the generation settings.
        videos: every video, training ones first.
        num_stage1_records, num_stage2_records, num_stage3_records: records in each stage file.
    """

    root: Path
    seed: int
    config: SyntheticMomentsConfig
    videos: tuple[SyntheticVideo, ...]
    num_stage1_records: int
    num_stage2_records: int
    num_stage3_records: int
    annotations_file: Path = field(init=False)
    splits_file: Path = field(init=False)
    stage1_file: Path = field(init=False)
    stage2_file: Path = field(init=False)
    stage3_file: Path = field(init=False)
    grounding_val_file: Path = field(init=False)
    dense_captioning_val_file: Path = field(init=False)
    config_file: Path = field(init=False)
    manifest_file: Path = field(init=False)
    video_dir: Path = field(init=False)
    image_dir: Path = field(init=False)

    def __post_init__(self):
        # The dataclass is frozen: derived paths are set through object.__setattr__ once, here.
        for name, relative in (
            ("annotations_file", ANNOTATIONS_FILE),
            ("splits_file", SPLITS_FILE),
            ("stage1_file", STAGE1_FILE),
            ("stage2_file", STAGE2_FILE),
            ("stage3_file", STAGE3_FILE),
            ("grounding_val_file", GROUNDING_VAL_FILE),
            ("dense_captioning_val_file", DENSE_CAPTIONING_VAL_FILE),
            ("config_file", CONFIG_FILE),
            ("manifest_file", MANIFEST_FILE),
            ("video_dir", VIDEO_DIR),
            ("image_dir", IMAGE_DIR),
        ):
            object.__setattr__(self, name, self.root / relative)

    @property
    def train_video_ids(self) -> list[str]:
        return [video.video_id for video in self.videos if video.split == "train"]

    @property
    def val_video_ids(self) -> list[str]:
        return [video.video_id for video in self.videos if video.split == "val"]

    def video_path(self, video_id: str) -> Path:
        return self.video_dir / f"{video_id}.mp4"


def generate_synthetic_moments(
    output_dir: str | Path,
    num_videos: int = 64,
    num_val_videos: int = 16,
    seed: int = 0,
    config: SyntheticMomentsConfig | None = None,
    overwrite: bool = False,
) -> SyntheticDataset:
    """
    Writes the synthetic moments dataset to `output_dir`.

    Layout (all paths inside the records are relative to `output_dir`):

    - `videos/{video_id}.mp4`: H.264 videos.
    - `annotations.json`: every video in the ActivityNet Captions format
      `{video_id: {"duration", "timestamps", "sentences"}}`, the raw annotations everything below is built from.
    - `splits.json`: `{"train": [video_id, ...], "val": [...]}`; held-out videos appear in no training record.
    - `stage1.json`: LCS-558K style records on the stills `images/{id}.png` (none, one or two shapes), captioned.
    - `stage2.json`: VTimeLLM stage-2 dialogues on the training videos, as `vtimellm-hf convert activitynet`
      builds them from their annotations: `config.stage2_dialogues_per_video` rounds, with the seeds
      `synthetic_config.json` lists; then `config.stage2_grounding_per_video` single-turn grounding records per
      video.
    - `stage3.json`: VTimeLLM stage-3 dialogues on training videos (grounding, captioning, counting, order and
      overlap questions).
    - `grounding_val.jsonl`: the held-out videos' grounding queries, as `convert --task grounding` writes them.
    - `dense_captioning_val.json`: the held-out videos in the ActivityNet Captions format.
    - `synthetic_config.json`: the seed, counts, configuration and the records' seeds, to regenerate the same data.
    - `synthetic_manifest.json`: every file written, with its SHA-256.

    Args:
        output_dir: folder to write to; created if needed. Files of its own that synth does not write stay.
        num_videos: videos in all, held-out ones included.
        num_val_videos: videos held out for evaluation (the last ones generated).
        seed: seed of every random draw (a non-negative integer); the same seed gives byte-identical annotation
            and record files and identical frames.
        config: drawing settings; `SyntheticMomentsConfig()` when omitted.
        overwrite: replace the dataset an earlier run wrote in `output_dir`: the files its manifest lists are
            deleted, and nothing else.

    Returns:
        [`SyntheticDataset`]: the videos, their events and the paths written.

    Raises:
        ValueError: on counts or a seed out of range, or a manifest that is not one synth writes.
        FileExistsError: where `output_dir` holds a dataset and `overwrite` is not set, where a file to write
            exists and synth did not write it, or where a file synth wrote has changed since; nothing is deleted.
    """
    config = config or SyntheticMomentsConfig()
    if num_videos < 1:
        raise ValueError(f"num_videos must be at least 1, got {num_videos}.")
    if not 0 <= num_val_videos < num_videos:
        raise ValueError(
            f"num_val_videos must leave at least one training video: got {num_val_videos} of {num_videos} videos."
        )
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}.")
    output_dir = Path(output_dir)

    # Independent streams: videos, stills and records can change without shifting each other's draws.
    video_seeds, still_seed, record_seed = np.random.SeedSequence(seed).spawn(3)
    num_train_videos = num_videos - num_val_videos
    videos = tuple(
        plan_video(f"v_synthetic_{index:04d}", "train" if index < num_train_videos else "val", config,
                   np.random.default_rng(video_seed))
        for index, video_seed in enumerate(video_seeds.spawn(num_videos))
    )  # fmt: skip
    stills = list(plan_stills(config, np.random.default_rng(still_seed)))
    # The grounding records' seed last: the others are those drawn before it was added
    record_seeds = [int(value) for value in record_seed.generate_state(3 + config.stage2_dialogues_per_video)]
    stage1_seed, stage3_seed, *stage2_seeds, grounding_seed = record_seeds
    video_paths = [f"{VIDEO_DIR}/{video.video_id}.mp4" for video in videos]
    image_paths = [f"{IMAGE_DIR}/{still.image_id}.png" for still in stills]
    planned = [*_FILES, *video_paths, *image_paths]

    _claim_output_dir(output_dir, planned, overwrite)
    for folder in (output_dir, output_dir / VIDEO_DIR, output_dir / IMAGE_DIR):
        folder.mkdir(parents=True, exist_ok=True)
    # Listed before anything is written: a run killed half-way leaves a folder that --overwrite can clean.
    _write_manifest(output_dir, dict.fromkeys(planned), complete=False)

    with ThreadPoolExecutor(max_workers=config.num_workers) as pool:
        # list() re-raises the first encoding error here.
        list(pool.map(lambda video, path: write_video(output_dir / path, video, config.audio_sampling_rate), videos,
                      video_paths))  # fmt: skip
    for still, path in zip(stills, image_paths):
        write_still(output_dir / path, still)

    # The raw annotations, then what the converters build from them as they would from ActivityNet's.
    write_captioning_references([raw_annotation(video) for video in videos], output_dir / ANNOTATIONS_FILE)
    annotated = read_activitynet_captions(output_dir / ANNOTATIONS_FILE)
    train_ids = {video.video_id for video in videos if video.split == "train"}
    train = [video for video in annotated if video.video_id in train_ids]
    val = [video for video in annotated if video.video_id not in train_ids]
    train_videos = [video for video in videos if video.split == "train"]
    stage1 = stage1_records(stills, image_paths, stage1_seed)
    stage2 = stage2_records(train, config.dense_captioning_share, stage2_seeds)
    stage2 += stage2_grounding_records(train_videos, config.stage2_grounding_per_video, grounding_seed)
    stage3 = stage3_records(train_videos, config, stage3_seed)
    write_dialogues(stage1, output_dir / STAGE1_FILE)
    write_dialogues(stage2, output_dir / STAGE2_FILE)
    write_dialogues(stage3, output_dir / STAGE3_FILE)
    write_grounding_queries(grounding_queries(val), output_dir / GROUNDING_VAL_FILE)
    write_captioning_references(val, output_dir / DENSE_CAPTIONING_VAL_FILE)
    splits = {"train": [video.video_id for video in train], "val": [video.video_id for video in val]}
    _write_json(output_dir / SPLITS_FILE, splits)
    settings = {
        "seed": seed,
        "num_videos": num_videos,
        "num_val_videos": num_val_videos,
        "config": asdict(config),
        "record_seeds": {"stage1": stage1_seed, "stage2": stage2_seeds, "stage2_grounding": grounding_seed,
                         "stage3": stage3_seed},
    }
    _write_json(output_dir / CONFIG_FILE, settings)
    _write_manifest(output_dir, {path: _sha256(output_dir / path) for path in planned}, complete=True)
    return SyntheticDataset(output_dir, seed, config, videos, len(stage1), len(stage2), len(stage3))


# The output folder and its manifest.


def _claim_output_dir(output_dir: Path, planned: list[str], overwrite: bool) -> None:
    """
    Makes `output_dir` ready to receive `planned` (paths relative to it), or raises before deleting anything: with
    `overwrite`, the files an earlier run's manifest lists are deleted, once every check has passed.
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"{output_dir} is a file, not a folder")
    earlier = _read_manifest(output_dir)
    if earlier is not None and not overwrite:
        raise FileExistsError(
            f"{output_dir} already holds a synthetic dataset ({MANIFEST_FILE}): pass --overwrite (overwrite=True) "
            "to replace it"
        )
    earlier = earlier or {}
    for folder in (VIDEO_DIR, IMAGE_DIR):
        path = output_dir / folder
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            raise FileExistsError(f"{path} is a link or a file, not a folder synth can write into: nothing was deleted")
    # A digest of None: the run that listed the file did not finish, and the file is its own
    changed = [
        relative
        for relative, digest in earlier.items()
        if digest is not None and os.path.lexists(output_dir / relative) and _sha256(output_dir / relative) != digest
    ]
    if changed:
        raise FileExistsError(
            f"{output_dir / changed[0]} changed since synth wrote it: nothing was deleted; move it away to replace "
            "the dataset"
        )
    foreign = [relative for relative in planned if relative not in earlier and os.path.lexists(output_dir / relative)]
    if foreign:
        raise FileExistsError(
            f"{output_dir / foreign[0]} already exists and synth did not write it (it is in no {MANIFEST_FILE}): "
            "nothing was deleted; write into another folder"
        )
    for relative in earlier:
        (output_dir / relative).unlink(missing_ok=True)


def _read_manifest(output_dir: Path) -> dict[str, str | None] | None:
    """`{path: SHA-256, or None where the run that listed it did not finish}`; None without a manifest."""
    path = output_dir / MANIFEST_FILE
    if not os.path.lexists(path):
        return None
    if not path.is_file() or path.is_symlink():
        raise ValueError(f"{path} is not a file synth writes: nothing was deleted")
    content = read_json(path)
    files = content.get("files") if isinstance(content, dict) else None
    if not isinstance(files, dict) or not all(digest is None or isinstance(digest, str) for digest in files.values()):
        raise ValueError(f'{path}: not a synth manifest ({{"files": {{path: sha256}}}}): nothing was deleted')
    unknown = [name for name in files if not _WRITTEN_NAME.fullmatch(name)]
    if unknown:
        raise ValueError(f"{path} lists {unknown[0]!r}, a file synth never writes: nothing was deleted")
    return files


def _write_manifest(output_dir: Path, files: dict[str, str | None], complete: bool) -> None:
    _write_json(output_dir / MANIFEST_FILE, {"written_by": "vtimellm-hf synth", "complete": complete, "files": files})


def _sha256(path: Path) -> str | None:
    """The file's SHA-256; None for what is not a plain file (a link, a folder), which synth never writes."""
    if path.is_symlink() or not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_json(path: Path, content: Any) -> None:
    with atomic_write(path) as file:
        file.write((json.dumps(content, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


# The command line.


def add_subcommand(subparsers) -> None:
    """`vtimellm-hf synth OUTPUT_DIR`: writes the synthetic moments dataset."""
    parser = subparsers.add_parser(
        "synth",
        help="write the synthetic moments dataset (videos, annotations, records)",
        description="Write the synthetic moments dataset: videos of coloured shapes that appear and disappear at "
        "known times, their ActivityNet Captions annotations, the three stages' training records and held-out "
        "evaluation sets.",
        epilog="Exit status: 0 written; 2 an argument or an output folder synth cannot use (a count or seed out of "
        "range, a folder holding a dataset without --overwrite, a file synth did not write or that changed since, "
        "a missing ffmpeg), reported in one line, with nothing deleted.",
    )
    parser.add_argument("output_dir", help="folder to write into; files of its own stay")
    parser.add_argument("--num-videos", type=positive_int, default=64, help="videos in all, held-out ones included")
    parser.add_argument("--num-val-videos", type=non_negative_int, default=16, help="held-out videos")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace the dataset an earlier synth wrote in OUTPUT_DIR: only the files its {MANIFEST_FILE} lists "
        "are deleted",
    )
    parser.set_defaults(run=_run_subcommand)


@reports_errors("synth", {(*USAGE_ERRORS, ImportError): 2})
def _run_subcommand(args) -> int:
    dataset = generate_synthetic_moments(
        args.output_dir,
        num_videos=args.num_videos,
        num_val_videos=args.num_val_videos,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(
        f"{len(dataset.train_video_ids)} training and {len(dataset.val_video_ids)} held-out videos, "
        f"{dataset.num_stage1_records} stage-1, {dataset.num_stage2_records} stage-2 and "
        f"{dataset.num_stage3_records} stage-3 records in {dataset.root}"
    )
    return 0
