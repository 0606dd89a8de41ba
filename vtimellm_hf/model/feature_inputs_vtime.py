"""The inputs a [`VTimeProcessor`] takes beside the text, as it reads them: visual inputs flattened to one per
`<video>`, empty inputs as absent ones, and precomputed features (video, audio, speech) checked and made float32
`(rows, D)` tensors; and how an error names a sample's rows.

This file travels to the Hub with every checkpoint (`trust_remote_code=True`), imported by `processing_vtime.py`: it
imports only torch, numpy and the standard library.
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch


def _describe_rows(rows: dict[str, int]) -> str:
    """`video 100, audio 117, speech 117 feature rows`, or `no feature rows`."""
    if not rows:
        return "no feature rows"
    return ", ".join(f"{name} {count}" for name, count in rows.items()) + " feature rows"


def _feature_list(name: str, values) -> tuple[list[torch.Tensor | None], list[bool]]:
    """
    Precomputed features as one float32 `(rows, D)` tensor (a `(D,)` vector is one row), or `None`, per `<video>`,
    and whether each was a numpy array. Refused: no rows, values that are not finite.
    """
    if isinstance(values, (np.ndarray, torch.Tensor)) and values.ndim == 3:
        values = list(values)
    features, as_arrays = [], []
    for index, feature in enumerate(_flatten(values)):
        as_arrays.append(isinstance(feature, np.ndarray))
        if feature is None:
            features.append(None)
            continue
        feature = torch.as_tensor(feature)
        if feature.ndim == 1:
            feature = feature.unsqueeze(0)
        if feature.ndim != 2:
            raise ValueError(
                f"{name}[{index}] must have shape (rows, hidden) or (hidden,), got {tuple(feature.shape)}."
            )
        if feature.shape[0] == 0:
            raise ValueError(f"{name}[{index}] has shape {tuple(feature.shape)}: no rows; pass None for a sample "
                             "without this stream.")  # fmt: skip
        feature = feature.float()
        if not torch.isfinite(feature).all():
            raise ValueError(f"{name}[{index}] holds NaN or infinite values: they would make every logit NaN.")
        features.append(feature)
    return features, as_arrays


def _flatten(items) -> list:
    """Visual inputs as a flat list: one item, a list, or a list per sample (as `apply_chat_template` gives)."""
    if isinstance(items, (str, Path, np.ndarray, torch.Tensor)) or not isinstance(items, Sequence):
        return [items]
    flat = []
    for item in items:
        if isinstance(item, (list, tuple)):
            flat.extend(item)
        else:
            flat.append(item)
    return flat


def _none_if_empty(items):
    """`None` for an absent input: `None`, or an empty list (or list of empty lists, one per sample)."""
    if isinstance(items, (list, tuple)) and not _flatten(items):
        return None
    return items
