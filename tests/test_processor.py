"""VTimeProcessor: original token ids, the chat templates, frame sampling and preprocessing, real videos, saving."""

import json
import re

import numpy as np
import pytest
import torch

from vtimellm_hf import (
    CLIP_MEAN,
    CLIP_STD,
    PLAIN_CHAT_TEMPLATE,
    VICUNA_V1_CHAT_TEMPLATE,
    VTimeProcessor,
    load_video_frames,
    parse_events,
    preprocess_frames,
    sample_frame_indices,
)

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def original_ids(prompt: str, sentencepiece_model, rows: int, video_token_id: int) -> list[int]:
    """
    What the original fed its model, rebuilt from SentencePiece itself: the prompt cut at `<video>` (LLaVA's
    `tokenizer_image_token`), each chunk tokenized by transformers 4.31's slow legacy LLaMA tokenizer, which splits
    at special tokens and encodes every text piece with its own leading space marker, BOS only on the first chunk.
    """
    ids = [sentencepiece_model.bos_id()]
    for index, chunk in enumerate(prompt.split("<video>")):
        if index:
            ids += [video_token_id] * rows
        for piece in re.split(r"(</s>)", chunk):
            if piece == "</s>":
                ids.append(sentencepiece_model.eos_id())
            elif piece:
                ids += sentencepiece_model.encode(piece)
    return ids


def conversation():
    return [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "When does the man crack the egg?"}]},
        {"role": "assistant", "content": "From 12 to 47."},
        {"role": "user", "content": "Describe the events and when they happen."},
        {"role": "assistant", "content": "From 05 to 23, a red circle appears."},
    ]


def test_chat_template_is_the_original_vicuna_v1_prompt(processor):
    prompt = processor.apply_chat_template(conversation())
    assert prompt == (
        f"{SYSTEM} USER: <video>\nWhen does the man crack the egg? ASSISTANT: From 12 to 47.</s>"
        "USER: Describe the events and when they happen. ASSISTANT: From 05 to 23, a red circle appears.</s>"
    )
    generation_prompt = processor.apply_chat_template(conversation()[:1], add_generation_prompt=True)
    assert generation_prompt == f"{SYSTEM} USER: <video>\nWhen does the man crack the egg? ASSISTANT:"
    with_system = [{"role": "system", "content": "Be brief."}, *conversation()[:1]]
    assert processor.apply_chat_template(with_system).startswith("Be brief. USER: <video>\n")
    assert processor.chat_template == {"default": VICUNA_V1_CHAT_TEMPLATE, "plain": PLAIN_CHAT_TEMPLATE}


def test_token_ids_equal_the_originals(tiny_dir, tokenizer, processor):
    import sentencepiece

    model_file = str(tiny_dir / "tokenizer" / "tokenizer.model")
    sentencepiece_model = sentencepiece.SentencePieceProcessor(model_file=model_file)
    prompt = processor.apply_chat_template(conversation())
    for rows in (100, 1):
        ids = processor(text=prompt, video_features=[torch.zeros(rows, 32)])["input_ids"][0]
        assert ids == original_ids(prompt, sentencepiece_model, rows, processor.video_token_id)
    # Why the processor cuts the text: a whole-string tokenization loses the space marker after <video> and </s>
    assert tokenizer(prompt).input_ids != original_ids(prompt, sentencepiece_model, 1, processor.video_token_id)


def test_assistant_mask_covers_answers_and_eos_only(processor, tokenizer):
    features = torch.zeros(100, 32)
    output = processor.apply_chat_template(
        conversation(),
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        processor_kwargs={"video_features": [features]},
    )
    ids, mask = output["input_ids"][0], output["assistant_masks"][0]
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert trained.replace(" ", "") == "From12to47.</s>From05to23,aredcircleappears.</s>"
    assert not any(m for i, m in zip(ids, mask) if i == processor.video_token_id)


