"""The family's training data: LongVALE and AVicuna files loaded with the streams each record has, the originals' row
fitting (checked against loops written from their dataset code), and a training batch's loss against a by-hand
assembly of the rows and the labels."""

import json
import logging

import numpy as np
import pytest
import torch
from test_collator import reference_encoding

from vtimellm_hf import avicuna_streams, longvale_streams
from vtimellm_hf.data.family_loaders import load_avicuna, load_longvale
from vtimellm_hf.data.features import NpyFeatureStore, write_feature
from vtimellm_hf.training import IGNORE_INDEX
from vtimellm_hf.training.family_collator import FamilyDataCollator, avicuna_rows
from vtimellm_hf.tiny_models import build_tiny_vtime_model


def dialogue(record_id, source=None, token="<video>", answer="From <s0> to <e0>.", meta=True):
    record = {
        "id": record_id,
        "conversations": [
            {"from": "human", "value": f"{token}\nWhen does the dog bark?"},
            {"from": "gpt", "value": answer if meta else "A dog barks."},
        ],
    }
    if source is not None:
        record["source"] = source
    if meta:
        record["meta"] = {"duration": 50.0, "token": {"<s0>": 10.0, "<e0>": 20.0}}
    return record


def write_store(folder, arrays: dict):
    folder.mkdir(parents=True, exist_ok=True)
    for feature_id, array in arrays.items():
        write_feature(folder / f"{feature_id}.npy", array)
    return NpyFeatureStore(folder)


def rows(count, width, seed=0):
    return np.random.default_rng(seed).standard_normal((count, width)).astype(np.float16)


@pytest.fixture
def longvale_files(tmp_path):
    stores = {
        # v2 is an image: one (D,) row
        "video": write_store(tmp_path / "video", {"v0": rows(100, 32, 0), "v1": rows(100, 32, 1),
                                                  "v2": rows(1, 32, 2)[0]}),
        "audio": write_store(tmp_path / "audio", {"v0": rows(7, 16, 10), "v1": rows(5, 16, 11)}),
        "speech": write_store(tmp_path / "speech", {"v0": rows(6, 24, 20)}),
    }
    annotations = tmp_path / "it.json"
    records = [dialogue("v0"), dialogue("v1"), dialogue("v2", token="<image>"), dialogue("lost")]
    annotations.write_text(json.dumps(records))
    return annotations, stores


def test_longvale_records_have_the_streams_their_folders_hold(longvale_files, caplog):
    annotations, stores = longvale_files
    with caplog.at_level(logging.INFO, logger="vtimellm_hf"):
        records = list(load_longvale(annotations, video_store=stores["video"], audio_store=stores["audio"],
                                     speech_store=stores["speech"], on_error="skip"))  # fmt: skip
    assert [record["streams"] for record in records] == [["video", "audio", "speech"], ["video", "audio"], ["video"]]
    assert records[0]["messages"][1]["content"] == "From 20 to 40."
    assert records[2]["messages"][0]["content"].startswith("<video>\n")  # <image> read as <video>
    assert "records without a stream, of 3: audio 1, speech 2" in caplog.text
    assert "'lost'" in caplog.text and "video features 'lost' are missing" in caplog.text
    with pytest.raises(ValueError, match=r"it.json, record 3 \(id 'lost'\): video features 'lost' are missing"):
        load_longvale(annotations, video_store=stores["video"])
    wide = {"video": 32, "audio": 17}
    with pytest.raises(ValueError, match=r"record 0 \(id 'v0'\): audio features 'v0' have shape \(7, 16\)"):
        load_longvale(annotations, video_store=stores["video"], audio_store=stores["audio"], widths=wide)
    streamed = load_longvale(annotations, video_store=stores["video"], audio_store=stores["audio"],
                             speech_store=stores["speech"], on_error="skip", streaming=True)  # fmt: skip
    assert list(streamed) == records


@pytest.fixture
def avicuna_files(tmp_path):
    video = {"anet1": rows(100, 32, 1), "unav1": rows(30, 32, 2), "img1": rows(1, 32, 3)[0],
             "sub_a": rows(12, 32, 4), "sub_b": rows(3, 32, 5), "nosound": rows(150, 32, 6)}  # fmt: skip
    audio = {"unav1": rows(3, 16, 7), "clip1": rows(4, 16, 8), "sub_a": rows(2, 16, 9)}
    stores = {"video": write_store(tmp_path / "video", video), "audio": write_store(tmp_path / "audio", audio)}
    pu_valor = dialogue("pu1", source="pseudo-valor")
    pu_valor["meta"].update(sub_videos=["sub_a", "sub_b", "sub_gone"], scale=[0.5, 0.35, 0.2])
    mismatched = dialogue("pu_bad", source="pseudo-valor")
    mismatched["meta"].update(sub_videos=["sub_a", "sub_b"], scale=[0.5])
    records = [dialogue("anet1", source="anet"), dialogue("unav1", source="unav100"),
               dialogue("img1", token="<image>", meta=False), dialogue("clip1", source="audiocaps", token="<audio>",
               meta=False), pu_valor, dialogue("nosound", source="avsd"), mismatched]  # fmt: skip
    annotations = tmp_path / "stage3.json"
    annotations.write_text(json.dumps(records))
    return annotations, stores


