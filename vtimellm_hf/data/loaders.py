"""Loaders for the training data of the three VTimeLLM stages, as `datasets` datasets of one common schema.

* Stage 1, [`load_stage1`]: LLaVA's LCS-558K captions (`blip_laion_cc_sbu_558k.json`); an image is a 1-row video.
* Stage 2, [`load_stage2`]: VTimeLLM's InternVid dialogues (`stage2.json`).
* Stage 3, [`load_stage3`]: VTimeLLM's ActivityNet / DiDeMo dialogues and VideoInstruct-100K QA pairs
  (`stage3.json`, and the raw `VideoInstruct_Dataset.json` if wanted), from one file or several.

Every loader returns records of [`RECORD_FEATURES`]:

```python
{
    "id": "3n3oCNerzV0",            # the record's id in its file
    "source": "internvid",          # "lcs558k", "internvid", "anet", "didemo", "videoinstruct", ...
    "video_id": "3n3oCNerzV0",      # the features to load: `{video_id}.npy`
    "messages": [{"role": "user", "content": "<video>\\nDescribe ..."},
                 {"role": "assistant", "content": "From 00 to 17, ..."}],
    "duration": 54.2,               # seconds, or None where the record has none (images, VideoInstruct)
}
```

As in the original training code, every `<sK>` / `<eK>` placeholder of every turn is replaced by the two-digit index
of its time in `meta.token` (`format_index(seconds_to_index(seconds, meta.duration))`), and the features of a record
are named by its `id`, images of stage 1 too (`{id}.npy`, as the original's training code and the extractor name
them; in LCS-558K the id is the image file's stem).

Files are parsed incrementally, one record at a time, so that neither loading mode holds the whole JSON text or
all its Python objects in memory (LCS-558K is 558k records): `streaming=False` converts the records to an in-memory
Arrow table in batches, `streaming=True` yields them lazily from an [`~datasets.IterableDataset`], which reads
nothing until iterated. Both modes go through the same parser and checks, so they give the same records.

Every record is checked. What is wrong with a record (a missing or mistyped field, an unknown role, a placeholder
without a time, a non-positive duration, missing or misshapen features) is reported with its file, index and id;
`on_error` decides whether that raises a `ValueError` or skips the record. A file that is not UTF-8 or not a JSON
array of records always raises, naming the file and the line: nothing after a syntax error can be trusted.
"""

import json
import logging
import math
import os
import posixpath
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import datasets
import pyarrow as pa

from ..model.processing_vtime import VIDEO_TOKEN, format_index, seconds_to_index
from .json_array import iter_json_array

logger = logging.getLogger(__name__)

__all__ = [
    "FEATURE_DIM",
    "IMAGE_ROWS",
    "RECORD_FEATURES",
    "VIDEO_ROWS",
    "SupportsFeatureShape",
    "load_stage1",
    "load_stage2",
    "load_stage3",
]

PathLike = str | os.PathLike
OnError = Literal["raise", "skip"]

RECORD_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "source": datasets.Value("string"),
        "video_id": datasets.Value("string"),
        "messages": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "duration": datasets.Value("float64"),
    }
)

# Feature shapes of the original: 100 CLIP ViT-L/14 image embeddings per video, one per image.
VIDEO_ROWS = 100
IMAGE_ROWS = 1
FEATURE_DIM = 768

IMAGE_TOKEN = "<image>"
_ROLES = {"human": "user", "gpt": "assistant"}
_PLACEHOLDER = re.compile(r"<[se]\d+>")
# Records converted to Arrow at a time when building a map-style dataset: bounds the Python objects held at once.
_BATCH_SIZE = 10_000


class SupportsFeatureShape(Protocol):
    """
    What the loaders need of a feature store to check features: membership and shape, by feature id.

    The stores of `vtimellm_hf.data.features` (see `open_feature_store`) have both; any object with these two
    methods will do.
    """

    def __contains__(self, feature_id: str) -> bool: ...

    def shape(self, feature_id: str) -> tuple[int, ...]: ...


