"""`pipeline("image-text-to-text")` and the generating Auto classes on a saved folder, here and where the package
cannot be imported; and what the processor takes as other processors do (empty inputs, `audio`/`audios`, another
frame count) and gives back (`post_process_video_grounding`)."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from transformers import pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from vtimellm_hf import VTimeLlamaForCausalLM, VTimeProcessor
from vtimellm_hf.data.synthetic import encode_mp4
from vtimellm_hf.model_card import PIPELINE_TAG

GENERATING_AUTO_CLASSES = ("AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText",
                           "AutoModelForMultimodalLM")  # fmt: skip
QUESTION = "When does the man crack the egg?"
NEW_TOKENS = 8

# Runs in a fresh interpreter in which importing vtimellm_hf fails, as on a machine that only has transformers
REMOTE_PIPELINE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class HidePackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "vtimellm_hf" or name.startswith("vtimellm_hf."):
                raise ImportError(f"{name} is hidden in this test")

    sys.meta_path.insert(0, HidePackage())
    import transformers

    folder, video, question, new_tokens, output_file = sys.argv[1:6]
    classes = {name: getattr(transformers, name).from_pretrained(folder, trust_remote_code=True).__class__
               for name in ("AutoModelForImageTextToText", "AutoModelForMultimodalLM")}
    pipe = transformers.pipeline("image-text-to-text", model=folder, trust_remote_code=True, device="cpu")
    messages = [{"role": "user", "content": [{"type": "video", "path": video}, {"type": "text", "text": question}]}]
    result = pipe(text=messages, max_new_tokens=int(new_tokens), return_full_text=False,
                  generate_kwargs={"min_new_tokens": int(new_tokens), "do_sample": False})
    json.dump({
        "classes": {name: [cls.__name__, cls.__module__] for name, cls in classes.items()},
        "pipeline_model": [type(pipe.model).__name__, type(pipe.model).__module__],
        "vtimellm_hf_loaded": any(name.startswith("vtimellm_hf") for name in sys.modules),
        "answer": result[0]["generated_text"],
    }, open(output_file, "w"))
    """
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def checkpoint(tmp_path, model, processor):
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_video(path, seed: int):
    """A generated video of 4 s: 40 frames of random colours at 10 fps."""
    frames = np.random.default_rng(seed).integers(0, 256, (40, 1, 1, 3), dtype=np.uint8).repeat(48, 1).repeat(64, 2)
    encode_mp4(path, frames, fps=10)
    return path


@pytest.fixture(scope="module")
def synthetic_video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("videos") / "colours.mp4", seed=0)


