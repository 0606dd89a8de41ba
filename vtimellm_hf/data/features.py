"""The on-disk layout of precomputed frame features, shared by feature extraction and the training data loaders.

Two layouts hold the same arrays, addressed by a feature id (a video or image id):

* a folder of `{id}.npy` files, the layout of the original VTimeLLM: a video is a float16 array of shape
  `(num_frames, D)` (`(100, 768)` for CLIP ViT-L/14), an image a float16 array of shape `(D,)`. Features made by the
  original code and by [`~vtimellm_hf.data.extract.extract_features`] are interchangeable.
* a consolidated store (see [`consolidate_features`]), so that a training job opens one file or a few shards instead
  of hundreds of thousands of small files: one safetensors file holding one tensor per id (up to about a million
  ids), or a sharded `datasets` store, for any number of ids and for the Hub
  (see [`~vtimellm_hf.data.sharded_features`]).

[`open_feature_store`] returns a [`FeatureStore`] for any of them; [`check_feature`] is the validation the loaders
run on every array they read.
"""

import abc
import json
import math
import os
import re
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..files import atomic_write, remove_stale_temporaries

__all__ = [
    "FEATURE_DTYPE",
    "ConsolidatedFeatureStore",
    "FeatureNotFoundError",
    "FeatureStore",
    "NpyFeatureStore",
    "NpyHeader",
    "check_feature",
    "consolidate_features",
    "feature_path",
    "load_checked_feature",
    "open_feature_store",
    "read_npy_header",
    "remove_stale_temporaries",
    "write_feature",
]

FEATURE_DTYPE = np.dtype(np.float16)
"""The dtype of the original layout; extraction always writes it."""

# float32 features (made by other tools) are accepted by the loaders: the model casts them anyway
_ACCEPTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))
_SAFETENSORS_DTYPES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}
# safetensors refuses headers above 100 MB (its MAX_HEADER_SIZE); at about 100 bytes an entry that is ~1M ids
_SAFETENSORS_MAX_HEADER_BYTES = 100_000_000
_CONSOLIDATED_FORMAT = "vtimellm_hf.features"

class FeatureNotFoundError(KeyError):
    """A feature id that a store does not hold. A `KeyError` whose message reads as written (no added quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NpyHeader(NamedTuple):
    """What the header of a `.npy` file says, read without its data (see [`read_npy_header`])."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    data_offset: int
    file_size: int

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def complete(self) -> bool:
        """Whether the file holds exactly the bytes its header announces (a truncated copy does not)."""
        return self.file_size == self.data_offset + self.data_bytes


def feature_path(folder: str | os.PathLike, feature_id: str) -> Path:
    """
    `{folder}/{feature_id}.npy`, refusing ids that would name a file elsewhere (empty, `.`, `..`, or holding a path
    separator) with a `ValueError` naming the id.
    """
    if not isinstance(feature_id, str) or feature_id in ("", ".", "..") or re.search(r"[/\\\x00]", feature_id):
        raise ValueError(
            f"Invalid feature id {feature_id!r}: an id names the file {{id}}.npy, so it must be a non-empty string "
            "without path separators."
        )
    return Path(folder) / f"{feature_id}.npy"


def write_feature(path: str | os.PathLike, array: np.ndarray) -> None:
    """
    Writes `array` to the `.npy` file `path` atomically ([`~vtimellm_hf.files.atomic_write`]): a reader, or a later
    run, sees the complete old file, the complete new one, or none, never a truncated file.
    """
    with atomic_write(path) as file:
        np.save(file, np.asarray(array), allow_pickle=False)


def read_npy_header(path: str | os.PathLike) -> NpyHeader:
    """
    Reads the header of a `.npy` file (a few hundred bytes), not its data.

    Raises:
        ValueError: naming the file, when it is not a `.npy` file or its header is damaged.
    """
    path = Path(path)
    with open(path, "rb") as file:
        try:
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(file)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(file)
            else:
                # Version 3.0 only exists for structured dtypes with non-Latin-1 field names, never a feature
                raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        except ValueError as error:
            raise ValueError(f"{path}: not a readable .npy file ({error}).") from error
        return NpyHeader(tuple(shape), np.dtype(dtype), fortran_order, file.tell(), os.fstat(file.fileno()).st_size)