def test_each_video_becomes_as_many_placeholders_as_rows(processor):
    batch = processor(
        text=["<video>\nWhen?", "<video>\nWhat happens here?"],
        video_features=torch.randn(2, 100, 32),
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    assert batch["video_features"].shape == (2, 100, 32)
    assert (batch["input_ids"] == processor.video_token_id).sum(-1).tolist() == [100, 100]
    assert batch["attention_mask"][0, 0] == 0 and batch["attention_mask"][0, -1] == 1  # the shorter, left-padded
    image = processor(text="<video>\nA caption:", video_features=[np.zeros(32, dtype=np.float16)], return_tensors="pt")
    assert image["video_features"].shape == (1, 1, 32)
    assert (image["input_ids"] == processor.video_token_id).sum() == 1


def test_text_only_input(processor):
    batch = processor(text="USER: hello ASSISTANT:", return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": "<video><video> twice", "video_features": [np.zeros((100, 32))] * 2}, "holds 2 <video> placeholders"),
        ({"text": "no placeholder", "video_features": [np.zeros((100, 32))]}, "0 <video> placeholders but 1 visual"),
        ({"text": ["<video> a", "b"], "video_features": [np.zeros((100, 32))]}, r"Texts \[1\] hold no <video>"),
        ({"video_features": [np.zeros((100, 32))]}, "needs text"),
        ({"text": ["<video>", "<video>"], "video_features": [np.zeros((100, 32)), np.zeros((100, 31))]}, "one width"),
        ({"text": "<video>", "video_features": [np.zeros((2, 100, 32))]}, r"must have shape \(rows, hidden\)"),
        ({"text": "<video>", "videos": [np.zeros((4, 8, 8))]}, r"shape \(frames, height, width, 3\)"),
    ],
)
def test_bad_inputs_say_what_mismatched(processor, kwargs, message):
    with pytest.raises(ValueError, match=message):
        processor(**kwargs)


def test_tokenizer_without_video_token_is_reported(tmp_path, tiny_dir):
    import shutil

    from transformers import LlamaTokenizer

    shutil.copy(tiny_dir / "tokenizer" / "tokenizer.model", tmp_path)
    bare_processor = VTimeProcessor(tokenizer=LlamaTokenizer.from_pretrained(tmp_path))
    with pytest.raises(ValueError, match="The tokenizer has no <video> token"):
        bare_processor(text="<video>\nWhen?", video_features=[np.zeros((100, 32))])


def test_frame_indices_follow_the_original_linspace():
    assert sample_frame_indices(930, 100)[[0, 1, -1]].tolist() == [0, 9, 929]
    assert sample_frame_indices(50, 100).tolist() == np.linspace(0, 49, 100, dtype=np.int32).tolist()
    window = sample_frame_indices(930, 100, fps=30.0, window=(10.0, 20.0))
    assert window[0] == 300 and window[-1] == 600
    assert sample_frame_indices(930, 100, fps=30.0, window=(10.0, 99.0))[-1] == 929
    with pytest.raises(ValueError, match="outside the video"):
        sample_frame_indices(930, 100, fps=30.0, window=(40.0, 50.0))
    with pytest.raises(ValueError, match="num_frames must be at least 1, got 0"):
        sample_frame_indices(930, 0)


def cubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) matrix of bicubic interpolation (a = -0.75, half-pixel centres, border clamped) in float64."""

    def kernel(x):
        x, a = abs(x), -0.75
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    weights = np.zeros((out_size, in_size))
    for out in range(out_size):
        source = (out + 0.5) * in_size / out_size - 0.5
        base = int(np.floor(source))
        for tap in range(base - 1, base + 3):
            weights[out, min(max(tap, 0), in_size - 1)] += kernel(source - tap)
    return weights


def reference_transform(frame: np.ndarray, size: int) -> np.ndarray:
    """The original transform in float64, written out: /255, resize short side, center crop, normalise."""
    height, width, _ = frame.shape
    if height <= width:
        new_height, new_width = size, int(size * width / height)
    else:
        new_height, new_width = int(size * height / width), size
    pixels = frame.astype(np.float64).transpose(2, 0, 1) / 255.0
    resized = np.einsum("oh,chw,pw->cop", cubic_weights(height, new_height), pixels, cubic_weights(width, new_width))
    top, left = int(round((new_height - size) / 2.0)), int(round((new_width - size) / 2.0))
    cropped = resized[:, top : top + size, left : left + size]
    return (cropped - np.array(CLIP_MEAN)[:, None, None]) / np.array(CLIP_STD)[:, None, None]


@pytest.mark.parametrize("shape", [(54, 96), (96, 54), (40, 40), (300, 500)])
def test_preprocessing_matches_a_float64_reference(shape):
    frames = np.random.default_rng(0).integers(0, 256, size=(3, *shape, 3), dtype=np.uint8)
    ours = preprocess_frames(frames, size=32).numpy()
    for frame, output in zip(frames, ours):
        # float32 against float64: a wrong kernel, antialiasing or crop offset is off by 1e-1, rounding by 1e-4
        np.testing.assert_allclose(output, reference_transform(frame, 32), atol=5e-4)


def test_frame_encoder_loads_lazily_and_is_not_saved(tmp_path, tokenizer, frame_encoder_path):
    processor = VTimeProcessor(tokenizer=tokenizer, frame_encoder_name_or_path=str(frame_encoder_path), frame_size=32)
    assert processor.frame_encoder._model is None
    processor(text="<video>\nWhen?", video_features=[np.zeros((100, 32))])
    assert processor.frame_encoder._model is None
    frames = np.random.default_rng(0).integers(0, 256, size=(10, 48, 64, 3), dtype=np.uint8)
    batch = processor(text="<video>\nWhen?", videos=[frames], return_tensors="pt")
    assert processor.frame_encoder._model is not None
    assert batch["video_features"].shape == (1, 100, 32)
    processor.save_pretrained(tmp_path)
    reloaded = VTimeProcessor.from_pretrained(tmp_path)
    assert reloaded.frame_encoder_name_or_path == str(frame_encoder_path)
    assert reloaded.frame_encoder._model is None and reloaded.frame_size == 32
    assert reloaded.chat_template == processor.chat_template
    torch.testing.assert_close(reloaded(text="<video>\nWhen?", videos=[frames], return_tensors="pt")["video_features"],
                               batch["video_features"])
    # The device is not configuration: setting it moves the loaded encoder (to the meta device, which holds no data)
    processor.frame_encoder_device = "meta"
    assert next(processor.frame_encoder.model.parameters()).device.type == "meta"
    assert "frame_encoder_device" not in json.loads((tmp_path / "processor_config.json").read_text())


@pytest.mark.parametrize(
    ("name", "duration", "shape"), [("3MSZA.mp4", 31.0, (270, 480)), ("demo.mp4", 15.0, (720, 406))]
)
def test_real_videos(real_data, processor, name, duration, shape):
    path = real_data / "videos" / name
    frames, seconds = load_video_frames(path, num_frames=100)
    assert frames.shape == (100, *shape, 3) and frames.dtype == np.uint8
    assert seconds == pytest.approx(duration, abs=0.05)
    messages = [{"role": "user", "content": [{"type": "video", "path": str(path)}, {"type": "text", "text": "When?"}]}]
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert inputs["video_features"].shape == (1, 100, 32)
    assert torch.isfinite(inputs["video_features"]).all()
    torch.testing.assert_close(inputs["video_features"][0], processor.encode_frames(frames))
    assert inputs["video_features"][0].std(0).mean() > 1e-3  # the frames differ, so do their features
    window = processor(text="<video>", videos=[str(path)], video_windows=[(2.0, 6.0)], return_tensors="pt")
    assert not torch.allclose(window["video_features"], inputs["video_features"])


def test_unreadable_video_names_the_file(tmp_path, processor):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="broken.mp4"):
        processor(text="<video>", videos=[str(broken)])
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        processor(text="<video>", videos=[str(tmp_path / "missing.mp4")])


def own_tokenizer(tiny_dir, **attributes):
    """A copy of the tiny tokenizer, to change without touching the session's."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dir / "tokenizer")
    for name, value in attributes.items():
        setattr(tokenizer, name, value)
    return tokenizer


PROMPT = "USER: <video>\nWhen? ASSISTANT:"
LONGER_PROMPT = "USER: <video>\nWhen does the man crack the egg? ASSISTANT:"


def test_prompts_of_one_length_need_no_pad_token(tiny_dir):
    # Stock Vicuna v1.5 has no pad token
    processor = VTimeProcessor(tokenizer=own_tokenizer(tiny_dir, pad_token=None))
    features = torch.zeros(100, 32)
    single = processor(text=PROMPT, video_features=[features], return_tensors="pt")
    assert single["attention_mask"].all()
    assert processor(text=PROMPT, video_features=[features], padding=True)["input_ids"] == single["input_ids"].tolist()
    # As transformers processors: no padding unless asked
    ragged = processor(text=[PROMPT, LONGER_PROMPT], video_features=[features, features])
    assert len(ragged["input_ids"][0]) < len(ragged["input_ids"][1])
    with pytest.raises(ValueError, match="padding token"):
        processor(text=[PROMPT, LONGER_PROMPT], video_features=[features, features], padding=True)