def video_question(video, question: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video", "path": str(video)}, {"type": "text", "text": question}]}]


def direct_answer(model, processor, messages) -> str:
    """The answer through the processor and `generate`, as the README shows, greedy."""
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    output = model.generate(**inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_every_generating_auto_class_builds_the_model_that_generates(checkpoint):
    import transformers

    config = json.loads((checkpoint / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_vtime_llama.VTimeLlamaConfig",
        **dict.fromkeys(GENERATING_AUTO_CLASSES, "modeling_vtime_llama.VTimeLlamaForCausalLM"),
    }
    for name in GENERATING_AUTO_CLASSES:
        loaded = getattr(transformers, name).from_pretrained(checkpoint, trust_remote_code=True)
        assert type(loaded) is VTimeLlamaForCausalLM, name


@pytest.mark.parametrize(("task", "source"), [("image-text-to-text", "synthetic"), ("image-text-to-text", "real"),
                                              ("any-to-any", "synthetic")])  # fmt: skip
def test_pipeline_answers_a_question_about_a_video_as_the_model_does(
    task, source, checkpoint, model, processor, synthetic_video, request
):
    video = synthetic_video if source == "synthetic" else request.getfixturevalue("real_data") / "videos" / "3MSZA.mp4"
    if not video.is_file():
        pytest.skip(f"{video} not found")
    messages = video_question(video)
    expected = direct_answer(model.eval(), processor, messages)
    assert expected.strip()

    pipe = pipeline(task, model=str(checkpoint), trust_remote_code=True, device="cpu")
    assert type(pipe.model) is VTimeLlamaForCausalLM and type(pipe.processor) is VTimeProcessor
    generate_kwargs = {"min_new_tokens": NEW_TOKENS, "do_sample": False}
    answer = pipe(text=messages, max_new_tokens=NEW_TOKENS, return_full_text=False, generate_kwargs=generate_kwargs)
    assert answer[0]["generated_text"] == expected
    # By default the chat comes back with the answer as the assistant's turn
    chat = pipe(messages, max_new_tokens=NEW_TOKENS, generate_kwargs=generate_kwargs)[0]["generated_text"]
    assert chat == [*messages, {"role": "assistant", "content": expected}]


def test_pipeline_batches_prompts_of_two_lengths_as_it_answers_them_alone(checkpoint, synthetic_video, tmp_path):
    other_video = write_video(tmp_path / "other.mp4", seed=1)
    chats = [video_question(synthetic_video), video_question(other_video, "Describe the events and when they happen.")]
    pipe = pipeline("image-text-to-text", model=str(checkpoint), trust_remote_code=True, device="cpu")
    options = {"max_new_tokens": NEW_TOKENS, "return_full_text": False,
               "generate_kwargs": {"min_new_tokens": NEW_TOKENS, "do_sample": False}}  # fmt: skip
    alone = [pipe(text=chat, **options)[0]["generated_text"] for chat in chats]
    batched = [result[0]["generated_text"] for result in pipe(text=chats, batch_size=2, **options)]
    assert batched == alone


def test_pipeline_runs_from_the_saved_code_without_the_package(tmp_path, checkpoint, model, processor, synthetic_video):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    arguments = [str(checkpoint), str(synthetic_video), QUESTION, str(NEW_TOKENS), str(tmp_path / "out.json")]
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_PIPELINE_SCRIPT, *arguments],
        env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads((tmp_path / "out.json").read_text())
    assert not remote["vtimellm_hf_loaded"]
    for name, module in [*remote["classes"].values(), remote["pipeline_model"]]:
        assert name == "VTimeLlamaForCausalLM" and module.startswith("transformers_modules."), (name, module)
    assert remote["answer"] == direct_answer(model.eval(), processor, video_question(synthetic_video))


def test_the_model_card_names_a_pipeline_transformers_has():
    assert PIPELINE_TAG in PIPELINE_REGISTRY.get_supported_tasks()


def test_empty_visual_inputs_and_no_audio_are_taken_as_other_processors_take_them(processor):
    prompt = "USER: <video>\nWhen? ASSISTANT:"
    features = [torch.randn(100, 32, generator=torch.Generator().manual_seed(0))]
    expected = processor(text=prompt, video_features=features, return_tensors="pt")
    for absent in ({"images": []}, {"images": [[]], "videos": []}, {"audio": None, "audios": None},
                   {"audio": [], "audios": [[]]}):  # fmt: skip
        got = processor(text=prompt, video_features=features, return_tensors="pt", **absent)
        assert got.keys() == expected.keys(), absent
        for key in expected:
            torch.testing.assert_close(got[key], expected[key])
    # apply_chat_template passes `images=None, videos=None, audio=None` for a chat without media
    text_only = processor.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True,
                                              tokenize=True, return_dict=True)  # fmt: skip
    assert text_only["input_ids"] == processor(text=processor.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True))["input_ids"]  # fmt: skip


@pytest.mark.parametrize("name", ["audio", "audios"])
def test_audio_is_refused_with_what_to_pass_instead(processor, name):
    with pytest.raises(ValueError, match=rf"takes no `{name}`: pass the video in `videos`"):
        processor(text="<video>\nWhen?", **{name: [np.zeros(16000, dtype=np.float32)]})


def test_another_frame_count_is_sampled_with_a_warning(processor, synthetic_video):
    prompt = "USER: <video>\nWhen? ASSISTANT:"
    expected = "num_frames=50, but this checkpoint was trained on 100 frames a video"
    with pytest.warns(UserWarning, match=expected) as record:
        inputs = processor(text=prompt, videos=str(synthetic_video), num_frames=50, return_tensors="pt")
    # The warning names the line that called the processor
    assert [warning.filename for warning in record] == [__file__]
    assert inputs["video_features"].shape[1] == 50
    assert (inputs["input_ids"] == processor.video_token_id).sum() == 50
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inputs = processor(text=prompt, videos=str(synthetic_video), num_frames=100, return_tensors="pt")
    assert inputs["video_features"].shape[1] == 100


def test_post_process_video_grounding_gives_seconds(tokenizer, processor):
    # The grounding convention by hand: start = s / 100 * duration, end = e / 100 * duration
    assert processor.post_process_video_grounding("From 12 to 47.", 30.0) == pytest.approx((3.6, 14.1))
    answers = ["From 12 to 47, then from 50 to 60.", "It never happens.", "From 50 to 20.", "Between 00 and 99."]
    moments = processor.post_process_video_grounding(answers, [30.0, 10.0, 10.0, 8.0])
    assert moments[0] == pytest.approx((3.6, 14.1)) and moments[1:3] == [None, None]
    assert moments[3] == pytest.approx((0.0, 7.92))
    assert processor.post_process_video_grounding(answers[:1], np.float32(10)) == [pytest.approx((1.2, 4.7))]
    # Indices are read as positions among the processor's frames
    fifty = VTimeProcessor(tokenizer=tokenizer, num_frames=50)
    assert fifty.post_process_video_grounding("From 12 to 47.", 30.0) == pytest.approx((7.2, 28.2))
    with pytest.raises(ValueError, match="Got 2 answers but 3 video_durations"):
        processor.post_process_video_grounding(answers[:2], [1.0, 2.0, 3.0])
