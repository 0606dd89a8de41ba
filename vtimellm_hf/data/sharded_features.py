"""Features in a sharded `datasets` store, for more ids than one safetensors file holds.

A consolidated safetensors file ([`~vtimellm_hf.data.features.consolidate_features`]) names every tensor in a JSON
header that the format caps at 100 MB, about a million ids; InternVid-scale data goes far past that. The sharded
store is a `datasets.Dataset` saved with `save_to_disk` (Arrow shards of `max_shard_size` each), one row per
feature, rows sorted by id:

| column | type | what |
|---|---|---|
| `id` | `string` | the feature id (a video or image id) |
| `features` | `Array2D((None, D), "float16")` | `(num_frames, D)` for a video, `(1, D)` for an image |
| `image` | `bool` | whether the feature is an image's `(D,)` vector, given back in that shape |

`datasets.load_from_disk` opens it, `Dataset.push_to_hub` publishes it (and `load_dataset(...).save_to_disk(DIR)`
brings it back), and [`ShardedFeatureStore`] reads it like the folder of `.npy` files: `load` gives one feature as
stored, read from the memory-mapped shards without copying any other, `shape` reads none. Ids are found by binary
search over the sorted id column, so a process holds no index of its own, however many ids there are.
"""

import os
import shutil
from bisect import bisect_right
from pathlib import Path

import numpy as np

from ..files import remove_stale_temporaries, temporary_path
from .npy_features import (
    FEATURE_DTYPE,
    FeatureNotFoundError,
    FeatureStore,
    NpyFeatureStore,
    load_checked_feature,
    read_npy_header,
)

__all__ = ["DEFAULT_MAX_SHARD_SIZE", "ShardedFeatureStore", "is_sharded_store", "save_sharded_features"]

DEFAULT_MAX_SHARD_SIZE = "500MB"
# Written by `Dataset.save_to_disk` beside the shards
_STATE_FILE = "state.json"


def is_sharded_store(path: str | os.PathLike) -> bool:
    """Whether `path` is a folder written by `Dataset.save_to_disk`."""
    return (Path(path) / _STATE_FILE).is_file()


def _store_features(dim: int):
    from datasets import Array2D, Features, Value

    return Features({"id": Value("string"), "features": Array2D((None, dim), "float16"), "image": Value("bool")})


