"""The original layout of precomputed features, one `{id}.npy` file per feature, and what every store shares.

A video is a float16 array of shape `(num_frames, D)` (`(100, 768)` for CLIP ViT-L/14), an image a float16 array of
shape `(D,)`: the layout of the original VTimeLLM, so that its features and those of
[`~vtimellm_hf.data.extract.extract_features`] are interchangeable. [`FeatureStore`] is what the loaders read any
store through, and [`check_feature`] the validation they run on every array they read. The consolidated stores
build on these (see [`vtimellm_hf.data.features`]).
"""

import abc
import math
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..files import atomic_write

__all__ = [
    "FEATURE_DTYPE",
    "FeatureNotFoundError",
    "FeatureStore",
    "NpyFeatureStore",
    "NpyHeader",
    "check_feature",
    "feature_path",
    "load_checked_feature",
    "read_npy_header",
    "write_feature",
]

FEATURE_DTYPE = np.dtype(np.float16)
"""The dtype of the original layout; extraction always writes it."""

# float32 features (made by other tools) are accepted by the loaders: the model casts them anyway
_ACCEPTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32))

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


def _wrong_size(header: NpyHeader) -> str | None:
    """What is wrong with a file whose size is not the one its header announces, `None` when it is."""
    # A partly copied file has a whole header: without this a loader's check passes it and training fails later
    if header.complete:
        return None
    announced = header.data_offset + header.data_bytes
    return f"truncated or padded, {header.file_size} bytes where its header announces {announced}"


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
        # The header first: one that announces more data than the file holds (5.8 TiB, say) is refused before numpy
        # tries to allocate it. An object array's size is that of its pickles: np.load refuses it below
        header = read_npy_header(path)
        if not header.dtype.hasobject and (wrong_size := _wrong_size(header)):
            raise ValueError(f"{path}: cannot read feature {feature_id!r} ({wrong_size}).")
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as error:
            raise ValueError(f"{path}: cannot read feature {feature_id!r} ({error}).") from error

    def shape(self, feature_id: str) -> tuple[int, ...]:
        path = self._existing_path(feature_id)
        header = read_npy_header(path)
        if wrong_size := _wrong_size(header):
            raise ValueError(f"{path}: {wrong_size}")
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