def test_tokenizer_padding_and_truncation_options(processor):
    features = [torch.zeros(100, 32)]
    length = len(processor(text=PROMPT, video_features=features)["input_ids"][0])
    padded = processor(text=PROMPT, video_features=features, padding="max_length", max_length=length + 9)
    assert len(padded["input_ids"][0]) == length + 9 and sum(padded["attention_mask"][0]) == length
    batch = processor(
        text=[PROMPT, LONGER_PROMPT], video_features=features * 2, padding=True, pad_to_multiple_of=16,
        return_offsets_mapping=True,
    )
    assert {len(ids) for ids in batch["input_ids"]} == {len(batch["offset_mapping"][0])}
    assert len(batch["input_ids"][0]) % 16 == 0
    for kwargs in ({"truncation": True, "max_length": length - 3}, {"max_length": length - 3}):
        truncated = processor(text=PROMPT, video_features=features, return_offsets_mapping=True, **kwargs)
        assert len(truncated["input_ids"][0]) == len(truncated["offset_mapping"][0]) == length - 3
        assert truncated["input_ids"][0].count(processor.video_token_id) == 100
    with pytest.raises(ValueError, match=r"Text 0 is \d+ tokens, 100 of them the rows of its video \(tokens \d+ to "
                                         r"\d+\); truncating it to max_length=100 on the right would cut into those"):
        processor(text=PROMPT, video_features=features, truncation=True, max_length=100)
    with pytest.raises(ValueError, match="truncation='only_second' does not apply"):
        processor(text=PROMPT, video_features=features, truncation="only_second", max_length=200)


def test_left_truncation_keeps_the_end_and_never_cuts_the_video(tiny_dir):
    processor = VTimeProcessor(tokenizer=own_tokenizer(tiny_dir, truncation_side="left"))
    features = [torch.zeros(100, 32)]
    full = processor(text=PROMPT, video_features=features)["input_ids"][0]
    kept = len(full) - full.index(processor.video_token_id)
    truncated = processor(text=PROMPT, video_features=features, truncation=True, max_length=kept)
    assert truncated["input_ids"][0] == full[-kept:]
    with pytest.raises(ValueError, match="on the left would cut into those rows"):
        processor(text=PROMPT, video_features=features, truncation=True, max_length=kept - 1)


def test_chat_template_options_of_transformers(processor, tokenizer):
    features = [torch.zeros(100, 32)]

    def messages(question):
        return [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]

    def tokenized(question, **kwargs):
        return processor.apply_chat_template(
            messages(question), add_generation_prompt=True, tokenize=True, return_dict=True,
            processor_kwargs={"video_features": features}, **kwargs,
        )["input_ids"][0]

    # Without control tokens in the user's text, sanitizing changes nothing
    assert tokenized("When?", sanitize_control_tokens=True) == tokenized("When?")
    # With them, they are the user's plain text: no second video, no end of turn
    sanitized = tokenized("Is </s> a <video>?", sanitize_control_tokens=True)
    assert sanitized.count(processor.video_token_id) == 100 and tokenizer.eos_token_id not in sanitized
    assert "Is </s> a <video>?" in tokenizer.decode(sanitized[sanitized.index(processor.video_token_id) + 100 :])
    with pytest.raises(ValueError, match="holds 2 <video> placeholders"):
        tokenized("Is </s> a <video>?")

    frames = np.random.default_rng(0).integers(0, 256, size=(30, 24, 32, 3), dtype=np.uint8)
    video_messages = [
        {"role": "user", "content": [{"type": "video", "video": frames}, {"type": "text", "text": "When?"}]}
    ]
    inputs = processor.apply_chat_template(
        video_messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"num_frames": 10},
    )
    assert inputs["video_features"].shape == (1, 10, 32)
    assert (inputs["input_ids"] == processor.video_token_id).sum() == 10
    every_frame = processor(text="<video>", videos=frames, do_sample_frames=False, return_tensors="pt")
    torch.testing.assert_close(every_frame["video_features"][0], processor.encode_frames(frames))


