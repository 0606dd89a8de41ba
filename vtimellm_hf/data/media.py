"""The videos and images an extraction encodes, from a folder, a list of paths or an annotation file.

[`collect_media`] reads what `vtimellm-hf extract-features` is given into [`MediaItem`]s (a feature id, a file, a
clip window), and the inputs that name no usable file into [`ExtractionFailure`]s.
"""

import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .features import feature_path
from .raw_annotations import read_charades_sta

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "ExtractionFailure", "MediaItem", "collect_media"]

# In order of preference when `{video_root}/{id}.*` matches several files
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ts")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class MediaItem:
    """
    One video or image to encode.

    Attributes:
        feature_id: the id, and the name of the output file `{feature_id}.npy`.
        path: the video or image file; a file with an image extension (jpg, jpeg, png, webp) is an image.
        window: `(start_seconds, end_seconds)` of the clip to sample, or `None` for the whole video.
    """

    feature_id: str
    path: Path
    window: tuple[float, float] | None = None

    @property
    def is_image(self) -> bool:
        return self.path.suffix.lower() in IMAGE_EXTENSIONS


@dataclass(frozen=True)
class ExtractionFailure:
    """An input that produced no feature: its id, its file (`None` when none was found) and why."""

    feature_id: str
    path: str | None
    reason: str

    def to_json(self) -> str:
        return json.dumps({"id": self.feature_id, "path": self.path, "reason": self.reason}, ensure_ascii=False)


def collect_media(
    inputs: str | os.PathLike | Iterable[str | os.PathLike], video_root: str | os.PathLike | None = None
) -> tuple[list[MediaItem], list[ExtractionFailure]]:
    """
    The videos and images named by `inputs`, and the inputs that name none.

    `inputs` is one of:

    * a folder: every video and image file in it and its subfolders (hidden ones excepted); id = file stem.
    * a video or image file; id = its stem.
    * a VTimeLLM annotation file (`.json`), a list of records with an `id`: the video is `{video_root}/{id}.*` and
      the clip `meta.split` (`[start, end]` seconds) when present; a stage-1 record with an `image` field names the
      image `{video_root}/{image}` and keeps `id` as its feature id.
    * an ActivityNet Captions file (`.json`): `{"v_ID": {...}}`, or the coco-style `{"annotations": [{"image_id":
      "v_ID.mp4", ...}]}`; the video is `{video_root}/v_ID.*`, or `{video_root}/ID.*` (downloads often drop the
      prefix); the feature id keeps the annotation's `v_ID`.
    * a Charades-STA file, `VIDEO_ID START END##sentence` a line: the video is `{video_root}/VIDEO_ID.*`, each once.
    * any other file: one path a line (blank lines and `#` comments skipped; relative paths are relative to the
      list's folder); id = file stem. `video_root` is refused here: the paths do not go through it.
    * a list of paths (Python only); id = file stem.

    An id named twice for the same file and window is kept once; an id named for two different inputs is a failure
    of the second (one feature file holds one input).

    Raises:
        FileNotFoundError: when `inputs` or `video_root` does not exist.
        ValueError: naming the file, on an annotation file that cannot be read as one of the formats above, one
            used without `video_root`, or a list of paths given with one.
    """
    if not isinstance(inputs, (str, os.PathLike)):
        return _deduplicate([MediaItem(Path(path).stem, Path(path)) for path in inputs])
    source = Path(inputs)
    if source.is_dir():
        candidates = [MediaItem(path.stem, path) for path in _media_files(source)]
    elif not source.is_file():
        raise FileNotFoundError(f"Input not found: {source}")
    elif source.suffix.lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS:
        candidates = [MediaItem(source.stem, source)]
    elif source.suffix.lower() == ".json":
        candidates = _read_annotation_file(source, video_root)
    elif _is_charades_sta(source):
        videos = _video_index(source, video_root)
        video_ids = dict.fromkeys(query.video_id for query in read_charades_sta(source))
        candidates = [videos.item(video_id) for video_id in video_ids]
    elif video_root is not None:
        raise ValueError(
            f"{source} is a list of paths (relative to its folder): video_root only applies to annotation files "
            "(.json, or Charades-STA 'ID START END##sentence' lines)."
        )
    else:
        candidates = _read_path_list(source)
    return _deduplicate(candidates)


def _media_files(folder: Path) -> list[Path]:
    extensions = set(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)
    files = []
    for directory, subdirectories, names in os.walk(folder):
        # Hidden entries include macOS "._name.mp4" resource forks, which are not videos
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        files += [
            Path(directory) / name
            for name in sorted(names)
            if not name.startswith(".") and Path(name).suffix.lower() in extensions
        ]
    return files


def _is_charades_sta(path: Path) -> bool:
    """Whether the first line that holds anything is a Charades-STA query, `VIDEO_ID START END##sentence`."""
    with open(path, encoding="utf-8-sig", errors="replace") as file:
        for line in file:
            if line.strip():
                return re.fullmatch(r"\S+ +\S+ +\S+ *##.*", line.strip()) is not None
    return False


def _read_path_list(path: Path) -> list[MediaItem]:
    items = []
    with open(path, encoding="utf-8-sig") as file:
        for line in file:
            line = line.strip()
            if line and not line.startswith("#"):
                media = path.parent / line
                items.append(MediaItem(media.stem, media))
    return items


