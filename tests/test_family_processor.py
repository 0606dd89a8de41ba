"""The processor for the family's streams: `<video>` expands to every row of its sample (video, audio, speech),
precomputed or made from the video file by the stream encoders; rows count against the limits; bad features are
refused with a message."""

import json

import numpy as np
import pytest
import torch

from vtimellm_hf import VTimeProcessor, longvale_streams
from vtimellm_hf.model.audio_processing_vtime import build_stream_encoder, fit_rows
from vtimellm_hf.tiny_models import build_tiny_vtime_model

PROMPT = "USER: <video>\nWhen? ASSISTANT:"


def rows(count, width, seed=0):
    return torch.randn(count, width, generator=torch.Generator().manual_seed(seed))


def placeholders(batch, processor):
    return [row.count(processor.video_token_id) for row in batch["input_ids"]]


def test_video_expands_to_the_rows_of_every_stream_of_its_sample(processor):
    batch = processor(
        text=[PROMPT, PROMPT, PROMPT],
        video_features=[rows(10, 32), rows(6, 32), None],
        audio_features=[rows(4, 16), None, rows(5, 16)],
        speech_features=[rows(3, 24), rows(2, 24), None],
    )
    assert placeholders(batch, processor) == [17, 8, 5]
    assert batch["video_features"][2] is None and batch["audio_features"][1] is None
    tensors = processor(text=[PROMPT] * 3, video_features=[rows(10, 32)] * 3, audio_features=[rows(4, 16), None,
                        rows(5, 16)], padding=True, return_tensors="pt")  # fmt: skip
    # One shape for all samples: stacked; rows that differ or a stream some lack: a list, as the model takes it
    assert tensors["video_features"].shape == (3, 10, 32)
    assert isinstance(tensors["audio_features"], list) and tensors["audio_features"][1] is None
    assert tensors["input_ids"].shape[0] == 3


