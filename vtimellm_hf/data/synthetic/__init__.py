"""
Synthetic moments: small videos whose events are known exactly, with every annotation VTimeLLM trains and is
evaluated on (`vtimellm-hf synth`, and the data of `make demo`).

How the data is made, file by file:

- [`scenes`]: every random draw: each video's duration, frame rate, size, background and events (which shape, when,
  where), and the stage-1 stills.
- [`rendering`]: the pixels of a scene: frames encoded to H.264 mp4, stills to PNG.
- [`records`]: the raw annotations, in ActivityNet Captions' format, and the records built from them: the stage-2
  dialogues and held-out sets through [`~vtimellm_hf.data.converters`], as for the real datasets, and the
  stage-1 and stage-3 records no converter builds, with the converters' turn builder.
- [`dataset`]: [`generate_synthetic_moments`] and the `synth` command: the folder, its manifest, and the order
  in which it is all written.

The same seed gives byte-identical annotation and record files and identical decoded frames.
"""

from .dataset import SyntheticDataset, add_subcommand, generate_synthetic_moments
from .rendering import encode_mp4
from .scenes import (
    COLOURS,
    EMPTY_STILL_CAPTION,
    SHAPES,
    SyntheticEvent,
    SyntheticMomentsConfig,
    SyntheticStill,
    SyntheticVideo,
)

__all__ = [
    "COLOURS",
    "EMPTY_STILL_CAPTION",
    "SHAPES",
    "SyntheticDataset",
    "SyntheticEvent",
    "SyntheticMomentsConfig",
    "SyntheticStill",
    "SyntheticVideo",
    "add_subcommand",
    "encode_mp4",
    "generate_synthetic_moments",
]
