"""The videos and images an extraction encodes, from a folder, a list of paths or an annotation file, and the video
of an id in a folder.

[`collect_media`] reads what `vtimellm-hf extract-features` is given into [`MediaItem`]s (a feature id, a file, a
window), and the inputs that name no usable file into [`ExtractionFailure`]s. [`VideoFolder`] finds the video of an
id (`{id}.mp4` or another video extension; an ActivityNet `v_` id also without its prefix, see [`stored_id`]), for
extraction and for the evaluations over videos.
"""

import codecs
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..files import read_json
from .features import feature_path
from .raw_annotations import is_finite_number, read_charades_sta

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "ExtractionFailure",
    "MediaItem",
    "VideoFolder",
    "collect_media",
    "find_video",
    "stored_id",
]

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
        window: `(start_seconds, end_seconds)` of the part of the video to sample, or `None` for the whole video.
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
        record = {"id": self.feature_id, "path": self.path, "reason": self.reason}
        text = json.dumps(record, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate (an id read from a JSON "\ud800" escape) has no UTF-8 bytes: this line keeps escapes
            return json.dumps(record)
        return text


def collect_media(
    inputs: str | os.PathLike | Iterable[str | os.PathLike], video_root: str | os.PathLike | None = None
) -> tuple[list[MediaItem], list[ExtractionFailure]]:
    """
    The videos and images named by `inputs`, and the inputs that name none.

    `inputs` is one of:

    * a folder: every video and image file in it and its subfolders (hidden ones excepted); id = file stem.
    * a video or image file; id = its stem.
    * a VTimeLLM annotation file (`.json`), a list of records with an `id`: the video is `{video_root}/{id}.*` and
      the window `meta.split` (`[start, end]` seconds) when present; a stage-1 record with an `image` field names the
      image `{video_root}/{image}` and keeps `id` as its feature id.
    * an ActivityNet Captions file (`.json`): `{"v_ID": {...}}`, or the coco-style `{"annotations": [{"image_id":
      "v_ID.mp4", ...}]}`; the video is `{video_root}/v_ID.*`, or `{video_root}/ID.*` (downloads often drop the
      prefix); the feature id keeps the annotation's `v_ID`.
    * a Charades-STA file, `VIDEO_ID START END##sentence` a line: the video is `{video_root}/VIDEO_ID.*`, each once.
    * any other text file: one path a line (blank lines and `#` comments skipped; relative paths are relative to
      the list's folder); id = file stem. `video_root` is refused here: the paths do not go through it.
    * any other file (not UTF-8 text): a video of another extension (`.m2ts`, `.gif`); id = its stem.
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
    elif not _is_text(source):
        # A video of an extension not listed above (.m2ts, .gif): decoding it tells whether it is one
        candidates = [MediaItem(source.stem, source)]
    elif _is_charades_sta(source):
        videos = _video_folder(source, video_root)
        video_ids = dict.fromkeys(query.video_id for query in read_charades_sta(source))
        candidates = [_video_item(videos, video_id) for video_id in video_ids]
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
    files, skipped = [], []
    for directory, subdirectories, names in os.walk(folder):
        # Hidden entries include macOS "._name.mp4" resource forks, which are not videos
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                (files if Path(name).suffix.lower() in extensions else skipped).append(Path(directory) / name)
    if skipped:
        shown = ", ".join(str(path) for path in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        logger.warning(
            "%s: left out %d file(s) whose extension is not a known video or image one (%s); name them in a list of "
            "paths to extract them",
            folder, len(skipped), shown,
        )  # fmt: skip
    return files


def _is_text(path: Path) -> bool:
    """Whether the file starts as text (UTF-8 without NUL bytes), as a list of paths or annotations do."""
    with open(path, "rb") as file:
        start = file.read(4096)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(start, final=False)
    except UnicodeDecodeError:
        return False
    return b"\0" not in start


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
    data = read_json(path)
    videos = _video_folder(path, video_root)
    if isinstance(data, list):
        return [_dialogue_item(path, index, record, videos) for index, record in enumerate(data)]
    if isinstance(data, dict):
        if isinstance(data.get("annotations"), list):
            ids = [_coco_video_id(path, index, record) for index, record in enumerate(data["annotations"])]
        else:
            ids = list(data)
        return [_video_item(videos, video_id) for video_id in ids]
    raise ValueError(
        f"{path}: expected a list of VTimeLLM records or an ActivityNet Captions object, found {type(data).__name__}."
    )


def _video_folder(path: Path, video_root: str | os.PathLike | None) -> "VideoFolder":
    if video_root is None:
        raise ValueError(
            f"{path} is an annotation file: give the folder of its videos (video_root, --video-root), where the "
            "video of id ID is ID.mp4 (or another video extension)."
        )
    return VideoFolder(video_root)


def _video_item(videos: "VideoFolder", feature_id: str) -> MediaItem | ExtractionFailure:
    try:
        return MediaItem(feature_id, videos.path(feature_id))
    except FileNotFoundError as error:
        return ExtractionFailure(feature_id, None, str(error))


def _dialogue_item(path: Path, index: int, record, videos: "VideoFolder") -> MediaItem | ExtractionFailure:
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
    found = _video_item(videos, feature_id)
    if split is None or isinstance(found, ExtractionFailure):
        return found
    if not isinstance(split, (list, tuple)) or len(split) != 2 or not all(map(is_finite_number, split)):
        reason = f"{path}, record #{index}: meta.split must be [start, end] in seconds, got {split!r}"
        return ExtractionFailure(feature_id, None, reason)
    return MediaItem(feature_id, found.path, (float(split[0]), float(split[1])))


def _coco_video_id(path: Path, index: int, record) -> str:
    if not isinstance(record, dict) or not isinstance(record.get("image_id"), str):
        raise ValueError(f"{path}, annotation #{index}: expected an object with a string 'image_id'.")
    return Path(record["image_id"]).stem


def stored_id(video_id: str, is_stored: Callable[[str], bool]) -> str:
    """
    The id under which a video (or its feature) is stored: `video_id`, or, for an ActivityNet id (`v_` prefix) not
    stored under it but stored without the prefix, the id without it (ActivityNet videos and features go by both).
    """
    if not is_stored(video_id) and video_id.startswith("v_") and is_stored(video_id[2:]):
        return video_id[2:]
    return video_id


class VideoFolder:
    """
    The videos of a folder by id: `{root}/{id}.*` with a video extension ([`VIDEO_EXTENSIONS`], in any letter case;
    the first of them where several match), found from one listing of the folder rather than one look-up per id.

    Raises:
        FileNotFoundError: when `root` is not a folder.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"Video folder not found: {self.root}")
        rank = {extension: position for position, extension in enumerate(VIDEO_EXTENSIONS)}
        self._videos: dict[str, Path] = {}
        with os.scandir(self.root) as entries:
            for entry in entries:
                path = Path(entry.path)
                if path.suffix.lower() not in rank or not entry.is_file():
                    continue
                known = self._videos.get(path.stem)
                if known is None or rank[path.suffix.lower()] < rank[known.suffix.lower()]:
                    self._videos[path.stem] = path

    def path(self, video_id: str) -> Path:
        """
        The video of `video_id`, or of the id without its `v_` prefix where only that one has a video
        ([`stored_id`]).

        Raises:
            FileNotFoundError: `no video named ID.* in ROOT` (`... nor ID-without-v_.*` for a `v_` id).
        """
        path = self._videos.get(stored_id(video_id, self._videos.__contains__))
        if path is None:
            also = f" nor {video_id[2:]}.*" if video_id.startswith("v_") else ""
            raise FileNotFoundError(f"no video named {video_id}.*{also} in {self.root}")
        return path


def find_video(video_dir: str | os.PathLike, video_id: str) -> Path:
    """The video of `video_id` in `video_dir`: [`VideoFolder.path`], for one look-up."""
    return VideoFolder(video_dir).path(video_id)


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
