"""The on-disk layouts of precomputed frame features, shared by feature extraction and the training data loaders.

The layouts hold the same arrays, addressed by a feature id (a video or image id):

* a folder of `{id}.npy` files, the layout of the original VTimeLLM (see [`~vtimellm_hf.data.npy_features`]): a
  video is a float16 array of shape `(num_frames, D)`, an image one of shape `(D,)`.
* a consolidated store (see [`consolidate_features`]), so that a training job opens one file or a few shards instead
  of hundreds of thousands of small files: one safetensors file holding one tensor per id (up to about a million
  ids), or a sharded `datasets` store, for any number of ids and for the Hub
  (see [`~vtimellm_hf.data.sharded_features`]).

[`open_feature_store`] returns a [`FeatureStore`] for any of them; [`check_feature`] is the validation the loaders
run on every array they read.
"""

import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..files import atomic_write, remove_stale_temporaries
from .npy_features import (
    FEATURE_DTYPE,
    FeatureNotFoundError,
    FeatureStore,
    NpyFeatureStore,
    NpyHeader,
    check_feature,
    feature_path,
    load_checked_feature,
    read_npy_header,
    write_feature,
)
from .sharded_features import DEFAULT_MAX_SHARD_SIZE, ShardedFeatureStore, is_sharded_store, save_sharded_features

__all__ = [
    "FEATURE_DTYPE",
    "ConsolidatedFeatureStore",
    "FeatureNotFoundError",
    "FeatureStore",
    "NpyFeatureStore",
    "NpyHeader",
    "ShardedFeatureStore",
    "check_feature",
    "consolidate_features",
    "feature_path",
    "load_checked_feature",
    "open_feature_store",
    "read_npy_header",
    "remove_stale_temporaries",
    "write_feature",
]

_SAFETENSORS_DTYPES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32"}
# safetensors refuses headers above 100 MB (its MAX_HEADER_SIZE); at about 100 bytes an entry that is ~1M ids
_SAFETENSORS_MAX_HEADER_BYTES = 100_000_000
_CONSOLIDATED_FORMAT = "vtimellm_hf.features"


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
    # What a killed consolidation into the same file left
    remove_stale_temporaries(output_path.parent, output_path.name)
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