class ShardedFeatureStore(FeatureStore):
    """
    Features in a sharded `datasets` store made by [`save_sharded_features`], read lazily.

    The store pickles without its tables, which each process (a `DataLoader` worker) maps again on first use.

    Raises:
        FileNotFoundError: when `path` is not a folder written by `save_to_disk`.
        ValueError: naming the folder, when it does not hold the columns of a feature store, or its ids are not
            sorted and distinct.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not is_sharded_store(self.path):
            raise FileNotFoundError(f"No sharded feature store at {self.path}: it has no {_STATE_FILE}.")
        self._tables = None
        self._open()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._tables = None

    def _open(self) -> "_Tables":
        if self._tables is None:
            self._tables = _Tables(self.path)
        return self._tables

    def _row(self, feature_id: object) -> int | None:
        return self._open().row(feature_id) if isinstance(feature_id, str) else None

    def _existing_row(self, feature_id: str) -> int:
        row = self._row(feature_id)
        if row is None:
            raise FeatureNotFoundError(f"No feature {feature_id!r} in {self.path}.")
        return row

    def __contains__(self, feature_id: object) -> bool:
        return self._row(feature_id) is not None

    def __len__(self) -> int:
        return self._open().rows

    def load(self, feature_id: str) -> np.ndarray:
        tables = self._open()
        array, image = tables.feature(self._existing_row(feature_id), feature_id)
        # A copy, as `np.load` gives: the view is read-only and lives as long as the memory map
        return (array[0] if image else array).copy()

    def shape(self, feature_id: str) -> tuple[int, ...]:
        tables = self._open()
        array, image = tables.feature(self._existing_row(feature_id), feature_id)
        return (array.shape[1],) if image else array.shape

    def location(self, feature_id: str) -> str:
        return str(self.path)

    def ids(self) -> list[str]:
        return self._open().ids.to_pylist()


class _Tables:
    """The columns of a store as memory-mapped Arrow arrays, and numpy views of their buffers, per shard."""

    def __init__(self, path: Path):
        import datasets
        import pyarrow as pa
        import pyarrow.compute as pc

        try:
            dataset = datasets.load_from_disk(str(path))
        except Exception as error:  # datasets raises many kinds on a damaged folder
            raise ValueError(f"{path}: not a readable datasets folder ({type(error).__name__}: {error}).") from error
        if not isinstance(dataset, datasets.Dataset):
            raise ValueError(f"{path}: a DatasetDict of splits {list(dataset)}, expected one Dataset of features.")
        features = dataset.features
        column = features.get("features")
        if set(features) != {"id", "features", "image"} or not isinstance(column, datasets.Array2D) or (
            column.dtype != "float16" or column.shape[0] is not None or features["id"] != datasets.Value("string")
        ):
            raise ValueError(
                f"{path}: expected the columns of a feature store, id (string), features (Array2D((None, D), "
                f"float16)) and image (bool); found {features}. Make one with `vtimellm-hf consolidate-features`."
            )
        self.dim = column.shape[1]
        table = dataset.data
        self.ids = table.column("id")
        self.rows = len(self.ids)
        self.images = table.column("image").to_numpy()
        self._features = table.column("features")
        if self.ids.null_count or self._features.null_count:
            raise ValueError(f"{path}: the store holds null ids or features.")
        self._starts = np.cumsum([0, *(len(chunk) for chunk in self.ids.chunks)])
        self._views = [None] * self.ids.num_chunks
        # Each shard's ids as (offsets, UTF-8 bytes) views of the memory map: bytes compare as the strings sort
        self._id_buffers = []
        for chunk in self.ids.chunks:
            _, offsets, data = chunk.buffers()
            offset_type = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
            offsets = np.frombuffer(offsets, offset_type)[chunk.offset : chunk.offset + len(chunk) + 1]
            self._id_buffers.append((offsets, memoryview(data) if data is not None else memoryview(b"")))
        # Binary search needs sorted ids; a duplicate would hide a feature
        for chunk_index, chunk in enumerate(self.ids.chunks):
            if len(chunk) > 1 and not pc.all(pc.less(chunk[:-1], chunk[1:])).as_py():
                raise ValueError(f"{path}: the ids of shard {chunk_index} are not sorted and distinct.")
        self._filled = [index for index, chunk in enumerate(self.ids.chunks) if len(chunk)]
        self._first_keys = [self._key(chunk, 0) for chunk in self._filled]
        for before, chunk in zip(self._filled, self._filled[1:]):
            if not self._key(before, self._length(before) - 1) < self._key(chunk, 0):
                raise ValueError(f"{path}: the ids of shard {chunk} do not follow those of the shard before.")
        self.path = path

    def _length(self, chunk: int) -> int:
        return int(self._starts[chunk + 1] - self._starts[chunk])

    def _key(self, chunk: int, row: int) -> bytes:
        offsets, data = self._id_buffers[chunk]
        return data[offsets[row] : offsets[row + 1]].tobytes()

    def row(self, feature_id: str) -> int | None:
        try:
            key = feature_id.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no stored id
            return None
        position = bisect_right(self._first_keys, key) - 1
        if position < 0:
            return None
        chunk = self._filled[position]
        low, high = 0, self._length(chunk)
        while low < high:
            middle = (low + high) // 2
            if self._key(chunk, middle) < key:
                low = middle + 1
            else:
                high = middle
        found = low < self._length(chunk) and self._key(chunk, low) == key
        return int(self._starts[chunk]) + low if found else None

    def _chunk_views(self, chunk: int):
        """`(row offsets, frame offsets, float16 values)` of a shard: numpy views of the memory-mapped buffers."""
        if self._views[chunk] is None:
            rows = self._features.chunk(chunk).storage  # list<list<halffloat>>: a feature's frames, a frame's values
            frames = rows.values
            self._views[chunk] = (
                rows.offsets.to_numpy(),
                frames.offsets.to_numpy(),
                frames.values.to_numpy(zero_copy_only=True),
            )
        return self._views[chunk]

    def feature(self, row: int, feature_id: str) -> tuple[np.ndarray, bool]:
        """The `(frames, D)` array of a row (a read-only view) and whether it is an image."""
        chunk = bisect_right(self._starts, row) - 1
        local = row - int(self._starts[chunk])
        row_offsets, frame_offsets, values = self._chunk_views(chunk)
        first, last = int(row_offsets[local]), int(row_offsets[local + 1])
        start, end = int(frame_offsets[first]), int(frame_offsets[last])
        if end - start != (last - first) * self.dim:
            raise ValueError(f"{self.path}: feature {feature_id!r} has frames of other sizes than {self.dim} values.")
        return values[start:end].reshape(last - first, self.dim), bool(self.images[row])


def save_sharded_features(
    npy_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    ids=None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """
    Packs a folder of `{id}.npy` features into a sharded `datasets` store that [`ShardedFeatureStore`] reads.

    Every feature is validated first from its header (float16 as the original layout, complete, one feature size D)
    and then as it is packed ([`~vtimellm_hf.data.features.check_feature`]: finite values), so a damaged one fails
    here, by its file, not mid-training. The store is built in a hidden folder beside `output_dir` (it needs about
    twice the features' size there while it is built: `datasets` writes them once and then shards them) and
    renamed into place; an earlier store at `output_dir` is replaced. A killed run leaves the earlier store, or
    none, never part of one, and its leftovers are removed by the next run.

    Args:
        npy_dir: the folder of `{id}.npy` files.
        output_dir: the store's folder.
        ids: the ids to pack (default: every `.npy` file of the folder).
        max_shard_size: the largest shard, in bytes or as `"500MB"` (`Dataset.save_to_disk`'s argument).

    Returns:
        `output_dir`.
    """
    from datasets import Dataset
    from datasets.exceptions import DatasetGenerationError

    store = NpyFeatureStore(npy_dir)
    ids = sorted(set(ids)) if ids is not None else store.ids()
    if not ids:
        raise ValueError(f"No .npy features to consolidate in {store.folder}.")
    shapes = {feature_id: _checked_shape(store, feature_id) for feature_id in ids}
    dims = {shape[-1] for shape in shapes.values()}
    if len(dims) > 1:
        by_dim = {}
        for feature_id, shape in shapes.items():
            by_dim.setdefault(shape[-1], feature_id)
        examples = ", ".join(f"{feature_id!r} has {dim}" for dim, feature_id in by_dim.items())
        raise ValueError(f"{store.folder}: features of one store share their size D, but {examples}.")

    def rows(ids: list[str]):
        for feature_id in ids:
            array = load_checked_feature(store, feature_id)
            if array.shape != shapes[feature_id] or array.dtype.newbyteorder("=") != FEATURE_DTYPE:
                raise ValueError(f"{store.folder}: feature {feature_id!r} changed while it was consolidated.")
            frames = np.asarray(array, dtype=FEATURE_DTYPE).reshape(-1, array.shape[-1])
            yield {"id": feature_id, "features": frames, "image": array.ndim == 1}

    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(output_dir.parent)
    if output_dir.exists() and not is_sharded_store(output_dir):
        raise ValueError(f"{output_dir} exists and is not a sharded feature store: not replacing it.")
    work = temporary_path(output_dir)
    work.mkdir()
    try:
        try:
            dataset = Dataset.from_generator(
                rows, features=_store_features(dims.pop()), cache_dir=str(work / "cache"), gen_kwargs={"ids": ids},
                fingerprint=work.name.removeprefix("."),
            )  # fmt: skip
        except DatasetGenerationError as error:
            # A damaged feature, named by `rows`, rather than datasets' generic wrapper
            if isinstance(error.__cause__, (OSError, ValueError)):
                raise error.__cause__ from None
            raise
        dataset.save_to_disk(str(work / "store"), max_shard_size=max_shard_size)
        del dataset
        if output_dir.exists():
            os.replace(output_dir, work / "previous")
        os.replace(work / "store", output_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return output_dir


def _checked_shape(store: NpyFeatureStore, feature_id: str) -> tuple[int, ...]:
    path = store.location(feature_id)
    header = read_npy_header(path)
    if header.dtype.newbyteorder("=") != FEATURE_DTYPE:
        raise ValueError(
            f"{path}: feature {feature_id!r} has dtype {header.dtype}; a sharded store holds float16 features (the "
            "original layout)."
        )
    if not header.complete:
        raise ValueError(
            f"{path}: truncated feature {feature_id!r}: the header announces {header.data_bytes} bytes of data, the "
            f"file holds {header.file_size - header.data_offset}."
        )
    if len(header.shape) not in (1, 2) or 0 in header.shape:
        raise ValueError(f"{path}: feature {feature_id!r} has shape {header.shape}, expected (frames, D) or (D,).")
    return header.shape