def test_video_input_formats_of_transformers(processor):
    from PIL import Image

    rng = np.random.default_rng(0)
    videos = rng.integers(0, 256, size=(2, 12, 24, 32, 3), dtype=np.uint8)
    expected = torch.stack([processor.encode_frames(video[sample_frame_indices(12, 100)]) for video in videos])

    def encoded(given, texts=("<video>", "<video>")):
        return processor(text=list(texts), videos=given, return_tensors="pt")["video_features"]

    # A list of frames is one video, as arrays or PIL images
    torch.testing.assert_close(encoded(list(videos[0]), ["<video>"]), expected[:1])
    torch.testing.assert_close(encoded([Image.fromarray(frame) for frame in videos[0]], ["<video>"]), expected[:1])
    # A batch: 5-D arrays and tensors, lists of videos, and a list of videos per sample
    torch.testing.assert_close(encoded(videos), expected)
    torch.testing.assert_close(encoded(torch.from_numpy(videos)), expected)
    torch.testing.assert_close(encoded([list(videos[0]), list(videos[1])]), expected)
    torch.testing.assert_close(encoded([[videos[0]], [list(videos[1])]]), expected)

    with pytest.raises(ValueError, match="mixes single frames with whole videos"):
        encoded([videos[0][0], videos[1]])
    with pytest.raises(ValueError, match=r"frames of videos\[0\] differ in shape"):
        encoded([[videos[0][0], videos[0][0][:10]]], ["<video>"])
    with pytest.raises(ValueError, match=r"or \(videos, frames, height, width, 3\) for a batch, got \(1, 2, 12, 24"):
        encoded(videos[None], ["<video>"])
    with pytest.raises(ValueError, match=r"video_windows\[0\] is \(1.0, 2.0\), but videos\[0\] is decoded frames"):
        processor(text="<video>", videos=[videos[0]], video_windows=[(1.0, 2.0)])
    with pytest.raises(ValueError, match=r"must be uint8 RGB \(0-255\), got dtype float32 for videos\[1\]"):
        encoded([videos[0], videos[1].astype(np.float32) / 255])


@pytest.mark.parametrize(
    "answer",
    [
        "From 00 to 12, a man enters. From 13 to 40, he leaves.",
        "A man enters from 00 to 12. He leaves from 13 to 40.",
        "00 to 12: a man enters, 13 to 40: he leaves.",
        "From 00 to 12, a man enters. Then from 13 to 40, he leaves.",
        "A man enters from 00 to 12, then he leaves from 13 to 40.",
        'Sure! [{"event": "a man enters", "timestamps": "from 00 to 12"}, '
        '{"event": "he leaves", "timestamps": "from 13 to 40"}]',
    ],
)
def test_events_are_read_from_every_layout(answer):
    # The captioning convention of the original: the end index counts its whole frame
    events = [(start, end, sentence.lower()) for start, end, sentence in parse_events(answer, 50.0)]
    assert events == [(0.0, 6.5, "a man enters"), (6.5, 20.5, "he leaves")]


def test_events_keep_what_the_trained_layout_always_gave():
    # Each caption runs to the next moment led by "from" or "between"; a bare pair in a caption is text
    assert parse_events("From 00 to 12, he sits. He waits. From 13 to 40, players 10 and 23 score.", 100.0) == [
        (0.0, 13.0, "he sits. He waits"),
        (13.0, 41.0, "players 10 and 23 score"),
    ]
    # JSON cut off by the token limit keeps its whole events; reversed pairs name no event
    truncated = (
        '[{"event": "a man enters", "timestamps": "from 00 to 12"}, {"event": "x", "timestamps": "from 40 to 10"}, '
        '{"eve'
    )
    assert parse_events(truncated, 100.0) == [(0.0, 13.0, "a man enters")]


def test_processor_parses_indices_into_its_own_frame_count(tokenizer):
    processor = VTimeProcessor(tokenizer=tokenizer, num_frames=50)
    assert processor.parse_moments("From 10 to 20.", 100.0) == [pytest.approx((20.0, 40.0))]
    assert processor.parse_events("From 10 to 20, a man enters.", 100.0) == [
        (pytest.approx(20.0), pytest.approx(42.0), "a man enters")
    ]


# The video processor, the frame encoder and saving


