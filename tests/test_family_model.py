"""The family's streams and layouts on one model: LongVALE's concatenated video, audio and speech rows, AVicuna's
interleaved video and audio rows, checked against the row order the originals document, written out by hand."""

import pytest
import torch

from vtimellm_hf import VTimeLlamaConfig, avicuna_streams, interleave_audio_slots, longvale_streams
from vtimellm_hf.tiny_models import build_tiny_vtime_model

VIDEO, AUDIO, SPEECH = 32, 16, 24
CLAP = 12


@pytest.fixture
def longvale(tokenizer):
    return build_tiny_vtime_model(
        tokenizer, mm_hidden_size=VIDEO, feature_streams=longvale_streams(VIDEO, AUDIO, SPEECH), stream_layout="concat"
    )


@pytest.fixture
def avicuna(tokenizer):
    return build_tiny_vtime_model(
        tokenizer, mm_hidden_size=VIDEO, feature_streams=avicuna_streams(VIDEO, CLAP), stream_layout="interleave"
    )


def prompt_ids(tokenizer, model, rows, before="USER: ", after="\nWhen? ASSISTANT:"):
    ids = tokenizer(before).input_ids + [model.config.video_token_id] * rows
    return ids + tokenizer(after, add_special_tokens=False).input_ids


def features(rows, width, seed):
    return torch.randn(rows, width, generator=torch.Generator().manual_seed(seed))


def reference_logits(model, ids, ordered_rows):
    """The logits with the rows written, in the given order, over the placeholders of the embeddings."""
    ids = torch.tensor([ids])
    embeddings = model.get_input_embeddings()(ids)
    embeddings[ids == model.config.video_token_id] = ordered_rows
    with torch.no_grad():
        return model(inputs_embeds=embeddings).logits


def test_projector_names_and_widths_are_the_originals(longvale, avicuna):
    names = {name: tuple(tensor.shape) for name, tensor in longvale.state_dict().items() if "projector" in name}
    assert names == {
        "model.mm_projector.weight": (64, VIDEO), "model.mm_projector.bias": (64,),
        "model.audio_mm_projector.weight": (64, AUDIO), "model.audio_mm_projector.bias": (64,),
        "model.asr_mm_projector.weight": (64, SPEECH), "model.asr_mm_projector.bias": (64,),
    }  # fmt: skip
    assert {name for name in avicuna.state_dict() if "projector" in name} == {
        "model.mm_projector.weight", "model.mm_projector.bias",
        "model.mm_projector_a.weight", "model.mm_projector_a.bias",
    }  # fmt: skip


@pytest.mark.parametrize("streams", [("video",), ("video", "audio"), ("video", "speech"), ("video", "audio", "speech"),
                                     ("audio", "speech")])  # fmt: skip
def test_concat_puts_video_then_audio_then_speech(tokenizer, longvale, streams):
    model = longvale
    given = {"video": features(10, VIDEO, 1), "audio": features(4, AUDIO, 2), "speech": features(3, SPEECH, 3)}
    given = {name: value for name, value in given.items() if name in streams}
    projectors = {"video": model.model.mm_projector, "audio": model.model.audio_mm_projector,
                  "speech": model.model.asr_mm_projector}  # fmt: skip
    with torch.no_grad():
        ordered = torch.cat([projectors[name](given[name]) for name in ("video", "audio", "speech") if name in given])
    ids = prompt_ids(tokenizer, model, len(ordered))
    expected = reference_logits(model, ids, ordered)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), **{f"{name}_features": value[None]
                                                          for name, value in given.items()}).logits  # fmt: skip
    torch.testing.assert_close(logits, expected)


