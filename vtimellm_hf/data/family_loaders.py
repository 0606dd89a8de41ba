"""Loaders for the training data of LongVALE-LLM and AVicuna: the package's one schema, plus each record's streams.

The files are VTimeLLM's dialogues (`id`, `source`, `conversations`, optional `meta {duration, token}`), read by the
parser, checks and skip reports of [`vtimellm_hf.data.loaders`]; each record also says which feature streams it has
and where its rows come from ([`FAMILY_RECORD_FEATURES`]):

```python
{
    ...,                                  # the columns of RECORD_FEATURES
    "media": "video",                     # "video", "image" (one row) or "audio" (audio rows alone, AVicuna)
    "streams": ["video", "audio"],        # the streams whose features exist for this record
    "sub_videos": [],                     # AVicuna's PU-VALOR: [{"video_id", "rows"}, ...] whose rows are joined
}
```

* [`load_longvale`]: LongVALE's SFT files (boundary perception, instruction tuning). Features by the record's `id` in
  three folders or stores (video, audio, speech); a record without an audio or speech file lacks that stream (its
  rows are absent, as the original's `None`), and the loader logs how many records lack each.
* [`load_avicuna`]: AVicuna's stage 1-4 files. A `<image>` record is a one-row video, an `<audio>` record has audio
  rows alone, any other a video; a video record has audio where its `source` is one the original loads audio for
  ([`AVICUNA_AUDIO_SOURCES`]), and a listed source without its audio file is a bad record (the original drew another
  record instead). PU-VALOR (`source` "pseudo-valor") joins its `meta.sub_videos`: `int(scale * 10)` rows of each
  sub-video's features (evenly spaced, `linspace`) and all of its audio rows; a missing sub-video gives zero rows
  there, as the original (counted in the log). The row fitting of training (video rows `floor(j * L / N_v)`, audio rows
  repeated or cut, zero audio rows for a video without audio) is the collator's
  ([`vtimellm_hf.training.family_collator`]), at the `av_ratio` of the stage.
"""

import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import datasets

from ..model.processing_vtime import VIDEO_TOKEN
from . import loaders
from .loaders import IMAGE_TOKEN, RECORD_FEATURES, OnError, PathLike, SupportsFeatureShape, _RecordError

logger = logging.getLogger(__name__)

__all__ = [
    "AUDIO_TOKEN",
    "AVICUNA_AUDIO_SOURCES",
    "FAMILY_RECORD_FEATURES",
    "PU_VALOR_SOURCE",
    "load_avicuna",
    "load_longvale",
    "pu_valor_rows",
]

FAMILY_RECORD_FEATURES = datasets.Features(
    {
        **RECORD_FEATURES,
        "media": datasets.Value("string"),
        "streams": datasets.List(datasets.Value("string")),
        "sub_videos": datasets.List({"video_id": datasets.Value("string"), "rows": datasets.Value("int64")}),
    }
)

AUDIO_TOKEN = "<audio>"
# The sources AVicuna's dataset loads audio features for (`datasets_w_audio` of its train/dataset.py)
AVICUNA_AUDIO_SOURCES = ("pseudo-valor", "unav100", "avsd", "musicqa", "audiocaps", "clotho")
PU_VALOR_SOURCE = "pseudo-valor"