def test_avicuna_records_media_streams_and_pu_valor_parts(avicuna_files, caplog):
    annotations, stores = avicuna_files
    with caplog.at_level(logging.INFO, logger="vtimellm_hf"):
        records = list(load_avicuna(annotations, video_store=stores["video"], audio_store=stores["audio"],
                                    on_error="skip"))  # fmt: skip
    summary = [(record["id"], record["media"], record["streams"]) for record in records]
    assert summary == [("anet1", "video", ["video"]), ("unav1", "video", ["video", "audio"]),
                       ("img1", "image", ["video"]), ("clip1", "audio", ["audio"]),
                       ("pu1", "video", ["video", "audio"])]  # fmt: skip
    # scale 0.35 * 10 = 3.4999999999999996 in floating point: int() gives 3, as the original
    assert records[4]["sub_videos"] == [{"video_id": "sub_a", "rows": 5}, {"video_id": "sub_b", "rows": 3},
                                        {"video_id": "sub_gone", "rows": 2}]  # fmt: skip
    # avsd is a source with audio: its missing audio file makes the record bad (the original drew another one)
    assert "id 'nosound'): audio features 'nosound' are missing" in caplog.text
    assert "1 PU-VALOR sub-videos have no features" in caplog.text
    assert ("id 'pu_bad'): a PU-VALOR record needs meta.sub_videos and meta.scale, two lists of one length, found "
            "['sub_a', 'sub_b'] and [0.5]") in caplog.text  # fmt: skip