def test_samples_of_one_batch_may_carry_other_streams_and_rows(tokenizer, longvale):
    """Lists with None for a missing stream; each sample as it would be alone, left padding included."""
    model = longvale
    samples = [
        {"video": features(10, VIDEO, 1), "audio": features(4, AUDIO, 2), "speech": features(3, SPEECH, 3)},
        {"video": features(6, VIDEO, 4), "audio": None, "speech": features(5, SPEECH, 5)},
        {"video": features(8, VIDEO, 6), "audio": None, "speech": None},
    ]
    sequences = [prompt_ids(tokenizer, model, sum(len(v) for v in sample.values() if v is not None))
                 for sample in samples]  # fmt: skip
    padded = tokenizer.pad({"input_ids": sequences}, padding_side="left", return_tensors="pt")
    batch = {f"{name}_features": [sample[name] for sample in samples] for name in ("video", "audio", "speech")}
    with torch.no_grad():
        logits = model(**padded, **batch).logits
        for index, (sample, ids) in enumerate(zip(samples, sequences)):
            single = model(input_ids=torch.tensor([ids]), **{f"{name}_features": None if value is None else [value]
                                                              for name, value in sample.items()}).logits  # fmt: skip
            torch.testing.assert_close(logits[index, -1], single[0, -1], rtol=1e-4, atol=1e-5)


def avicuna_order(video_rows, audio_rows, pattern):
    """Rows in the order of a pattern string ("A" audio, "V" video), each stream in its own order."""
    video, audio = iter(video_rows), iter(audio_rows)
    return torch.stack([next(audio) if slot == "A" else next(video) for slot in pattern])


@pytest.mark.parametrize(("video_rows", "audio_rows", "pattern"), [
    (75, 25, "AVVV" * 25),  # inference, av_ratio 0.25
    (90, 10, "A" + "VVVVVVVVA" * 9 + "V" * 18),  # training default 0.10: audio at 0, 9, ..., 81, then 18 V
])  # fmt: skip
def test_interleave_places_audio_rows_as_avicuna(tokenizer, avicuna, video_rows, audio_rows, pattern):
    assert len(pattern) == video_rows + audio_rows and pattern.count("A") == audio_rows
    model = avicuna
    video, audio = features(video_rows, VIDEO, 1), features(audio_rows, CLAP, 2)
    with torch.no_grad():
        ordered = avicuna_order(model.model.mm_projector(video), model.model.mm_projector_a(audio), pattern)
    ids = prompt_ids(tokenizer, model, len(pattern))
    expected = reference_logits(model, ids, ordered)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids]), video_features=video[None], audio_features=audio[None]).logits
    torch.testing.assert_close(logits, expected)


def test_interleave_is_computed_per_call_not_cached(tokenizer, avicuna):
    """The original cached its masks at the first call: a later call with other counts got zero rows."""
    model = avicuna
    calls = [(75, 25, 1), (90, 10, 1), (75, 25, 3), (100, 0, 2)]
    for video_rows, audio_rows, batch_size in calls:
        ids = torch.tensor([prompt_ids(tokenizer, model, video_rows + audio_rows)] * batch_size)
        video = torch.stack([features(video_rows, VIDEO, seed) for seed in range(batch_size)])
        audio = None if audio_rows == 0 else torch.stack([features(audio_rows, CLAP, 9 + s) for s in range(batch_size)])
        with torch.no_grad():
            logits = model(input_ids=ids, video_features=video, audio_features=audio).logits
            for index in range(batch_size):
                rows = [model.model.mm_projector(video[index])]
                if audio is not None:
                    rows = [model.model.mm_projector_a(audio[index]), rows[0]]
                    slots = set(interleave_audio_slots(video_rows, audio_rows).tolist())
                    pattern = "".join("A" if slot in slots else "V" for slot in range(video_rows + audio_rows))
                    ordered = avicuna_order(rows[1], rows[0], pattern)
                else:
                    ordered = rows[0]
                torch.testing.assert_close(logits[index], reference_logits(model, ids[index].tolist(), ordered)[0])


def test_interleave_refuses_more_audio_than_it_can_place(tokenizer, avicuna):
    ids = torch.tensor([prompt_ids(tokenizer, avicuna, 100)])
    with pytest.raises(ValueError, match=r"Sample 0: 60 audio rows among 40 video rows \(audio ratio 0.60\)"):
        avicuna(input_ids=ids, video_features=features(40, VIDEO, 1)[None], audio_features=features(60, CLAP, 2)[None])
    # At one half, every audio row has its slot
    assert interleave_audio_slots(50, 50).tolist() == list(range(0, 100, 2))


