"""VTimeProcessor: original token ids, the Vicuna v1 template, frame sampling and preprocessing, real videos."""

import re

import numpy as np
import pytest
import torch

from vtimellm_hf import VICUNA_V1_CHAT_TEMPLATE, VTimeProcessor, load_video_frames, preprocess_frames
from vtimellm_hf.model.processing_vtime import CLIP_MEAN, CLIP_STD, sample_frame_indices

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
    assert processor.chat_template == VICUNA_V1_CHAT_TEMPLATE


def test_token_ids_equal_the_originals(tiny_dir, tokenizer, processor):
    import sentencepiece

    sentencepiece_model = sentencepiece.SentencePieceProcessor(model_file=str(tiny_dir / "tokenizer" / "tokenizer.model"))
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
        ({"text": ["<video>", "<video>"], "video_features": [np.zeros((100, 32)), np.zeros((99, 32))]}, "one shape"),
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
    assert processor._frame_encoder is None
    processor(text="<video>\nWhen?", video_features=[np.zeros((100, 32))])
    assert processor._frame_encoder is None
    frames = np.random.default_rng(0).integers(0, 256, size=(10, 48, 64, 3), dtype=np.uint8)
    batch = processor(text="<video>\nWhen?", videos=[frames], return_tensors="pt")
    assert processor._frame_encoder is not None
    assert batch["video_features"].shape == (1, 100, 32)
    processor.save_pretrained(tmp_path)
    reloaded = VTimeProcessor.from_pretrained(tmp_path)
    assert reloaded.frame_encoder_name_or_path == str(frame_encoder_path)
    assert reloaded._frame_encoder is None and reloaded.frame_size == 32
    assert reloaded.chat_template == processor.chat_template
    torch.testing.assert_close(reloaded(text="<video>\nWhen?", videos=[frames], return_tensors="pt")["video_features"],
                               batch["video_features"])


@pytest.mark.parametrize(("name", "duration", "shape"), [("3MSZA.mp4", 31.0, (270, 480)), ("demo.mp4", 15.0, (720, 406))])
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