def _read_annotation_file(path: Path, video_root: str | os.PathLike | None) -> list[MediaItem | ExtractionFailure]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON annotation file ({error}).") from error
    videos = _video_index(path, video_root)
    if isinstance(data, list):
        return [_dialogue_item(path, index, record, videos) for index, record in enumerate(data)]
    if isinstance(data, dict):
        if isinstance(data.get("annotations"), list):
            ids = [_coco_video_id(path, index, record) for index, record in enumerate(data["annotations"])]
        else:
            ids = list(data)
        return [videos.item(video_id, fallback=video_id.removeprefix("v_")) for video_id in ids]
    raise ValueError(
        f"{path}: expected a list of VTimeLLM records or an ActivityNet Captions object, found {type(data).__name__}."
    )


def _video_index(path: Path, video_root: str | os.PathLike | None) -> "_VideoIndex":
    if video_root is None:
        raise ValueError(
            f"{path} is an annotation file: give the folder of its videos (video_root, --video-root), where the "
            "video of id ID is ID.mp4 (or another video extension)."
        )
    video_root = Path(video_root)
    if not video_root.is_dir():
        raise FileNotFoundError(f"Video folder not found: {video_root}")
    return _VideoIndex(video_root)


def _dialogue_item(path: Path, index: int, record, videos: "_VideoIndex") -> MediaItem | ExtractionFailure:
    # Raw VideoInstruct-100K pairs `{"video_id", "q", "a"}` name their video by `video_id`, as `load_stage3` reads them
    key = "video_id" if isinstance(record, dict) and "id" not in record and "video_id" in record else "id"
    if not isinstance(record, dict) or not isinstance(record.get(key), (str, int)):
        raise ValueError(
            f"{path}, record #{index}: expected an object with an 'id' (or a VideoInstruct 'video_id'), found "
            f"{str(record)[:80]!r}."
        )
    feature_id = str(record[key])
    if "image" in record:
        if not isinstance(record["image"], str):
            raise ValueError(f"{path}, record #{index}: 'image' must be a relative path, got {record['image']!r}.")
        return MediaItem(feature_id, videos.root / record["image"])
    split = (record.get("meta") or {}).get("split")
    # ActivityNet ids keep their `v_` prefix in the dialogues, and the videos may be saved without it
    found = videos.item(feature_id, fallback=feature_id.removeprefix("v_"))
    if split is None or isinstance(found, ExtractionFailure):
        return found
    if (
        not isinstance(split, (list, tuple))
        or len(split) != 2
        or not all(isinstance(bound, (int, float)) and math.isfinite(bound) for bound in split)
    ):
        reason = f"{path}, record #{index}: meta.split must be [start, end] in seconds, got {split!r}"
        return ExtractionFailure(feature_id, None, reason)
    return MediaItem(feature_id, found.path, (float(split[0]), float(split[1])))


def _coco_video_id(path: Path, index: int, record) -> str:
    if not isinstance(record, dict) or not isinstance(record.get("image_id"), str):
        raise ValueError(f"{path}, annotation #{index}: expected an object with a string 'image_id'.")
    return Path(record["image_id"]).stem


class _VideoIndex:
    """`{root}/{id}.*` lookups from one listing of the folder, not one glob per id."""

    def __init__(self, root: Path):
        self.root = root
        rank = {extension: position for position, extension in enumerate(VIDEO_EXTENSIONS)}
        self._videos = {}
        with os.scandir(root) as entries:
            for entry in entries:
                path = Path(entry.path)
                if path.suffix.lower() not in rank or not entry.is_file():
                    continue
                known = self._videos.get(path.stem)
                if known is None or rank[path.suffix.lower()] < rank[known.suffix.lower()]:
                    self._videos[path.stem] = path

    def item(self, feature_id: str, fallback: str | None = None) -> MediaItem | ExtractionFailure:
        path = self._videos.get(feature_id) or (self._videos.get(fallback) if fallback else None)
        if path is None:
            names = f"{feature_id}.*" + (f" nor {fallback}.*" if fallback and fallback != feature_id else "")
            return ExtractionFailure(feature_id, None, f"no video named {names} in {self.root}")
        return MediaItem(feature_id, path)


def _deduplicate(candidates: list[MediaItem | ExtractionFailure]) -> tuple[list[MediaItem], list[ExtractionFailure]]:
    items, failures, by_id = [], [], {}
    for candidate in candidates:
        if isinstance(candidate, ExtractionFailure):
            failures.append(candidate)
            continue
        try:
            feature_path(".", candidate.feature_id)
        except ValueError as error:
            failures.append(ExtractionFailure(candidate.feature_id, str(candidate.path), str(error)))
            continue
        first = by_id.setdefault(candidate.feature_id, candidate)
        if first is candidate:
            items.append(candidate)
        elif first != candidate:
            failures.append(
                ExtractionFailure(
                    candidate.feature_id,
                    str(candidate.path),
                    f"id {candidate.feature_id!r} is already used by {first.path} (window {first.window}); one "
                    f"{candidate.feature_id}.npy holds one input",
                )
            )
    return items, failures
