"""The training collator: labels token by token, truncation that keeps the video, padding, features."""

import numpy as np
import pytest
import torch

from vtimellm_hf.training import IGNORE_INDEX, VTimeDataCollator

SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


class InMemoryFeatures:
    def __init__(self, features: dict):
        self.features = features

    def load(self, feature_id):
        return self.features[feature_id]


def record(answer="From 05 to 23.", video_id="v1", turns=1):
    messages = [
        {"role": "user", "content": "<video>\nWhen does the red circle appear?"},
        {"role": "assistant", "content": answer},
    ]
    for _ in range(turns - 1):
        messages += [
            {"role": "user", "content": "And the blue one?"},
            {"role": "assistant", "content": "From 40 to 60."},
        ]
    return {"id": f"{video_id}-{turns}", "video_id": video_id, "messages": messages}


@pytest.fixture
def collator(processor):
    store = InMemoryFeatures({"v1": np.ones((100, 32), np.float16), "v2": np.zeros((100, 32), np.float16)})
    return VTimeDataCollator(processor, store, max_length=512)


def pieces_ids(processor, pieces):
    """Ids of text pieces tokenized one by one, without BOS: the hand-built expectation."""
    return [processor.tokenizer(piece, add_special_tokens=False).input_ids for piece in pieces]


def test_labels_cover_each_answer_and_its_eos_token_by_token(processor, collator):
    tokenizer, video = processor.tokenizer, processor.video_token_id
    encoded = collator.encode(record(turns=2))
    system, question = pieces_ids(processor, [f"{SYSTEM} USER: ", "\nWhen does the red circle appear? ASSISTANT:"])
    first_turn = pieces_ids(processor, ["\nWhen does the red circle appear? ASSISTANT: From 05 to 23."])[0]
    assert first_turn[: len(question)] == question  # the prompt's tokens do not depend on the answer after them
    answer = first_turn[len(question) :]
    second_prompt, second_turn = pieces_ids(
        processor, ["USER: And the blue one? ASSISTANT:", "USER: And the blue one? ASSISTANT: From 40 to 60."]
    )
    assert second_turn[: len(second_prompt)] == second_prompt
    second_answer = second_turn[len(second_prompt) :]
    eos = tokenizer.eos_token_id

    expected_ids = [tokenizer.bos_token_id, *system, *[video] * 100, *first_turn, eos, *second_turn, eos]
    expected_labels = (
        [IGNORE_INDEX] * (1 + len(system) + 100 + len(question))
        + answer + [eos]
        + [IGNORE_INDEX] * len(second_prompt)
        + second_answer + [eos]
    )
    assert encoded["input_ids"] == expected_ids
    assert encoded["labels"] == expected_labels
    assert tokenizer.decode(answer).strip() == "From 05 to 23."


def test_plain_template_of_stage_one(processor):
    store = InMemoryFeatures({"img": np.ones(32, np.float16)})
    collator = VTimeDataCollator(processor, store, template="plain", num_rows=1)
    example = {"id": "0", "video_id": "img", "messages": [
        {"role": "user", "content": "<video>\nRender a clear and concise summary of the photo."},
        {"role": "assistant", "content": "a red circle on grey"}]}
    encoded = collator.encode(example)
    caption = processor.tokenizer("a red circle on grey\n", add_special_tokens=False).input_ids
    assert encoded["input_ids"] == [processor.tokenizer.bos_token_id, processor.video_token_id, *caption]
    assert encoded["labels"] == [IGNORE_INDEX, IGNORE_INDEX, *caption]
    batch = collator([example])
    assert batch["video_features"].shape == (1, 1, 32)


def test_truncation_cuts_the_end_but_never_the_video(processor):
    store = InMemoryFeatures({"v1": np.ones((100, 32), np.float16)})
    full = VTimeDataCollator(processor, store, max_length=4096).encode(record(turns=3))
    cut = VTimeDataCollator(processor, store, max_length=len(full["input_ids"]) - 5).encode(record(turns=3))
    assert cut["input_ids"] == full["input_ids"][:-5] and cut["labels"] == full["labels"][:-5]
    with pytest.raises(ValueError, match=r"Record 'v1-1': Text 0 is \d+ tokens, 100 of them the rows of its video "
                                         r"\(tokens \d+ to 1\d\d\); truncating it to max_length=120 on the right"):
        VTimeDataCollator(processor, store, max_length=120).encode(record())