def test_video_processor_mirrors_transformers_names(processor):
    video_processor = processor.video_processor
    assert video_processor.size == {"shortest_edge": 32} and video_processor.crop_size == {"height": 32, "width": 32}
    assert video_processor.sample_frames(930).tolist() == np.linspace(0, 929, 100, dtype=np.int32).tolist()
    videos = np.random.default_rng(0).integers(0, 256, size=(2, 12, 24, 40, 3), dtype=np.uint8)
    # The pixels: the frames of `np.linspace` indices, through the transform `preprocess_frames` (tested above)
    expected = torch.stack([preprocess_frames(video[np.linspace(0, 11, 100, dtype=np.int32)], 32) for video in videos])
    pixels = video_processor(videos, return_tensors="pt")["pixel_values_videos"]
    assert pixels.shape == (2, 100, 3, 32, 32)
    torch.testing.assert_close(pixels, expected, rtol=0, atol=0)
    every_frame = video_processor(list(videos), do_sample_frames=False)["pixel_values_videos"]
    assert [tuple(video.shape) for video in every_frame] == [(12, 3, 32, 32)] * 2
    # The processor's features are the frame encoder's embeddings of those pixels
    features = processor(text=["<video>", "<video>"], videos=videos, return_tensors="pt")["video_features"]
    encoder = processor.frame_encoder.model
    with torch.no_grad():
        embeddings = torch.stack([encoder(pixel_values=video).image_embeds for video in expected])
    torch.testing.assert_close(features, embeddings)
    assert type(processor.video_processor)(**video_processor.to_dict()) == video_processor


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_frames": 0}, "num_frames must be a positive integer, got 0"),
        ({"frame_size": "224"}, "frame_size must be a positive integer, got '224'"),
        ({"image_mean": (0.5, 0.5)}, "image_mean must be three numbers"),
        ({"image_std": (0.5, 0.0, 0.5)}, "image_std must be positive"),
        ({"encoder_batch_size": -1}, "batch_size must be a positive integer, got -1"),
    ],
)
def test_video_settings_are_checked_when_the_processor_is_made(tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        VTimeProcessor(tokenizer=tokenizer, **kwargs)


def test_video_processor_is_a_plain_attribute_saved_in_processor_config(tmp_path, tokenizer, processor):
    """
    What transformers 5 does with a `video_processor` parameter of `__init__`: `ProcessorMixin` makes it a
    sub-processor, checks it against `VideoProcessorMixin` through `VIDEO_PROCESSOR_MAPPING`, which is a placeholder
    object beside the CPU torch wheel (no torchvision), and would load it with `AutoVideoProcessor`, which needs
    torchvision too. So the processor holds its video processor and frame encoder as plain attributes, saved as their
    settings in `processor_config.json`, the layout it had before they were parts.
    """
    from transformers import ProcessorMixin

    from vtimellm_hf import VTimeVideoProcessor

    class WithSubProcessor(ProcessorMixin):
        def __init__(self, tokenizer=None, video_processor=None):
            super().__init__(tokenizer, video_processor)

    assert WithSubProcessor.get_attributes() == ["tokenizer", "video_processor"]
    with pytest.raises((TypeError, AttributeError)):
        WithSubProcessor(tokenizer, VTimeVideoProcessor())
    assert VTimeProcessor.get_attributes() == ["tokenizer"]

    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert {key: value for key, value in saved.items() if key not in ("auto_map", "processor_class")} == {
        "frame_encoder_name_or_path": processor.frame_encoder_name_or_path,
        "encoder_batch_size": 64,
        "num_frames": 100,
        "do_sample_frames": True,
        "frame_size": 32,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
    }
    assert (tmp_path / "chat_template.jinja").read_text() == VICUNA_V1_CHAT_TEMPLATE
    assert (tmp_path / "additional_chat_templates" / "plain.jinja").read_text() == PLAIN_CHAT_TEMPLATE
    reloaded = VTimeProcessor.from_pretrained(tmp_path)
    assert reloaded.video_processor == processor.video_processor
    assert reloaded.frame_encoder.video_processor is reloaded.video_processor


def test_processor_saved_before_the_video_processor_existed_loads(tmp_path, tokenizer, frame_encoder_path):
    from transformers import AutoProcessor

    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").write_text(VICUNA_V1_CHAT_TEMPLATE)
    # processor_config.json as the processor wrote it when it held its settings itself
    (tmp_path / "processor_config.json").write_text(json.dumps({
        "auto_map": {"AutoProcessor": "processing_vtime.VTimeProcessor"},
        "encoder_batch_size": 16,
        "frame_encoder_name_or_path": str(frame_encoder_path),
        "frame_size": 32,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.25, 0.25, 0.25],
        "num_frames": 40,
        "processor_class": "VTimeProcessor",
    }))  # fmt: skip
    for loaded in (VTimeProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert isinstance(loaded, VTimeProcessor)
        assert (loaded.num_frames, loaded.frame_size, loaded.encoder_batch_size) == (40, 32, 16)
        assert loaded.image_mean == [0.5] * 3 and loaded.image_std == [0.25] * 3
        assert loaded.video_processor.do_sample_frames
        assert loaded.frame_encoder_name_or_path == str(frame_encoder_path)
        assert loaded.chat_template == {"default": VICUNA_V1_CHAT_TEMPLATE, "plain": PLAIN_CHAT_TEMPLATE}
        frames = np.random.default_rng(0).integers(0, 256, size=(50, 40, 48, 3), dtype=np.uint8)
        features = loaded(text="<video>", videos=frames, return_tensors="pt")["video_features"]
        assert features.shape == (1, 40, 32)
        torch.testing.assert_close(features[0], loaded.encode_pixels(preprocess_frames(
            frames[np.linspace(0, 49, 40, dtype=np.int32)], 32, [0.5] * 3, [0.25] * 3)))  # fmt: skip


def test_named_chat_templates(tokenizer):
    messages = [{"role": "user", "content": "<video>\nDescribe the photo."}, {"role": "assistant", "content": "A cat."}]
    processor = VTimeProcessor(tokenizer=tokenizer)
    assert processor.apply_chat_template(messages, chat_template="plain") == "<video>A cat.\n"
    assert processor.apply_chat_template(messages).startswith(f"{SYSTEM} USER: <video>\nDescribe the photo.")
    custom = VTimeProcessor(tokenizer=tokenizer, chat_template="{{ messages[0]['content'] }}")
    assert custom.chat_template == {"default": "{{ messages[0]['content'] }}", "plain": PLAIN_CHAT_TEMPLATE}
    own_plain = VTimeProcessor(tokenizer=tokenizer, chat_template={"default": "x", "plain": "y"})
    assert own_plain.chat_template == {"default": "x", "plain": "y"}


def test_features_keep_the_type_they_were_given_in(processor):
    as_tensor, as_array = torch.randn(100, 32), np.random.default_rng(0).standard_normal((100, 32), dtype=np.float32)
    features = processor(text=["<video>", "<video>"], video_features=[as_tensor, as_array])["video_features"]
    assert isinstance(features[0], torch.Tensor) and isinstance(features[1], np.ndarray)
    torch.testing.assert_close(features[0], as_tensor)
    np.testing.assert_array_equal(features[1], as_array)
    # Converted to float32 as with return_tensors="pt", which stacks them
    half = processor(text="<video>", video_features=[as_tensor.half()])["video_features"][0]
    assert half.dtype == torch.float32
    stacked = processor(text=["<video>", "<video>"], video_features=[as_tensor, as_array], return_tensors="pt")
    torch.testing.assert_close(stacked["video_features"], torch.stack([as_tensor, torch.from_numpy(as_array)]))


def test_names_that_moved_import_from_their_old_paths_with_a_warning():
    import warnings

    from vtimellm_hf.model import processing_vtime, video_decoding_vtime, video_processing_vtime
    from vtimellm_hf.training import collator

    moved_to = {
        "get_video_duration": video_decoding_vtime, "load_video_frames": video_decoding_vtime,
        "sample_frame_indices": video_decoding_vtime, "DECODE_CHUNK_BYTES": video_decoding_vtime,
        "preprocess_frames": video_processing_vtime, "PREPROCESS_CHUNK_BYTES": video_processing_vtime,
    }  # fmt: skip
    for name, module in moved_to.items():
        with pytest.warns(FutureWarning, match=f"{name} moved to {module.__name__.rsplit('.', 1)[-1]}.py"):
            assert getattr(processing_vtime, name) is getattr(module, name)
    with pytest.warns(FutureWarning, match="PLAIN_CHAT_TEMPLATE moved to vtimellm_hf.model"):
        assert collator.PLAIN_CHAT_TEMPLATE is PLAIN_CHAT_TEMPLATE
    # The timestamp helpers are re-exported, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from vtimellm_hf.model.processing_vtime import parse_events as reexported  # noqa: F401
        from vtimellm_hf.training import PLAIN_CHAT_TEMPLATE as from_training
    assert from_training is PLAIN_CHAT_TEMPLATE
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        processing_vtime.no_such_name