def check_feature(
    array: np.ndarray, expected_rows: int | None, expected_dim: int | None, feature_id: str
) -> None:
    """
    Checks one feature array, raising a `ValueError` that names `feature_id` and what is wrong.

    A valid feature is a float16 (the original layout) or float32 numpy array of finite values, of shape
    `(expected_rows, expected_dim)`. An image is a 1-frame video: with `expected_rows=1` the original image layout
    `(expected_dim,)` is accepted too. `None` accepts any number of rows (of a 2-D array, or a 1-D image feature) or
    any feature size.
    """
    if not isinstance(array, np.ndarray):
        raise ValueError(f"Feature {feature_id!r}: expected a numpy array, got {type(array).__name__}.")
    if array.dtype not in _ACCEPTED_DTYPES:
        raise ValueError(
            f"Feature {feature_id!r}: dtype {array.dtype}, expected float16 (the original layout) or float32."
        )
    if array.ndim == 1 and expected_rows in (1, None):
        rows, dim = 1, array.shape[0]
    elif array.ndim == 2:
        rows, dim = array.shape
    else:
        rows = dim = None
    if rows is None or expected_rows not in (None, rows) or expected_dim not in (None, dim):
        rows_text = "rows" if expected_rows is None else str(expected_rows)
        dim_text = "D" if expected_dim is None else str(expected_dim)
        image_note = f" or ({dim_text},) for an image" if expected_rows in (1, None) else ""
        raise ValueError(
            f"Feature {feature_id!r}: shape {tuple(array.shape)}, expected ({rows_text}, {dim_text}){image_note}."
        )
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.argwhere(~finite)
        first = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"Feature {feature_id!r}: {len(bad)} non-finite value(s) (NaN or inf), the first at index {first} "
            f"({array[first]})."
        )


def load_checked_feature(
    store: "FeatureStore", feature_id: str, expected_rows: int | None = None, expected_dim: int | None = None
) -> np.ndarray:
    """The feature of `feature_id` in `store`, checked with [`check_feature`]; its `ValueError` names the file."""
    array = store.load(feature_id)
    try:
        check_feature(array, expected_rows, expected_dim, feature_id)
    except ValueError as error:
        raise ValueError(f"{store.location(feature_id)}: {error}") from error
    return array


class FeatureStore(abc.ABC):
    """
    Read access to precomputed features by id, whatever their layout on disk.

    `load` returns the array as stored: float16 `(num_frames, D)` for a video, `(D,)` for an image in the original
    layout. It does not validate; loaders call [`check_feature`] with the shape they expect.
    """

    @abc.abstractmethod
    def __contains__(self, feature_id: object) -> bool: ...

    @abc.abstractmethod
    def load(self, feature_id: str) -> np.ndarray:
        """The feature array of `feature_id`; a [`FeatureNotFoundError`] (a `KeyError`) names a missing id."""

    @abc.abstractmethod
    def shape(self, feature_id: str) -> tuple[int, ...]:
        """
        The shape of the feature of `feature_id`, read from metadata without loading the array; a `ValueError` names
        a file whose size disagrees with its metadata.
        """

    @abc.abstractmethod
    def ids(self) -> list[str]:
        """The ids of all stored features, sorted."""

    @abc.abstractmethod
    def location(self, feature_id: str) -> str:
        """The file that holds (or would hold) the feature of `feature_id`, for messages."""

    def __len__(self) -> int:
        return len(self.ids())