def test_longvale_model_reads_what_the_processor_gives(tokenizer, processor):
    model = build_tiny_vtime_model(tokenizer, feature_streams=longvale_streams(32, 16, 24), stream_layout="concat")
    samples = {"video_features": [rows(10, 32), rows(6, 32)], "audio_features": [rows(4, 16), None],
               "speech_features": [rows(3, 24), rows(2, 24)]}  # fmt: skip
    batch = processor(text=[PROMPT, PROMPT], padding=True, padding_side="left", return_tensors="pt", **samples)
    with torch.no_grad():
        logits = model(**batch).logits[:, -1]
        for index in range(2):
            single = processor(text=PROMPT, return_tensors="pt",
                               **{name: [value[index]] for name, value in samples.items()})  # fmt: skip
            torch.testing.assert_close(logits[index], model(**single).logits[0, -1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"video_features": [np.zeros((0, 32))]}, r"video_features\[0\] has shape \(0, 32\): no rows"),
    ({"video_features": [rows(4, 32)], "audio_features": [np.zeros((0, 16))]}, r"audio_features\[0\] has shape"),
    ({"video_features": [np.full((4, 32), np.nan)]}, r"video_features\[0\] holds NaN or infinite values"),
    ({"video_features": [rows(4, 32)], "speech_features": [np.full((4, 8), np.inf)]}, r"speech_features\[0\] holds"),
    ({"video_features": [None]}, r"Sample 0 has no feature rows in any stream"),
    ({"video_features": [rows(4, 32)], "audio_features": [rows(4, 16), rows(4, 16)]},
     r"1 <video> placeholders but 2 audio_features entries"),
])  # fmt: skip
def test_bad_features_are_refused_naming_the_stream(processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        processor(text=PROMPT, **kwargs)


def test_rows_count_against_the_limits_and_errors_name_them(tokenizer, frame_encoder_path):
    processor = VTimeProcessor(tokenizer=tokenizer, frame_encoder_name_or_path=str(frame_encoder_path),
                               max_positions=200)  # fmt: skip
    features = {"video_features": [rows(100, 32)], "audio_features": [rows(50, 16)], "speech_features": [rows(40, 8)]}
    with pytest.raises(ValueError, match=r"Text 0 is 2\d\d tokens \(video 100, audio 50, speech 40 feature rows\) but "
                                         r"the model reads at most 200 positions"):  # fmt: skip
        processor(text=PROMPT, **features)
    with pytest.raises(ValueError, match=r"Text 0 is \d+ tokens, 190 of them the rows of its video .* max_length=150 "
                                         r"on the right would cut into those rows \(video 100, audio 50, speech 40 "
                                         r"feature rows\)"):  # fmt: skip
        processor(text=PROMPT, truncation=True, max_length=150, **features)
    fitting = processor(text=PROMPT, video_features=[rows(100, 32)], audio_features=[rows(50, 16)])
    assert placeholders(fitting, processor) == [150]


def test_stream_settings_round_trip_and_vtimellm_processors_save_as_before(tmp_path, tokenizer, frame_encoder_path):
    settings = {"audio": {"kind": "beats", "name_or_path": "BEATs_iter3_plus_AS20K.pt"}, "speech": {"kind": "whisper"}}
    processor = VTimeProcessor(tokenizer=tokenizer, frame_encoder_name_or_path=str(frame_encoder_path),
                               stream_encoders=settings, max_positions=4096)  # fmt: skip
    processor.save_pretrained(tmp_path / "longvale")
    loaded = VTimeProcessor.from_pretrained(tmp_path / "longvale")
    assert (loaded.stream_encoders, loaded.audio_rows, loaded.max_positions) == (settings, None, 4096)
    VTimeProcessor(tokenizer=tokenizer).save_pretrained(tmp_path / "vtimellm")
    saved = json.loads((tmp_path / "vtimellm" / "processor_config.json").read_text())
    assert not {"stream_encoders", "audio_rows", "max_positions"} & set(saved)
    with pytest.raises(ValueError, match=r"stream_encoders name the streams audio and speech, got \['video'\]"):
        VTimeProcessor(tokenizer=tokenizer, stream_encoders={"video": {}})
    with pytest.raises(ValueError, match=r"audio_rows \(100\) take slots of num_frames \(100\)"):
        VTimeProcessor(tokenizer=tokenizer, audio_rows=100)


@pytest.fixture(scope="module")
def media(tmp_path_factory, write_media):
    folder = tmp_path_factory.mktemp("media")
    return write_media(folder / "talk.mp4", 12.5), write_media(folder / "silent.mp4", 4.0, audio=False)


def test_longvale_streams_from_video_files(
    tokenizer, frame_encoder_path, beats_checkpoint, whisper_path, media, track_reads
):
    talk, silent = media
    processor = VTimeProcessor(
        tokenizer=tokenizer, frame_encoder_name_or_path=str(frame_encoder_path), frame_size=32,
        stream_encoders={"audio": {"kind": "beats", "name_or_path": str(beats_checkpoint)},
                         "speech": {"kind": "whisper", "name_or_path": str(whisper_path)}},
    )  # fmt: skip
    batch = processor(text=[PROMPT, PROMPT], videos=[str(talk), str(silent)])
    # Both streams read the track as LongVALE did (moviepy's reading at 16 kHz): each file is decoded once
    assert track_reads == [(str(talk), 16000, "moviepy"), (str(silent), 16000, "moviepy")]
    audio = build_stream_encoder("beats", str(beats_checkpoint)).encode_file(talk)
    speech = build_stream_encoder("whisper", str(whisper_path)).encode_file(talk)
    torch.testing.assert_close(batch["audio_features"][0], audio)
    torch.testing.assert_close(batch["speech_features"][0], speech)
    torch.testing.assert_close(batch["video_features"][0], processor.encode_video(talk)[0])
    # The silent video has no audio or speech rows, as LongVALE gives it
    assert batch["audio_features"][1] is None and batch["speech_features"][1] is None
    assert placeholders(batch, processor) == [100 + len(audio) + len(speech), 100]


def test_avicuna_samples_fewer_frames_and_fits_its_audio_rows(tokenizer, frame_encoder_path, clap_path, media):
    talk, silent = media
    processor = VTimeProcessor(
        tokenizer=tokenizer, frame_encoder_name_or_path=str(frame_encoder_path), frame_size=32, audio_rows=25,
        stream_encoders={"audio": {"kind": "clap", "name_or_path": str(clap_path)}},
    )  # fmt: skip
    batch = processor(text=[PROMPT, PROMPT], videos=[str(talk), str(silent)], return_tensors="pt")
    assert batch["video_features"].shape == (2, 75, 32) and batch["audio_features"].shape == (2, 25, 12)
    torch.testing.assert_close(batch["video_features"][0], processor.encode_video(talk, num_frames=75)[0])
    encoded = build_stream_encoder("clap", str(clap_path)).encode_file(talk)
    torch.testing.assert_close(batch["audio_features"][0], fit_rows(encoded, 25))
    # Without an audio track: 25 zero rows, as AVicuna gives a video record without audio
    assert torch.equal(batch["audio_features"][1], torch.zeros(25, 12))
    assert placeholders({"input_ids": batch["input_ids"].tolist()}, processor) == [100, 100]