def test_batch_is_right_padded_with_stacked_features_and_counts_waste(processor, collator):
    batch = collator([record(video_id="v1", turns=1), record(video_id="v2", turns=2)])
    lengths = batch["attention_mask"].sum(-1)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert lengths[0] < lengths[1] and batch["attention_mask"][0, -1] == 0 and batch["attention_mask"][0, 0] == 1
    assert (batch["labels"][0, lengths[0] :] == IGNORE_INDEX).all()
    assert (batch["input_ids"][0, lengths[0] :] == processor.tokenizer.pad_token_id).all()
    assert batch["video_features"].dtype == torch.float32 and batch["video_features"].shape == (2, 100, 32)
    assert torch.equal(batch["video_features"][0], torch.ones(100, 32))
    assert collator.real_tokens == lengths.sum().item()
    assert collator.padded_tokens == (lengths[1] - lengths[0]).item()


def test_bad_records_are_named(processor, collator):
    messages = [{"role": "user", "content": "When?"}, {"role": "assistant", "content": "x"}]
    no_video = {"id": "r7", "video_id": "v1", "messages": messages}
    with pytest.raises(ValueError, match=r"Record 'r7': The text holds 0 <video> placeholders but 1 visual inputs"):
        collator.encode(no_video)
    wrong_rows = VTimeDataCollator(processor, InMemoryFeatures({"v1": np.ones((99, 32), np.float16)}))
    with pytest.raises(ValueError, match=r"Record 'v1-1': Feature 'v1': shape \(99, 32\), expected \(100, "):
        wrong_rows([record()])


def reference_encoding(processor, messages: list[dict], rows: int = 100) -> tuple[list[int], list[int]]:
    """
    Ids and labels of a Vicuna v1 record built piece by piece, without the chat template: BOS, the system prompt,
    the video rows, then each turn up to its `</s>` tokenized as one piece, its answer labelled (the tokens after
    those of the turn's text up to "ASSISTANT:", which tokenizes to a prefix of the whole turn; a token of the space
    marker alone, where the answer's first letter has no piece with it, is the space after "ASSISTANT:") and its
    `</s>`.
    """
    tokenizer, eos = processor.tokenizer, processor.tokenizer.eos_token_id
    (system,) = pieces_ids(processor, [f"{SYSTEM} USER: "])
    ids = [tokenizer.bos_token_id, *system, *[processor.video_token_id] * rows]
    labels = [IGNORE_INDEX] * len(ids)
    for index in range(0, len(messages), 2):
        question, answer = messages[index]["content"], messages[index + 1]["content"]
        user = question.removeprefix("<video>") if index == 0 else f"USER: {question}"
        prompt, turn = pieces_ids(processor, [f"{user} ASSISTANT:", f"{user} ASSISTANT: {answer}"])
        assert turn[: len(prompt)] == prompt, (prompt, turn)
        answer_start = len(prompt) + (tokenizer.convert_ids_to_tokens(turn[len(prompt)]) == "\u2581")
        ids += [*turn, eos]
        labels += [IGNORE_INDEX] * answer_start + turn[answer_start:] + [eos]
    return ids, labels


def test_real_records_equal_the_reference_and_the_inference_prompt(real_data, tmp_path, processor):
    import json

    from vtimellm_hf.data.converters import read_source, videos_to_dialogues
    from vtimellm_hf.data.loaders import load_stage3

    annotations = tmp_path / "dialogues.json"
    videos = read_source("activitynet", real_data / "activitynet_captions_val_coco_format.json")[:40]
    annotations.write_text(json.dumps(videos_to_dialogues(videos, "anet", seed=0)))
    records = list(load_stage3(annotations))
    # Dense captions (one long answer) and multi-turn dialogues
    assert len(records) == 40 and {len(record["messages"]) for record in records} >= {2, 6}
    collator = VTimeDataCollator(processor, feature_store=None, max_length=4096)
    for record in records:
        encoded = collator.encode(record)
        assert (encoded["input_ids"], encoded["labels"]) == reference_encoding(processor, record["messages"])
        # A training sample starts with the tokens of the inference prompt of its first question
        prompt = processor.apply_chat_template(record["messages"][:1], add_generation_prompt=True)
        prompt_ids = processor(text=prompt, video_features=[torch.zeros(100, 32)])["input_ids"][0]
        assert encoded["input_ids"][: len(prompt_ids)] == prompt_ids
        assert set(encoded["labels"][: len(prompt_ids)]) == {IGNORE_INDEX}