def load_stage1(
    path: PathLike,
    *,
    on_error: OnError = "raise",
    skipped_report: PathLike | None = None,
    feature_store: SupportsFeatureShape | None = None,
    expected_rows: int | None = IMAGE_ROWS,
    expected_dim: int | None = FEATURE_DIM,
    streaming: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """
    Load LLaVA's LCS-558K captions (`blip_laion_cc_sbu_558k.json`), the stage-1 data.

    A record is `{"id", "image", "conversations": [{"from": "human", "value": "...<image>..."}, {"from": "gpt",
    "value": caption}]}`. It becomes a user turn `"<video>\\n" + question` (the image is a 1-row video, and the
    placeholder moves to the front, wherever the record had it, as LLaVA's preprocessing does; stage 1 trains with
    the "plain" template, which keeps only the placeholder of that turn anyway) and an assistant turn, the caption.
    `video_id` is the record's `id` (the original loads `{id}.npy`; in LCS-558K the id is the image file's stem:
    `"004539375"` for `"00453/004539375.jpg"`), `source` is `"lcs558k"` and `duration` is `None`.

    Args:
        path: the JSON file, a list of records.
        on_error: `"raise"` raises a `ValueError` naming the first invalid record; `"skip"` leaves invalid records
            out, logs how many, and lists them in `skipped_report` (or in the log where it is not given).
        skipped_report: with `on_error="skip"`, a file to write the skipped records to, one JSON object a line:
            `{"file", "index", "id", "reason"}` (written, possibly empty, once all records have been read).
        feature_store: where the features live; when given, a record whose features are missing or of the wrong
            shape is invalid. See [`SupportsFeatureShape`].
        expected_rows: feature rows per record (an image's `(768,)` vector counts as one row); `None` checks none.
        expected_dim: feature width; `None` checks none.
        streaming: return an [`~datasets.IterableDataset`] that reads the file lazily, checks included, instead of
            an in-memory [`~datasets.Dataset`]. Errors then surface while iterating, and the skip report is written
            when an iteration reaches the end. It is one shard: of several `DataLoader` workers, one reads.

    Returns:
        The records, in file order, with the columns of [`RECORD_FEATURES`].

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: on bytes that are not UTF-8, invalid JSON, a top level that is not a list, and, with
            `on_error="raise"`, on the first invalid record, naming the file, the record's index and its id.
    """
    return _load(
        (path,), _convert_lcs_record, on_error, skipped_report, feature_store, expected_rows, expected_dim, streaming
    )


def load_stage2(
    path: PathLike,
    *,
    on_error: OnError = "raise",
    skipped_report: PathLike | None = None,
    feature_store: SupportsFeatureShape | None = None,
    expected_rows: int | None = VIDEO_ROWS,
    expected_dim: int | None = FEATURE_DIM,
    streaming: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """
    Load VTimeLLM's stage-2 InternVid dialogues (`stage2.json`).

    A record is `{"source", "id", "conversations": [{"from": "human"|"gpt", "value"}, ...], "meta": {"split",
    "duration", "token": {"<s0>": seconds, "<e0>": seconds, ...}}}`; `meta.split` is optional. Turns alternate
    human / gpt, starting with human and ending with gpt; the first human turn holds the one `<video>`
    placeholder (in the released data, as its first line). Each placeholder of `meta.token` is replaced in every
    turn, as the original does, and a `<sK>` / `<eK>` left without a time makes the record invalid. `video_id` is
    `id`; `source` defaults to `"internvid"`.

    Args:
        path: the JSON file, a list of records.
        on_error, skipped_report, feature_store, expected_dim, streaming: see [`load_stage1`].
        expected_rows: feature rows per video (100 in the original); `None` checks none.

    Returns:
        The records, in file order, with the columns of [`RECORD_FEATURES`].

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: see [`load_stage1`].
    """
    return _load(
        (path,), _convert_stage2_record, on_error, skipped_report, feature_store, expected_rows, expected_dim, streaming
    )


def load_stage3(
    paths: PathLike | Sequence[PathLike],
    *,
    on_error: OnError = "raise",
    skipped_report: PathLike | None = None,
    feature_store: SupportsFeatureShape | None = None,
    expected_rows: int | None = VIDEO_ROWS,
    expected_dim: int | None = FEATURE_DIM,
    streaming: bool = False,
) -> datasets.Dataset | datasets.IterableDataset:
    """
    Load VTimeLLM's stage-3 data: ActivityNet / DiDeMo dialogues and VideoInstruct-100K QA pairs.

    Records of three layouts are accepted, mixed freely, from one file or several (read in the order given):

    * Timed dialogues, as for [`load_stage2`]; `source` (`"anet"`, `"didemo"`) is required.
    * Dialogues without `meta` (the VideoInstruct-100K part of `stage3.json`): no placeholders allowed, `duration`
      is `None`, `source` defaults to `"videoinstruct"`.
    * Raw VideoInstruct-100K pairs `{"video_id", "q", "a"}` (`VideoInstruct_Dataset.json`): the user turn is
      `"<video>\\n" + q`, the assistant turn `a`; `id` and `video_id` are `video_id`, `source` is
      `"videoinstruct"`.

    Args:
        paths: one JSON file or a list of them, each a list of records.
        on_error, skipped_report, feature_store, expected_dim, streaming: see [`load_stage1`]; the skip report
            covers all files.
        expected_rows: feature rows per video (100 in the original); `None` checks none.

    Returns:
        The records of all files, in order, with the columns of [`RECORD_FEATURES`].

    Raises:
        FileNotFoundError: if a file does not exist.
        ValueError: see [`load_stage1`].
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = (paths,)
    return _load(
        tuple(paths), _convert_stage3_record, on_error, skipped_report, feature_store, expected_rows, expected_dim,
        streaming,
    )


# Loading.


def _load(
    paths: tuple[PathLike, ...],
    convert: Callable[[Any], dict],
    on_error: OnError,
    skipped_report: PathLike | None,
    feature_store: SupportsFeatureShape | None,
    expected_rows: int | None,
    expected_dim: int | None,
    streaming: bool,
) -> datasets.Dataset | datasets.IterableDataset:
    gen_kwargs = _generator_kwargs(
        paths, convert=convert, on_error=on_error, skipped_report=skipped_report, feature_store=feature_store,
        expected_rows=expected_rows, expected_dim=expected_dim,
    )  # fmt: skip
    if streaming:
        return datasets.IterableDataset.from_generator(
            _generate_examples, features=RECORD_FEATURES, gen_kwargs=gen_kwargs
        )
    return _build_dataset(_generate_examples(**gen_kwargs))


def _generator_kwargs(paths: tuple[PathLike, ...], **settings: Any) -> dict:
    """
    The arguments of [`_generate_examples`] (`paths` and its `settings`: `convert`, `on_error`, ...), checked: the
    family's loaders read files through it too.
    """
    if settings["on_error"] not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not {settings['on_error']!r}")
    if not paths:
        raise ValueError("No data file given.")
    for path in paths:
        # Checked now rather than on first read, which for a streaming dataset may be well into training.
        if not Path(path).is_file():
            raise FileNotFoundError(f"No such data file: {os.fspath(path)}")
    # A tuple, not a list: `datasets` would split a list in `gen_kwargs` into shards, and the skip report must cover
    # all files.
    return {"paths": tuple(os.fspath(path) for path in paths), **settings}


def _build_dataset(examples: Iterator[dict], features: datasets.Features = RECORD_FEATURES) -> datasets.Dataset:
    """
    An in-memory dataset of `examples` with the columns of `features` (the family's loaders add theirs), converted
    to Arrow `_BATCH_SIZE` records at a time.

    `Dataset.from_generator` is not used: it caches the result under a fingerprint of the file *path*, so an edited
    file would silently load its old records.
    """
    parts = []
    columns = {name: [] for name in features}
    for example in examples:
        for name in columns:
            columns[name].append(example[name])
        if len(columns["id"]) == _BATCH_SIZE:
            parts.append(_columns_to_dataset(columns, features))
            columns = {name: [] for name in features}
    if columns["id"] or not parts:
        parts.append(_columns_to_dataset(columns, features))
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def _columns_to_dataset(columns: dict[str, list], features: datasets.Features = RECORD_FEATURES) -> datasets.Dataset:
    # Arrow arrays of the schema's types, given as such: `from_dict` would otherwise run the per-example Python
    # encoding of `Features`, which the plain strings and numbers of this schema do not need and which dominates the
    # loading time of large files.
    schema = features.arrow_schema
    arrays = {name: pa.array(values, type=schema.field(name).type) for name, values in columns.items()}
    return datasets.Dataset.from_dict(arrays, features=features)


def _generate_examples(
    paths: tuple[str, ...],
    convert: Callable[[Any], dict],
    on_error: OnError,
    skipped_report: PathLike | None,
    feature_store: SupportsFeatureShape | None,
    expected_rows: int | None,
    expected_dim: int | None,
) -> Iterator[dict]:
    """The valid records of `paths` in the common schema; invalid ones raise or are skipped, per `on_error`."""
    skipped = []
    total = 0
    for path in paths:
        for index, record in iter_json_array(path):
            total += 1
            try:
                example = convert(record)
                if feature_store is not None:
                    _check_features(feature_store, example["video_id"], expected_rows, expected_dim)
            except _RecordError as error:
                record_id = _record_id(record)
                if on_error == "raise":
                    raise ValueError(f"{_where(path, index, record_id)}: {error}") from None
                skipped.append({"file": path, "index": index, "id": record_id, "reason": str(error)})
                continue
            yield example
    if on_error == "skip":
        _report_skipped(skipped, total, skipped_report)


def _report_skipped(skipped: list[dict], total: int, skipped_report: PathLike | None) -> None:
    if skipped_report is not None:
        with open(skipped_report, "w", encoding="utf-8") as file:
            for entry in skipped:
                # ASCII escapes: a record id may hold a lone surrogate, which UTF-8 cannot write.
                file.write(json.dumps(entry) + "\n")
    if not skipped:
        return
    if skipped_report is not None:
        logger.warning(
            "Skipped %d of %d records; they are listed in %s.", len(skipped), total, os.fspath(skipped_report)
        )
    else:
        lines = "\n".join(
            f"  {_where(entry['file'], entry['index'], entry['id'])}: {entry['reason']}" for entry in skipped
        )
        logger.warning("Skipped %d of %d records:\n%s", len(skipped), total, lines)


def _where(path: str, index: int, record_id: str | None) -> str:
    return f"{path}, record {index} ({'no id' if record_id is None else f'id {record_id!r}'})"


def _check_features(
    store: SupportsFeatureShape, feature_id: str, expected_rows: int | None, expected_dim: int | None
) -> None:
    if feature_id not in store:
        raise _RecordError(f"features {feature_id!r} are missing from the feature store")
    try:
        shape = tuple(store.shape(feature_id))
    except (OSError, ValueError) as error:
        raise _RecordError(f"features {feature_id!r} cannot be read: {error}") from None
    # An image is stored as one `(D,)` vector: one row.
    rows, dim = (1, shape[0]) if len(shape) == 1 else shape if len(shape) == 2 else (None, None)
    if (
        rows is None
        or (expected_rows is not None and rows != expected_rows)
        or (expected_dim is not None and dim != expected_dim)
    ):
        rows_text = "rows" if expected_rows is None else expected_rows
        dim_text = "D" if expected_dim is None else expected_dim
        expected = f"({dim_text},) or ({rows_text}, {dim_text})" if expected_rows == 1 else f"({rows_text}, {dim_text})"
        raise _RecordError(f"features {feature_id!r} have shape {shape}, expected {expected}")


# Records.


class _RecordError(ValueError):
    """What is wrong with one record; the loader adds the file, index and id."""


def _convert_lcs_record(record: Any) -> dict:
    _require_object(record)
    record_id = _require_text(record, "id")
    image = _require_text(record, "image")
    turns = _parse_turns(record)
    if len(turns) != 2:
        raise _RecordError(f"an LCS-558K record holds one question and its caption (2 turns), found {len(turns)}")
    question, caption = turns[0][1], turns[1][1]
    placeholders = question.count(IMAGE_TOKEN) + question.count(VIDEO_TOKEN)
    if placeholders != 1:
        raise _RecordError(f"turn 0 must hold one {IMAGE_TOKEN} placeholder, found {placeholders}")
    if IMAGE_TOKEN in caption or VIDEO_TOKEN in caption:
        raise _RecordError("turn 1 (the caption) holds a visual placeholder")
    if not posixpath.basename(image):
        raise _RecordError(f"'image' {image!r} names no file")
    question = question.replace(IMAGE_TOKEN, "").replace(VIDEO_TOKEN, "").strip()
    return {
        "id": record_id,
        "source": "lcs558k",
        "video_id": record_id,
        "messages": [
            {"role": "user", "content": f"{VIDEO_TOKEN}\n{question}"},
            {"role": "assistant", "content": caption},
        ],
        "duration": None,
    }


def _convert_stage2_record(record: Any) -> dict:
    return _convert_dialogue(record, require_meta=True, default_source="internvid")


def _convert_stage3_record(record: Any) -> dict:
    if isinstance(record, dict) and "conversations" not in record and "video_id" in record:
        return _convert_videoinstruct_pair(record)
    # Timed dialogues come from ActivityNet or DiDeMo, which only their `source` tells apart.
    default_source = "videoinstruct" if isinstance(record, dict) and "meta" not in record else None
    return _convert_dialogue(record, require_meta=False, default_source=default_source)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _convert_dialogue(record: Any, require_meta: bool, default_source: str | None) -> dict:
    _require_object(record)
    record_id = _require_text(record, "id")
    if "source" in record:
        source = _require_text(record, "source")
    elif default_source is not None:
        source = default_source
    else:
        raise _RecordError("missing field 'source'")
    turns = _parse_turns(record)
    duration = None
    if "meta" in record:
        meta = record["meta"]
        if not isinstance(meta, dict):
            raise _RecordError(f"'meta' must be an object, found {_describe(meta)}")
        duration = _finite_number(_require(meta, "duration", "meta."), "meta.duration")
        if duration <= 0:
            raise _RecordError(f"meta.duration must be positive, found {meta['duration']!r}")
        if "split" in meta:
            _check_split(meta["split"])
        times = _require(meta, "token", "meta.")
        if not isinstance(times, dict):
            raise _RecordError(f"meta.token must be an object, found {_describe(times)}")
        replacements = [
            (placeholder, _index_text(placeholder, seconds, duration)) for placeholder, seconds in times.items()
        ]
        # A moment that ends before it starts would teach answers like "From 60 to 40", which name no moment
        for placeholder, seconds in times.items():
            end = "<e" + placeholder[2:]
            if placeholder.startswith("<s") and end in times and _is_number(seconds) and _is_number(times[end]):
                if seconds > times[end]:
                    raise _RecordError(f"moment {placeholder[2:-1]} starts after it ends: {placeholder} = {seconds} s, "
                                       f"{end} = {times[end]} s")
        # As the original: each placeholder of meta.token, in order, replaced in every turn.
        replaced = []
        for role, text in turns:
            for placeholder, index_text in replacements:
                text = text.replace(placeholder, index_text)
            replaced.append((role, text))
        turns = replaced
    elif require_meta:
        raise _RecordError("missing field 'meta'")
    for number, (_, text) in enumerate(turns):
        left = _PLACEHOLDER.search(text)
        if left is not None:
            where = "meta.token" if "meta" in record else "the record, which has no 'meta'"
            raise _RecordError(f"turn {number} holds placeholder {left.group()!r}, which has no time in {where}")
    _check_video_placeholder(turns)
    return {
        "id": record_id,
        "source": source,
        "video_id": record_id,
        "messages": [{"role": role, "content": text} for role, text in turns],
        "duration": duration,
    }


def _convert_videoinstruct_pair(record: dict) -> dict:
    video_id = _require_text(record, "video_id")
    question = _require_text(record, "q", allow_empty=True)
    answer = _require_text(record, "a", allow_empty=True)
    turns = [("user", f"{VIDEO_TOKEN}\n{question}"), ("assistant", answer)]
    for number, (_, text) in enumerate(turns):
        left = _PLACEHOLDER.search(text)
        if left is not None:
            raise _RecordError(f"turn {number} holds placeholder {left.group()!r}; VideoInstruct pairs have no times")
    _check_video_placeholder(turns)
    return {
        "id": video_id,
        "source": "videoinstruct",
        "video_id": video_id,
        "messages": [{"role": role, "content": text} for role, text in turns],
        "duration": None,
    }


def _parse_turns(record: dict) -> list[tuple[str, str]]:
    """`(role, text)` of each turn: human / gpt alternating, from a human question to a gpt answer."""
    conversations = _require(record, "conversations")
    if not isinstance(conversations, list) or not conversations:
        raise _RecordError(f"'conversations' must be a non-empty list of turns, found {_describe(conversations)}")
    turns = []
    for number, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise _RecordError(f"turn {number} must be an object, found {_describe(turn)}")
        speaker = _require(turn, "from", f"turn {number}: ")
        if not isinstance(speaker, str) or speaker not in _ROLES:
            raise _RecordError(f"turn {number} has unknown role {speaker!r}; expected 'human' or 'gpt'")
        expected = "human" if number % 2 == 0 else "gpt"
        if speaker != expected:
            raise _RecordError(
                f"turn {number} is from {speaker!r} but should be from {expected!r}: turns alternate human / gpt, "
                "starting with human"
            )
        text = _require(turn, "value", f"turn {number}: ")
        if not isinstance(text, str):
            raise _RecordError(f"turn {number}: 'value' must be a string, found {_describe(text)}")
        _check_encodable(text, f"turn {number}")
        turns.append((_ROLES[speaker], text))
    if len(turns) % 2:
        raise _RecordError(f"the last turn ({len(turns) - 1}) is a question without an answer")
    return turns


def _check_video_placeholder(turns: list[tuple[str, str]]) -> None:
    count = turns[0][1].count(VIDEO_TOKEN)
    if count != 1:
        raise _RecordError(f"turn 0 must hold one {VIDEO_TOKEN} placeholder, found {count}")
    for number, (_, text) in enumerate(turns[1:], start=1):
        if VIDEO_TOKEN in text:
            raise _RecordError(f"turn {number} holds a {VIDEO_TOKEN} placeholder; only turn 0 may")


def _index_text(placeholder: str, seconds: Any, duration: float) -> str:
    """The two-digit index that replaces `placeholder`, from its time in seconds."""
    seconds = _finite_number(seconds, f"meta.token[{placeholder!r}]")
    if seconds < 0:
        raise _RecordError(f"meta.token[{placeholder!r}] is negative: {seconds}")
    try:
        return format_index(seconds_to_index(seconds, duration))
    except OverflowError:
        # seconds / duration overflows to infinity for absurd values, which no index can express.
        raise _RecordError(
            f"meta.token[{placeholder!r}] = {seconds} s cannot be placed in a duration of {duration} s"
        ) from None


def _check_split(split: Any) -> None:
    if not isinstance(split, list) or len(split) != 2:
        raise _RecordError(f"meta.split must be a [start, end] pair, found {_describe(split)}")
    start = _finite_number(split[0], "meta.split start")
    end = _finite_number(split[1], "meta.split end")
    if start < 0 or start >= end:
        raise _RecordError(f"meta.split [{start}, {end}] is not a span of the source video")


# Field helpers.


def _require_object(record: Any) -> None:
    if not isinstance(record, dict):
        raise _RecordError(f"a record must be an object, found {_describe(record)}")


def _require(mapping: dict, field: str, prefix: str = "") -> Any:
    if field not in mapping:
        raise _RecordError(f"{prefix}missing field {field!r}")
    return mapping[field]


def _require_text(record: dict, field: str, allow_empty: bool = False) -> str:
    value = _require(record, field)
    if not isinstance(value, str) or (not value and not allow_empty):
        kind = "a string" if allow_empty else "a non-empty string"
        raise _RecordError(f"{field!r} must be {kind}, found {_describe(value)}")
    _check_encodable(value, repr(field))
    return value


def _check_encodable(text: str, name: str) -> None:
    # JSON may escape lone surrogates ("\ud800"), which decode to a str that no UTF-8 text (nor Arrow) can hold.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise _RecordError(f"{name} holds {text[error.start]!r}, a lone surrogate that is not text") from None


def _finite_number(value: Any, name: str) -> float:
    # bool is an int subclass: `true` in a JSON file is a mistake, not one second.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _RecordError(f"{name} must be a number, found {_describe(value)}")
    try:
        number = float(value)
    except OverflowError:
        raise _RecordError(f"{name} is too large: {_describe(value)}") from None
    if not math.isfinite(number):
        raise _RecordError(f"{name} must be a finite number, found {value!r}")
    return number


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _record_id(record: Any) -> str | None:
    """The id that names a record in messages, as far as it has one."""
    if isinstance(record, dict):
        for field in ("id", "video_id"):
            value = record.get(field)
            if isinstance(value, str):
                return value
    return None