def test_errors_name_the_stream_and_the_sample(tokenizer, longvale, model):
    ids = torch.tensor([prompt_ids(tokenizer, longvale, 14)] * 2)
    video, audio = features(10, VIDEO, 1), features(4, AUDIO, 2)
    with pytest.raises(ValueError, match=r"sample 1: 14 placeholder tokens .* but 10 feature rows \(video 10\)"):
        longvale(input_ids=ids, video_features=[video, video], audio_features=[audio, None])
    with pytest.raises(ValueError, match=r"audio_features of sample 1 have 24 values per row but the projector "
                                         r"audio_mm_projector takes its width=16"):  # fmt: skip
        longvale(input_ids=ids, video_features=[video, video], audio_features=[audio, features(4, SPEECH, 3)])
    with pytest.raises(ValueError, match=r"`speech_features` holds 1 entries but the batch has 2 samples"):
        longvale(input_ids=ids, video_features=[video, video], speech_features=[features(4, SPEECH, 3)])
    # VTimeLLM has no audio stream
    with pytest.raises(ValueError, match=r"This model has no audio stream \(its streams: video\)"):
        model(input_ids=ids, video_features=torch.stack([video] * 2), audio_features=[audio, audio])


def test_each_stream_is_cast_to_its_projectors_dtype(tokenizer, longvale):
    model = longvale.to(torch.bfloat16)
    model.model.audio_mm_projector.float()
    video, audio = features(10, VIDEO, 1).double(), features(4, AUDIO, 2).half()
    ids = prompt_ids(tokenizer, model, 14)
    with torch.no_grad():
        ordered = torch.cat([model.model.mm_projector(video.bfloat16()),
                             model.model.audio_mm_projector(audio.float()).bfloat16()])  # fmt: skip
        logits = model(input_ids=torch.tensor([ids]), video_features=video[None], audio_features=audio[None]).logits
    assert logits.dtype == torch.bfloat16
    torch.testing.assert_close(logits, reference_logits(model, ids, ordered))


def test_training_reaches_every_projector_through_trls_fused_head(tokenizer, longvale):
    from trl.trainer.utils import add_fused_lm_head

    model = longvale.train()
    ids = torch.tensor([prompt_ids(tokenizer, model, 17, after="\nWhen? ASSISTANT: From 05 to 23.")])
    labels = ids.masked_fill(ids == model.config.video_token_id, -100)
    inputs = dict(input_ids=ids, labels=labels, video_features=features(10, VIDEO, 1)[None],
                  audio_features=features(4, AUDIO, 2)[None], speech_features=features(3, SPEECH, 3)[None])  # fmt: skip
    expected = model(**inputs).loss
    add_fused_lm_head(model)
    fused = model(**inputs, fused_lm_head=True).loss
    torch.testing.assert_close(fused, expected, rtol=1e-4, atol=1e-5)
    fused.backward()
    for projector in (model.model.mm_projector, model.model.audio_mm_projector, model.model.asr_mm_projector):
        assert projector.weight.grad.abs().sum() > 0


def test_generation_splices_all_streams_once(tokenizer, longvale):
    model = longvale
    ids = torch.tensor([prompt_ids(tokenizer, model, 17)])
    inputs = dict(input_ids=ids, video_features=features(10, VIDEO, 1)[None],
                  audio_features=[features(4, AUDIO, 2)], speech_features=features(3, SPEECH, 3)[None])  # fmt: skip
    cached = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    uncached = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(cached, uncached)


def test_configuration_round_trips_and_vtimellm_configs_keep_their_single_stream(tmp_path, longvale):
    longvale.save_pretrained(tmp_path)
    loaded = type(longvale).from_pretrained(tmp_path)
    assert loaded.config.streams == longvale.config.streams and loaded.config.stream_layout == "concat"
    plain = VTimeLlamaConfig(mm_hidden_size=48)
    assert [(s.name, s.projector, s.hidden_size) for s in plain.streams] == [("video", "mm_projector", 48)]
    with pytest.raises(Exception, match=r"The video stream is 32 wide but mm_hidden_size is 48"):
        VTimeLlamaConfig(mm_hidden_size=48, feature_streams=longvale_streams(32), stream_layout="concat")
