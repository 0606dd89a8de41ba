"""The training collator of LongVALE-LLM and AVicuna: each stream's rows of a record, as the originals build them.

Records are those of [`vtimellm_hf.data.family_loaders`] (`media`, `streams`, `sub_videos`). Token ids, labels,
truncation and padding are [`VTimeDataCollator`]'s (the processor's chat template, `<video>` expanded to every row
of the sample's streams); this collator adds where the rows come from:

* LongVALE (`av_ratio=None`): the stored rows of each stream the record has (video 100, audio and speech as many as
  the duration gives); a stream the record lacks is `None` (its rows are absent, as the original's).
* AVicuna (`av_ratio`, 0.10 in its training scripts' default, 0.25 in stage 3): `N_a = int(total_rows * av_ratio)`
  audio rows and `N_v = total_rows - N_a` video rows for a video record, fitted as its dataset fits them: video rows
  `floor(j * L / N_v)` (`L >= N_v`) or the `L` rows then zero rows; audio rows repeated in order (the first
  `N_a % L` once more) or the first `N_a`; a video without audio gets `N_a` zero rows (they project to the
  projector's bias). PU-VALOR joins `int(scale * 10)` evenly spaced rows (`linspace`, truncated to integers) of each
  sub-video and all of its audio rows, before the fitting; a missing sub-video is `rows` zero rows, its missing
  audio one zero row, as the original. An `<image>` record is one video row, an `<audio>` record all its audio rows,
  neither fitted.
"""

import numpy as np
import torch

from ..data.features import check_feature
from ..model.audio_processing_vtime import fit_rows, fit_video_rows
from ..model.configuration_vtime_llama import STREAM_NAMES
from .collator import VTimeDataCollator

__all__ = ["FamilyDataCollator", "avicuna_rows"]


def avicuna_rows(av_ratio: float, total_rows: int = 100) -> tuple[int, int]:
    """AVicuna's `(video_rows, audio_rows)` of a video at `av_ratio`: `N_a = int(total_rows * av_ratio)` (truncated)."""
    audio_rows = int(total_rows * av_ratio)
    return total_rows - audio_rows, audio_rows


class FamilyDataCollator(VTimeDataCollator):
    """
    Batches of LongVALE or AVicuna records: `input_ids`, `attention_mask`, `labels` as [`VTimeDataCollator`], and
    `{stream}_features` for each stream any sample of the batch has: `(batch, rows, width)` where every sample has
    it with as many rows, else a list with a `(rows, width)` tensor or `None` per sample.

    Args:
        processor, max_length, template: as [`VTimeDataCollator`].
        stores: `{stream: feature store}` of the records' ids (`video`, and `audio`, `speech` where the model reads
            them).
        sub_stores: PU-VALOR's sub-video stores `{"video", "audio"}` (default: `stores`).
        av_ratio: `None` for LongVALE (rows as stored); AVicuna's share of audio rows in a video's `total_rows`.
        total_rows: AVicuna's rows of a video, both streams (100).
        max_length_counts_rows: `False` (the originals): `max_length` counts the text tokens, `<video>` as one, and
            the rows come on top (LongVALE's collator cut the text ids, and nothing cut the spliced sequence: a long
            video with audio and speech adds some 330 rows to 2,048); `True`: every row counts, as VTimeLLM's
            collator here counts them.
        video_width, audio_width: widths of AVicuna's zero rows (a missing PU-VALOR sub-video; CLIP 768), and of a
            video without audio (CLAP 512).
    """

    def __init__(
        self,
        processor,
        stores: dict,
        max_length: int = 2048,
        template: str = "vicuna_v1",
        sub_stores: dict | None = None,
        av_ratio: float | None = None,
        total_rows: int = 100,
        video_width: int = 768,
        audio_width: int = 512,
        max_length_counts_rows: bool = False,
    ):
        super().__init__(processor, stores.get("video"), max_length=max_length, template=template)
        self.stores = stores
        self.sub_stores = sub_stores or stores
        self.av_ratio = av_ratio
        self.total_rows = total_rows
        self.video_width = video_width
        self.audio_width = audio_width
        self.max_length_counts_rows = max_length_counts_rows

    def stream_rows(self, example: dict) -> dict[str, int]:
        """The rows of each stream of the record, from the stores' shapes (nothing is read)."""
        if self.av_ratio is not None and example["media"] == "video":
            return dict(zip(("video", "audio"), avicuna_rows(self.av_ratio, self.total_rows)))
        rows = {}
        for name in example["streams"]:
            shape = self.stores[name].shape(example["video_id"])
            rows[name] = 1 if len(shape) == 1 else shape[0]
        return rows

    def stream_features(self, example: dict) -> dict[str, torch.Tensor]:
        """Each stream's `(rows, width)` float32 features of the record, fitted as the model's original fits them."""
        if self.av_ratio is None or example["media"] != "video":
            return {name: self._read(self.stores[name], example["video_id"], example) for name in example["streams"]}
        video_rows, audio_rows = avicuna_rows(self.av_ratio, self.total_rows)
        if example["sub_videos"]:
            video, audio = self._pu_valor(example)
        else:
            video = self._read(self.stores["video"], example["video_id"], example)
            audio = self._read(self.stores["audio"], example["video_id"], example) if "audio" in example["streams"] \
                else None
        return {
            "video": fit_video_rows(video, video_rows),
            "audio": fit_rows(audio, audio_rows, self.audio_width),
        }

    def _pu_valor(self, example: dict) -> tuple[torch.Tensor, torch.Tensor]:
        videos, audios = [], []
        video_store, audio_store = self.sub_stores["video"], self.sub_stores.get("audio")
        for part in example["sub_videos"]:
            if part["video_id"] in video_store:
                sub_video = self._read(video_store, part["video_id"], example)
            else:
                sub_video = torch.zeros(part["rows"], self.video_width)
            # torch.linspace then .long(): truncation toward zero, as the original
            videos.append(sub_video[torch.linspace(0, len(sub_video) - 1, part["rows"]).long()])
            if audio_store is not None and part["video_id"] in audio_store:
                audios.append(self._read(audio_store, part["video_id"], example))
            else:
                audios.append(torch.zeros(1, self.audio_width))
        return torch.cat(videos), torch.cat(audios)

    def _read(self, store, feature_id: str, example: dict) -> torch.Tensor:
        features = np.asarray(store.load(feature_id))
        try:
            check_feature(features, None, None, feature_id)
        except ValueError as error:
            raise ValueError(f"Record {example.get('id')!r}: {error}") from None
        if features.ndim == 1:
            features = features[None]
        return torch.from_numpy(features.astype(np.float32))

    def length_limit(self, example: dict) -> int:
        if self.max_length_counts_rows:
            return self.max_length
        return self.max_length + sum(self.stream_rows(example).values()) - 1

    def placeholder_rows(self, example: dict) -> dict[str, list]:
        rows = self.stream_rows(example)
        return {f"{name}_features": [torch.empty(rows[name], 0) if name in rows else None] for name in STREAM_NAMES
                if name in rows or name == "video"}  # fmt: skip

    def batch_features(self, examples: list[dict]) -> dict:
        samples = [self.stream_features(example) for example in examples]
        batch = {}
        for name in STREAM_NAMES:
            rows = [sample.get(name) for sample in samples]
            if all(row is None for row in rows):
                continue
            same = all(row is not None and row.shape == rows[0].shape for row in rows)
            batch[f"{name}_features"] = torch.stack(rows) if same else rows
        return batch