def original_video_rows(features: np.ndarray, count: int) -> np.ndarray:
    """AVicuna's dataset: rows (j * L) // N_v when L >= N_v, else the L rows and zero rows."""
    if len(features) >= count:
        return np.stack([features[(j * len(features)) // count] for j in range(count)])
    return np.concatenate([features, np.zeros((count - len(features), features.shape[1]), features.dtype)])


def original_audio_rows(features: np.ndarray, count: int) -> np.ndarray:
    """AVicuna's dataset: each row repeated count // L times, the first count % L rows once more."""
    if len(features) == count:
        return features
    factor, remainder = divmod(count, len(features))
    return np.concatenate([np.repeat(features[i : i + 1], factor + (i < remainder), 0) for i in range(len(features))])


def test_avicuna_rows_are_fitted_as_its_dataset_fits_them(avicuna_files, processor):
    annotations, stores = avicuna_files
    records = {record["id"]: record for record in load_avicuna(annotations, video_store=stores["video"],
                                                               audio_store=stores["audio"], on_error="skip")}
    assert avicuna_rows(0.25) == (75, 25) and avicuna_rows(0.10) == (90, 10)
    collator = FamilyDataCollator(processor, stores, av_ratio=0.25, audio_width=16, video_width=32)
    raw = {name: {key: stores[name].load(key).astype(np.float32) for key in ("unav1", "anet1", "sub_a", "sub_b")
                  if key in stores[name]} for name in stores}  # fmt: skip
    fitted = collator.stream_features(records["unav1"])
    np.testing.assert_array_equal(fitted["video"], original_video_rows(raw["video"]["unav1"], 75))  # 30 -> padded
    np.testing.assert_array_equal(fitted["audio"], original_audio_rows(raw["audio"]["unav1"], 25))  # 3 -> 9, 8, 8
    fitted = collator.stream_features(records["anet1"])
    np.testing.assert_array_equal(fitted["video"], original_video_rows(raw["video"]["anet1"], 75))
    assert not fitted["audio"].any() and fitted["audio"].shape == (25, 16)  # no audio: zero rows
    # PU-VALOR: 5 of sub_a's 12 rows at linspace(0, 11, 5) -> 0, 2, 5, 8, 11; 3 of sub_b's 3; 2 zero rows
    fitted = collator.stream_features(records["pu1"])
    joined = np.concatenate([raw["video"]["sub_a"][[0, 2, 5, 8, 11]], raw["video"]["sub_b"], np.zeros((2, 32))])
    np.testing.assert_array_equal(fitted["video"], original_video_rows(joined.astype(np.float32), 75))
    joined_audio = np.concatenate([raw["audio"]["sub_a"], np.zeros((2, 16))])  # sub_b and sub_gone: one zero row
    np.testing.assert_array_equal(fitted["audio"], original_audio_rows(joined_audio.astype(np.float32), 25))
    # Images and audio clips are not fitted
    assert collator.stream_features(records["img1"])["video"].shape == (1, 32)
    assert collator.stream_features(records["clip1"]).keys() == {"audio"}
    batch = collator([records["unav1"], records["clip1"]])
    assert [row.count(processor.video_token_id) for row in batch["input_ids"].tolist()] == [100, 4]
    assert batch["video_features"][1] is None and batch["audio_features"][1].shape == (4, 16)


def by_hand_loss(model, processor, example: dict, stream_rows: list[torch.Tensor]) -> torch.Tensor:
    """
    The loss of one record without the package's splice or labels: the reference ids and labels of a Vicuna v1
    record (test_collator), the placeholders' embeddings replaced by the projected rows in the given order, the
    LLaMA decoder on those embeddings, and the mean cross-entropy of the next token where labelled.
    """
    ids, labels = reference_encoding(processor, example["messages"], rows=sum(len(part) for part in stream_rows))
    embeddings = model.get_input_embeddings()(torch.tensor(ids))
    embeddings[torch.tensor(ids) == processor.video_token_id] = torch.cat(stream_rows)
    logits = model.lm_head(_decoder(model, embeddings[None]))[0]
    targets = torch.tensor(labels[1:])
    kept = targets != IGNORE_INDEX
    return torch.nn.functional.cross_entropy(logits[:-1][kept], targets[kept])


def _decoder(model, embeddings):
    # The LLaMA layers and final norm, through LlamaModel.forward of the parent class: no feature splice
    from transformers import LlamaModel

    return LlamaModel.forward(model.model, inputs_embeds=embeddings).last_hidden_state


def project(model, projector: str, features: torch.Tensor) -> torch.Tensor:
    layer = getattr(model.model, projector)
    return features @ layer.weight.T + layer.bias


def test_longvale_batch_loss_equals_the_by_hand_assembly(longvale_files, tokenizer, processor):
    annotations, stores = longvale_files
    records = list(load_longvale(annotations, video_store=stores["video"], audio_store=stores["audio"],
                                 speech_store=stores["speech"], on_error="skip"))  # fmt: skip
    model = build_tiny_vtime_model(tokenizer, feature_streams=longvale_streams(32, 16, 24), stream_layout="concat")
    collator = FamilyDataCollator(processor, stores, max_length=1024)
    for record in records:  # all three streams, no speech, video alone
        batch = collator([record])
        with torch.no_grad():
            loss = model(**batch).loss
            # An image's (D,) feature is one row
            parts = [project(model, stream.projector, torch.from_numpy(np.atleast_2d(stores[stream.name].load(
                record["id"]))).float()) for stream in model.config.streams if stream.name in record["streams"]]
            expected = by_hand_loss(model, processor, record, parts)
            reordered = by_hand_loss(model, processor, record, parts[::-1]) if len(parts) > 1 else None
        torch.testing.assert_close(loss, expected, msg=lambda text: f"{record['id']}: {text}")
        if reordered is not None:  # the comparison sees the order of the streams
            assert abs(float(reordered - expected)) > 1e-4


def test_avicuna_batch_loss_equals_the_by_hand_interleave(avicuna_files, tokenizer, processor):
    annotations, stores = avicuna_files
    records = {record["id"]: record for record in load_avicuna(annotations, video_store=stores["video"],
                                                               audio_store=stores["audio"], on_error="skip")}
    model = build_tiny_vtime_model(tokenizer, feature_streams=avicuna_streams(32, 16), stream_layout="interleave")
    collator = FamilyDataCollator(processor, stores, max_length=1024, av_ratio=0.25, audio_width=16, video_width=32)
    record = records["unav1"]
    batch = collator([record])
    video = torch.from_numpy(original_video_rows(stores["video"].load("unav1").astype(np.float32), 75))
    audio = torch.from_numpy(original_audio_rows(stores["audio"].load("unav1").astype(np.float32), 25))
    with torch.no_grad():
        loss = model(**batch).loss
        video, audio = project(model, "mm_projector", video), project(model, "mm_projector_a", audio)
        # "AVVV" x 25: f = round(75 / 26) = 3, audio at 0, 4, ..., 96
        ordered = [audio[i // 4] if i % 4 == 0 else video[i - i // 4 - 1] for i in range(100)]
        expected = by_hand_loss(model, processor, record, [torch.stack(ordered)])
        concatenated = by_hand_loss(model, processor, record, [video, audio])
    torch.testing.assert_close(loss, expected)
    assert abs(float(concatenated - expected)) > 1e-4  # the comparison sees where the audio rows go


def test_max_length_counts_text_tokens_as_the_originals_or_every_row(longvale_files, processor):
    annotations, stores = longvale_files
    record = next(iter(load_longvale(annotations, video_store=stores["video"], audio_store=stores["audio"],
                                     speech_store=stores["speech"], on_error="skip")))  # fmt: skip
    ids, labels = reference_encoding(processor, record["messages"], rows=113)  # 100 + 7 + 6 rows
    text_tokens = len(ids) - 113 + 1  # <video> counts as one
    # The originals cut the text ids (<video> one of them) to max_length; the rows come on top
    limit = text_tokens - 3
    encoded = FamilyDataCollator(processor, stores, max_length=limit).encode(record)
    assert encoded["input_ids"] == ids[: limit + 112] and encoded["labels"] == labels[: limit + 112]
    assert FamilyDataCollator(processor, stores, max_length=text_tokens).encode(record)["input_ids"] == ids
    # Every row counted: the same limit keeps fewer tokens
    counted = FamilyDataCollator(processor, stores, max_length=160, max_length_counts_rows=True).encode(record)
    assert counted["input_ids"] == ids[:160] and len(ids) > 160