class NpyFeatureStore(FeatureStore):
    """Features stored as `{folder}/{id}.npy`, the layout of the original VTimeLLM."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"Feature folder not found: {self.folder}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.folder)!r})"

    def __contains__(self, feature_id: object) -> bool:
        try:
            return feature_path(self.folder, feature_id).is_file()
        except ValueError:
            return False

    def _existing_path(self, feature_id: str) -> Path:
        path = feature_path(self.folder, feature_id)
        if not path.is_file():
            raise FeatureNotFoundError(f"No feature {feature_id!r} in {self.folder}: {path.name} does not exist.")
        return path

    def load(self, feature_id: str) -> np.ndarray:
        path = self._existing_path(feature_id)
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as error:
            raise ValueError(f"{path}: cannot read feature {feature_id!r} ({error}).") from error

    def shape(self, feature_id: str) -> tuple[int, ...]:
        path = self._existing_path(feature_id)
        header = read_npy_header(path)
        # A partly copied file has a whole header: without this a loader's check passes it and training fails later
        if not header.complete:
            raise ValueError(
                f"{path}: truncated or padded, {header.file_size} bytes where its header announces "
                f"{header.data_offset + header.data_bytes}"
            )
        return header.shape

    def location(self, feature_id: str) -> str:
        return str(feature_path(self.folder, feature_id))

    def ids(self) -> list[str]:
        # scandir rather than glob: one pass over a folder that may hold hundreds of thousands of files
        with os.scandir(self.folder) as entries:
            return sorted(
                entry.name[: -len(".npy")]
                for entry in entries
                if entry.name.endswith(".npy") and not entry.name.startswith(".") and entry.is_file()
            )


class ConsolidatedFeatureStore(FeatureStore):
    """
    Features in one safetensors file written by [`consolidate_features`], one tensor per id, read lazily.

    Opening parses only the header; `load` reads one tensor from the memory-mapped file and `shape` reads none. The
    store pickles without its file handle, which each process (a `DataLoader` worker) reopens on first use.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"Consolidated feature file not found: {self.path}")
        self._handle = None
        self._ids = None
        self._open()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def _open(self):
        if self._handle is None:
            from safetensors import safe_open

            try:
                self._handle = safe_open(str(self.path), framework="numpy")
            except Exception as error:  # safetensors raises its own SafetensorError on a damaged header
                raise ValueError(f"{self.path}: not a readable safetensors file ({error}).") from error
            self._ids = frozenset(self._handle.keys())
        return self._handle

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._handle = None
        self._ids = None

    def __contains__(self, feature_id: object) -> bool:
        self._open()
        return feature_id in self._ids

    def _check_present(self, feature_id: str) -> None:
        if feature_id not in self:
            raise FeatureNotFoundError(f"No feature {feature_id!r} in {self.path}.")

    def load(self, feature_id: str) -> np.ndarray:
        self._check_present(feature_id)
        return self._open().get_tensor(feature_id)

    def shape(self, feature_id: str) -> tuple[int, ...]:
        self._check_present(feature_id)
        return tuple(self._open().get_slice(feature_id).get_shape())

    def location(self, feature_id: str) -> str:
        return str(self.path)

    def ids(self) -> list[str]:
        self._open()
        return sorted(self._ids)


def open_feature_store(path: str | os.PathLike) -> FeatureStore:
    """
    The store at `path`: a [`ShardedFeatureStore`] for a folder written by `Dataset.save_to_disk`, an
    [`NpyFeatureStore`] for any other folder (of `{id}.npy` files), a [`ConsolidatedFeatureStore`] for a file.
    """
    from .sharded_features import ShardedFeatureStore, is_sharded_store

    path = Path(path)
    if is_sharded_store(path):
        return ShardedFeatureStore(path)
    if path.is_dir():
        return NpyFeatureStore(path)
    if path.is_file():
        return ConsolidatedFeatureStore(path)
    raise FileNotFoundError(
        f"No features at {path}: expected a folder of {{id}}.npy files, a sharded store or a .safetensors file."
    )