def load_longvale(
    paths: PathLike | Sequence[PathLike],
    *,
    video_store: SupportsFeatureShape,
    audio_store: SupportsFeatureShape | None = None,
    speech_store: SupportsFeatureShape | None = None,
    on_error: OnError = "raise",
    skipped_report: PathLike | None = None,
    expected_rows: int | None = loaders.VIDEO_ROWS,
    widths: dict[str, int] | None = None,
    streaming: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """
    Load LongVALE's SFT files (VTimeLLM's dialogue format; `<image>` is read as `<video>`, as the original).

    Args:
        paths: one JSON file or several, each a list of records.
        video_store, audio_store, speech_store: the features of each stream by record id (see
            `vtimellm_hf.data.features.open_feature_store`); a record must have video features, and has an audio or
            speech stream where that store holds its id (no store: no record has that stream).
        on_error, skipped_report, streaming: as [`vtimellm_hf.data.loaders.load_stage2`].
        expected_rows: video rows per record (100); `None` checks none. Audio and speech rows follow the duration.
        widths: `{stream: width}` to check (e.g. `{"video": 768, "audio": 768, "speech": 1280}`); `None` checks none.

    Returns:
        The records with the columns of [`FAMILY_RECORD_FEATURES`]; `media` is "video" or "image".
    """
    stores = {"video": video_store, "audio": audio_store, "speech": speech_store}
    convert = partial(_convert_longvale, stores=stores, expected_rows=expected_rows, widths=widths or {})
    return _load(paths, convert, on_error, skipped_report, streaming, "LongVALE")


def load_avicuna(
    paths: PathLike | Sequence[PathLike],
    *,
    video_store: SupportsFeatureShape | None,
    audio_store: SupportsFeatureShape | None = None,
    sub_video_store: SupportsFeatureShape | None = None,
    sub_audio_store: SupportsFeatureShape | None = None,
    on_error: OnError = "raise",
    skipped_report: PathLike | None = None,
    widths: dict[str, int] | None = None,
    streaming: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """
    Load an AVicuna stage file (stage 1 image captions, stage 2 audio captions, stages 3-4 timed dialogues).

    Args:
        paths: one JSON file or several, each a list of records.
        video_store, audio_store: CLIP and CLAP features by record id (`feat_folder`, `feat_folder_a` of the
            original); `video_store` may be `None` for a file of `<audio>` records only.
        sub_video_store, sub_audio_store: the features of PU-VALOR's sub-videos (`pseudo_feat_folder[_a]`);
            default to `video_store` and `audio_store`.
        on_error, skipped_report, streaming: as [`vtimellm_hf.data.loaders.load_stage2`].
        widths: `{stream: width}` to check (`{"video": 768, "audio": 512}`); `None` checks none.

    Returns:
        The records with the columns of [`FAMILY_RECORD_FEATURES`].
    """
    stores = {"video": video_store, "audio": audio_store}
    sub_stores = {"video": sub_video_store or video_store, "audio": sub_audio_store or audio_store}
    convert = partial(_convert_avicuna, stores=stores, sub_stores=sub_stores, widths=widths or {})
    return _load(paths, convert, on_error, skipped_report, streaming, "AVicuna")


def pu_valor_rows(scale: float) -> int:
    """Video rows of one PU-VALOR sub-video: `int(scale * 10)` (truncated), as the original."""
    return int(scale * 10)


# Loading.


def _load(paths, convert, on_error, skipped_report, streaming, model_name: str):
    if isinstance(paths, (str, os.PathLike)):
        paths = (paths,)
    # The parser, checks and skip report of the VTimeLLM loaders, with the family's schema; the feature checks are
    # in `convert` (a record's streams depend on which stores hold it)
    gen_kwargs = {
        "checked": loaders._generator_kwargs(
            tuple(paths), convert=convert, on_error=on_error, skipped_report=skipped_report, feature_store=None,
            expected_rows=None, expected_dim=None,
        ),  # fmt: skip
        "model_name": model_name,
    }
    if streaming:
        return datasets.IterableDataset.from_generator(
            _counted, features=FAMILY_RECORD_FEATURES, gen_kwargs=gen_kwargs
        )
    return loaders._build_dataset(_counted(**gen_kwargs), FAMILY_RECORD_FEATURES)


def _counted(checked: dict, model_name: str) -> Iterator[dict]:
    """The valid records (`checked`: the VTimeLLM loaders' generator arguments), then how many lack each stream."""
    total, present, zero_filled = 0, Counter(), 0
    for example in loaders._generate_examples(**checked):
        total += 1
        present.update(example["streams"])
        zero_filled += example.pop("_missing_sub_videos")
        yield example
    missing = {name: total - present[name] for name in ("video", "audio", "speech") if present[name] < total}
    if missing:
        logger.info("%s records without a stream, of %d: %s.", model_name, total,
                    ", ".join(f"{name} {count}" for name, count in missing.items()))  # fmt: skip
    if zero_filled:
        logger.warning("%d PU-VALOR sub-videos have no features: zero rows in their place, as the original.",
                       zero_filled)  # fmt: skip


# Records.


def _convert_longvale(record: Any, stores: dict, expected_rows: int | None, widths: dict) -> dict:
    media = "image" if _first_turn_holds(record, IMAGE_TOKEN) else "video"
    example = _dialogue(record, {IMAGE_TOKEN: VIDEO_TOKEN}, "longvale")
    _check(stores["video"], "video", example["video_id"], 1 if media == "image" else expected_rows, widths)
    streams = ["video"]
    for name in ("audio", "speech"):
        store = stores[name]
        if store is not None and example["video_id"] in store:
            _check(store, name, example["video_id"], None, widths)
            streams.append(name)
    return {**example, "media": media, "streams": streams, "sub_videos": [], "_missing_sub_videos": 0}


def _convert_avicuna(record: Any, stores: dict, sub_stores: dict, widths: dict) -> dict:
    if _first_turn_holds(record, AUDIO_TOKEN):
        media = "audio"
    elif _first_turn_holds(record, IMAGE_TOKEN):
        media = "image"
    else:
        media = "video"
    example = _dialogue(record, {IMAGE_TOKEN: VIDEO_TOKEN, AUDIO_TOKEN: VIDEO_TOKEN}, "avicuna")
    video_id, source = example["video_id"], example["source"]
    sub_videos, missing = [], 0
    if media == "audio":
        _check(stores["audio"], "audio", video_id, None, widths)
        return {**example, "media": media, "streams": ["audio"], "sub_videos": [], "_missing_sub_videos": 0}
    if source == PU_VALOR_SOURCE:
        sub_videos = _pu_valor_parts(record)
        for part in sub_videos:
            if part["video_id"] in _required(sub_stores["video"], "video", PU_VALOR_SOURCE):
                _check(sub_stores["video"], "video", part["video_id"], None, widths)
            else:
                missing += 1
    else:
        _check(stores["video"], "video", video_id, 1 if media == "image" else None, widths)
    streams = ["video"]
    if media == "video" and source in AVICUNA_AUDIO_SOURCES:
        if source == PU_VALOR_SOURCE:
            audio_store = _required(sub_stores["audio"], "audio", source)
            for part in sub_videos:
                if part["video_id"] in audio_store:
                    _check(audio_store, "audio", part["video_id"], None, widths)
        else:
            _check(stores["audio"], "audio", video_id, None, widths)
        streams.append("audio")
    return {**example, "media": media, "streams": streams, "sub_videos": sub_videos, "_missing_sub_videos": missing}


def _first_turn_holds(record: Any, token: str) -> bool:
    try:
        return token in record["conversations"][0]["value"]
    except (KeyError, IndexError, TypeError):
        return False  # the dialogue parser names what is wrong


def _dialogue(record: Any, replacements: dict[str, str], default_source: str) -> dict:
    """The record as a timed VTimeLLM dialogue, its first turn's placeholders read as `<video>` (as the originals)."""
    if any(_first_turn_holds(record, token) for token in replacements):
        first = dict(record["conversations"][0])
        for token, replacement in replacements.items():
            first["value"] = first["value"].replace(token, replacement)
        record = {**record, "conversations": [first, *record["conversations"][1:]]}
    return loaders._convert_dialogue(record, require_meta=False, default_source=default_source)


def _pu_valor_parts(record: dict) -> list[dict]:
    meta = record.get("meta")
    sub_videos = meta.get("sub_videos") if isinstance(meta, dict) else None
    scales = meta.get("scale") if isinstance(meta, dict) else None
    if not isinstance(sub_videos, list) or not isinstance(scales, list) or len(sub_videos) != len(scales):
        raise _RecordError("a PU-VALOR record needs meta.sub_videos and meta.scale, two lists of one length, found "
                           f"{loaders._describe(sub_videos)} and {loaders._describe(scales)}")  # fmt: skip
    parts = []
    for index, (sub_id, scale) in enumerate(zip(sub_videos, scales)):
        if not isinstance(sub_id, str) or not sub_id:
            raise _RecordError(f"meta.sub_videos[{index}] must be a non-empty string, found "
                               f"{loaders._describe(sub_id)}")  # fmt: skip
        scale = loaders._finite_number(scale, f"meta.scale[{index}]")
        if pu_valor_rows(scale) < 1:
            raise _RecordError(f"meta.scale[{index}] = {scale} gives int(scale * 10) = {pu_valor_rows(scale)} rows")
        parts.append({"video_id": sub_id, "rows": pu_valor_rows(scale)})
    return parts


def _required(store: SupportsFeatureShape | None, stream: str, source: str) -> SupportsFeatureShape:
    if store is None:
        raise _RecordError(f"a {source!r} record has {stream} features, but no {stream} store was given")
    return store


def _check(store, stream: str, feature_id: str, rows: int | None, widths: dict) -> None:
    try:
        loaders._check_features(_required(store, stream, "this"), feature_id, rows, widths.get(stream))
    except _RecordError as error:
        raise _RecordError(f"{stream} {error}") from None