def consolidate_features(
    npy_dir: str | os.PathLike,
    output: str | os.PathLike,
    ids: Iterable[str] | None = None,
    max_shard_size: str | int | None = None,
) -> Path:
    """
    Packs a folder of `{id}.npy` features into one store, chosen by the name of `output`:

    * `*.safetensors`: one file, one tensor per id, read lazily by [`ConsolidatedFeatureStore`]. One memory-mapped
      file whose header maps each id to its shape, dtype and byte range (so `shape` costs nothing and `load` reads
      one feature), and no schema: videos and images of any sizes share it as they are. The format caps its header
      at 100 MB: about a million ids.
    * any other name: a sharded `datasets` store, a folder of Arrow shards of `max_shard_size` (default 500MB) read by
      [`~vtimellm_hf.data.sharded_features.ShardedFeatureStore`], for any number of ids, loadable with
      `datasets.load_from_disk` and pushable with `push_to_hub` (see [`~vtimellm_hf.data.sharded_features`]).

    Either is written atomically: a killed run leaves the earlier store or none, never part of one. Every feature is
    validated first ([`check_feature`]: dtype, finite values), so a damaged one fails here, by name, not mid-training.

    Args:
        npy_dir: the folder of `{id}.npy` files.
        output: the safetensors file or the store's folder to write.
        ids: the ids to pack (default: every `.npy` file of the folder).
        max_shard_size: the largest shard of a sharded store, in bytes or as `"500MB"`.

    Returns:
        `output`.
    """
    if Path(output).suffix != ".safetensors":
        from .sharded_features import DEFAULT_MAX_SHARD_SIZE, save_sharded_features

        return save_sharded_features(npy_dir, output, ids, max_shard_size or DEFAULT_MAX_SHARD_SIZE)
    if max_shard_size is not None:
        raise ValueError(f"{output}: a .safetensors file is one file; max_shard_size applies to a sharded store.")
    output_path = Path(output)
    store = NpyFeatureStore(npy_dir)
    ids = sorted(set(ids)) if ids is not None else store.ids()
    if not ids:
        raise ValueError(f"No .npy features to consolidate in {store.folder}.")
    if "__metadata__" in ids:
        raise ValueError(f"{store.folder}: the id '__metadata__' is reserved by the safetensors format.")
    header, offset = {"__metadata__": {"format": _CONSOLIDATED_FORMAT}}, 0
    for feature_id in ids:
        path = store._existing_path(feature_id)
        npy_header = read_npy_header(path)
        # The dtype first: the size of an object array's data is not that of its pickled objects, so it cannot be
        # told complete or truncated
        dtype = npy_header.dtype.newbyteorder("=")
        if dtype not in _SAFETENSORS_DTYPES:
            pickled = "; it holds pickled Python objects, which are not loaded" if dtype.hasobject else ""
            raise ValueError(
                f"{path}: feature {feature_id!r} has dtype {dtype}, expected float16 or float32{pickled}."
            )
        if not npy_header.complete:
            raise ValueError(
                f"{path}: truncated feature {feature_id!r}: the header announces {npy_header.data_bytes} bytes of "
                f"data, the file holds {npy_header.file_size - npy_header.data_offset}."
            )
        end = offset + npy_header.data_bytes
        header[feature_id] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": list(npy_header.shape),
                              "data_offsets": [offset, end]}  # fmt: skip
        offset = end
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Padding the header to 8 bytes keeps every tensor aligned in the memory map
    header_bytes += b" " * (-len(header_bytes) % 8)
    if len(header_bytes) > _SAFETENSORS_MAX_HEADER_BYTES:
        raise ValueError(
            f"{len(ids)} features need a safetensors header of {len(header_bytes)} bytes, above the format's limit of "
            f"{_SAFETENSORS_MAX_HEADER_BYTES}: consolidate subsets of the ids into several files."
        )

    output_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(output_path) as file:
        file.write(struct.pack("<Q", len(header_bytes)))
        file.write(header_bytes)
        for feature_id in ids:
            array = load_checked_feature(store, feature_id)
            if array.shape != tuple(header[feature_id]["shape"]):
                raise ValueError(f"{store.folder}: feature {feature_id!r} changed while it was consolidated.")
            # safetensors stores little-endian, C-ordered data
            file.write(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return output_path
